"""``RayCaller``: actorbox Futures over Ray ObjectRefs, in the host and in Ray workers.

It is the ``_future.Resolver`` of the Futures it makes, so ``await``, ``.result()``,
cancellation, ``actorbox.wait``/``gather``/``as_completed`` work on them as on the local
backend's, on asyncio and trio alike. Each call's ObjectRef gets a completion callback
(``ObjectRef._on_completed``: Ray's own thread calls it with the result), which only queues
the result; the first result queued schedules one drain on the loop that made the calls,
which resolves every Future queued by then (a burst of replies costs one loop wake-up, and
``gather`` one pass, not one per reply). A Future passed as an argument goes to
Ray as its ObjectRef, which Ray resolves before the call runs (the worker decodes it).
Cancelling the awaiting scope calls ``ray.cancel`` on the ref.
"""

from __future__ import annotations

import collections
import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import ray
import ray.exceptions

from scheduler import CallInfo, envelope

from .. import _errors
from .._codec import Codec
from .._future import Future, Raised
from .._handle import ActorHandle
from .._remote_errors import attribute_error
from ._events import CallEvents
from ._wire import ERR, HandleRef, decode_outcome, swap

_ray: Any = ray  # (Ray's functions are untyped)


class Loop(Protocol):
    def on_loop_thread(self) -> bool: ...

    def soon(self, func: Callable[[], None]) -> None: ...


@dataclass(slots=True)
class Target:
    """An actor as a caller reaches it: its Ray handle and what errors and handles say of it."""

    actor_id: int
    name: str | None
    label: str
    ray_handle: Any
    stopped: bool = False  # stopped by its Runtime: later failures are ActorStoppedError
    ray_actor_id: str | None = None  # (known once it started; bound to its call events)
    node_id: str | None = None


class _Call:
    """A call in flight: its Future, its ObjectRef, its actor (None: a task), the Futures passed to it."""

    __slots__ = ("deps", "fut", "ref", "started", "target")

    def __init__(self, fut: Future[Any], ref: Any, target: Target | None, deps: list[Future[Any]] | None,
                 started: float) -> None:
        self.fut = fut
        self.ref = ref
        self.target = target
        self.deps = deps
        self.started = started


class RayCaller:
    """Makes calls and tasks on Ray for one process and resolves their Futures."""

    def __init__(self, codec: Codec, loop: Loop, find: Callable[[int], Target | None],
                 on_handle: Callable[[HandleRef], Target] | None = None) -> None:
        self.codec = codec
        self.loop = loop
        self.find = find  # the target of an actor id
        self.on_handle = on_handle
        self.get_actor_fn: Callable[[str], ActorHandle] | None = None
        self.events: CallEvents | None = None  # the host's call.* events, when they are on
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self.pending: dict[int, _Call] = {}
        self._ready: collections.deque[tuple[int, Any]] = collections.deque()  # (call id, result) to resolve
        self._drain_due = False  # a drain is scheduled on the loop and has not started yet

    # -- the Resolver protocol ------------------------------------------------------

    def on_loop_thread(self) -> bool:
        return self.loop.on_loop_thread()

    def soon_on_loop(self, func: Callable[[], None]) -> None:
        self.loop.soon(func)

    def pump(self, fut: Future[Any], timeout: float | None) -> bool:
        return False

    def pumps_here(self) -> bool:
        return False

    def result_read(self, fut: Future[Any]) -> None:
        return None

    def cancel(self, fut: Future[Any]) -> None:
        call = self.pending.pop(fut.call_id, None)
        if call is None:
            return
        try:
            ray.cancel(call.ref, force=False)
        except Exception:
            pass
        fut._resolve(envelope.Reply(fut.call_id, envelope.Status.CANCELLED))
        if self.events is not None:
            self.events.ended(fut.call_id, call.target, fut.actor, fut.method, call.started, "cancelled")

    def get_actor(self, name: str) -> ActorHandle:
        if self.get_actor_fn is None:
            raise _errors.ActorboxError("get_actor() needs a running Runtime")
        return self.get_actor_fn(name)

    # -- making calls ---------------------------------------------------------------

    def call(self, actor_id: int, label: str, method: str, args: tuple[Any, ...], kwargs: dict[str, Any],
             token: bytes = b"") -> Future[Any]:
        target = self.find(actor_id)
        if target is None:
            return self._failed(label, method, actor_id, _errors.ActorNotFoundError(
                f"no actor with id {actor_id} for {method}(); it was never started here or has been removed"))
        if method.startswith("_"):  # refused before anything is sent, as the local handle does
            raise _errors.PrivateMethodError(f"{method!r} is private", actor=label, method=method, call_id=None)
        return self.remote(target.ray_handle.call.remote, (method,), label, method, args, kwargs, target, actor_id)

    def remote(self, send: Callable[..., Any], head: tuple[Any, ...], label: str, method: str,
               args: tuple[Any, ...], kwargs: dict[str, Any], target: Target | None,
               actor_id: int = 0) -> Future[Any]:
        """Send one call or task: ``send(*head, dep_positions, *args, **kwargs)`` returns its ObjectRef."""
        deps: list[Future[Any]] | None = None
        positions: list[Any] = []
        if args:
            a = tuple([self._arg(v, i, positions) for i, v in enumerate(args)])
        else:
            a = args
        kw = {k: self._arg(v, k, positions) for k, v in kwargs.items()} if kwargs else kwargs
        if positions:  # (Futures passed pending: their ObjectRefs go to Ray, they are kept for errors)
            deps = [where[1] for where in positions]
            positions = [where[0] for where in positions]
        try:
            ref = send(*head, positions, *a, **kw)
        except ray.exceptions.PendingCallsLimitExceeded as exc:
            return self._failed(label, method, actor_id, _errors.PendingCallsLimitError(
                f"call {label}.{method}() was refused: {exc}", actor=label, method=method, call_id=None))
        call_id = next(self._ids)
        fut: Future[Any] = Future(self, call_id, label, method, actor_id)
        self.pending[call_id] = _Call(fut, ref, target, deps, time.monotonic())  # (one dict store: atomic)
        if self.events is not None:
            self.events.submitted(call_id, target, label, method)
        ref._on_completed(lambda result: self._completed(call_id, result))
        return fut

    def _arg(self, value: Any, where: Any, positions: list[Any]) -> Any:
        t = type(value)
        if t is int or t is float or t is str or t is bytes or t is bool or value is None:
            return value  # (the common case, as swap would return it)
        if t is Future:
            if value._caller is not self:
                raise _errors.SerializationError("a Future from another Runtime can't be an argument; await it first")
            if value.done():  # finished: its value (or the failure it ends this call with)
                try:
                    return swap(value._outcome(), self._out)
                except BaseException as exc:
                    raise _errors.DependencyFailedError(
                        f"{value.actor}.{value.method}() [call {value.call_id}] failed with "
                        f"{type(exc).__name__}: {exc}", actor=value.actor, method=value.method) from exc
            call = self.pending.get(value.call_id)
            if call is None:
                return value.result(0)
            positions.append((where, value))
            return call.ref  # resolved by Ray before the call runs
        return swap(value, self._out)

    def _out(self, value: Any) -> Any:
        if type(value) is Future:
            raise _errors.SerializationError(
                "a Future can be passed only as a top-level argument of a call; await it to send its value")
        if isinstance(value, ActorHandle):
            target = self.find(value._actor_id)
            if target is None:
                raise _errors.SerializationError(f"{value!r} reaches no actor of this Runtime")
            return HandleRef(target.actor_id, target.name, target.label, target.ray_handle)
        return value

    def handle_in(self, value: Any) -> Any:
        """A HandleRef that arrived as an argument, as a handle of this process."""
        if isinstance(value, HandleRef) and self.on_handle is not None:
            target = self.on_handle(value)
            return ActorHandle(self, target.actor_id, target.name, target.label)
        return value

    def _failed(self, label: str, method: str, actor_id: int, error: BaseException) -> Future[Any]:
        fut: Future[Any] = Future(self, next(self._ids), label, method, actor_id)
        fut._value = Raised(error)
        fut._resolve(envelope.Reply(fut.call_id, envelope.Status.ERROR))
        return fut

    # -- results --------------------------------------------------------------------

    def _completed(self, call_id: int, result: Any) -> None:
        """Ray's thread: the call's ref is ready (``result``: the value, or the RayError that failed it)."""
        with self._lock:
            self._ready.append((call_id, result))
            if self._drain_due:
                return
            self._drain_due = True
        try:
            self.loop.soon(self._drain)
        except RuntimeError:  # the loop is gone (the Runtime exited): resolve here
            self._drain()

    def _drain(self) -> None:
        """On the loop: resolve every call whose result has been queued (one wake-up for a burst)."""
        with self._lock:
            self._drain_due = False
            ready = list(self._ready)
            self._ready.clear()
        pending = self.pending
        for call_id, result in ready:
            call = pending.pop(call_id, None)
            if call is None:
                continue  # cancelled meanwhile
            if isinstance(result, ray.exceptions.RayTaskError):
                result = _ray.exceptions.RayTaskError.as_instanceof_cause(result)
            detail = {"exc": result, "call": call} if isinstance(result, BaseException) else \
                {"wire": result, "call": call}
            call.fut._resolve(envelope.Reply(call_id, envelope.Status.OK, detail=detail))
            if self.events is not None:
                self._ended(call, result)

    def _ended(self, call: _Call, result: Any) -> None:
        fut = call.fut
        if isinstance(result, ray.exceptions.TaskCancelledError):
            outcome, status = "cancelled", ""
        elif isinstance(result, BaseException):
            outcome, status = "failed", f"ray.{type(result).__name__}"
        elif type(result) in (list, tuple) and len(result) == 3 and result[0] == ERR:
            outcome, status = "failed", "error"
        else:
            outcome, status = "finished", ""
        assert self.events is not None
        self.events.ended(fut.call_id, call.target, fut.actor, fut.method, call.started, outcome, status)

    def outcome(self, fut: Future[Any], reply: envelope.Reply) -> Any:
        if reply.status == envelope.Status.CANCELLED:
            return Raised(_errors.CallCancelledError(
                f"call {fut.actor}.{fut.method}() [call {fut.call_id}] was cancelled",
                actor=fut.actor, method=fut.method, call_id=fut.call_id))
        detail = reply.detail or {}
        call: _Call = detail["call"]
        if "exc" in detail:
            return Raised(self._ray_error(detail["exc"], fut, call))
        try:
            ok, value = decode_outcome(self.codec, detail["wire"])
        except _errors.SerializationError as exc:
            return Raised(exc)
        if ok:
            return swap(value, self.handle_in) if self.on_handle is not None else value
        failed = self._failed_dep(call)
        if failed is not None:
            return Raised(failed)
        return Raised(attribute_error(value, fut.actor, fut.method, fut.call_id))

    def _failed_dep(self, call: _Call) -> BaseException | None:
        for dep in call.deps or ():
            if not dep.done():
                continue
            try:
                dep._outcome()
            except BaseException as cause:
                error = _errors.DependencyFailedError(
                    f"{call.fut.actor}.{call.fut.method}() [call {call.fut.call_id}] was not run: a Future passed "
                    f"to it as an argument failed with {type(cause).__name__}: {cause}",
                    actor=call.fut.actor, method=call.fut.method, call_id=call.fut.call_id)
                error.__cause__ = cause
                return error
        return None

    def _ray_error(self, exc: BaseException, fut: Future[Any], call: _Call) -> BaseException:
        """The actorbox error for a call Ray failed (it never ran, or its worker died)."""
        failed = self._failed_dep(call)
        if failed is not None:
            return failed
        who: dict[str, Any] = dict(actor=fut.actor, method=fut.method, call_id=fut.call_id)
        if isinstance(exc, ray.exceptions.TaskCancelledError):
            return _errors.CallCancelledError(f"call {fut.actor}.{fut.method}() was cancelled", **who)
        if call.target is None:
            if isinstance(exc, (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError,
                                ray.exceptions.RayTaskError, ray.exceptions.OutOfMemoryError)):
                return _errors.TaskFailedError(
                    f"task {fut.method}() failed: its Ray worker died on every try ({type(exc).__name__}: "
                    f"{_first_line(exc)})", causes=[_first_line(exc)], **who)
        elif isinstance(exc, (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError)):
            if call.target.stopped:
                return _errors.ActorStoppedError(f"{fut.actor} was stopped before {fut.method}() finished", **who)
            return _errors.ActorDiedError(f"{fut.actor} died while {fut.method}() was pending (Ray: "
                                          f"{_first_line(exc)})", **who)
        return _errors.RemoteError(f"Ray failed the call: {type(exc).__name__}: {_first_line(exc)}",
                                   type_name=f"ray.{type(exc).__name__}", actor=fut.actor, method=fut.method)

    def infos(self) -> list[CallInfo]:
        now = time.monotonic()
        calls = list(self.pending.items())
        return [CallInfo(cid, c.fut.actor, c.fut.method, "host", None, "submitted", round(now - c.started, 6))
                for cid, c in calls]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:500] if text else type(exc).__name__
