"""Integration tests of actor death, restarts, cancellation and shutdown, with real processes.

Deaths are real (SIGKILL, os._exit, a segfault in native code); leftovers are
checked with psutil against the test process itself.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time

import anyio
import psutil
import pytest
from structlog.testing import capture_logs

import actorbox

pytestmark = pytest.mark.anyio


@actorbox.actor
class Mortal:
    def __init__(self, tag="t"):
        self.tag = tag
        self.n = 0

    def ping(self):
        return "pong"

    def incr(self):
        self.n += 1
        return self.n

    def tag_(self):
        return self.tag

    def pid(self):
        return os.getpid()

    def die(self, how):
        sys.stderr.write(f"last words before {how}\n")
        sys.stderr.flush()
        if how == "sigkill":
            os.kill(os.getpid(), signal.SIGKILL)
        elif how == "exit3":
            os._exit(3)
        elif how == "segfault":
            ctypes.string_at(0)
        time.sleep(5)  # not reached
        return "survived"

    async def slow(self, s):
        await anyio.sleep(s)
        return "slow-done"


@actorbox.actor(max_restarts=1)
class Phoenix(Mortal):
    pass


@actorbox.actor(max_concurrency=2)
class Cancellable:
    """Records what happened to its calls; max_concurrency=2 so it can report while a call is blocked."""

    def __init__(self):
        self.events = []
        self.sync_done = 0

    async def wait_forever(self, key):
        self.events.append(f"started:{key}")
        try:
            await anyio.sleep(30)
        except BaseException as exc:
            self.events.append(f"cancelled:{key}:{type(exc).__name__}")
            raise
        self.events.append(f"finished:{key}")

    def sync_sleep(self, s):
        self.events.append("sync-started")
        time.sleep(s)
        self.sync_done += 1
        return "sync-result"

    def echo(self, x):
        return x

    def report(self):
        return {"events": self.events, "sync_done": self.sync_done}


@actorbox.actor
class Stubborn:
    async def block_loop(self, s):
        time.sleep(s)  # blocks the actor's event loop: it cannot see the stop request

    async def swallow_cancel(self, s):
        deadline = time.monotonic() + s
        while time.monotonic() < deadline:
            try:
                await anyio.sleep(deadline - time.monotonic())
            except BaseException:
                continue  # refuses to be cancelled

    def sync_sleep(self, s):
        time.sleep(s)

    def ping(self):
        return "pong"


class Sink:
    """A host-resident object actors call from sync code (so the host uses worker threads)."""

    def __init__(self):
        self.items = []

    def put(self, x):
        self.items.append(x)
        return len(self.items)


@actorbox.actor
class Producer:
    def produce(self, n):
        sink = actorbox.get_actor("sink")
        return [sink.put(i).result() for i in range(n)]


async def _poll(pred, timeout=2.0, interval=0.02):
    """Wait until ``pred()`` is true (returns True) or ``timeout`` passes (returns False)."""
    with anyio.move_on_after(timeout):
        while not pred():
            await anyio.sleep(interval)
        return True
    return bool(pred())


def _children():
    return psutil.Process().children(recursive=True)


def _info(rt, label):
    return next(i for i in rt.actors() if i.label == label)


# -- death mid-call ----------------------------------------------------------------------


@pytest.mark.parametrize(("how", "exit_code", "sig"), [
    ("sigkill", None, signal.SIGKILL),
    ("exit3", 3, None),
    ("segfault", None, signal.SIGSEGV),
])
async def test_death_mid_call_fails_call_within_one_second(how, exit_code, sig):
    """An actor dying mid-call (SIGKILL, os._exit(3), segfault) fails the call with ActorDiedError in < 1 s."""
    async with actorbox.Runtime() as rt:
        m = await rt.start(Mortal, name="mortal")
        pid = _info(rt, "mortal").pid
        t0 = time.monotonic()
        with pytest.raises(actorbox.ActorDiedError) as ei:
            await m.die(how)
        elapsed = time.monotonic() - t0
        assert elapsed < 1.0
        err = ei.value
        assert err.exit_code == exit_code
        assert err.signal == sig
        assert err.actor == "mortal" and err.method == "die"
        assert err.pid == pid
        # The last lines of its stderr: what it wrote, or (segfault) faulthandler's report.
        last = "Segmentation fault" if how == "segfault" else f"last words before {how}"
        assert last in err.stderr
        assert last in str(err)
        if how == "segfault":
            assert "SIGSEGV" in str(err)
        assert _info(rt, "mortal").state == "dead"


async def test_external_sigkill_mid_call_fails_call_within_one_second():
    """A SIGKILL sent from outside while a call runs fails that call with ActorDiedError in < 1 s."""
    async with actorbox.Runtime() as rt:
        m = await rt.start(Mortal, name="victim")
        fut = m.slow(10)
        await anyio.sleep(0.1)
        t0 = time.monotonic()
        os.kill(_info(rt, "victim").pid, signal.SIGKILL)
        with pytest.raises(actorbox.ActorDiedError) as ei:
            await fut
        assert time.monotonic() - t0 < 1.0
        assert ei.value.signal == signal.SIGKILL
        assert ei.value.method == "slow"


async def test_other_actors_keep_working_after_a_death():
    """After one actor dies, other actors and new actors keep working."""
    async with actorbox.Runtime() as rt:
        a = await rt.start(Mortal)
        b = await rt.start(Mortal)
        assert await b.incr() == 1
        with pytest.raises(actorbox.ActorDiedError):
            await a.die("sigkill")
        assert await b.incr() == 2
        c = await rt.start(Mortal)
        assert await c.ping() == "pong"
        with pytest.raises(actorbox.ActorDiedError):
            await a.ping()


async def test_death_fails_every_pending_call():
    """When an actor dies, every call pending on it (running or queued) fails with ActorDiedError."""
    async with actorbox.Runtime() as rt:
        m = await rt.start(Mortal, name="busy")
        futs = [m.slow(10) for _ in range(4)]
        await anyio.sleep(0.1)
        assert len(rt.pending_calls()) == 4
        os.kill(_info(rt, "busy").pid, signal.SIGKILL)
        with anyio.fail_after(2):
            for f in futs:
                with pytest.raises(actorbox.ActorDiedError):
                    await f
        assert rt.pending_calls() == []


# -- restarts ------------------------------------------------------------------------------


async def test_max_restarts_restarts_once_then_death_is_final():
    """max_restarts=1: the first death restarts a fresh instance (same args, new pid); the second is final."""
    async with actorbox.Runtime() as rt:
        p = await rt.start(Phoenix, "ash", name="phoenix")
        first = _info(rt, "phoenix")
        assert await p.incr() == 1
        assert await p.incr() == 2
        with pytest.raises(actorbox.ActorDiedError):
            await p.die("sigkill")
        # Calls made while it restarts wait for the new process.
        with anyio.fail_after(5):
            assert await p.tag_() == "ash"
        second = _info(rt, "phoenix")
        assert second.pid != first.pid and second.pid is not None
        assert (second.state, second.restarts) == ("alive", 1)
        assert await p.incr() == 1  # a fresh instance: the constructor ran again
        assert first.pid not in {c.pid for c in _children()}

        with pytest.raises(actorbox.ActorDiedError):
            await p.die("exit3")
        with pytest.raises(actorbox.ActorDiedError):
            await p.ping()
        assert _info(rt, "phoenix").state == "dead"
        assert _info(rt, "phoenix").restarts == 1


# -- cancellation --------------------------------------------------------------------------


async def _cancel_with(kind, handle):
    if kind == "fail_after":
        with pytest.raises(TimeoutError):
            with anyio.fail_after(0.3):
                await handle.wait_forever(kind)
    elif kind == "move_on_after":
        with anyio.move_on_after(0.3) as scope:
            await handle.wait_forever(kind)
        assert scope.cancelled_caught
    else:
        async with anyio.create_task_group() as tg:
            async def call():
                await handle.wait_forever(kind)
                raise AssertionError("the call was not cancelled")

            tg.start_soon(call)
            await anyio.sleep(0.3)
            tg.cancel_scope.cancel()


@pytest.mark.parametrize("kind", ["fail_after", "move_on_after", "task_group"])
async def test_cancelling_the_awaiting_task_cancels_the_async_method(kind):
    """Cancelling the task awaiting an async method cancels the coroutine in the actor and clears the call table."""
    async with actorbox.Runtime() as rt:
        c = await rt.start(Cancellable)
        t0 = time.monotonic()
        await _cancel_with(kind, c)
        assert time.monotonic() - t0 < 2.0
        events = []

        async def cancelled_in_actor():
            events[:] = (await c.report())["events"]
            return any(e.startswith(f"cancelled:{kind}:") for e in events)

        with anyio.fail_after(2):
            while not await cancelled_in_actor():
                await anyio.sleep(0.02)
        assert events[0] == f"started:{kind}"
        assert f"cancelled:{kind}:CancelledError" in events
        assert f"finished:{kind}" not in events
        assert await _poll(lambda: rt.pending_calls() == [], timeout=1.0), rt.pending_calls()
        assert await c.echo("after") == "after"


async def test_cancelling_a_sync_method_discards_its_result():
    """Cancelling a sync method's call discards its result; the actor then serves the next call."""
    with capture_logs() as logs:
        async with actorbox.Runtime(log_calls=True) as rt:
            c = await rt.start(Cancellable)
            with anyio.move_on_after(0.1) as scope:
                await c.sync_sleep(0.4)
            assert scope.cancelled_caught
            # The method runs to completion in its thread; its result goes nowhere.
            assert await _poll(lambda: rt.pending_calls() == [], timeout=2.0), rt.pending_calls()
            rep = await c.report()
            assert rep["sync_done"] == 1
            assert await c.echo("next") == "next"
            assert await c.echo(42) == 42
    ended = [e["event"] for e in logs if e.get("method") == "sync_sleep" and e["event"] != "call.submitted"
             and e["event"] != "call.started"]
    assert ended == ["call.cancelled"]


async def test_future_cancel_raises_call_cancelled_for_other_awaiters():
    """Future.cancel() cancels the remote call; awaiting the Future then raises CallCancelledError."""
    async with actorbox.Runtime() as rt:
        c = await rt.start(Cancellable)
        fut = c.wait_forever("future")
        await anyio.sleep(0.2)
        assert fut.cancel() is True
        with pytest.raises(actorbox.CallCancelledError):
            await fut
        assert await _poll(lambda: rt.pending_calls() == [], timeout=1.0)
        assert "cancelled:future:CancelledError" in (await c.report())["events"]


# -- stopping and shutdown ---------------------------------------------------------------


async def test_stop_is_idempotent():
    """await rt.stop(handle) twice (and concurrently) stops the actor once and leaves no process."""
    async with actorbox.Runtime() as rt:
        m = await rt.start(Mortal, name="m")
        pid = _info(rt, "m").pid
        async with anyio.create_task_group() as tg:
            tg.start_soon(rt.stop, m)
            tg.start_soon(rt.stop, m)
        await rt.stop(m)
        assert _info(rt, "m").state == "stopped"
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        with pytest.raises(actorbox.ActorStoppedError):
            await m.ping()


def _threads():
    # trio runs subprocess.Popen in its worker-thread cache, which keeps an idle
    # worker ("Trio thread N") for 10 s and reuses it: the event loop's, not ours.
    return [t for t in threading.enumerate() if not t.name.startswith("Trio thread")]


def _fds():
    fds = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            fds[int(fd)] = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            pass  # the fd listing the directory itself
    return fds


async def test_runtime_exit_leaves_no_processes_threads_or_fds():
    """Leaving the Runtime leaves no child processes, no extra threads and no extra open fds."""
    threads_before = len(_threads())
    fds_before = _fds()
    async with actorbox.Runtime() as rt:
        rt.register("sink", Sink())
        a = await rt.start(Mortal)
        b = await rt.start(Producer)
        assert await a.incr() == 1
        assert await b.produce(3) == [1, 2, 3]  # sync calls into the host: host worker threads
        assert len(_children()) >= 2
        pending = a.slow(10)  # still running when the Runtime exits
    assert await _poll(lambda: _children() == [], timeout=2.0), _children()
    assert await _poll(lambda: len(_threads()) <= threads_before, timeout=2.0), [t.name for t in _threads()]
    assert await _poll(lambda: len(_fds()) <= len(fds_before), timeout=2.0), \
        {fd: target for fd, target in _fds().items() if fds_before.get(fd) != target}
    with pytest.raises(actorbox.ActorboxError):
        await pending


@pytest.mark.parametrize("how", ["handle_stop", "runtime_exit"])
async def test_call_in_flight_when_actor_stops_fails_with_actor_stopped(how):
    """A call still running when its actor is stopped (rt.stop(handle) or Runtime exit) fails with ActorStoppedError."""
    async with actorbox.Runtime() as rt:
        m = await rt.start(Mortal, name="m")
        running = m.slow(10)
        await anyio.sleep(0.2)
        if how == "handle_stop":
            await rt.stop(m)
    with pytest.raises(actorbox.ActorStoppedError) as ei:
        await running
    assert ei.value.actor == "m" and ei.value.method == "slow"


class _Sleeper:
    async def slow(self):
        await anyio.sleep(60)


class _WaitsInAThread:
    def __init__(self):
        self.saw = None

    def wait_for_sleeper(self):
        try:
            actorbox.get_actor("sleeper").slow().result()
        except Exception as exc:
            self.saw = exc
            raise


async def test_calls_between_host_resident_objects_fail_when_the_runtime_exits():
    """A host-resident call nobody answers once the Runtime exits, and the host-resident
    sync method waiting for it in a worker thread, used to wait for ever (and the
    interpreter hung at exit, joining that thread): both fail with ActorStoppedError."""
    waiter = _WaitsInAThread()
    t0 = time.monotonic()
    async with actorbox.Runtime(grace_period=5.0) as rt:
        rt.register("sleeper", _Sleeper())
        outer = rt.register("waiter", waiter).wait_for_sleeper()
        await anyio.sleep(0.3)
    assert time.monotonic() - t0 < 3.0, "the Runtime waited out the grace period for a call nobody answers"
    with anyio.fail_after(5):
        with pytest.raises(actorbox.ActorStoppedError, match=r"Runtime exited before waiter\.wait_for_sleeper"):
            await outer
    assert await _poll(lambda: waiter.saw is not None, timeout=5.0)
    assert isinstance(waiter.saw, actorbox.ActorStoppedError) and "sleeper.slow()" in str(waiter.saw)


class _CallsLate:
    """Takes a handle, then calls it once the Runtime is already exiting."""

    def __init__(self):
        self.saw = None

    def call_late(self, delay):
        h = actorbox.get_actor("sleeper")
        time.sleep(delay)
        try:
            h.slow().result(timeout=10)
        except Exception as exc:
            self.saw = exc


async def test_a_call_made_while_the_runtime_exits_fails_at_once():
    """A host-resident sync method still running as the Runtime exits calls a handle it
    holds: nothing would answer (the call used to wait for ever, and hang the interpreter
    at exit); it fails with ActorStoppedError."""
    late = _CallsLate()
    async with actorbox.Runtime(grace_period=2.0) as rt:
        rt.register("sleeper", _Sleeper())
        rt.register("late", late).call_late(0.5)
        await anyio.sleep(0.1)
    assert await _poll(lambda: late.saw is not None, timeout=5.0)
    assert isinstance(late.saw, actorbox.ActorStoppedError), repr(late.saw)
    assert "Runtime has exited" in str(late.saw) and "sleeper.slow()" in str(late.saw)


async def test_a_handle_called_after_the_runtime_exited_fails_with_actor_stopped():
    async with actorbox.Runtime() as rt:
        resident = rt.register("sleeper", _Sleeper())
        actor = await rt.start(Mortal)
    for h, method in ((resident, "slow"), (actor, "ping")):
        with anyio.fail_after(5), pytest.raises(actorbox.ActorStoppedError, match="Runtime has exited"):
            await getattr(h, method)()


_STOPPED_LOOP = """
import asyncio, threading, time
import actorbox

class Late:
    def __init__(self):
        self.saw = None

    def go(self):
        h = actorbox.get_actor("late")
        time.sleep(1.0)  # the loop has stopped by now, and is not closed yet
        try:
            h.go()
        except actorbox.ActorboxError as exc:
            self.saw = exc

late = Late()

async def main():
    async with actorbox.Runtime(grace_period=0.1) as rt:
        rt.register("late", late).go()
        await asyncio.sleep(0.1)

loop = asyncio.new_event_loop()
loop.run_until_complete(main())
time.sleep(2.0)
loop.close()
print("saw:", type(late.saw).__name__, late.saw)
"""


def test_a_thread_calling_through_a_stopped_loop_fails_and_the_interpreter_exits():
    """asyncio's loop.run_until_complete() returns with the loop stopped, not closed: a
    host-resident method's call from its worker thread then went to a loop that never
    runs it, and the interpreter hung at exit joining that thread."""
    import subprocess

    out = subprocess.run([sys.executable, "-c", _STOPPED_LOOP], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "saw: ActorboxError the Runtime has exited" in out.stdout, out.stdout + out.stderr[-2000:]


@pytest.mark.parametrize("method", ["block_loop", "swallow_cancel", "sync_sleep"])
async def test_actor_ignoring_stop_is_killed_after_grace_period(method):
    """An actor still busy when the Runtime exits is killed after the grace period; nothing is left behind."""
    grace = 0.5
    async with actorbox.Runtime(grace_period=grace) as rt:
        s = await rt.start(Stubborn)
        assert await s.ping() == "pong"
        fut = getattr(s, method)(30)
        await anyio.sleep(0.2)
        t0 = time.monotonic()
    elapsed = time.monotonic() - t0
    assert elapsed < grace + 1.5
    if method == "block_loop":
        assert elapsed >= grace * 0.9  # it really was given the grace period first
    assert await _poll(lambda: _children() == [], timeout=1.0), _children()
    with pytest.raises(actorbox.ActorStoppedError):
        await fut


async def test_handle_stop_kills_actor_ignoring_stop_after_grace_period():
    """rt.stop(handle) on an actor whose loop is blocked kills it after the grace period."""
    async with actorbox.Runtime(grace_period=0.5) as rt:
        s = await rt.start(Stubborn, name="stuck")
        pid = _info(rt, "stuck").pid
        fut = s.block_loop(30)
        await anyio.sleep(0.2)
        t0 = time.monotonic()
        await rt.stop(s)
        assert 0.4 <= time.monotonic() - t0 < 2.0
        assert _info(rt, "stuck").state == "stopped"
        assert pid not in {c.pid for c in _children()}
        with pytest.raises(actorbox.ActorStoppedError):
            await fut
