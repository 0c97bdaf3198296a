"""The public contract on both backends (README "Ray backend": each difference is marked where it is tested)."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
import pytest

import actorbox

from .conftest import runtime
from .plugins import (
    Broken,
    Counter,
    Models,
    Narrow,
    Phoenix,
    always_die,
    die_once,
    fail,
    flaky,
    impossible,
    square,
)

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(180)]


async def _until(check: Callable[[], Awaitable[bool]], seconds: float = 30.0) -> None:
    with anyio.fail_after(seconds):
        while not await check():
            await anyio.sleep(0.05)


async def test_calls_and_named_actors(backend: str) -> None:
    async with runtime(backend) as rt:
        c = await rt.start(Counter, 10, name="counter")
        assert await c.incr() == 11
        futures = [c.incr(2) for _ in range(5)]
        assert sorted(await actorbox.gather(*futures)) == [13, 15, 17, 19, 21]
        assert rt.get_actor("counter") == c
        assert rt.named_actors() == {"counter": actorbox.info(c).actor_id}
        assert actorbox.info(c).name == "counter"
        with pytest.raises(actorbox.NameTakenError):
            await rt.start(Counter, name="counter")
        with pytest.raises(actorbox.ActorNotFoundError):
            rt.get_actor("nobody")
        with pytest.raises(actorbox.PrivateMethodError):
            c._secret()
        # A handle as an argument, and a named actor reached by name from inside an actor.
        other = await rt.start(Counter, 100, name="other")
        assert await c.call_other(other, 5) == 105
        assert await c.call_named("other", 1) == 106
        assert any(a.label == "counter" for a in rt.actors())
        # Tensors both ways.
        t = await c.tensor(4)
        assert t.tolist() == [0.0, 1.0, 2.0, 3.0]
        assert await c.total(t) == 6.0


async def test_registered_object_is_reached_by_name(backend: str) -> None:
    async with runtime(backend) as rt:
        # README "Ray backend", rt.register: on Ray a named actor serves a copy of the object.
        models = rt.register("models", Models(), methods=["get"])
        assert await models.get("default") == {"name": "default", "labels": ["no", "yes"]}
        c = await rt.start(Counter)
        assert "models" in rt.named_actors()
        with pytest.raises(actorbox.MethodNotFoundError):
            await models.hidden()
        with pytest.raises(actorbox.NameTakenError):
            rt.register("models", Models())
        assert await c.incr() == 1
        rt.unregister("models")
        assert "models" not in rt.named_actors()


async def test_raised_exception_keeps_type_and_remote_traceback(backend: str) -> None:
    async with runtime(backend) as rt:
        c = await rt.start(Counter)
        with pytest.raises(KeyError) as info:
            await c.boom("missing")
        assert info.value.args == ("missing",)
        notes = "\n".join(getattr(info.value, "__notes__", []))
        assert "Remote traceback" in notes and "in boom" in notes
        # What the host may not decode fails that call alone (nothing is unpickled).
        with pytest.raises(actorbox.SerializationError):
            await c.unsendable()
        assert await c.incr() == 1
        with pytest.raises(actorbox.ActorStartError) as start:
            await rt.start(actorbox.actor(Broken))
        assert "no config" in str(start.value)


async def test_dead_actor_fails_calls_with_actor_died_error(backend: str) -> None:
    async with runtime(backend) as rt:
        c = await rt.start(Counter)
        with pytest.raises(actorbox.ActorDiedError):
            await c.die()
        with pytest.raises(actorbox.ActorDiedError):
            await c.incr()


async def test_restarts_up_to_max_restarts(backend: str) -> None:
    async with runtime(backend) as rt:
        p = await rt.start(Phoenix)
        assert await p.count() == 1
        with pytest.raises(actorbox.ActorDiedError):
            await p.die()
        # Restarted once, a fresh instance: its state starts over.
        with anyio.fail_after(60):
            while True:
                try:
                    assert await p.count() == 1
                    break
                except actorbox.ActorDiedError:
                    await anyio.sleep(0.1)  # (a call may still meet the dying process)
        with pytest.raises(actorbox.ActorDiedError):
            await p.die()
        with pytest.raises(actorbox.ActorDiedError):
            await p.count()  # max_restarts=1 spent


async def test_cancelling_the_awaiting_scope_cancels_the_call(backend: str) -> None:
    async with runtime(backend) as rt:
        c = await rt.start(Counter)
        with anyio.move_on_after(0.5) as scope:
            await c.slow(60)
        assert scope.cancelled_caught

        async def cancelled_there() -> bool:
            return bool(await c.cancels() == 1)

        await _until(cancelled_there)
        f = c.slow(60)
        assert f.cancel()
        with pytest.raises(actorbox.CallCancelledError):
            await f
        assert await c.incr() == 1


async def test_futures_as_arguments(backend: str) -> None:
    async with runtime(backend) as rt:
        a = await rt.start(Counter, 1)
        b = await rt.start(Counter)
        first = a.incr(1)  # pending when passed
        assert await b.add(first, 10) == 12
        assert await rt.submit(square, rt.submit(square, 3)) == 81
        assert await b.add(rt.submit(square, 4), 1) == 17
        with pytest.raises(actorbox.DependencyFailedError) as info:
            await b.add(a.boom("x"), 1)
        assert isinstance(info.value.__cause__, KeyError)


async def test_tasks_and_their_retries(backend: str, tmp_path: Path) -> None:
    async with runtime(backend) as rt:
        assert await actorbox.gather(*(rt.submit(square, i) for i in range(6))) == [0, 1, 4, 9, 16, 25]
        with pytest.raises(ValueError, match="bad input"):
            await rt.submit(fail, "bad input")
        (tmp_path / "a").mkdir()
        assert await rt.submit(die_once, str(tmp_path / "a")) == "second try"
        with pytest.raises(actorbox.TaskFailedError):
            await rt.submit(always_die, str(tmp_path))
        (tmp_path / "b").mkdir()
        # README "Ray backend", retry_exceptions: on Ray the tries run in the same worker.
        assert await rt.submit(flaky, str(tmp_path / "b")) == 2


async def test_resources_and_infeasible_requests(backend: str) -> None:
    async with runtime(backend) as rt:
        total = rt.resources().total
        assert total.get("CPU", 0) >= 1
        with pytest.raises(actorbox.InfeasibleResourcesError) as info:
            await rt.submit(impossible)
        assert info.value.resource == "no-such-resource"
        with pytest.raises(actorbox.InfeasibleResourcesError):
            await rt.start(actorbox.actor(num_gpus=64)(type("Greedy", (), {"__module__": __name__})))


async def test_max_pending_calls(backend: str) -> None:
    async with runtime(backend) as rt:
        n = await rt.start(Narrow)
        held = [n.wait(2), n.wait(2)]
        with pytest.raises(actorbox.PendingCallsLimitError):
            await n.wait(0)
        await actorbox.gather(*held)
        await n.wait(0)


async def test_wait_gather_and_as_completed(backend: str) -> None:
    async with runtime(backend) as rt:
        c = await rt.start(Counter)
        slow, fast = c.slow(30), c.slow(0)
        done, pending = await actorbox.wait([slow, fast], num_returns=1, timeout=20)
        assert done == [fast] and pending == [slow]
        done, pending = await actorbox.wait([slow], timeout=0.2)
        assert done == [] and pending == [slow]
        seen = [await f async for f in actorbox.as_completed([c.slow(0.3), c.slow(0)])]
        assert seen == [0, 0.3]
        with pytest.raises(KeyError):
            await actorbox.gather(c.boom("k"), slow)
        assert slow.done()  # gather cancelled the rest

        async def cancelled_there() -> bool:
            return bool(await c.cancels() >= 1)

        await _until(cancelled_there)
        assert await rt.submit(square, 5) == 25


async def test_backend_choices(backend: str) -> None:
    with pytest.raises(actorbox.UsageError, match="'local', 'ray'"):
        actorbox.Runtime(backend="nope")
    if backend == "ray":
        # README "Ray backend", sandbox: Ray's workers run outside bubblewrap, so it is refused.
        with pytest.raises(actorbox.SandboxUnavailableError, match="bubblewrap"):
            actorbox.Runtime(backend="ray", sandbox="required")
        async with runtime(backend) as rt:
            with pytest.raises(actorbox.SandboxUnavailableError):
                await rt.start(actorbox.actor(sandbox="required")(type("Strict", (), {"__module__": __name__})))
            with pytest.raises(actorbox.UsageError, match="put"):
                await rt.put(1)
    else:
        assert type(actorbox.Runtime()) is actorbox.Runtime
    assert os.environ.get("RAY_USAGE_STATS_ENABLED", "0") == "0"
