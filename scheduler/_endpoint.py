"""Endpoints: the places calls are delivered to and replies come back to.

The host is one endpoint (it originates calls and serves host-resident named
actors); every actor process is another, reached through a Connection.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING

import structlog

from . import _envelope as env
from ._connection import Connection, ConnectionClosed
from ._fds import close_fds, too_many_fds

if TYPE_CHECKING:
    from ._router import Scheduler

log = structlog.get_logger("actorbox.rpc")

# Only the scheduler reports deaths, stops and refusals; an actor can only succeed,
# fail or acknowledge a cancellation.
_ACTOR_STATUSES = frozenset({env.Status.OK, env.Status.ERROR, env.Status.CANCELLED})


class Endpoint:
    """Something the scheduler delivers calls, replies and cancellations to.

    ``trusted`` is true only for the host: payloads produced by a trusted endpoint
    may carry host-encoded (pickled) values; everything else is decoded with the
    safe decoder. The flag travels with each delivered envelope.
    """

    label: str = "?"
    trusted: bool = False
    # True when the endpoint keeps its own FIFO and enforces max_concurrency itself,
    # so the scheduler may deliver calls ahead of time (pipelining).
    queues_calls: bool = False

    def __init__(self) -> None:
        # local call id (as the endpoint numbered it) -> global call id
        self.outgoing: dict[int, int] = {}
        self.alive = True

    def deliver_call(self, call: env.Call) -> None:
        raise NotImplementedError

    def deliver_reply(self, reply: env.Reply) -> None:
        raise NotImplementedError

    def deliver_cancel(self, call_id: int) -> None:
        raise NotImplementedError


# Bytes an envelope adds to its payload, at most, for the common call (method name, ids,
# flags): below limit - this a frame is certainly small enough, with no encoding to check.
_ENVELOPE_SLACK = 4096


# Descriptors received from one actor that the host may hold at once (a received tensor
# keeps its segment's descriptor open while it lives, a queued call its arguments'): an
# actor must not fill the host's descriptor table, and no ordinary program holds this many.
DEFAULT_MAX_HELD_FDS = 1024


class ConnectionEndpoint(Endpoint):
    """An actor process, reached through its socket.

    Frames that arrive are decoded here and routed by the connection they came
    in on: CALL/REPLY/CANCEL to the scheduler, everything else to ``on_control``.
    A malformed frame raises out of the reader, which ends the connection.
    """

    def __init__(
        self,
        scheduler: Scheduler,
        conn_factory: Callable[[Callable[[bytes, list[int]], None]], Connection],
        on_control: Callable[[env.Message], None],
        label: str,
        *,
        debug_rpc: bool = False,
    ) -> None:
        super().__init__()
        self.queues_calls = True
        self.scheduler = scheduler
        self.label = label
        self.actor_id: int | None = None
        self.on_control = on_control
        self.debug_rpc = debug_rpc
        self.max_held_fds = DEFAULT_MAX_HELD_FDS
        # Descriptors received from this actor that may still be open in the host, each with
        # the identity (st_dev, st_ino) of its file: a number closed and reused for another
        # file no longer counts. Checked lazily (only near the limit, or when asked).
        self._held: dict[int, tuple[int, int]] = {}
        self.conn = conn_factory(self._on_frame)

    def held_fds(self) -> int:
        """Descriptors received from this actor that the host holds open now."""
        self._prune_held()
        return len(self._held)

    def _prune_held(self) -> None:
        held = self._held
        for fd, ident in list(held.items()):
            try:
                st = os.fstat(fd)
            except OSError:
                del held[fd]
                continue
            if (st.st_dev, st.st_ino) != ident:
                del held[fd]

    def _admit(self, fds: tuple[int, ...]) -> str | None:
        """Count ``fds`` as held for this actor; why not, if that takes it over its limit."""
        if len(self._held) + len(fds) > self.max_held_fds:
            self._prune_held()
            if len(self._held) + len(fds) > self.max_held_fds:
                return (f"actor {self.label} sent {len(fds)} descriptors (tensors or arrays) while the host holds "
                        f"{len(self._held)} it sent before, over the limit of {self.max_held_fds} per actor; "
                        "release what you hold from it (drop its tensors and results, await or cancel its "
                        "calls), or send fewer, larger tensors")
        for fd in fds:
            st = os.fstat(fd)
            self._held[fd] = (st.st_dev, st.st_ino)
        return None

    def _on_frame(self, body: bytes, fds: list[int]) -> None:
        try:
            msg = env.decode(body, fds, from_actor=True)  # its kind first: see decode
        except env.EnvelopeError:
            close_fds(fds)
            raise
        if self.debug_rpc:
            _log_frame("in", self.label, msg, len(body))
        t = type(msg)
        if t is env.Reply:
            if msg.status not in _ACTOR_STATUSES or msg.detail is not None:  # type: ignore[union-attr]
                close_fds(msg.fds)  # type: ignore[union-attr]
                raise env.EnvelopeError(f"an actor may not reply with status {msg.status.name}")  # type: ignore[union-attr]
            why = self._admit(msg.fds) if msg.fds else None  # type: ignore[union-attr]
            if why is not None:
                # That result fails, refused like a call over a limit; the actor goes on.
                close_fds(msg.fds)  # type: ignore[union-attr]
                msg = env.Reply(msg.call_id, env.Status.REFUSED, b"", {"message": why}, trusted=True)  # type: ignore[union-attr]
            self.scheduler.reply(self, msg)  # type: ignore[arg-type]
        elif t is env.Call:
            why = self._admit(msg.fds) if msg.fds else None  # type: ignore[union-attr]
            if why is not None:
                close_fds(msg.fds)  # type: ignore[union-attr]
                self.deliver_reply(env.Reply(msg.call_id, env.Status.REFUSED, b"", {"message": why}, trusted=True))  # type: ignore[union-attr]
                return
            self.scheduler.submit(self, msg)  # type: ignore[arg-type]
        elif t is env.Cancel:
            self.scheduler.cancel(self, msg.call_id)  # type: ignore[union-attr]
        else:
            self.on_control(msg)

    def send(self, msg: env.Message, fds: tuple[int, ...] = ()) -> None:
        body = env.encode(msg)
        if self.debug_rpc:
            _log_frame("out", self.label, msg, len(body))
        self.conn.send(body, fds)

    def _send_quietly(self, msg: env.Message, fds: tuple[int, ...] = ()) -> None:
        try:
            self.send(msg, fds)
        except ConnectionClosed:
            pass  # the death handler fails whatever was in flight
        finally:
            close_fds(fds)

    def _too_big(self, msg: env.Call | env.Reply) -> str | None:
        """Why ``msg`` can't go to this actor (its frame is over the actor's limit), if so.

        The actor would refuse the frame and drop the connection, dying with every call
        it holds; refusing here fails this one message instead."""
        what = "its arguments" if type(msg) is env.Call else "its result"
        too_many = too_many_fds(len(msg.fds), what)
        if too_many is not None:
            return too_many
        limit = self.conn.max_frame
        if type(msg) is env.Call:
            size = len(msg.payload) + len(msg.method) + sum(len(r[1]) for r in msg.resolved)  # type: ignore[union-attr]
        else:
            size = len(msg.payload) if msg.detail is None else limit  # type: ignore[union-attr]
        if size + _ENVELOPE_SLACK <= limit:  # bytes every other field takes together stay under the slack
            return None
        body = env.encode(msg)
        if len(body) <= limit:
            return None
        return (f"{what} encode to {len(body)} bytes, over the {limit}-byte frame limit of actor {self.label}; "
                "pass big data as torch tensors or numpy arrays (they travel in shared memory, not in the "
                "frame), or raise Runtime(max_frame_size=...)")

    def deliver_call(self, call: env.Call) -> None:
        why = self._too_big(call)
        if why is not None:
            close_fds(call.fds)
            self.scheduler.reply(self, env.Reply(call.call_id, env.Status.REFUSED, b"", {"message": why}))
            return
        self._send_quietly(call, call.fds)

    def deliver_reply(self, reply: env.Reply) -> None:
        why = self._too_big(reply)
        if why is not None:
            close_fds(reply.fds)
            reply = env.Reply(reply.call_id, env.Status.REFUSED, b"", {"message": why}, trusted=True)
        self._send_quietly(reply, reply.fds)

    def deliver_cancel(self, call_id: int) -> None:
        self._send_quietly(env.Cancel(call_id))


def _log_frame(direction: str, peer: str, msg: env.Message, size: int) -> None:
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
