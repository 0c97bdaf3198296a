"""``Future``: the awaitable result of one actor call.

A Future is resolved by its process's caller when the reply envelope arrives;
the payload is decoded lazily, by whoever first asks for the result, so a result
nobody reads is never decoded. Cancelling the task that awaits a Future cancels
the remote call.
"""

from __future__ import annotations

import asyncio
import collections.abc
import threading
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar, cast

import anyio
import anyio.to_thread
import sniffio

from scheduler import close_fds

from . import _errors

if TYPE_CHECKING:
    from collections.abc import Callable, Generator
    from types import TracebackType

    from scheduler import envelope

T = TypeVar("T")


class Resolver(Protocol):
    """What a Future needs from the caller that made its call (the caller implements it;
    the Future depends on nothing more, so it sits below the caller and the codec)."""

    def on_loop_thread(self) -> bool: ...

    def soon_on_loop(self, func: Callable[[], None]) -> None: ...

    def pump(self, fut: Future[Any], timeout: float | None) -> bool: ...

    def pumps_here(self) -> bool: ...

    def cancel(self, fut: Future[Any]) -> None: ...

    def outcome(self, fut: Future[Any], reply: envelope.Reply) -> Any:
        """The reply's value, or a :class:`Raised` for a failure."""
        ...

    def result_read(self, fut: Future[Any]) -> None: ...

class Waiter(Protocol):
    """What ``_wake`` sets when the reply is in: an awaiting asyncio task's loop future, or
    the waiter of ``actorbox.wait`` / ``gather`` / ``as_completed`` (actorbox._waiting), which
    watches a Future without awaiting it (so giving up the watch never cancels the call)."""

    def done(self) -> bool: ...

    def set_result(self, result: None, /) -> None: ...


_PENDING = object()
_TEVENT_LOCK = threading.Lock()
_DECODE_LOCK = threading.RLock()
# Seconds between reads while a nested loop waits on the loop thread: from the first, doubling
# up to the last.
_PUMP_NAP, _PUMP_NAP_MAX = 0.0002, 0.005


class Future(collections.abc.Coroutine[Any, Any, T], Generic[T]):
    """The result of ``handle.method(...)``: ``await`` it (or, in an actor's worker
    thread, call ``result()``).

    The call is sent when the Future is made, not when it is awaited. A Future is also a
    coroutine (``send``/``throw``/``close``), so what runs a coroutine as a task runs it:
    ``asyncio.create_task(h.m(x))``, anyio's and trio's ``tg.start_soon(h.m, x)``; that
    task waits for the reply, and cancelling it cancels the remote call.
    """

    __slots__ = ("__weakref__", "_caller", "_driver", "_driver_task", "_event", "_reply", "_tevent", "_value",
                 "_waiters", "actor", "actor_id", "call_id", "method")

    def __init__(self, caller: Resolver, call_id: int, actor: str, method: str, actor_id: int = -1) -> None:
        self._caller = caller
        self.call_id = call_id
        self.actor = actor
        self.actor_id = actor_id
        self.method = method
        self._reply: envelope.Reply | None = None
        self._value: Any = _PENDING
        self._event: anyio.Event | None = None  # awaited on backends other than asyncio
        self._waiters: list[Waiter] | None = None  # asyncio: one per awaiting task; watchers (any backend)
        self._tevent: threading.Event | None = None
        self._driver: Generator[Any, None, T] | None = None  # the wait a task drives through send/throw
        self._driver_task: object = None  # that task: a second one driving the same wait would break it

    def __repr__(self) -> str:
        state = "done" if self._reply is not None else "pending"
        return f"<actorbox.Future {self.actor}.{self.method}() call={self.call_id} {state}>"

    def __del__(self) -> None:
        # A result nobody read still owns the descriptors of its tensors. No import here: a
        # Future collected at interpreter shutdown (after Ctrl-C) would print "Exception ignored
        # ... ImportError: sys.meta_path is None" (tests/actorbox/test_edges.py).
        reply = self._reply
        if reply is not None and reply.fds and self._value is _PENDING:
            close_fds(reply.fds)

    def done(self) -> bool:
        return self._reply is not None

    def _resolve(self, reply: envelope.Reply) -> None:
        """Called once the reply is in: on this process's loop thread, or on another one (a
        cancel from a worker thread, a reply read while an inline call holds the loop)."""
        if self._reply is not None:
            return
        self._reply = reply
        tev = self._tevent
        if tev is not None:
            tev.set()
        if self._caller.on_loop_thread():
            self._wake()
        else:
            # The loop's awaiters are woken on the loop, and always: one may be joining now.
            self._caller.soon_on_loop(self._wake)

    def _wake(self) -> None:
        """Wake the tasks of this process's loop that await this Future (on the loop)."""
        if self._waiters is not None:
            for w in self._waiters:
                if not w.done():  # a cancelled awaiter's waiter is done already
                    w.set_result(None)
            self._waiters = None
        if self._event is not None:
            self._event.set()

    def __await__(self) -> Generator[Any, None, T]:
        return self._wait().__await__()

    # -- the coroutine protocol: one wait, driven by the task that runs this Future ----

    def send(self, value: Any) -> Any:
        driver = self._driver
        task = _current_task()
        if driver is None:
            driver = self._driver = self._wait().__await__()
            self._driver_task = task
        elif task is not self._driver_task:
            # (As a coroutine can be run by one task only; 'await' makes a wait of its own each time.)
            raise _errors.UsageError(
                f"{self.actor}.{self.method}() [call {self.call_id}] is already run as a task by another task; "
                "run each call as one task, and 'await' the Future (or that task) wherever else you need it")
        return driver.send(value)

    def throw(self, typ: Any, val: Any = None, tb: TracebackType | None = None) -> Any:
        driver = self._driver
        if driver is None:
            # Thrown into before its first step (a task cancelled before it ran): nothing waits
            # yet to cancel the call on the way out, so cancel it here; then raise as a
            # coroutine that never started does.
            self.cancel()
            driver = self._driver = self._wait().__await__()
            self._driver_task = _current_task()
        if val is None and tb is None:
            return driver.throw(typ)
        return driver.throw(typ, val, tb)  # the (deprecated) three-argument form, as tasks may use it

    def close(self) -> None:
        """Abandon the wait this Future's task drives: a pending call is cancelled."""
        driver = self._driver
        if driver is None:
            self.cancel()
            return
        driver.close()

    async def _wait(self) -> T:
        if self._reply is None:
            caller = self._caller
            if not caller.on_loop_thread() or caller.pumps_here():
                return await self._wait_off_loop()
            try:
                loop = asyncio.get_running_loop() if sniffio.current_async_library() == "asyncio" else None
            except RuntimeError:
                loop = None
            try:
                if loop is not None:
                    # The call hot path: a bare loop future per awaiting task, so cancelling
                    # one awaiter never cancels another's wait.
                    waiter: asyncio.Future[None] = loop.create_future()
                    if self._waiters is None:
                        self._waiters = [waiter]
                    else:
                        self._waiters.append(waiter)
                    await waiter
                else:
                    if self._event is None:
                        self._event = anyio.Event()
                    await self._event.wait()
            except BaseException:
                if self._reply is None:
                    self._caller.cancel(self)
                raise
        return self._outcome()

    async def _wait_off_loop(self) -> T:
        """Awaited where this process's loop can't wake the awaiting task:

        - in an event loop of its own (``asyncio.run`` or ``anyio.run``) inside a sync method
          running inline on the actor's loop thread: that loop is blocked under this one and
          can't read the reply, so read it here, letting this loop's other tasks run between
          reads;
        - in an event loop of another thread (``asyncio.run`` inside a sync method on a worker
          thread): the reply is resolved on the loop thread, which can't wake a foreign loop's
          futures safely, so a helper thread of this loop waits for it instead.
        """
        try:
            if self._caller.on_loop_thread():
                nap = _PUMP_NAP
                while self._reply is None:
                    self._caller.pump(self, 0)
                    if self._reply is None:
                        await anyio.sleep(nap)
                        nap = min(2 * nap, _PUMP_NAP_MAX)  # a long call costs few wake-ups
            else:
                ev = self._thread_event()
                if self._reply is None:
                    await anyio.to_thread.run_sync(ev.wait, abandon_on_cancel=True)
        except BaseException:
            if self._reply is None:
                self._caller.cancel(self)  # resolves the Future: an abandoned helper's wait ends too
            raise
        return self._outcome()

    def _thread_event(self) -> threading.Event:
        """The event _resolve sets for waiting threads: one per Future, however many wait."""
        with _TEVENT_LOCK:
            ev = self._tevent
            if ev is None:
                ev = self._tevent = threading.Event()
        return ev

    def result(self, timeout: float | None = None) -> T:
        """Block until the call finishes (for sync methods running in an actor's worker thread)."""
        if self._reply is None:
            if self._caller.on_loop_thread():
                if not self._caller.pump(self, timeout):
                    raise _errors.UsageError(
                        f"{self.actor}.{self.method}(): Future.result() would block the event loop; use "
                        "'await future' in async code (result() is for sync code on other threads)")
                if self._reply is None:
                    raise self._timed_out(timeout)
                return self._outcome()
            ev = self._thread_event()
            if self._reply is None and not ev.wait(timeout):
                raise self._timed_out(timeout)
        return self._outcome()

    def _timed_out(self, timeout: float | None) -> _errors.CallTimeoutError:
        return _errors.CallTimeoutError(
            f"{self.actor}.{self.method}() [call {self.call_id}] did not finish within {timeout} s; it goes on "
            "running: wait longer, or cancel it with future.cancel()",
            actor=self.actor, method=self.method, call_id=self.call_id)

    def cancel(self) -> bool:
        """Ask for the remote call to be cancelled; False when it already finished."""
        if self._reply is not None:
            return False
        self._caller.cancel(self)
        return True

    def _outcome(self) -> T:
        """The value (or raise the failure); called only once the reply is in."""
        if self._value is _PENDING:
            with _DECODE_LOCK:  # decoded once: the reply's descriptors belong to one decode
                reply = self._reply
                if self._value is _PENDING and reply is not None:
                    self._value = self._caller.outcome(self, reply)
                    if reply.fds:
                        self._caller.result_read(self)
        v = self._value
        if isinstance(v, Raised):
            raise v.exc
        return cast(T, v)

    def _expire(self, message: str) -> bool:
        """Release an unread result's shared memory; reading it raises ObjectNotFoundError
        with ``message`` from now on. False when it was read (or never came) after all."""
        with _DECODE_LOCK:
            reply = self._reply
            if self._value is not _PENDING or reply is None:
                return False
            close_fds(reply.fds)
            self._value = Raised(_errors.ObjectNotFoundError(message, object_id=None))
            return True


def _current_task() -> object:
    """The task running here (asyncio's or trio's), or None outside one."""
    try:
        library = sniffio.current_async_library()
    except sniffio.AsyncLibraryNotFoundError:
        return None
    if library == "asyncio":
        return asyncio.current_task()
    if library == "trio":
        import trio

        return trio.lowlevel.current_task()
    return None


class Raised:
    """An outcome that is an exception (kept apart from a returned exception object)."""

    __slots__ = ("exc",)

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc
