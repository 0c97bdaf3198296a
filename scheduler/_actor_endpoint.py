"""An actor process as an endpoint of the scheduler, reached through its Connection.

Everything an actor sends arrives here first: each frame is decoded kind first
(``envelope.decode(from_actor=True)``), checked against what an actor may send, and
routed by the connection it came in on (never by what it claims): CALL, REPLY and
CANCEL to the scheduler, the rest to the supervisor's ``on_control``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import structlog

from . import _envelope as envelope
from ._connection import Connection, ConnectionClosed
from ._endpoint import Endpoint
from ._fds import close_fds, too_many_fds
from ._held_fds import DEFAULT_MAX_HELD_FDS, HeldFds

if TYPE_CHECKING:
    from ._router import Scheduler

log = structlog.get_logger("actorbox.rpc")

# Only the scheduler reports deaths, stops and refusals; an actor can only succeed,
# fail or acknowledge a cancellation.
_ACTOR_STATUSES = frozenset({envelope.Status.OK, envelope.Status.ERROR, envelope.Status.CANCELLED})

# Bytes an envelope adds to its payload, at most, for the common call (method name, ids,
# flags): below limit - this a frame is certainly small enough, with no encoding to check.
_ENVELOPE_SLACK = 4096


class ConnectionEndpoint(Endpoint):
    """An actor process, reached through its socket.

    A malformed frame raises out of the reader, which ends the connection.
    """

    def __init__(
        self,
        scheduler: Scheduler,
        conn_factory: Callable[[Callable[[bytes, list[int]], None]], Connection],
        on_control: Callable[[envelope.Message], None],
        label: str,
        *,
        debug_rpc: bool = False,
        max_held_fds: int = DEFAULT_MAX_HELD_FDS,
    ) -> None:
        super().__init__()
        self.queues_calls = True
        self.scheduler = scheduler
        self.label = label
        self.actor_id: int | None = None
        self.on_control = on_control
        self.debug_rpc = debug_rpc
        self.held = HeldFds(label, max_held_fds)
        self.conn = conn_factory(self._on_frame)
        # What a read of several frames sets off (replies passed on, the task pool's next tasks)
        # goes out in one write per actor at the read's end (see scheduler._connection).
        self.conn.batch_writes = True

    def held_fds(self) -> int:
        """Descriptors received from this actor that the host holds open now."""
        return self.held.count()

    def _on_frame(self, body: bytes, fds: list[int]) -> None:
        try:
            msg = envelope.decode(body, fds, from_actor=True)  # its kind first: see decode
        except envelope.EnvelopeError:
            close_fds(fds)
            raise
        if self.debug_rpc:
            _log_frame("in", self.label, msg, len(body))
        if isinstance(msg, envelope.Reply):
            if msg.status not in _ACTOR_STATUSES or msg.detail is not None:
                close_fds(msg.fds)
                raise envelope.EnvelopeError(f"an actor may not reply with status {msg.status.name}")
            why = self.held.admit(msg.fds) if msg.fds else None
            if why is not None:
                # That result fails, refused like a call over a limit; the actor goes on.
                close_fds(msg.fds)
                msg = envelope.Reply(msg.call_id, envelope.Status.REFUSED, b"", {"message": why}, trusted=True)
            self.scheduler.reply(self, msg)
        elif isinstance(msg, envelope.Call):
            why = self.held.admit(msg.fds) if msg.fds else None
            if why is not None:
                close_fds(msg.fds)
                self.deliver_reply(envelope.Reply(msg.call_id, envelope.Status.REFUSED, b"", {"message": why},
                                                  trusted=True))
                return
            self.scheduler.route(self, msg)
        elif isinstance(msg, envelope.Cancel):
            self.scheduler.cancel(self, msg.call_id)
        else:
            self.on_control(msg)

    def send(self, msg: envelope.Message, fds: tuple[int, ...] = ()) -> None:
        body = envelope.encode(msg)
        if self.debug_rpc:
            _log_frame("out", self.label, msg, len(body))
        self.conn.send(body, fds)

    def _send_quietly(self, msg: envelope.Message, fds: tuple[int, ...] = ()) -> None:
        try:
            self.send(msg, fds)
        except ConnectionClosed:
            pass  # the death handler fails whatever was in flight
        finally:
            close_fds(fds)

    def _too_big(self, msg: envelope.Call | envelope.Reply) -> str | None:
        """Why ``msg`` can't go to this actor (its frame is over the actor's limit), if so.

        The actor would refuse the frame and drop the connection, dying with every call
        it holds; refusing here fails this one message instead."""
        is_call = isinstance(msg, envelope.Call)
        what = "its arguments" if is_call else "its result"
        too_many = too_many_fds(len(msg.fds), what)
        if too_many is not None:
            return too_many
        limit = self.conn.max_frame
        if isinstance(msg, envelope.Call):
            size = len(msg.payload) + len(msg.method) + sum(len(r[1]) for r in msg.resolved)
        else:
            size = len(msg.payload) if msg.detail is None else limit
        if size + _ENVELOPE_SLACK <= limit:  # bytes every other field takes together stay under the slack
            return None
        body = envelope.encode(msg)
        if len(body) <= limit:
            return None
        return (f"{what} encode to {len(body)} bytes, over the {limit}-byte frame limit of actor {self.label}; "
                "pass big data as torch tensors or numpy arrays (they travel in shared memory, not in the "
                "frame), or raise Runtime(max_frame_size=...)")

    def deliver_call(self, call: envelope.Call) -> None:
        why = self._too_big(call)
        if why is not None:
            close_fds(call.fds)
            self.scheduler.reply(self, envelope.Reply(call.call_id, envelope.Status.REFUSED, b"", {"message": why}))
            return
        self._send_quietly(call, call.fds)

    def deliver_reply(self, reply: envelope.Reply) -> None:
        why = self._too_big(reply)
        if why is not None:
            close_fds(reply.fds)
            reply = envelope.Reply(reply.call_id, envelope.Status.REFUSED, b"", {"message": why}, trusted=True)
        self._send_quietly(reply, reply.fds)

    def deliver_cancel(self, call_id: int) -> None:
        self._send_quietly(envelope.Cancel(call_id))


def _log_frame(direction: str, peer: str, msg: envelope.Message, size: int) -> None:
    fields: dict[str, object] = {"direction": direction, "peer": peer, "kind": type(msg).__name__.lower(),
                                 "bytes": size}
    for attr in ("call_id", "target", "method", "status", "parent_call_id"):
        v = getattr(msg, attr, None)
        if v is not None:
            fields[attr] = int(v) if attr == "status" else v
    fds = getattr(msg, "fds", ())
    if fds:
        fields["fds"] = len(fds)
    log.debug("rpc.frame", **fields)
