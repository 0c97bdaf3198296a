"""A call no thread can be started for is answered, with an error saying so; and an actor
that runs out of memory reading a call exits with a status of its own.

The sync calls of an actor with async methods run on worker threads (actorbox._workers).
At its ``SandboxPolicy(max_processes=...)`` (or memory limit) a new one cannot start
(``RuntimeError: can't start new thread``). That call used to stay queued with no thread
to run it (when launched after an async call: never answered), or to end the actor's
reader (when launched as its frame was read). Now it fails alone with a RuntimeError that
names the call and the limits, the calls queued behind it get their turn, and the actor
serves on once threads are free.

A MemoryError while a frame is read or dispatched used to end the reader, and the
process with status 0; now the process exits with ``UNREADABLE_EXIT`` after a line on
stderr, so the call fails with an ``ActorDiedError`` that says what happened.
"""

from __future__ import annotations

import _thread
import os
import queue
import threading
import time
from collections.abc import Callable

import anyio
import pytest

import actorbox
from actorbox._outbox import UNREADABLE_EXIT

pytestmark = pytest.mark.anyio

CALL_TIMEOUT = 60.0  # fails instead of hanging; a sandboxed start under load takes a few seconds
MAX_PROCESSES = 16
MOST_THREADS = 4096  # a hog that gets this many found no limit: the test fails rather than spin
ZYGOTES = pytest.mark.parametrize("zygotes", [True, False], ids=["zygotes", "no-zygotes"])


class _Threads:
    """Blocks worker threads, and takes every thread the process may still start."""

    def __init__(self):
        self.let_go = threading.Event()
        self.blocked = 0
        self.held = []

    def _take_all_threads(self):
        while len(self.held) < MOST_THREADS:
            thread = threading.Thread(target=self.let_go.wait, args=(CALL_TIMEOUT,), daemon=True)
            try:
                thread.start()
            except RuntimeError:
                break
            self.held.append(thread)
        return len(self.held)

    def block(self):
        """Holds its worker thread until release()."""
        self.blocked += 1
        self.let_go.wait(CALL_TIMEOUT)
        return "unblocked"

    def hog_and_block(self):
        """Takes every thread there is to take, then holds its own worker thread until release()."""
        n = self._take_all_threads()
        self.blocked += 1
        self.let_go.wait(CALL_TIMEOUT)
        return n

    async def hog(self, queued):
        """Takes every thread there is to take (from the loop thread), and returns once
        ``queued`` calls wait for a slot: they are launched as this call ends."""
        import asyncio

        from actorbox._context import process_caller

        n = self._take_all_threads()
        waiting = process_caller.get().calls.admission.waiting
        deadline = time.monotonic() + CALL_TIMEOUT
        while len(waiting) < queued and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        return n

    def work(self):
        return threading.current_thread().name

    async def workers(self):
        """(worker threads, idle ones, calls blocked in block() or hog_and_block())."""
        from actorbox._context import process_caller

        workers = process_caller.get().calls.workers
        return workers._threads, workers._idle, self.blocked

    async def release(self):
        self.let_go.set()
        for thread in self.held:
            thread.join()
        n = len(self.held)
        self.held.clear()
        return n

    async def pid(self):  # async: on the loop, so the worker threads are only those the test makes busy
        return os.getpid()


@actorbox.actor(max_concurrency=2)
class Threads(_Threads):
    pass


@actorbox.actor(max_concurrency=4)
class WideThreads(_Threads):
    pass


def _runtime(zygotes: bool) -> actorbox.Runtime:
    return actorbox.Runtime(sandbox_policy=actorbox.SandboxPolicy(max_processes=MAX_PROCESSES), zygotes=zygotes)


async def _workers_settle(actor, blocked: int) -> tuple[int, int]:
    """Wait until ``blocked`` calls are blocked and every other worker thread is idle: (threads, idle)."""
    with anyio.fail_after(CALL_TIMEOUT):
        while True:
            threads, idle, now_blocked = await actor.workers()
            if now_blocked == blocked and threads == idle + blocked:
                return threads, idle
            await anyio.sleep(0.01)


def _assert_no_thread(exc: BaseException, method: str) -> None:
    text = str(exc)
    assert type(exc) is RuntimeError, repr(exc)
    assert f"the actor could not start a thread to run {method}() (RuntimeError: can't start new thread" in text, text
    assert "max_processes" in text and "memory_limit" in text and "max_concurrency" in text, text


@ZYGOTES
async def test_a_call_launched_after_an_async_call_with_no_thread_to_run_it_is_answered(zygotes: bool) -> None:
    """max_concurrency=2: block() holds the one worker thread, hog() (async) takes every other
    thread the process may have; the sync calls queued behind them get their slots as hog()
    returns, find no thread, and each fails alone. The actor then serves on."""
    async with _runtime(zygotes) as rt:
        actor = await rt.start(Threads)
        pid = await actor.pid()
        assert await _workers_settle(actor, 0) == (1, 1)  # the thread it was constructed on, idle
        blocker = actor.block()
        assert await _workers_settle(actor, 1) == (1, 0)
        hog = actor.hog(3)
        queued = [actor.work() for _ in range(3)]  # behind block() and hog()
        with anyio.fail_after(CALL_TIMEOUT):
            n = await hog
            assert 0 < n < MOST_THREADS
            for call in queued:
                with pytest.raises(RuntimeError) as info:
                    await call
                _assert_no_thread(info.value, "work")
            assert await actor.release() == n
            assert await blocker == "unblocked"
            assert (await actor.work()).startswith("actorbox-call")
            assert await actor.pid() == pid  # the same process serves on


@ZYGOTES
async def test_a_call_read_while_no_thread_can_start_is_answered(zygotes: bool) -> None:
    """A sync call launched as its frame is read, while hog_and_block() holds the worker
    thread and every thread the process may start, fails alone; the reader reads on."""
    async with _runtime(zygotes) as rt:
        actor = await rt.start(WideThreads)
        pid = await actor.pid()
        assert await _workers_settle(actor, 0) == (1, 1)
        hogging = actor.hog_and_block()
        await _workers_settle(actor, 1)
        with anyio.fail_after(CALL_TIMEOUT):
            for _ in range(2):
                with pytest.raises(RuntimeError) as info:
                    await actor.work()
                _assert_no_thread(info.value, "work")
            n = await actor.release()
            assert await hogging == n and 0 < n < MOST_THREADS
            assert (await actor.work()).startswith("actorbox-call")
            assert await actor.pid() == pid


@actorbox.actor(max_restarts=1)
class Dispatch:
    """Sync methods only: its calls run inline, frames read by the loop or, during a long
    inline call, by the watchdog thread."""

    def __init__(self):
        self.instance = os.urandom(8).hex()  # (its pid, in a pid namespace, may be the next one's)

    def _no_memory_to_dispatch(self):
        from actorbox._context import process_caller

        def admit(job):
            raise MemoryError

        process_caller.get().calls.admission.admit = admit  # the next call's dispatch runs out of memory

    def break_dispatch(self):
        self._no_memory_to_dispatch()

    def break_dispatch_and_wait(self, seconds):
        """Breaks dispatch, then keeps the loop busy: the watchdog reads the next call."""
        self._no_memory_to_dispatch()
        time.sleep(seconds)
        return "waited"

    def which(self):
        return self.instance


@actorbox.actor(max_restarts=1)
class AsyncDispatch(Dispatch):
    async def nothing(self):
        """Makes its sync calls run on worker threads, frames read by the loop alone."""


def _assert_out_of_memory_reading(err: actorbox.ActorDiedError, method: str) -> None:
    assert (err.exit_code, err.method) == (UNREADABLE_EXIT, method), str(err)
    assert "ran out of memory reading a call (or another message) from the host" in (err.stderr or ""), str(err)
    assert f"exited with code {UNREADABLE_EXIT}" in str(err), str(err)


@pytest.mark.parametrize("cls", [Dispatch, AsyncDispatch], ids=["inline", "async"])
async def test_running_out_of_memory_dispatching_a_call_exits_with_a_status_of_its_own(cls: type) -> None:
    async with actorbox.Runtime() as rt:
        actor = await rt.start(cls)
        first = await actor.which()
        with anyio.fail_after(CALL_TIMEOUT):
            await actor.break_dispatch()
            with pytest.raises(actorbox.ActorDiedError) as info:
                await actor.which()
            _assert_out_of_memory_reading(info.value, "which")
            assert await actor.which() != first  # restarted per max_restarts


async def test_running_out_of_memory_dispatching_a_call_read_by_the_watchdog() -> None:
    async with actorbox.Runtime() as rt:
        actor = await rt.start(Dispatch)
        first = await actor.which()
        with anyio.fail_after(CALL_TIMEOUT):
            waiting = actor.break_dispatch_and_wait(2.0)
            await anyio.sleep(0.5)  # the inline call has the loop: the watchdog reads what comes
            with pytest.raises(actorbox.ActorDiedError) as info:
                await actor.which()
            _assert_out_of_memory_reading(info.value, "which")
            with pytest.raises(actorbox.ActorDiedError):
                await waiting  # the call that was running dies with its process
            assert await actor.which() != first  # restarted


MiB = 1 << 20


@actorbox.actor(max_restarts=1)
class Full:
    """Uses up its memory_limit but for a few MiB, so a big call cannot be read."""

    def __init__(self):
        self.instance = os.urandom(8).hex()
        self.held = []

    def fill(self, leave):
        size = MiB
        while size >= 64 << 10:  # allocate until MemoryError, in ever smaller pieces
            try:
                self.held.append(bytearray(size))
            except MemoryError:
                size //= 2
        left = 0
        while left < leave:  # give some back: enough for the answer and small calls
            left += len(self.held.pop())
        return len(self.held)

    def take(self, data):
        return len(data)

    def which(self):
        return self.instance


@pytest.mark.parametrize("zygotes", [True, False], ids=["zygotes", "no-zygotes"])
async def test_a_call_too_big_for_the_memory_left_ends_the_actor_saying_so(zygotes: bool) -> None:
    policy = actorbox.SandboxPolicy(memory_limit=128 * MiB)
    async with actorbox.Runtime(sandbox_policy=policy, zygotes=zygotes) as rt:
        actor = await rt.start(Full)
        first = await actor.which()
        with anyio.fail_after(CALL_TIMEOUT):
            assert await actor.fill(8 * MiB) > 0
            with pytest.raises(actorbox.ActorDiedError) as info:
                await actor.take(b"x" * (48 * MiB))
            _assert_out_of_memory_reading(info.value, "take")
            assert await actor.which() != first  # restarted per max_restarts
            assert await actor.take(b"x" * MiB) == MiB  # a fresh instance has the memory for it


def test_workers_queue_no_job_for_a_thread_that_cannot_start(monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers.submit raises when its new thread cannot start, with the job not queued: a
    thread started later runs only what was submitted since."""
    from actorbox._workers import Workers

    def cannot_start(*args: object) -> int:
        raise RuntimeError("can't start new thread")

    workers = Workers(4, "test-workers")
    ran: list[str] = []
    monkeypatch.setattr(_thread, "start_new_thread", cannot_start)
    with pytest.raises(RuntimeError, match="can't start new thread"):
        workers.submit(ran.append, "unstartable")
    monkeypatch.undo()
    done = threading.Event()
    workers.submit(lambda: (ran.append("later"), done.set()))
    assert done.wait(CALL_TIMEOUT)
    assert ran == ["later"]


@actorbox.actor(max_concurrency=2)
class FailingStart(_Threads):
    """Its next thread fails as it starts, as CPython's own bootstrap does near a memory limit."""

    def __init__(self):
        super().__init__()
        self.armed = False

    async def arm(self):
        """The next thread to set its ident in ``threading`` (a Thread's bootstrap, before it
        reports that it started; a dummy thread's making) gets a MemoryError, once. On the
        loop: only the thread started next meets it."""
        loop = threading.get_ident()
        original = threading.Thread._set_ident

        def no_memory(thread):
            if threading.get_ident() == loop or not self.armed:
                return original(thread)
            self.armed = False
            threading.Thread._set_ident = original
            raise MemoryError

        self.armed = True
        threading.Thread._set_ident = no_memory

    async def still_armed(self):
        return self.armed


async def test_a_worker_thread_that_fails_as_it_starts_does_not_stop_the_actor() -> None:
    """block() holds the one worker thread, so work() needs a new one, and that thread fails
    as it starts (a MemoryError in CPython's bootstrap, before it could report that it
    started, as seen in CI near a memory_limit). threading.Thread.start() then waited for
    ever, on the actor's loop: no call was answered again. Workers does not wait on the
    thread it starts: work() runs on it, and the actor serves on."""
    async with actorbox.Runtime() as rt:
        actor = await rt.start(FailingStart)
        assert await _workers_settle(actor, 0) == (1, 1)
        blocker = actor.block()
        assert await _workers_settle(actor, 1) == (1, 0)
        with anyio.fail_after(CALL_TIMEOUT):
            await actor.arm()
            assert isinstance(await actor.work(), str)  # run on the thread that failed as it started
            assert await actor.still_armed() is False  # (it did fail)
            assert await actor.release() == 0
            assert await blocker == "unblocked"
            while (await actor.workers())[:2] != (2, 2):  # both threads idle, counted right
                await anyio.sleep(0.01)
            assert isinstance(await actor.work(), str)  # (on either: the new one runs unnamed)


class _FailsOnce:
    """A job queue whose first get() raises MemoryError (with the job left queued)."""

    def __init__(self) -> None:
        self.jobs: queue.SimpleQueue[object] = queue.SimpleQueue()
        self.failed = False

    def put(self, item: object) -> None:
        self.jobs.put(item)

    def get(self) -> object:
        if not self.failed:
            self.failed = True
            raise MemoryError
        return self.jobs.get()


def _wait_until(predicate: Callable[[], bool], timeout: float = CALL_TIMEOUT) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def test_a_worker_thread_serves_on_through_a_memory_error_of_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    """A MemoryError in a worker thread's own loop (outside any job) used to end the thread:
    the job it was started for never ran, and Workers still counted the thread. It now
    pauses and serves on: the job runs, and the thread then counts itself idle."""
    from actorbox._workers import Workers

    workers = Workers(4, "test-workers")
    failing = _FailsOnce()
    monkeypatch.setattr(workers, "_jobs", failing)
    done = threading.Event()
    workers.submit(done.set)
    assert done.wait(CALL_TIMEOUT)
    assert failing.failed
    assert _wait_until(lambda: workers._idle == 1)
    assert workers._threads == 1
    again = threading.Event()
    workers.submit(again.set)  # on the same thread
    assert again.wait(CALL_TIMEOUT)
    assert _wait_until(lambda: workers._idle == 1)
    assert workers._threads == 1


def test_a_thread_started_for_actorbox_is_named_runs_unnamed_when_it_cannot_be_and_is_forgotten(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """start_thread never waits on the new thread: a failure in the thread's own first step
    (naming it, here) leaves it running its main, unnamed. A thread that ends leaves no
    dummy behind in threading.enumerate()."""
    from actorbox._threads import start_thread

    names: list[str] = []
    thread = start_thread("test-named", lambda: names.append(threading.current_thread().name))
    assert thread.join(CALL_TIMEOUT)
    assert names == ["test-named"]
    assert not any(t.name == "test-named" for t in threading.enumerate())

    test_thread = threading.get_ident()
    original = threading.current_thread
    failed: list[bool] = []

    def no_memory() -> threading.Thread:
        if threading.get_ident() != test_thread and not failed:
            failed.append(True)
            raise MemoryError
        return original()

    monkeypatch.setattr(threading, "current_thread", no_memory)
    ran = threading.Event()
    thread = start_thread("test-unnamed", ran.set)
    assert ran.wait(CALL_TIMEOUT) and thread.join(CALL_TIMEOUT)
    assert failed == [True]
    assert not any(t.name == "test-unnamed" for t in threading.enumerate())


def _report_main_thread(conn) -> None:  # (a forked child's target: module level, picklable)
    conn.send(threading.main_thread().name)


class Forks:
    """Its sync calls run on actorbox's worker threads; they fork as plugin code may."""

    async def ping(self):
        return "pong"

    def fork_process(self):
        """A multiprocessing child (fork, Linux's default on 3.11) that ends normally: its exit code,
        and the name of the main thread it saw."""
        import multiprocessing

        ctx = multiprocessing.get_context("fork")
        here, there = ctx.Pipe()
        child = ctx.Process(target=_report_main_thread, args=(there,))
        child.start()
        child.join(CALL_TIMEOUT)
        return child.exitcode, here.recv() if here.poll(0) else None


async def test_a_process_forked_on_a_worker_thread_ends_normally() -> None:
    """actorbox's threads are started with _thread (a dummy thread for threading). A process forked
    on one took that dummy for its main thread (CPython < 3.12), and threading's shutdown in it
    failed (AssertionError): a multiprocessing child whose target returned exited with 1."""
    async with actorbox.Runtime() as rt:
        actor = await rt.start(Forks)
        with anyio.fail_after(CALL_TIMEOUT):
            assert await actor.ping() == "pong"
            assert await actor.fork_process() == (0, "MainThread")
