"""Tests for actorbox/_handle.py and the Future as a task: a handle's namespace is the actor's (issue 16).

Unit tests use a stub caller that only makes Futures and records what is sent and
cancelled; the rest start real actors, on asyncio and trio.
"""

from __future__ import annotations

import asyncio
import collections.abc
from typing import Any

import anyio
import pytest

import actorbox
from actorbox._future import Future
from actorbox._handle import ActorHandle

pytestmark = pytest.mark.anyio


class _FutureMaker:
    """Makes the Future a call returns, sending nothing; records the calls made and cancelled."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.cancelled: list[int] = []

    def call(self, actor_id: int, label: str, method: str, args: tuple[Any, ...], kwargs: dict[str, Any],
             token: bytes = b"") -> Future[Any]:
        self.calls.append(method)
        return Future(self, len(self.calls), label, method, actor_id)  # type: ignore[arg-type]  # a stub resolver

    def on_loop_thread(self) -> bool:
        return True

    def cancel(self, fut: Future[Any]) -> None:
        self.cancelled.append(fut.call_id)


# Every name a handle used to have for itself, and those a Future has: all the actor's here.
CLASHING = ["stop", "call", "name", "label", "actor_id", "result", "cancel", "options"]


@actorbox.actor(max_concurrency=4)
class Clash:
    """Defines methods named like a handle's (old) attributes and a Future's."""

    def __init__(self) -> None:
        self.seen: list[Any] = []

    def stop(self) -> str:
        return "Clash.stop"

    def call(self) -> str:
        return "Clash.call"

    def name(self) -> str:
        return "Clash.name"

    def label(self) -> str:
        return "Clash.label"

    def actor_id(self) -> str:
        return "Clash.actor_id"

    def result(self) -> str:
        return "Clash.result"

    def cancel(self) -> str:
        return "Clash.cancel"

    def options(self) -> str:
        return "Clash.options"

    def add(self, x: Any) -> Any:
        self.seen.append(x)
        return x

    def log(self) -> list[Any]:
        return self.seen

    async def nap(self, s: float) -> str:
        await anyio.sleep(s)
        return "woke"

    def _secret(self) -> str:
        return "private"


# -- the handle's namespace ------------------------------------------------------------------


def test_a_method_object_has_a_name_and_a_qualified_name() -> None:
    """handle.method has __name__ (the method) and __qualname__ (label.method), as functions do."""
    incr = ActorHandle(_FutureMaker(), 3, None, "Counter").incr
    assert (incr.__name__, incr.__qualname__) == ("incr", "Counter.incr")


@pytest.mark.parametrize("method", CLASHING)
def test_every_public_name_is_a_method_of_the_actor(method: str) -> None:
    """handle.<name> for each name a handle or Future uses itself makes a call of that method, not something else."""
    caller = _FutureMaker()
    fut = getattr(ActorHandle(caller, 3, "n", "n"), method)()
    assert isinstance(fut, Future) and fut.method == method and caller.calls == [method]


async def test_clashing_method_names_reach_the_actor() -> None:
    """An actor defining stop, call, name, label, actor_id, result, cancel, options answers each through its handle."""
    async with actorbox.Runtime() as rt:
        h = await rt.start(Clash)
        assert [await getattr(h, m)() for m in CLASHING] == [f"Clash.{m}" for m in CLASHING]
        assert await h.add(1) == 1  # still alive: its own stop() did not stop it
        await rt.stop(h)
        with pytest.raises(actorbox.ActorStoppedError):
            await h.add(2)


async def test_info_gives_the_actors_id_name_and_label() -> None:
    """actorbox.info(handle) is the actor's id (as rt.named_actors() has it), its name and its label."""
    async with actorbox.Runtime() as rt:
        named = await rt.start(Clash, name="clash")
        anon = await rt.start(Clash)
        ids = rt.named_actors()
        assert actorbox.info(named) == actorbox.HandleInfo(ids["clash"], "clash", "clash")
        i = actorbox.info(anon)
        assert (i.name, i.label) == (None, f"Clash#{i.actor_id}") and i.actor_id != ids["clash"]
        assert {a.label for a in rt.actors() if a.kind == "actor"} == {"clash", i.label}
        with pytest.raises(actorbox.UsageError, match="takes an actor handle"):
            actorbox.info("clash")  # type: ignore[arg-type]  # bad input is the point


def test_a_private_name_raises_private_method_error_and_sends_nothing() -> None:
    """handle._secret raises PrivateMethodError (an AttributeError too, with a message) and makes no call."""
    caller = _FutureMaker()
    h = ActorHandle(caller, 3, None, "Vault#3")
    with pytest.raises(actorbox.PrivateMethodError) as ei:
        h._secret()
    err = ei.value
    assert isinstance(err, AttributeError) and isinstance(err, actorbox.ActorboxError)
    assert (err.actor, err.method) == ("Vault#3", "_secret") and "private" in str(err)
    assert not hasattr(h, "_other") and not hasattr(h, "__array_interface__")  # probes see a plain absence
    assert caller.calls == []


async def test_private_method_of_a_real_actor_is_refused_at_the_handle() -> None:
    """h._secret on a real actor raises PrivateMethodError before any call is routed; the actor goes on."""
    async with actorbox.Runtime() as rt:
        h = await rt.start(Clash)
        with pytest.raises(actorbox.PrivateMethodError):
            await h._secret()
        assert rt.pending_calls() == [] and await h.add(3) == 3


async def test_rt_stop_takes_only_its_own_actor_processes() -> None:
    """rt.stop() refuses a non-handle, a host-resident actor's handle (saying to unregister) and another Runtime's
    handle with UsageError; after the Runtime exited it is a no-op."""
    async with actorbox.Runtime() as rt:
        resident = rt.register("models", Clash())
        with pytest.raises(actorbox.UsageError, match="takes an actor handle"):
            await rt.stop("models")  # type: ignore[arg-type]  # bad input is the point
        with pytest.raises(actorbox.UsageError, match=r"rt.unregister\('models'\)"):
            await rt.stop(resident)
        assert await resident.stop() == "Clash.stop"  # the resident's own stop(), still served
        h = await rt.start(Clash)
        async with actorbox.Runtime() as other:
            with pytest.raises(actorbox.UsageError, match="another Runtime"):
                await other.stop(h)
        assert await h.add(1) == 1
    await rt.stop(h)  # after the Runtime exited: nothing left to stop, and no error


# -- a Future is a coroutine: tasks run it ---------------------------------------------------


def test_a_future_is_a_coroutine() -> None:
    """A Future passes isinstance(..., collections.abc.Coroutine), which asyncio, anyio and trio check."""
    fut = ActorHandle(_FutureMaker(), 3, None, "C").m()
    assert isinstance(fut, collections.abc.Coroutine) and asyncio.iscoroutine(fut)


def test_throwing_into_a_future_never_started_cancels_its_call() -> None:
    """A task cancelled before its first step throws into the Future: the remote call is cancelled and it raises."""
    caller = _FutureMaker()
    fut = ActorHandle(caller, 3, None, "C").m()
    with pytest.raises(KeyError):
        fut.throw(KeyError("cancelled"))
    assert caller.cancelled == [fut.call_id]


def test_closing_a_future_never_started_cancels_its_call() -> None:
    """close() on a Future no task has run abandons it: the remote call is cancelled."""
    caller = _FutureMaker()
    fut = ActorHandle(caller, 3, None, "C").m()
    fut.close()
    assert caller.cancelled == [fut.call_id]


async def test_start_soon_runs_calls_as_tasks() -> None:
    """tg.start_soon(handle.method, x) runs the call as a task (asyncio and trio); no call is left over."""
    async with actorbox.Runtime() as rt:
        h = await rt.start(Clash)
        async with anyio.create_task_group() as tg:
            for x in range(3):
                tg.start_soon(h.add, x)
        assert sorted(await h.log()) == [0, 1, 2]
        assert rt.pending_calls() == []


@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_trio_nursery_start_soon_runs_a_call() -> None:
    """trio's own nursery.start_soon(handle.method, x) runs the call as a task."""
    import trio

    async with actorbox.Runtime() as rt:
        h = await rt.start(Clash)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(h.add, "trio")
        assert await h.log() == ["trio"] and rt.pending_calls() == []


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_create_task_and_gather_run_calls() -> None:
    """asyncio.create_task(handle.method(x)) is a task whose result is the call's; gather takes calls too."""
    async with actorbox.Runtime() as rt:
        h = await rt.start(Clash)
        task = asyncio.create_task(h.add("task"))
        assert await task == "task"
        assert list(await asyncio.gather(h.add(1), h.add(2))) == [1, 2]
        assert rt.pending_calls() == []


async def test_cancelling_a_call_task_cancels_the_remote_call() -> None:
    """Cancelling the task group that runs a call as a task cancels the remote call: none is left pending."""
    async with actorbox.Runtime() as rt:
        h = await rt.start(Clash)
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(h.nap, 30)
                while not any(c.method == "nap" and c.state == "running" for c in rt.pending_calls()):
                    await anyio.sleep(0.01)
                tg.cancel_scope.cancel()
            while rt.pending_calls():
                await anyio.sleep(0.01)
        assert await h.nap(0) == "woke"


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_cancelling_a_created_task_before_it_runs_cancels_the_call() -> None:
    """asyncio.create_task(h.nap(30)).cancel() before the task's first step cancels the remote call too."""
    async with actorbox.Runtime() as rt:
        h = await rt.start(Clash)
        task = asyncio.create_task(h.nap(30))
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        with anyio.fail_after(10):
            while rt.pending_calls():
                await anyio.sleep(0.01)
        assert await h.nap(0) == "woke"


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_second_task_running_the_same_future_is_refused() -> None:
    """Two asyncio tasks running one Future: the second fails with UsageError, the first gets the result.

    (trio runs a Future through a wrapper that awaits it, a wait of its own per task, so both work there.)
    """
    async with actorbox.Runtime() as rt:
        h = await rt.start(Clash)
        fut = h.nap(0.2)
        first, second = asyncio.create_task(fut), asyncio.create_task(fut)
        with pytest.raises(actorbox.UsageError, match="another task"):
            await second
        assert await first == "woke" and await fut == "woke"  # an await is a wait of its own
        assert rt.pending_calls() == []
