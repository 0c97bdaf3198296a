"""The central router: call table, per-actor FIFO queues, concurrency, re-entrancy.

Every call -- host->actor, actor->host-resident actor, actor->actor -- passes
through ``Scheduler.submit`` and every result through ``Scheduler.reply``. The
scheduler attributes each message to the endpoint it arrived on (never to what
the message claims), keeps one table of calls in flight, and fails calls with a
status (never an exception object: payloads and errors are the upper layer's)
when their actor dies or stops.

Pipelining: an actor is sent up to ``max_concurrency + prefetch`` calls; the
actor runs them in order, ``max_concurrency`` at a time, so a stream of calls to a
busy actor does not pay a host round trip between each.

Re-entrancy: a call is admitted to an actor past its ``max_concurrency`` when one
of its ancestors (following parent call ids) is running on that actor: the actor
is then waiting, directly or indirectly, on this very call, so queueing it would
deadlock (host -> A -> M -> A). Sibling calls of one root are not re-entrant and
queue like any other call.
"""

from __future__ import annotations

import hmac
import itertools
import secrets
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import structlog

from . import _envelope as env
from ._admission import slot_passes_on, starts_at_once
from ._dependency import DependencyFailure, FailedCall
from ._endpoint import Endpoint
from ._fds import close_fds, dup_all

log = structlog.get_logger("actorbox")

# Longest parent chain followed when deciding re-entrancy (bounds the walk).
_MAX_ANCESTRY = 1000

# Bytes of an actor's reference token: random, so an actor holds a working reference
# only if one reached it (guessing 128 bits is out of reach).
TOKEN_BYTES = 16

WAITING = "waiting"  # waiting for the results of calls passed to it as arguments (Futures)
QUEUED = "queued"  # waiting in the scheduler for a free slot
DELIVERED = "delivered"  # delivered ahead (pipelining): waiting in the actor's own FIFO
RUNNING = "running"  # running in the actor (as far as the scheduler can tell; see _start)
CANCELLING = "cancelling"


class _DepResult(NamedTuple):
    """The result of a call another call waits for, as it arrived, and who produced it."""

    status: env.Status
    payload: bytes
    detail: dict[str, Any] | None
    trusted: bool
    fds: tuple[int, ...]
    producer: FailedCall  # its status is filled in only if it failed (see _release)


@dataclass(slots=True, eq=False)
class CallEntry:
    call_id: int
    actor_id: int
    method: str
    caller: Endpoint
    caller_local_id: int
    parent_call_id: int | None
    call: env.Call | None  # the envelope to deliver; dropped once dispatched
    submitted_at: float
    state: str = QUEUED
    started_at: float | None = None
    began: bool = False  # holds one of the actor's max_concurrency slots (or runs re-entrantly)
    callee: Endpoint | None = None
    # Futures as arguments: the global ids this call waits for, their results as
    # they arrive (_DepResult), and the calls
    # waiting on this one.
    deps: list[int] | None = None
    results: dict[int, _DepResult] | None = None
    dependents: list[int] | None = None


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
    pumping: bool = False  # _pump is running for this actor (a call refused on delivery re-enters it)
    # Why calls to this actor cannot be served right now (None while serving or starting).
    closed: tuple[env.Status, dict[str, Any]] | None = None


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


class Scheduler:
    """Routes envelopes between endpoints; never decodes payloads."""

    def __init__(self, *, log_calls: bool = False, prefetch: int = 64, max_outgoing: int = 10_000) -> None:
        self.prefetch = prefetch
        # Calls one untrusted endpoint may have in flight at once: an actor cannot
        # grow the host's call table without bound.
        self.max_outgoing = max_outgoing
        self._ids = itertools.count(1)
        self._actor_ids = itertools.count(1)
        self.calls: dict[int, CallEntry] = {}
        # Calls whose dependencies have all finished, to release one after another: a
        # failure passed down a chain of Futures releases each link in turn, not a call deeper.
        self._to_release: deque[CallEntry] = deque()
        self._releasing = False
        self.actors: dict[int, ActorEntry] = {}
        self.names: dict[str, int] = {}
        self.log_calls = log_calls
        # Where call events go: this module's structlog logger, unless the owner
        # (the Runtime, while recording a trace) puts something in its place.
        self.log: Any = log

    # -- actors ------------------------------------------------------------------

    def add_actor(self, name: str | None, label: str, max_concurrency: int) -> ActorEntry:
        if name is not None and name in self.names:
            raise KeyError(name)
        entry = ActorEntry(next(self._actor_ids), name, label, max_concurrency, secrets.token_bytes(TOKEN_BYTES))
        self.actors[entry.actor_id] = entry
        if name is not None:
            self.names[name] = entry.actor_id
        return entry

    def name_table(self) -> dict[str, tuple[int, bytes]]:
        """Every registered name with its actor id and token: what an actor needs to look one up."""
        return {name: (aid, self.actors[aid].token) for name, aid in self.names.items()}

    def attach(self, actor_id: int, endpoint: Endpoint) -> None:
        """The actor is ready to serve through ``endpoint``; queued calls start."""
        a = self.actors[actor_id]
        a.endpoint = endpoint
        a.window = a.max_concurrency + (self.prefetch if endpoint.queues_calls else 0)
        a.closed = None
        self._pump(a)

    def detach(self, actor_id: int, status: env.Status, detail: dict[str, Any], *, keep_queue: bool) -> None:
        """The actor's endpoint is gone: fail its running calls with ``status``.

        Queued calls wait for a restart when ``keep_queue``, else fail too, and
        so does every later call until ``attach``. Calls the dead endpoint had
        made to others are cancelled there and their replies dropped.
        """
        a = self.actors.get(actor_id)
        if a is None:
            return
        old = a.endpoint
        a.endpoint = None
        if not keep_queue:
            a.closed = (status, detail)
        a.unstarted.clear()  # nothing more begins on the dead endpoint
        for entry in list(a.running.values()):
            self._finish(entry, env.Reply(entry.call_id, status, b"", detail))
        a.active = 0
        if not keep_queue:
            while a.queue:
                entry = a.queue.popleft()
                self._finish(entry, env.Reply(entry.call_id, status, b"", detail))
            # Calls to it still waiting for Futures passed to them would only fail once
            # those finish (or never, if one never does): they fail now, as a queued one does.
            for entry in [e for e in self.calls.values() if e.actor_id == actor_id and e.state == WAITING]:
                self._finish(entry, env.Reply(entry.call_id, status, b"", detail))
        if old is not None:
            self.forget_caller(old)

    def forget_caller(self, endpoint: Endpoint) -> None:
        """An endpoint went away: cancel the calls it was waiting on."""
        endpoint.alive = False
        for gid in list(endpoint.outgoing.values()):
            self._cancel_entry(gid)
        endpoint.outgoing.clear()

    def remove_actor(self, actor_id: int) -> None:
        a = self.actors.pop(actor_id, None)
        if a is not None and a.name is not None and self.names.get(a.name) == actor_id:
            del self.names[a.name]

    # -- calls -------------------------------------------------------------------

    def submit(self, caller: Endpoint, call: env.Call) -> int:
        """Accept a call from ``caller``; returns its global call id."""
        gid = next(self._ids)
        now = time.monotonic()
        parent = call.parent_call_id
        if parent is not None:
            p = self.calls.get(parent)
            # A caller may only name as parent a call it is itself serving.
            if p is None or p.callee is not caller or p.state == QUEUED:
                parent = None
        a = self.actors.get(call.target)
        if a is not None and not caller.trusted and not hmac.compare_digest(call.token, a.token):
            # A reference the caller was never given (a guessed id, a forged token) is
            # answered exactly as an id that does not exist: it learns nothing either way.
            a = None
        entry = CallEntry(gid, call.target, call.method, caller, call.call_id, parent, None, now)
        if call.call_id in caller.outgoing or (not caller.trusted and len(caller.outgoing) >= self.max_outgoing):
            # Over the in-flight limit, or reusing a live call id (which would orphan
            # the earlier call): refuse this call alone; it never enters the table.
            close_fds(call.fds)
            caller.deliver_reply(env.Reply(call.call_id, env.Status.REFUSED, b"", {
                "message": f"{caller.label} has {len(caller.outgoing)} calls in flight (limit "
                           f"{self.max_outgoing}) or reused a call id; await earlier calls first"}, trusted=True))
            return gid
        caller.outgoing[call.call_id] = gid
        if a is None or a.closed is not None:
            status, detail = (env.Status.NO_ACTOR, {"actor_id": call.target}) if a is None else a.closed  # type: ignore[misc]
            self.calls[gid] = entry
            self._finish(entry, env.Reply(gid, status, b"", detail))
            close_fds(call.fds)
            return gid
        entry.call = env.Call(gid, call.target, call.method, call.payload, parent, trusted=caller.trusted, fds=call.fds)
        self.calls[gid] = entry
        if self.log_calls:
            self.log.debug("call.submitted", actor=a.label, method=call.method, call_id=gid,
                           parent_call_id=parent, caller=caller.label)
        if call.deps:
            deps = [caller.outgoing.get(lid) for lid in call.deps]
            if any(d is None or d not in self.calls or d == gid for d in deps):
                self._finish(entry, env.Reply(gid, env.Status.REFUSED, b"", {
                    "message": "an argument is a Future of a call that is not in flight from this caller; "
                               "await it and pass its value"}))
                return gid
            entry.state = WAITING
            entry.deps = deps  # type: ignore[assignment]
            entry.results = {}
            for d in dict.fromkeys(deps):
                dep = self.calls[d]  # type: ignore[index]
                if dep.dependents is None:
                    dep.dependents = []
                dep.dependents.append(gid)
            return gid
        self._admit(a, entry)
        return gid

    def _admit(self, a: ActorEntry, entry: CallEntry) -> None:
        # A re-entrant call must be flagged even within the window: the actor's own
        # FIFO would otherwise hold it behind the very call that waits for it.
        reentrant = (a.endpoint is not None and entry.parent_call_id is not None
                     and self._reentrant(a, entry))
        if a.endpoint is not None and (reentrant or len(a.running) < a.window):
            self._start(a, entry, reentrant)
        else:
            a.queue.append(entry)

    def _dep_finished(self, dep: CallEntry, reply: env.Reply, trusted: bool) -> None:
        """``dep`` finished: hand its result to the calls that wait for it."""
        for gid in dep.dependents or ():
            d = self.calls.get(gid)
            if d is None or d.state != WAITING or d.results is None or d.deps is None:
                continue
            a = self.actors.get(dep.actor_id)
            who = FailedCall(a.label if a else str(dep.actor_id), dep.method, dep.caller_local_id, "")
            try:
                fds = dup_all(reply.fds)
            except OSError as exc:  # out of descriptors: this dependent fails, the reply goes on
                d.results[dep.call_id] = _DepResult(env.Status.REFUSED, b"", {"message": (
                    f"the host could not hand this result on ({exc.strerror}); close files it holds or "
                    "raise its descriptor limit (ulimit -n)")}, True, (), who)
            else:
                d.results[dep.call_id] = _DepResult(reply.status, reply.payload, reply.detail, trusted, fds, who)
            if all(g in d.results for g in d.deps):
                self._to_release.append(d)
        if self._releasing:
            return  # the release loop below, further up this stack, takes them
        self._releasing = True
        try:
            while self._to_release:
                self._release(self._to_release.popleft())
        finally:
            self._releasing = False

    def _release(self, d: CallEntry) -> None:
        """All of ``d``'s dependencies finished: fail it with the first failure, or admit it."""
        assert d.results is not None and d.deps is not None and d.call is not None
        results = [d.results[g] for g in d.deps]
        failed = next((r for r in results if r.status != env.Status.OK), None)
        if failed is not None:
            # The first failure down the chain, as a structured value (see _dependency): its
            # error payload travels on unchanged, decoded by the caller with its producer's trust.
            dep = FailedCall(failed.producer.actor, failed.producer.method, failed.producer.caller_call_id,
                             failed.status.name)
            info = DependencyFailure.of(dep, failed.detail).to_detail()
            self._finish(d, env.Reply(d.call_id, env.Status.DEP_FAILED, failed.payload, info), trusted=failed.trusted)
            return
        call = d.call
        # A Future passed twice shares one result: each later use gets its own descriptors,
        # so every fd in the call is distinct and closed exactly once.
        seen: set[int] = set()
        fdsets: list[tuple[int, ...]] = []
        for g, r in zip(d.deps, results, strict=True):
            fdsets.append(dup_all(r.fds) if g in seen else r.fds)
            seen.add(g)
        d.call = env.Call(call.call_id, call.target, call.method, call.payload, call.parent_call_id,
                          trusted=call.trusted,
                          resolved=tuple((int(r.status), r.payload, r.trusted, len(f))
                                         for r, f in zip(results, fdsets, strict=True)),
                          fds=call.fds + tuple(fd for f in fdsets for fd in f))
        d.results = None
        d.state = QUEUED
        a = self.actors.get(d.actor_id)
        if a is None or a.closed is not None:
            status, detail = (env.Status.NO_ACTOR, {"actor_id": d.actor_id}) if a is None else a.closed  # type: ignore[misc]
            self._finish(d, env.Reply(d.call_id, status, b"", detail))
            return
        self._admit(a, d)

    def _reentrant(self, a: ActorEntry, entry: CallEntry) -> bool:
        """True when an ancestor of ``entry`` is running on ``a`` (so ``a`` waits on it)."""
        pid = entry.parent_call_id
        for _ in range(_MAX_ANCESTRY):
            if pid is None:
                return False
            p = self.calls.get(pid)
            if p is None:
                return False
            if p.actor_id == a.actor_id and p.state != QUEUED:
                return True
            pid = p.parent_call_id
        return False

    def _start(self, a: ActorEntry, entry: CallEntry, reentrant: bool) -> None:
        assert a.endpoint is not None and entry.call is not None
        entry.callee = a.endpoint
        a.running[entry.call_id] = entry
        # The actor admits a call at once when re-entrant or a slot is free, else
        # queues it in its FIFO: one rule, scheduler._admission, for both.
        if starts_at_once(a.active, a.max_concurrency, reentrant):
            a.active += 1
            self._began(a, entry)
        else:
            entry.state = DELIVERED
            a.unstarted.append(entry)
        call, entry.call = entry.call, None
        if reentrant:
            call = env.Call(call.call_id, call.target, call.method, call.payload, call.parent_call_id,
                            trusted=call.trusted, reentrant=True, resolved=call.resolved, fds=call.fds)
        a.endpoint.deliver_call(call)

    def _began(self, a: ActorEntry, entry: CallEntry) -> None:
        entry.began = True
        entry.started_at = time.monotonic()
        if entry.state != CANCELLING:
            entry.state = RUNNING
        if self.log_calls:
            self.log.debug("call.started", actor=a.label, method=entry.method, call_id=entry.call_id,
                           parent_call_id=entry.parent_call_id)

    def _release_slot(self, a: ActorEntry, entry: CallEntry) -> None:
        """``entry`` left the actor: its slot passes to the oldest waiting call (as the actor does)."""
        if not entry.began:
            try:
                a.unstarted.remove(entry)
            except ValueError:
                pass
        elif slot_passes_on(a.active, a.max_concurrency, len(a.unstarted)):
            self._began(a, a.unstarted.popleft())
        else:
            a.active -= 1

    def _pump(self, a: ActorEntry) -> None:
        # Strict FIFO. Re-entrant calls never wait here: submit() admits them at
        # once, since an ancestor of theirs is running on the actor.
        # Not re-entered: a call refused on delivery finishes at once and would pump again
        # from inside this loop (one level per refused call); this loop picks up after it.
        if a.pumping:
            return
        a.pumping = True
        try:
            queue = a.queue
            while queue and a.endpoint is not None and len(a.running) < a.window:
                self._start(a, queue.popleft(), False)
        finally:
            a.pumping = False

    def reply(self, callee: Endpoint, reply: env.Reply) -> None:
        """A result from ``callee``; ignored unless it answers a call delivered to it."""
        entry = self.calls.get(reply.call_id)
        if entry is None or entry.callee is not callee:
            close_fds(reply.fds)
            return
        self._finish(entry, reply)

    def _finish(self, entry: CallEntry, reply: env.Reply, *, trusted: bool | None = None) -> None:
        del self.calls[entry.call_id]
        a = self.actors.get(entry.actor_id)
        if a is not None and a.running.pop(entry.call_id, None) is not None:
            self._release_slot(a, entry)
        # Descriptors of a call never delivered, or of results it never received, die with it.
        if entry.call is not None:
            close_fds(entry.call.fds)
            entry.call = None
        for r in (entry.results or {}).values():
            close_fds(r[4])
        entry.results = None
        if trusted is None:
            trusted = entry.callee.trusted if entry.callee is not None else True
        if entry.dependents:
            self._dep_finished(entry, reply, trusted)
        caller = entry.caller
        waiting = caller.outgoing.pop(entry.caller_local_id, None) == entry.call_id
        if self.log_calls:
            self._log_finish(entry, a, reply)
        if waiting and caller.alive:
            caller.deliver_reply(env.Reply(entry.caller_local_id, reply.status, reply.payload, reply.detail,
                                           trusted=trusted, fds=reply.fds))
        else:
            close_fds(reply.fds)
        if a is not None and a.queue:
            self._pump(a)

    def _log_finish(self, entry: CallEntry, a: ActorEntry | None, reply: env.Reply) -> None:
        started = entry.started_at or entry.submitted_at
        fields = dict(actor=a.label if a else entry.actor_id, method=entry.method, call_id=entry.call_id,
                      parent_call_id=entry.parent_call_id,
                      duration_ms=round((time.monotonic() - started) * 1000, 3))
        if not entry.began:
            fields["began"] = False  # ended before it ever ran (queued, or in the actor's FIFO): all wait
        if reply.status == env.Status.OK:
            self.log.debug("call.finished", **fields)
        elif reply.status == env.Status.CANCELLED or entry.state == CANCELLING:
            self.log.debug("call.cancelled", **fields)
        else:
            self.log.debug("call.failed", status=reply.status.name.lower(), **fields)

    def cancel(self, caller: Endpoint, local_call_id: int) -> None:
        """The caller no longer wants the result of its call ``local_call_id``."""
        gid = caller.outgoing.pop(local_call_id, None)
        if gid is not None:
            self._cancel_entry(gid)

    def _cancel_entry(self, gid: int) -> None:
        entry = self.calls.get(gid)
        if entry is None:
            return
        if entry.state == WAITING:
            self._finish(entry, env.Reply(gid, env.Status.CANCELLED))
        elif entry.state == QUEUED:
            a = self.actors.get(entry.actor_id)
            if a is not None:
                try:
                    a.queue.remove(entry)
                except ValueError:
                    pass
            self._finish(entry, env.Reply(gid, env.Status.CANCELLED))
        elif entry.state in (RUNNING, DELIVERED):
            # The entry stays until the callee acknowledges, so its concurrency
            # slot is not reused while the method may still be running.
            entry.state = CANCELLING
            assert entry.callee is not None
            entry.callee.deliver_cancel(gid)

    # -- inspection --------------------------------------------------------------

    def pending_calls(self) -> list[CallInfo]:
        now = time.monotonic()
        out = []
        for e in self.calls.values():
            a = self.actors.get(e.actor_id)
            out.append(CallInfo(e.call_id, a.label if a else str(e.actor_id), e.method, e.caller.label,
                                e.parent_call_id, e.state, round(now - e.submitted_at, 6)))
        return out

