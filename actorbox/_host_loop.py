"""``HostLoop``: the host's event loop as other threads reach it.

Host-resident sync methods run in worker threads; what they do to the scheduler or
to the call table must happen on the loop thread, and a worker that finishes tells
the loop so. This object knows that thread, schedules work on it from any other
thread (asyncio or trio alike), and runs a function there and waits for its result.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import threading
from collections.abc import Callable
from typing import Any, Protocol, TypeVar, cast

import anyio.lowlevel
import sniffio

from ._errors import ActorboxError

T = TypeVar("T")

_LOOP_CHECK = 0.5  # s between checks that the loop a thread waits on still runs


class _TrioToken(Protocol):
    def run_sync_soon(self, fn: Callable[[], None]) -> None: ...


class HostLoop:
    """The loop the Runtime was entered on (create it there)."""

    def __init__(self) -> None:
        self.token = anyio.lowlevel.current_token()
        self.library = sniffio.current_async_library()
        self.thread = threading.get_ident()
        self.closed = False  # set as the Runtime exits: calls from other threads fail from then on

    def on_loop_thread(self) -> bool:
        return threading.get_ident() == self.thread

    def soon(self, func: Callable[[], None]) -> None:
        """Run ``func`` on the loop thread soon (from any thread); RuntimeError once the loop is gone."""
        native = self.token.native_token
        if isinstance(native, asyncio.AbstractEventLoop):
            native.call_soon_threadsafe(func)
        else:
            cast(_TrioToken, native).run_sync_soon(func)

    def run(self, func: Callable[..., T], *args: Any) -> T:
        """Run ``func`` on the loop thread, in this thread's context (it holds current_call:
        the parent of a call made here), and wait for its result.

        Not anyio.from_thread: trio's refuses a thread that runs an event loop of its own,
        as a sync method inside ``anyio.run()`` does."""
        ctx = contextvars.copy_context()
        ctx.run(sniffio.current_async_library_cvar.set, self.library)
        done: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            try:
                done.set_result(ctx.run(func, *args))
            except BaseException as exc:
                done.set_exception(exc)
                if not isinstance(exc, Exception):
                    raise  # KeyboardInterrupt, SystemExit: the loop's to handle too

        gone = ActorboxError("the Runtime has exited, so no call can be made from this thread; start a new "
                             "Runtime, or keep it open until the threads that call actors are done")
        try:
            self.soon(run)
        except RuntimeError as exc:  # asyncio's closed loop, trio's RunFinishedError
            raise gone from exc
        while True:
            try:
                return done.result(timeout=_LOOP_CHECK)
            except TimeoutError:
                # An asyncio loop that stopped (not closed yet) took the callback and will
                # never run it; trio runs every callback it accepts.
                native = self.token.native_token
                if self.closed and isinstance(native, asyncio.AbstractEventLoop) and not native.is_running():
                    raise gone from None
