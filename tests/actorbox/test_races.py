"""Races between calls, cancellation, start, stop and failure, with real actor processes.

Each test pins down an interleaving that once lost a call, leaked a slot or
left a process behind.
"""

from __future__ import annotations

import threading
import time

import anyio
import psutil
import pytest

import actorbox

from .processes import wait_for_no_leftovers

pytestmark = pytest.mark.anyio


@actorbox.actor
class Quick:
    async def amethod(self):
        return 1

    def smethod(self):
        return 2


@actorbox.actor(name="slow-start")
class SlowStart:
    def __init__(self):
        time.sleep(1.0)

    def f(self):
        return 1


class Counter:
    """Host-resident: counts constructor runs reported by actors."""

    def __init__(self):
        self.n = 0

    def hit(self):
        self.n += 1


@actorbox.actor(max_restarts=3)
class FailingConstructor:
    def __init__(self):
        actorbox.get_actor("counter").hit().result()
        raise ValueError("bad config")


@actorbox.actor(name="svc")
class FailsLate:
    def __init__(self):
        time.sleep(0.5)
        raise RuntimeError("bad config")

    def f(self):
        return 1


@actorbox.actor(name="busy")
class Busy:
    def __init__(self):
        self.cur = 0
        self.peak = 0

    async def work(self):
        self.cur += 1
        self.peak = max(self.peak, self.cur)
        await anyio.sleep(0.1)
        self.cur -= 1

    def peak_(self):
        return self.peak


@actorbox.actor
class FanOut:
    async def fan(self, n):
        busy = actorbox.get_actor("busy")
        async with anyio.create_task_group() as tg:
            for _ in range(n):
                tg.start_soon(_await, busy.work())


async def _await(fut):
    await fut


class SlowResident:
    def __init__(self):
        self.cur = 0
        self.peak = 0
        self.lock = threading.Lock()

    def slow(self):
        with self.lock:
            self.cur += 1
            self.peak = max(self.peak, self.cur)
        time.sleep(0.3)
        with self.lock:
            self.cur -= 1


@pytest.mark.parametrize("method", ["amethod", "smethod"])
async def test_cancel_sent_right_after_the_call_frees_the_slot(method):
    """A call cancelled before the actor started it is acknowledged, and the actor serves the next call."""
    async with actorbox.Runtime() as rt:
        h = await rt.start(Quick)
        for _ in range(5):
            fut = getattr(h, method)()
            fut.cancel()
        with anyio.fail_after(5):
            assert await getattr(h, method)() in (1, 2)
            while rt.pending_calls():
                await anyio.sleep(0.01)


async def test_stop_while_the_constructor_runs_ends_the_start():
    """stop() during construction returns, and the pending rt.start() fails with ActorStoppedError."""
    async with actorbox.Runtime() as rt:
        outcome: list[BaseException] = []

        async def starter():
            try:
                await rt.start(SlowStart)
            except actorbox.ActorboxError as exc:
                outcome.append(exc)

        async with anyio.create_task_group() as tg:
            tg.start_soon(starter)
            await anyio.sleep(0.4)
            with anyio.fail_after(5):
                await rt.stop(rt.get_actor("slow-start"))
        assert len(outcome) == 1 and isinstance(outcome[0], actorbox.ActorStoppedError)
        # Nothing of the actor is left; its zygote (and the sandbox around it) lives with the Runtime.
        assert await wait_for_no_leftovers(rt) == []
    assert await wait_for_no_leftovers() == []  # the zygote too, once the Runtime exited


async def test_stop_while_the_process_launches_ends_the_start():
    """stop() before the process even exists: the start fails as stopped and no process survives."""
    async with actorbox.Runtime() as rt:
        outcome: list[BaseException] = []

        async def starter():
            try:
                await rt.start(SlowStart)
            except actorbox.ActorboxError as exc:
                outcome.append(exc)

        async with anyio.create_task_group() as tg:
            tg.start_soon(starter)
            while "slow-start" not in [a.name for a in rt.actors()]:
                await anyio.sleep(0)  # the name is taken before the process is launched
            with anyio.fail_after(5):
                await rt.stop(rt.get_actor("slow-start"))
        assert len(outcome) == 1 and isinstance(outcome[0], actorbox.ActorStoppedError)
        with anyio.fail_after(5):
            while psutil.Process().children(recursive=True):
                await anyio.sleep(0.05)


async def test_failing_constructor_is_not_restarted():
    """max_restarts applies to deaths of a started actor, not to a constructor that fails at start."""
    async with actorbox.Runtime() as rt:
        counter = Counter()
        rt.register("counter", counter)
        with pytest.raises(actorbox.ActorStartError, match="bad config"):
            await rt.start(FailingConstructor)
        await anyio.sleep(1.0)  # a restart would have run the constructor again by now
        assert counter.n == 1
        assert [a.label for a in rt.actors() if a.kind == "actor"] == ["counter"]


async def test_calls_queued_for_an_actor_that_fails_to_start_fail_too():
    """A call made by name while the actor is starting fails when the start fails, instead of waiting forever."""
    async with actorbox.Runtime() as rt:
        async with anyio.create_task_group() as tg:
            async def starter():
                with pytest.raises(actorbox.ActorStartError):
                    await rt.start(FailsLate)

            tg.start_soon(starter)
            await anyio.sleep(0.1)
            with anyio.fail_after(5), pytest.raises(actorbox.ActorStoppedError, match="failed to start"):
                await rt.get_actor("svc").f()
        assert rt.pending_calls() == []


async def test_sibling_calls_from_one_parent_respect_max_concurrency():
    """Five concurrent calls from one actor call to a max_concurrency=1 actor run one at a time."""
    async with actorbox.Runtime() as rt:
        busy = await rt.start(Busy)
        fan = await rt.start(FanOut)
        with anyio.fail_after(10):
            await fan.fan(5)
            assert await busy.peak_() == 1


async def test_cancelled_host_resident_sync_call_keeps_its_slot_until_it_returns():
    """Cancelling a host-resident sync call doesn't let a second call run beside the first (max_concurrency=1)."""
    async with actorbox.Runtime() as rt:
        obj = SlowResident()
        h = rt.register("slow", obj)
        for _ in range(3):
            with anyio.move_on_after(0.05):
                await h.slow()
        with anyio.fail_after(5):
            await h.slow()
        assert obj.peak == 1


@actorbox.actor
class TensorMaker:
    def make(self):
        import torch

        return torch.arange(1 << 16, dtype=torch.int32)


async def test_a_finished_future_read_by_two_threads_at_once_decodes_once():
    """Both threads decoded the reply: the second closed the descriptor the first one's
    mapping had registered, and that mapping's finalizer later closed whatever file took
    the number."""
    import os

    async with actorbox.Runtime() as rt:
        m = await rt.start(TensorMaker)
        for _ in range(20):
            fut = m.make()
            with anyio.fail_after(10):
                while not fut.done():
                    await anyio.sleep(0.005)
            fd = fut._reply.fds[0]
            out, barrier = [], threading.Barrier(2)

            def read(fut=fut, out=out, barrier=barrier):
                barrier.wait()
                out.append(fut.result())

            threads = [threading.Thread(target=read) for _ in range(2)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            a, b = out
            assert a is b
            os.fstat(fd)  # still the mapping's: closed by a second decode before
            del a, b, out, fut
