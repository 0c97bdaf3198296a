"""The caller side of calls, shared by the host and actor processes.

A Caller numbers its calls, keeps their Futures until the reply arrives, and
turns replies into values or exceptions. The host's caller hands calls to the
scheduler directly; an actor's caller writes them to its socket.
"""

from __future__ import annotations

import contextvars
import itertools
from typing import Any

from scheduler import envelope as env

from . import _errors
from ._codec import Codec
from ._future import Future, _Raise, error_for

# The call this code is running on behalf of (its id as known to the scheduler),
# so nested calls carry their parent and re-entrant chains can be admitted.
current_call: contextvars.ContextVar[int | None] = contextvars.ContextVar("actorbox_current_call", default=None)


class Caller:
    codec: Codec

    def __init__(self) -> None:
        self._local_ids = itertools.count(1)
        self.pending: dict[int, Future[Any]] = {}

    # -- to implement ------------------------------------------------------------

    def _send_call(self, call: env.Call) -> None:
        raise NotImplementedError

    def _send_cancel(self, local_id: int) -> None:
        raise NotImplementedError

    def on_loop_thread(self) -> bool:
        raise NotImplementedError

    def get_actor(self, name: str) -> Any:
        raise NotImplementedError

    # -- shared ------------------------------------------------------------------

    def submit(self, actor_id: int, label: str, method: str, payload: bytes,
               fds: tuple[int, ...] = ()) -> Future[Any]:
        return self._submit(actor_id, label, method, payload, fds, current_call.get())

    def _submit(self, actor_id: int, label: str, method: str, payload: bytes, fds: tuple[int, ...],
                parent: int | None) -> Future[Any]:
        lid = next(self._local_ids)
        fut: Future[Any] = Future(self, lid, label, method)
        self.pending[lid] = fut
        self._send_call(env.Call(lid, actor_id, method, payload, parent, fds=fds))
        return fut

    def cancel(self, fut: Future[Any]) -> None:
        if self.pending.pop(fut.call_id, None) is not None:
            self._send_cancel(fut.call_id)
            fut._resolve(env.Reply(fut.call_id, env.Status.CANCELLED))

    def on_reply(self, reply: env.Reply) -> None:
        fut = self.pending.pop(reply.call_id, None)
        if fut is not None and reply.status == env.Status.OK:
            fut._resolve(reply)  # the Future owns the reply's fds until it is decoded (or dropped)
            return
        for fd in reply.fds:  # only a result may carry descriptors
            _close(fd)
        if fut is not None:
            fut._resolve(env.Reply(reply.call_id, reply.status, reply.payload, reply.detail, reply.trusted))

    def fail_all(self, reply_for: Any) -> None:
        """Resolve every pending Future with ``reply_for(local_id)`` (the connection is gone)."""
        pending, self.pending = self.pending, {}
        for lid, fut in pending.items():
            fut._resolve(reply_for(lid))

    def outcome(self, fut: Future[Any], reply: env.Reply) -> Any:
        status = reply.status
        if status == env.Status.OK:
            try:
                if not reply.payload:
                    return None
                return self.codec.loads_fds(reply.payload, reply.trusted, reply.fds)
            except _errors.SerializationError as exc:
                return _Raise(exc)
        if status == env.Status.ERROR:
            error: object
            try:
                error = self.codec.loads(reply.payload, reply.trusted)
            except _errors.SerializationError as err:
                error = err
            if not isinstance(error, BaseException):
                error = _errors.ProtocolError(
                    f"{fut.actor}.{fut.method}() replied with an error that is not an exception", actor=fut.actor)
            if isinstance(error, _errors.RemoteError):
                error.actor, error.method = fut.actor, fut.method  # type: ignore[attr-defined]
            return _Raise(error)
        return _Raise(error_for(status.name, reply.detail, fut.actor, fut.method, fut.call_id))


def _close(fd: int) -> None:
    import os

    try:
        os.close(fd)
    except OSError:
        pass
