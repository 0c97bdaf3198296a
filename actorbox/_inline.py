"""Inline calls: sync calls of a sync-only actor run on its loop thread.

An actor whose class has no async methods and runs one call at a time needs its loop
for nothing but reading frames, so its sync calls run on the loop thread itself when
nothing else is running: no thread hand-off, about 20 us less per call on this class
of machine. Three things keep that from ever blocking or showing: a nested call waited
for with ``Future.result()`` reads frames itself until its reply comes (the pump); a
watchdog thread starts reading frames and writing what waits to be sent once inline
calls have kept the loop busy for a whole interval, so cancellations, further calls
and STOP are seen meanwhile; and the user's code sees no running event loop
(``asyncio.run()`` works, as on a worker thread). Frames are read under
``Connection.read_lock``, by one thread at a time, in order.
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import select
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any, NoReturn

from scheduler import Connection

from ._outbox import exit_out_of_memory_reading
from ._threads import StartedThread, start_thread

# The watchdog looks at the loop this often; inline calls still running (one, or
# several back to back) after a whole interval get a reader and a writer beside
# them. It parks after this long without inline calls.
_WATCH_INTERVAL = 0.005
_WATCH_PARK_AFTER = 0.05


def exit_now() -> NoReturn:
    """Leave at once, as the entry point does after serving (calls in other threads are abandoned)."""
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException:  # (out of memory, say): leaving is what matters
        pass
    os._exit(0)


class InlineCalls:
    """Runs of inline calls on the loop thread: whether the actor may have them, the run
    in progress (the watchdog watches it), and the pump for nested calls inside one."""

    def __init__(self, loop: asyncio.AbstractEventLoop, conn: Connection, has_pending: Callable[[], bool]) -> None:
        self._loop = loop
        self._loop_thread = threading.get_ident()
        self._conn = conn
        self.ok = False  # decided once the instance exists; an async call turns it off for good
        self.depth = 0
        # A new object per run of inline calls, None between runs: the watchdog tells runs apart by it.
        self.token: object | None = None
        self.watchdog = Watchdog(self, conn, has_pending)

    def begin_run(self) -> None:
        """A run of inline calls (or an inline construction) starts on the loop thread."""
        self.depth += 1
        self.token = object()
        self.watchdog.wake_if_parked()

    def end_run(self) -> None:
        self.token = None
        self.depth -= 1

    def call_hidden(self, ctx: contextvars.Context, fn: Callable[..., object], *args: Any) -> None:
        """``fn(*args)`` in ``ctx`` on the loop thread, which it must not see as running:
        asyncio.run() (or anyio.run()) inside a sync method works on a worker thread and
        must work here too."""
        asyncio.events._set_running_loop(None)
        try:
            ctx.run(fn, *args)
        finally:
            asyncio.events._set_running_loop(self._loop)

    def pumps_here(self) -> bool:
        return bool(self.depth) and threading.get_ident() == self._loop_thread

    def pump(self, fut: Any, timeout: float | None) -> bool:
        """``fut.result()`` inside an inline call: read frames here until its reply comes."""
        if not self.pumps_here():
            return False
        deadline = None if timeout is None else time.monotonic() + timeout
        poller = select.poll()
        poller.register(self._conn.sock.fileno(), select.POLLIN)
        while not fut.done():
            self._conn.flush()  # our own call may still sit in the send buffer
            got = read_for_loop(self._conn, wait=False)
            if got is False:
                exit_now()  # the host closed the connection
            if fut.done():
                break
            wait = _WATCH_INTERVAL if deadline is None else min(_WATCH_INTERVAL, deadline - time.monotonic())
            if wait <= 0:
                break
            if got is None:  # the watchdog is reading: it resolves the future
                time.sleep(min(wait, 0.0005))
            else:
                poller.poll(wait * 1000)
        return True


def read_for_loop(conn: Connection, *, wait: bool = True) -> bool | None:
    """Read frames in the loop's stead; a failed connection ends the process, as it would
    have had the loop been reading."""
    try:
        return conn.read_now(wait=wait)
    except MemoryError:  # as the loop's reader (ActorServer.serve): a frame lost, a call unanswered
        exit_out_of_memory_reading()
    except Exception as exc:
        try:
            print(f"actorbox: connection to the host failed: {exc!r}", file=sys.stderr)
        except BaseException:  # (no memory left to say so): the host sees the exit anyway
            pass
        exit_now()


class Watchdog:
    """A thread that reads frames, and writes what waits to be sent, while inline calls
    have kept the loop busy for longer than an interval. It parks while none run."""

    def __init__(self, inline: InlineCalls, conn: Connection, has_pending: Callable[[], bool]) -> None:
        self._inline = inline
        self._conn = conn
        self._has_pending = has_pending
        self._wake = threading.Event()
        self._parked = False
        self.thread: StartedThread | None = None

    def start(self) -> bool:
        """Start the thread (at INIT); False when no thread can be had (a process limit):
        then nothing runs inline."""
        if self.thread is None:
            ctx = contextvars.copy_context()  # frames it dispatches need this process's context
            try:  # (never waits on the new thread: see actorbox._threads)
                self.thread = start_thread("actorbox-inline-watch", ctx.run, self._watch)
            except RuntimeError:
                return False
        return True

    def wake_if_parked(self) -> None:
        if self._parked:
            self._parked = False
            self._wake.set()

    def _watch(self) -> None:
        seen: object | None = None
        idle_since = time.monotonic()
        fd = self._conn.sock.fileno()
        poller = select.poll()
        while True:
            try:
                seen, idle_since = self._watch_once(seen, idle_since, fd, poller)
            except Exception:  # it must outlive any one failure: inline calls rely on it
                try:
                    traceback.print_exc()
                except BaseException:  # (out of memory, say): reading on matters more
                    pass
                time.sleep(_WATCH_INTERVAL)

    def _watch_once(self, seen: object | None, idle_since: float, fd: int,
                    poller: select.poll) -> tuple[object | None, float]:
        """One look at the loop (and, during a long inline run, the reading it needs)."""
        time.sleep(_WATCH_INTERVAL)
        token = self._inline.token
        if token is None:
            if time.monotonic() - idle_since > _WATCH_PARK_AFTER:
                self._parked = True
                if self._inline.token is None:  # (set before the loop checks _parked)
                    self._wake.wait()
                self._wake.clear()
                self._parked = False
                idle_since = time.monotonic()
            return seen, idle_since
        idle_since = time.monotonic()
        if token is not seen:  # inline calls that started since the last look: give them an interval
            return token, idle_since
        while self._inline.token is token:
            if read_for_loop(self._conn) is False:
                exit_now()  # the host closed the connection
            # Sends that did not fit wait for the loop's writer, which can't run now.
            unsent = not self._conn.flush()
            if unsent or self._has_pending():  # replies awaited (or output): act as soon as the socket allows
                poller.register(fd, select.POLLIN | (select.POLLOUT if unsent else 0))
                poller.poll(_WATCH_INTERVAL * 1000)
            else:  # else read in batches: a frame-by-frame reader would fight the loop for the GIL
                time.sleep(_WATCH_INTERVAL)
        return seen, time.monotonic()
