"""The records of the call table: one call in flight, one actor, and their snapshots.

Plain slotted dataclasses that the router mutates in place (no behaviour here beyond
describing themselves), so the router and the Futures-as-arguments bookkeeping share
them without importing each other.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from . import _envelope as envelope
from ._dependency import FailedCall
from ._endpoint import Endpoint

WAITING = "waiting"  # waiting for the results of calls passed to it as arguments (Futures)
QUEUED = "queued"  # waiting in the scheduler for a free slot
DELIVERED = "delivered"  # delivered ahead (pipelining): waiting in the actor's own FIFO
RUNNING = "running"  # running in the actor (as far as the scheduler can tell; see Scheduler._start)
CANCELLING = "cancelling"


class DepResult(NamedTuple):
    """The result of a call another call waits for, as it arrived, and who produced it."""

    status: envelope.Status
    payload: bytes
    detail: dict[str, Any] | None
    trusted: bool  # produced by the host (may hold host-encoded values)
    fds: tuple[int, ...]  # owned by the dependent's entry until delivered or closed
    producer: FailedCall  # its status is filled in only if it failed (see FutureArgs._release)


@dataclass(slots=True, eq=False)
class CallEntry:
    call_id: int
    actor_id: int
    method: str
    caller: Endpoint
    caller_local_id: int
    parent_call_id: int | None
    call: envelope.Call | None  # the envelope to deliver; dropped once dispatched
    submitted_at: float
    state: str = QUEUED
    started_at: float | None = None
    began: bool = False  # holds one of the actor's max_concurrency slots (or runs re-entrantly)
    callee: Endpoint | None = None
    # Futures as arguments: the global ids this call waits for, their results as
    # they arrive, and the calls waiting on this one.
    deps: list[int] | None = None
    results: dict[int, DepResult] | None = None
    dependents: list[int] | None = None
    # The calls this one made that are in the table (scheduler._deadlock: what it waits for).
    children: set[int] | None = None
    counted: bool = False  # counts towards its actor's max_pending (ActorEntry.unfinished)


@dataclass(slots=True, eq=False)
class ActorEntry:
    actor_id: int
    name: str | None
    label: str
    max_concurrency: int
    # What makes a reference to this actor unforgeable: its handles carry it, and a call
    # from an untrusted endpoint is served only when it quotes it. Kept across restarts.
    token: bytes = b""
    endpoint: Endpoint | None = None
    window: int = 1  # calls delivered at once: max_concurrency, plus prefetch if the endpoint queues
    queue: deque[CallEntry] = field(default_factory=deque)
    running: dict[int, CallEntry] = field(default_factory=dict)  # delivered and not answered
    # The actor's own admission, mirrored: slots taken (the actor's "active") and the
    # delivered calls waiting in its FIFO, oldest first. The actor runs them in this
    # order, so a call begins when the reply that frees a slot arrives (to within
    # one message's transit), with no message of its own. The mirror only feeds reports
    # (call states, rt.actors() counts, call.started, the trace); it can lag the actor
    # for a moment (a fire-and-forget re-entrant call, a call the actor refuses at once)
    # and converges on the next reply. Scheduling never reads it: that uses ``running``
    # against ``window`` and the QUEUED state only.
    active: int = 0
    unstarted: deque[CallEntry] = field(default_factory=deque)
    pumping: bool = False  # Scheduler._pump is running for this actor (a call refused on delivery re-enters it)
    # Why calls to this actor cannot be served right now (None while serving or starting).
    closed: tuple[envelope.Status, dict[str, Any]] | None = None
    # Backpressure: calls to it in the table at most (None: no limit), and how many are now
    # (counted only when limited; each such call is counted once and uncounted in _finish).
    max_pending: int | None = None
    unfinished: int = 0


def unservable(call_id: int, actor_id: int, actor: ActorEntry | None) -> envelope.Reply:
    """The reply to a call for an actor that does not exist (or whose reference was not given)
    or that cannot serve now (stopped, failed): the reason it was closed with."""
    if actor is None or actor.closed is None:
        return envelope.Reply(call_id, envelope.Status.NO_ACTOR, b"", {"actor_id": actor_id})
    status, detail = actor.closed
    return envelope.Reply(call_id, status, b"", detail)


def over_pending_limit(actor: ActorEntry, entry: CallEntry) -> dict[str, Any] | None:
    """Count ``entry`` towards ``actor``'s ``max_pending``; or, when that many calls are unfinished
    already, the detail of its refusal (actorbox raises PendingCallsLimitError from it)."""
    limit = actor.max_pending
    if limit is not None and actor.unfinished >= limit:
        return {"reason": "max_pending_calls", "limit": limit,
                "message": f"actor {actor.label} has {actor.unfinished} unfinished calls, its limit "
                           f"(max_pending_calls={limit}); await some of them before calling again, "
                           "or raise max_pending_calls"}
    actor.unfinished += 1
    entry.counted = True
    return None


@dataclass(frozen=True, slots=True)
class CallInfo:
    """A snapshot of one call in flight (``Runtime.pending_calls()``)."""

    call_id: int
    actor: str
    method: str
    caller: str
    parent_call_id: int | None
    state: str
    age_s: float


def snapshot(calls: dict[int, CallEntry], actors: dict[int, ActorEntry]) -> list[CallInfo]:
    """Every call in ``calls`` as a CallInfo, aged now."""
    now = time.monotonic()
    out = []
    for e in calls.values():
        a = actors.get(e.actor_id)
        out.append(CallInfo(e.call_id, a.label if a else str(e.actor_id), e.method, e.caller.label,
                            e.parent_call_id, e.state, round(now - e.submitted_at, 6)))
    return out


def log_finished(log: Any, entry: CallEntry, actor: ActorEntry | None, reply: envelope.Reply) -> None:
    """Log the end of ``entry``'s call: call.finished, call.cancelled or call.failed."""
    started = entry.started_at or entry.submitted_at
    fields = dict(actor=actor.label if actor else entry.actor_id, method=entry.method, call_id=entry.call_id,
                  parent_call_id=entry.parent_call_id,
                  duration_ms=round((time.monotonic() - started) * 1000, 3))
    if not entry.began:
        fields["began"] = False  # ended before it ever ran (queued, or in the actor's FIFO): all wait
    if reply.status == envelope.Status.OK:
        log.debug("call.finished", **fields)
    elif reply.status == envelope.Status.CANCELLED or entry.state == CANCELLING:
        log.debug("call.cancelled", **fields)
    else:
        log.debug("call.failed", status=reply.status.name.lower(), **fields)
