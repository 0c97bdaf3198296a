"""Inline calls (actorbox/_inline.py, _calls.py): sync calls of a sync-only actor run on its loop thread.

An actor whose class has no async methods and whose ``max_concurrency`` is 1
runs each sync call on its loop thread when nothing else runs, saving a thread
hand-off. What must still hold, with real (sandboxed) actor processes:

- a class with an async method, or ``max_concurrency`` > 1, keeps worker threads;
- a nested call waited for with ``Future.result()`` inside an inline call works,
  including a re-entrant chain back into the same actor and a timeout;
- while one inline call runs long, the actor still sees the host: a queued call
  can be cancelled, and ``stop()`` ends the actor at once, not after the grace period;
- errors, crashes and pipelined calls behave as on worker threads;
- user code sees no running event loop (asyncio.run() inside a sync method works, and
  can await calls to other actors, inline or on a worker thread),
  a thread the call starts can send a call bigger than the socket buffer, a backlog
  of short calls still sees cancellations, and a re-entrant call does not inherit
  the waiting call's context variables.
"""

from __future__ import annotations

import _thread
import os
import threading
import time

import anyio
import pytest
import structlog

import actorbox

pytestmark = pytest.mark.anyio

CALL_TIMEOUT = 30.0


def where():
    """Which thread runs this: the actor's loop thread (its main thread) or a worker."""
    return "loop" if threading.current_thread() is threading.main_thread() else "worker"


def _await_in_own_loop(self, backend="asyncio"):
    """asyncio.run() / anyio.run() inside a sync method, awaiting calls to the host's 'svc':
    one, two at once, and one that calls back into this actor."""
    svc = actorbox.get_actor("svc")

    async def main():
        out = [await svc.double(4)]
        if backend == "asyncio":
            import asyncio

            out += await asyncio.gather(svc.double(1), svc.double(2))
        else:
            got = {}

            async def double(i):
                got[i] = await svc.double(i)

            async with anyio.create_task_group() as tg:
                for i in (1, 2):
                    tg.start_soon(double, i)
            out += [got[1], got[2]]
        out.append(await svc.call_back(10))
        return out

    return anyio.run(main, backend=backend)


def _time_out_in_own_loop(self):
    """A deadline inside the nested loop: the wait ends, the remote call is cancelled."""
    svc = actorbox.get_actor("svc")

    async def main():
        t0 = time.monotonic()
        with anyio.move_on_after(0.2):
            await svc.slow(1)
            return None
        return time.monotonic() - t0

    return anyio.run(main)


@actorbox.actor
class SyncOnly:
    def where(self):
        return where()

    await_in_own_loop = _await_in_own_loop
    time_out_in_own_loop = _time_out_in_own_loop

    def sleep(self, seconds):
        time.sleep(seconds)
        return seconds

    def echo(self, x):
        return x

    def fail(self):
        raise ValueError("inline failure")

    def crash(self):
        os._exit(3)

    def ask_host(self, x, timeout=None):
        """A nested call to the host-resident 'svc', waited for in this (inline) call."""
        return actorbox.get_actor("svc").double(x).result(timeout=timeout)

    def run_asyncio(self):
        import asyncio

        async def main():
            await asyncio.sleep(0.01)
            return 42

        return asyncio.run(main())

    def big_call_from_a_thread(self, n):
        """A thread of this call sends a call of n bytes (more than a socket buffer holds)."""
        out = []
        svc = actorbox.get_actor("svc")  # (a new thread starts without this process's context)
        t = threading.Thread(target=lambda: out.append(svc.size(b"x" * n).result(timeout=20)))
        t.start()
        t.join(30)
        return out

    def work(self, i):
        self.ran = [*getattr(self, "ran", []), i]
        time.sleep(0.004)
        return i

    def ran_calls(self):
        return getattr(self, "ran", [])

    def bound_then_call_back(self):
        structlog.contextvars.bind_contextvars(request_id="outer-call")
        return actorbox.get_actor("svc").peek_back().result(timeout=CALL_TIMEOUT)

    def peek(self):
        return structlog.contextvars.get_contextvars().get("request_id")

    def ask_host_to_call_back(self, x):
        """host -> this actor (inline) -> svc -> this actor again (re-entrant) -> svc."""
        return actorbox.get_actor("svc").call_back(x).result(timeout=CALL_TIMEOUT)

    def leave_a_call_back_running(self):
        """host -> this actor (inline) -> svc, which calls back into this actor (re-entrant,
        so on a worker) and returns without waiting for it: the call back outlives this call."""
        actorbox.get_actor("svc").start_slow_where().result(timeout=CALL_TIMEOUT)

    def slow_where(self):
        time.sleep(0.5)
        return where()

    def call_back_in_own_loop(self, x, after):
        """The same chain awaited in an event loop of this call's own, ``after`` seconds into
        the call (past 5 ms the watchdog reads frames while the nested loop naps)."""
        svc = actorbox.get_actor("svc")

        async def main():
            time.sleep(after)
            return await svc.call_back(x)

        return anyio.run(main)


@actorbox.actor
class Mixed:
    def where(self):
        return where()

    def echo(self, x):
        return x

    await_in_own_loop = _await_in_own_loop
    time_out_in_own_loop = _time_out_in_own_loop

    async def nothing(self):
        return None


@actorbox.actor(max_concurrency=2)
class SyncPair:
    def where(self):
        return where()

    def sleep(self, seconds):
        time.sleep(seconds)
        return seconds


class Service:
    def __init__(self):
        self.actor = None

    def double(self, x):
        return 2 * x

    def size(self, b):
        return len(b)

    async def peek_back(self):
        return await self.actor.peek()

    async def slow(self, x):
        await anyio.sleep(5)
        return x

    async def call_back(self, x):
        return await self.actor.echo(x + 1)

    async def start_slow_where(self):
        self.later = self.actor.slow_where()


async def call(fut, timeout=CALL_TIMEOUT):
    with anyio.fail_after(timeout):
        return await fut


async def test_sync_only_actors_run_calls_on_their_loop_thread_and_others_on_workers():
    async with actorbox.Runtime() as rt:
        inline, mixed, pair = await rt.start(SyncOnly), await rt.start(Mixed), await rt.start(SyncPair)
        assert await call(inline.where()) == "loop"
        assert await call(mixed.where()) == "worker"
        assert await call(pair.where()) == "worker"


async def test_two_calls_of_a_max_concurrency_2_actor_still_overlap():
    async with actorbox.Runtime() as rt:
        pair = await rt.start(SyncPair)
        await call(pair.where())
        t0 = time.monotonic()
        a, b = pair.sleep(0.5), pair.sleep(0.5)
        assert (await call(a), await call(b)) == (0.5, 0.5)
        assert time.monotonic() - t0 < 0.9


async def test_a_nested_call_inside_an_inline_call_is_answered():
    async with actorbox.Runtime() as rt:
        rt.register("svc", Service())
        h = await rt.start(SyncOnly)
        assert await call(h.where()) == "loop"
        assert await call(h.ask_host(21)) == 42
        assert [await call(h.ask_host(i)) for i in range(20)] == [2 * i for i in range(20)]


async def test_a_re_entrant_chain_through_an_inline_call_completes():
    async with actorbox.Runtime() as rt:
        svc = Service()
        rt.register("svc", svc)
        h = await rt.start(SyncOnly)
        svc.actor = h
        assert await call(h.ask_host_to_call_back(1)) == 2


async def test_a_re_entrant_call_the_watchdog_reads_runs_at_once():
    """Past 5 ms an inline call's frames are read by the watchdog, which hands ordinary calls
    to the loop thread; a re-entrant one can't wait for it (the loop runs the call that waits
    for the chain): it runs on a worker, as one a pump reads does. It used to hang."""
    async with actorbox.Runtime() as rt:
        svc = Service()
        rt.register("svc", svc)
        h = await rt.start(SyncOnly)
        svc.actor = h
        for i in range(5):
            assert await call(h.call_back_in_own_loop(i, 0.05), timeout=15) == i + 1


async def test_a_nested_call_timeout_inside_an_inline_call_raises():
    async with actorbox.Runtime() as rt:
        svc = Service()
        rt.register("svc", svc)

        @actorbox.actor
        class Impatient:
            def ask(self):
                t0 = time.monotonic()
                try:
                    actorbox.get_actor("svc").slow(1).result(timeout=0.2)
                except TimeoutError as exc:
                    return [str(exc), time.monotonic() - t0]
                return None

        h = await rt.start(Impatient)
        text, took = await call(h.ask())
        assert "did not finish within 0.2 s" in text and 0.15 < took < 2


async def test_a_queued_call_can_be_cancelled_while_an_inline_call_runs_long():
    async with actorbox.Runtime() as rt:
        h = await rt.start(SyncOnly)
        assert await call(h.where()) == "loop"
        long = h.sleep(1.5)
        await anyio.sleep(0.1)
        t0 = time.monotonic()
        with anyio.move_on_after(0.3):
            await h.echo("never")
        assert time.monotonic() - t0 < 0.6
        for _ in range(50):  # the cancel reached the actor: the call left the table before the long one ended
            if all(c.method != "echo" for c in rt.pending_calls()):
                break
            await anyio.sleep(0.02)
        assert [c.method for c in rt.pending_calls()] == ["sleep"]
        assert await call(long) == 1.5
        assert await call(h.echo("after")) == "after"


async def test_stop_during_a_long_inline_call_ends_the_actor_at_once():
    async with actorbox.Runtime(grace_period=10) as rt:
        h = await rt.start(SyncOnly)
        (pid,) = [a.pid for a in rt.actors() if a.kind == "actor"]
        assert await call(h.where()) == "loop"
        pending = h.sleep(30)
        await anyio.sleep(0.2)
        t0 = time.monotonic()
        await call(rt.stop(h), timeout=5)
        assert time.monotonic() - t0 < 2, "stop waited for the inline call (or the grace period)"
        with pytest.raises(actorbox.ActorboxError):
            await call(pending)
        with pytest.raises(ProcessLookupError):
            for _ in range(100):
                os.kill(pid, 0)
                await anyio.sleep(0.02)


async def test_errors_crashes_and_pipelining_behave_as_on_workers():
    async with actorbox.Runtime() as rt:
        h = await rt.start(SyncOnly)
        with pytest.raises(ValueError, match="inline failure"):
            await call(h.fail())
        futs = [h.echo(i) for i in range(500)]
        assert [await call(f) for f in futs] == list(range(500))
        with pytest.raises(actorbox.ActorDiedError) as ei:
            await call(h.crash())
        assert "exited with code 3" in str(ei.value)


async def test_user_code_in_an_inline_call_sees_no_running_loop():
    """asyncio.run() inside a sync method works (a running loop would make it raise)."""
    async with actorbox.Runtime() as rt:
        h = await rt.start(SyncOnly)
        assert await call(h.where()) == "loop"
        assert await call(h.run_asyncio()) == 42
        assert await call(h.run_asyncio()) == 42
        assert await call(h.echo("after")) == "after"


@pytest.mark.parametrize("cls", [SyncOnly, Mixed], ids=["inline", "worker thread"])
@pytest.mark.parametrize("backend", ["asyncio", "trio"])
async def test_a_sync_method_can_await_actor_calls_in_an_event_loop_of_its_own(cls, backend):
    """asyncio.run()/anyio.run() in a sync method awaiting handles used to hang for good: on
    the loop thread the actor's loop can't read the replies under it, and on a worker
    thread the reply can't wake a foreign loop."""
    async with actorbox.Runtime() as rt:
        svc = Service()
        rt.register("svc", svc)
        h = await rt.start(cls)
        svc.actor = h
        assert await call(h.await_in_own_loop(backend), timeout=15) == [8, 2, 4, 11]


@pytest.mark.parametrize("cls", [SyncOnly, Mixed], ids=["inline", "worker thread"])
async def test_a_deadline_in_a_sync_methods_own_loop_cancels_the_call(cls):
    async with actorbox.Runtime() as rt:
        rt.register("svc", Service())
        h = await rt.start(cls)
        took = await call(h.time_out_in_own_loop(), timeout=15)
        assert took is not None and 0.15 < took < 2
        with anyio.fail_after(5):
            while any(c.method == "slow" for c in rt.pending_calls()):
                await anyio.sleep(0.02)


async def test_a_thread_of_an_inline_call_can_send_a_call_bigger_than_the_socket_buffer():
    async with actorbox.Runtime() as rt:
        rt.register("svc", Service())
        h = await rt.start(SyncOnly)
        assert await call(h.where()) == "loop"
        t0 = time.monotonic()
        assert await call(h.big_call_from_a_thread(4_000_000)) == [4_000_000]
        assert time.monotonic() - t0 < 5


async def test_cancelled_calls_queued_behind_a_run_of_short_inline_calls_never_run():
    async with actorbox.Runtime() as rt:
        h = await rt.start(SyncOnly)
        assert await call(h.where()) == "loop"
        futs = [h.work(i) for i in range(60)]  # ~0.25 s of 4 ms calls, back to back
        await anyio.sleep(0.03)
        for f in futs[50:]:
            f.cancel()
        assert [await call(f) for f in futs[:50]] == list(range(50))
        ran = await call(h.ran_calls())
        assert ran == list(range(50)), f"cancelled calls ran: {sorted(set(ran) - set(range(50)))}"


async def test_a_re_entrant_call_does_not_inherit_the_waiting_calls_context():
    async with actorbox.Runtime() as rt:
        svc = Service()
        rt.register("svc", svc)
        h = await rt.start(SyncOnly)
        svc.actor = h
        assert await call(h.bound_then_call_back()) is None


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_without_a_watchdog_thread_nothing_runs_inline(monkeypatch):
    """Under a process limit no thread may be had: the actor then keeps every call on workers."""
    import socket

    from actorbox._actor_server import ActorServer

    a, b = socket.socketpair()
    try:
        proc = ActorServer(a)

        def refuse(*args):
            raise RuntimeError("can't start new thread")

        monkeypatch.setattr(_thread, "start_new_thread", refuse)
        assert proc.inline.watchdog.start() is False
        assert proc.inline.watchdog.thread is None
    finally:
        a.close()
        b.close()


async def test_init_and_calls_share_one_thread():
    """__init__ of an inline actor runs where its calls run: thread-locals and sqlite
    connections made there work for every call."""
    async with actorbox.Runtime() as rt:
        h = await rt.start(ThreadBound)
        for _ in range(5):
            got = await call(h.check())
            assert got["db"] == "ok" and got["local"] is True, got


async def test_a_call_queued_behind_a_re_entrant_call_still_runs_on_the_loop_thread():
    """A re-entrant call runs on a worker thread and can outlive the inline call it came
    from; the call queued behind it must not inherit its thread (an inline actor's calls
    keep to one thread, where its __init__ ran)."""
    async with actorbox.Runtime() as rt:
        svc = Service()
        rt.register("svc", svc)
        h = await rt.start(SyncOnly)
        svc.actor = h
        await call(h.leave_a_call_back_running())
        queued = h.where()  # waits for the call back's slot
        assert await call(svc.later) == "worker"
        assert await call(queued) == "loop"
        assert await call(h.where()) == "loop"


@actorbox.actor
class ThreadBound:
    def __init__(self):
        import sqlite3

        self.db = sqlite3.connect(":memory:")
        self.local = threading.local()
        self.local.ready = True

    def check(self):
        try:
            self.db.execute("select 1")
            db = "ok"
        except Exception as exc:
            db = f"{type(exc).__name__}: {exc}"
        return {"db": db, "local": getattr(self.local, "ready", None)}



class Relay:
    """A host-resident object whose sync methods (run on the host's worker threads) await
    actor calls in an event loop of their own."""

    def __init__(self, actor):
        self.actor = actor

    def gather_in_own_loop(self, backend):
        async def main():
            out = [await self.actor.echo(1)]
            async with anyio.create_task_group() as tg:
                for i in (2, 3):
                    tg.start_soon(lambda i=i: self._append(out, i))
            return sorted(out)

        return anyio.run(main, backend=backend)

    async def _append(self, out, i):
        out.append(await self.actor.echo(i))

    def time_out_in_own_loop(self, backend):
        async def main():
            t0 = time.monotonic()
            with anyio.move_on_after(0.2):
                await self.actor.sleep(5)
                return None
            return time.monotonic() - t0

        return anyio.run(main, backend=backend)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
async def test_a_host_resident_sync_method_can_await_actor_calls_in_an_event_loop_of_its_own(backend):
    """The host runs a resident's sync method on a worker thread in a copy of the caller's
    context: the copy must not claim that the host's async library already runs there
    (anyio.run() refused: "Already running asyncio in this thread"), nor make the nested
    loop's thread helpers take the host's library for its own."""
    async with actorbox.Runtime() as rt:
        h = await rt.start(SyncOnly)
        relay = rt.register("relay", Relay(h))
        assert await call(relay.gather_in_own_loop(backend), timeout=15) == [1, 2, 3]
        took = await call(relay.time_out_in_own_loop(backend), timeout=15)
        assert took is not None and 0.15 < took < 2
        with anyio.fail_after(5):
            while any(c.method == "sleep" for c in rt.pending_calls()):
                await anyio.sleep(0.02)
        assert await call(h.echo("after")) == "after"


@actorbox.actor(max_concurrency=2)
class CancelsFromAThread:
    """Sync methods run on worker threads (the class has an async method)."""

    def start_slow(self):
        self.slow = actorbox.get_actor("svc").slow(1)

    async def await_slow(self):
        t0 = time.monotonic()
        try:
            await self.slow
        except actorbox.CallCancelledError:
            return time.monotonic() - t0
        return None

    def cancel_slow(self):
        return self.slow.cancel()


async def test_a_call_cancelled_from_a_worker_thread_wakes_its_awaiter_on_the_loop_at_once():
    """Cancelling resolves the Future on the cancelling thread: a task awaiting it on the
    actor's loop must still be woken there, not when the loop next happens to wake."""
    async with actorbox.Runtime() as rt:
        rt.register("svc", Service())
        h = await rt.start(CancelsFromAThread)
        await call(h.start_slow())
        waiting = h.await_slow()
        await anyio.sleep(0.3)  # the actor's loop is idle, its task parked on the Future
        assert await call(h.cancel_slow()) is True
        took = await call(waiting, timeout=10)
        assert took is not None and took < 1.0, took
