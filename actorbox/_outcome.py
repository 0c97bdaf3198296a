"""Turning a call's reply into its value or the exception it raises.

The reply's payload is decoded with the trust the scheduler stamped on it; a failure
becomes an actorbox error that names the call (actor, method, caller's call id), and a
call not run because a Future argument failed names the first failure down the chain.
"""

from __future__ import annotations

from typing import Any

from scheduler import DependencyFailure, close_fds, envelope

from . import _errors
from ._codec import Codec
from ._future import Raised
from ._remote_errors import attribute_error


def outcome(codec: Codec, reply: envelope.Reply, actor: str, method: str, call_id: int, *, ipc: bool) -> Any:
    """The value of ``actor.method()`` [``call_id``] that ``reply`` answers, or a
    :class:`Raised` with its failure. ``ipc``: the result may hold CUDA IPC tensors."""
    status = reply.status
    if status == envelope.Status.OK:
        try:
            if not reply.payload:
                close_fds(reply.fds)  # no value to own them (a forged reply may send some)
                return None
            return codec.loads_fds(reply.payload, reply.trusted, reply.fds, ipc=ipc)
        except _errors.SerializationError as exc:
            return Raised(exc)
    if status == envelope.Status.ERROR:
        not_exception = f"{actor}.{method}() replied with an error that is not an exception"
        error = _decoded_error(codec, reply, actor, not_exception)
        return Raised(attribute_error(error, actor, method, call_id))
    if status == envelope.Status.DEP_FAILED:
        return Raised(dependency_failed(codec, reply, actor, method, call_id))
    return Raised(error_for(status.name, reply.detail, actor, method, call_id))


def _decoded_error(codec: Codec, reply: envelope.Reply, actor: str, not_exception: str) -> BaseException:
    """The exception an error payload holds; a ProtocolError if it holds something else."""
    try:
        error = codec.loads(reply.payload, reply.trusted)
    except _errors.SerializationError as bad:
        return bad
    if isinstance(error, BaseException):
        return error
    return _errors.ProtocolError(not_exception, actor=actor)


def dependency_failed(codec: Codec, reply: envelope.Reply, actor: str, method: str,
                      call_id: int) -> _errors.DependencyFailedError:
    """The error of a call that was not run because a Future argument failed; its cause is
    the first failure down the chain (an argument's call may itself have waited for one)."""
    failure = DependencyFailure.from_detail(reply.detail)
    cause: BaseException
    if reply.payload:  # the first failure raised: its exception travels unchanged
        cause = _decoded_error(codec, reply, actor, "a failed argument's error is not an exception")
    elif failure is None:
        cause = _errors.ProtocolError(f"{actor}.{method}(): a dependency failure without its cause", actor=actor)
    else:
        first = failure.cause
        cause = error_for(first.status, failure.detail, first.actor, first.method, first.caller_call_id)
    hops = failure.hops if failure is not None else 0
    via = f" (through {hops} call{'s' if hops > 1 else ''} that waited for it)" if hops else ""
    error = _errors.DependencyFailedError(
        f"{actor}.{method}() [call {call_id}] was not run: a Future passed to it as an "
        f"argument failed{via} with {type(cause).__name__}: {cause}",
        actor=actor, method=method, call_id=call_id)
    error.__cause__ = cause
    return error


def error_for(status_name: str, detail: dict[str, Any] | None, actor: str, method: str,
              call_id: int) -> _errors.ActorboxError:
    """Build the error for a call that failed without an exception from the callee."""
    d = detail or {}

    def s(key: str) -> Any:
        v = d.get(key)
        return v if v is None or type(v) in (int, str) else str(v)

    if status_name == "DIED":
        return _errors.ActorDiedError(
            s("message") or "", actor=actor, method=method, call_id=call_id, pid=s("pid"),
            exit_code=s("exit_code"), signal=s("signal"), stderr=s("stderr"))
    if status_name == "STOPPED":
        return _errors.ActorStoppedError(s("message") or "", actor=actor, method=method, call_id=call_id)
    if status_name == "NO_ACTOR":
        return _errors.ActorNotFoundError(
            f"no actor with id {d.get('actor_id')} for {method}(); it was never started here or has been removed",
            name=None)
    if status_name == "CANCELLED":
        return _errors.CallCancelledError(
            f"call {actor}.{method}() [call {call_id}] was cancelled", actor=actor, method=method, call_id=call_id)
    # A refusal's reason is the scheduler's (an actor may not reply REFUSED, nor with a detail).
    reason = d.get("reason")
    if reason == "deadlock":
        return _errors.DeadlockError(s("message") or "", actor=actor, method=method, call_id=call_id)
    if reason == "max_pending_calls":
        return _errors.PendingCallsLimitError(
            f"call {actor}.{method}() was refused: {s('message') or status_name.lower()}",
            actor=actor, method=method, call_id=call_id, limit=s("limit"))
    return _errors.CallRefusedError(
        f"call {actor}.{method}() was refused: {s('message') or status_name.lower()}",
        actor=actor, method=method, call_id=call_id)
