"""``RayCaller``: actorbox Futures over Ray ObjectRefs, in the host and in Ray workers.

It is the ``_future.Resolver`` of the Futures it makes, so ``await``, ``.result()``,
cancellation, ``actorbox.wait``/``gather``/``as_completed`` work on them as on the local
backend's, on asyncio and trio alike. Each call's ObjectRef gets a done-callback
(``ObjectRef.future()``: Ray's own thread watches it); the callback resolves the Future,
which wakes its awaiters on the loop that made it. A Future passed as an argument goes to
Ray as its ObjectRef, which Ray resolves before the call runs (the worker decodes it).
Cancelling the awaiting scope calls ``ray.cancel`` on the ref.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import ray
import ray.exceptions

from scheduler import CallInfo, envelope

from .. import _errors
from .._codec import Codec
from .._future import Future, Raised
from .._handle import ActorHandle
from .._remote_errors import attribute_error
from ._wire import HandleRef, decode_outcome, swap


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


@dataclass(slots=True)
class _Call:
    fut: Future[Any]
    ref: Any
    target: Target | None  # None: a task
    deps: list[Future[Any]] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)


class RayCaller:
    """Makes calls and tasks on Ray for one process and resolves their Futures."""

    def __init__(self, codec: Codec, loop: Loop, find: Callable[[int], Target | None],
                 on_handle: Callable[[HandleRef], Target] | None = None) -> None:
        self.codec = codec
        self.loop = loop
        self.find = find  # the target of an actor id
        self.on_handle = on_handle
        self.get_actor_fn: Callable[[str], ActorHandle] | None = None
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self.pending: dict[int, _Call] = {}

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
        with self._lock:
            call = self.pending.pop(fut.call_id, None)
        if call is None:
            return
        try:
            ray.cancel(call.ref, force=False)
        except Exception:
            pass
        fut._resolve(envelope.Reply(fut.call_id, envelope.Status.CANCELLED))

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
        return self.remote(lambda deps, a, kw: target.ray_handle.call.remote(method, deps, *a, **kw),
                           label, method, args, kwargs, target, actor_id)

    def remote(self, send: Callable[[list[Any], tuple[Any, ...], dict[str, Any]], Any], label: str, method: str,
               args: tuple[Any, ...], kwargs: dict[str, Any], target: Target | None,
               actor_id: int = 0) -> Future[Any]:
        """Send one call or task (``send(dep_positions, args, kwargs)`` returns its ObjectRef)."""
        deps: list[Future[Any]] = []
        positions: list[Any] = []
        a = tuple(self._arg(v, i, deps, positions) for i, v in enumerate(args))
        kw = {k: self._arg(v, k, deps, positions) for k, v in kwargs.items()}
        try:
            ref = send(positions, a, kw)
        except ray.exceptions.PendingCallsLimitExceeded as exc:
            return self._failed(label, method, actor_id, _errors.PendingCallsLimitError(
                f"call {label}.{method}() was refused: {exc}", actor=label, method=method, call_id=None))
        call_id = next(self._ids)
        fut: Future[Any] = Future(self, call_id, label, method, actor_id)
        with self._lock:
            self.pending[call_id] = _Call(fut, ref, target, deps)
        ref.future().add_done_callback(lambda cf: self._done(call_id, cf))
        return fut

    def _arg(self, value: Any, where: Any, deps: list[Future[Any]], positions: list[Any]) -> Any:
        if type(value) is Future:
            if value._caller is not self:
                raise _errors.SerializationError("a Future from another Runtime can't be an argument; await it first")
            if value.done():  # finished: its value (or the failure it ends this call with)
                try:
                    return swap(value._outcome(), self._out)
                except BaseException as exc:
                    raise _errors.DependencyFailedError(
                        f"{value.actor}.{value.method}() [call {value.call_id}] failed with "
                        f"{type(exc).__name__}: {exc}", actor=value.actor, method=value.method) from exc
            with self._lock:
                call = self.pending.get(value.call_id)
            if call is None:
                return value.result(0)
            deps.append(value)
            positions.append(where)
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

    def _done(self, call_id: int, cf: Any) -> None:
        """Ray's thread: the call's ref is ready (or failed)."""
        with self._lock:
            call = self.pending.pop(call_id, None)
        if call is None:
            return  # cancelled meanwhile
        try:
            detail: dict[str, Any] = {"wire": cf.result(), "call": call}
        except BaseException as exc:
            detail = {"exc": exc, "call": call}
        call.fut._resolve(envelope.Reply(call_id, envelope.Status.OK, detail=detail))

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
        for dep in call.deps:
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
        with self._lock:
            calls = list(self.pending.items())
        return [CallInfo(cid, c.fut.actor, c.fut.method, "host", None, "submitted", round(now - c.started, 6))
                for cid, c in calls]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:500] if text else type(exc).__name__
