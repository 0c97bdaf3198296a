"""The central router: call table, per-actor FIFO queues, concurrency, re-entrancy.

Every call -- host->actor, actor->host-resident actor, actor->actor -- passes
through ``Scheduler.route`` and every result through ``Scheduler.reply``. The
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

Deadlocks: a nested call that must wait for a slot is checked against the wait-for graph
of the table first (scheduler._deadlock); if it would close a cycle that can never end, it
alone fails (REFUSED, reason "deadlock"), so the others go on. Backpressure: an actor with
``max_pending`` refuses a call while that many calls to it are in the table (REFUSED,
reason "max_pending_calls"), counted here for every caller.

The records it keeps are in scheduler._call_table; calls given Futures as arguments wait
in scheduler._future_args.
"""

from __future__ import annotations

import hmac
import itertools
import secrets
import time
from typing import Any

import structlog

from . import _deadlock
from . import _envelope as envelope
from ._admission import slot_passes_on, starts_at_once
from ._call_table import (
    CANCELLING,
    DELIVERED,
    QUEUED,
    RUNNING,
    WAITING,
    ActorEntry,
    CallEntry,
    CallInfo,
    log_finished,
    over_pending_limit,
    snapshot,
    unservable,
)
from ._endpoint import Endpoint
from ._fds import close_fds
from ._future_args import FutureArgs

log = structlog.get_logger("actorbox")

# Bytes of an actor's reference token: random, so an actor holds a working reference
# only if one reached it (guessing 128 bits is out of reach).
TOKEN_BYTES = 16


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
        self.actors: dict[int, ActorEntry] = {}
        self.names: dict[str, int] = {}
        self._futures = FutureArgs(self.calls, self.actors, self._finish, self._admit_released)
        self._deadlocks = _deadlock.DeadlockDetector(self.calls, self.actors)
        self.log_calls = log_calls
        # Where call events go: this module's structlog logger, unless the owner
        # (the Runtime, while recording a trace) puts something in its place.
        self.log: Any = log

    # -- actors ------------------------------------------------------------------

    def add_actor(self, name: str | None, label: str, max_concurrency: int,
                  max_pending: int | None = None) -> ActorEntry:
        if name is not None and name in self.names:
            raise KeyError(name)
        entry = ActorEntry(next(self._actor_ids), name, label, max_concurrency, secrets.token_bytes(TOKEN_BYTES),
                           max_pending=max_pending)
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

    def detach(self, actor_id: int, status: envelope.Status, detail: dict[str, Any], *, keep_queue: bool) -> None:
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
            self._finish(entry, envelope.Reply(entry.call_id, status, b"", detail))
        a.active = 0
        if not keep_queue:
            while a.queue:
                entry = a.queue.popleft()
                self._finish(entry, envelope.Reply(entry.call_id, status, b"", detail))
            # Calls to it still waiting for Futures passed to them would only fail once
            # those finish (or never, if one never does): they fail now, as a queued one does.
            for entry in [e for e in self.calls.values() if e.actor_id == actor_id and e.state == WAITING]:
                self._finish(entry, envelope.Reply(entry.call_id, status, b"", detail))
        # An endpoint that still serves other actors (the host's, serving every resident) lives on.
        if old is not None and not any(x.endpoint is old for x in self.actors.values()):
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

    def route(self, caller: Endpoint, call: envelope.Call, *, trust: bool | None = None) -> int:
        """Accept a call from ``caller`` and route it to its actor; returns its global call id.
        ``trust``: ``call`` forwards one delivered to ``caller`` (the task pool) with its trust and ``resolved``
        (only host code passes it; an actor's calls never do)."""
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
            caller.deliver_reply(envelope.Reply(call.call_id, envelope.Status.REFUSED, b"", {
                "message": f"{caller.label} has {len(caller.outgoing)} calls in flight (limit "
                           f"{self.max_outgoing}) or reused a call id; await earlier calls first"}, trusted=True))
            return gid
        caller.outgoing[call.call_id] = gid
        if a is None or a.closed is not None:
            self.calls[gid] = entry
            self._finish(entry, unservable(gid, call.target, a))
            close_fds(call.fds)
            return gid
        # Backpressure, counted here so that every caller (host or actor) meets the same limit.
        if a.max_pending is not None and (refusal := over_pending_limit(a, entry)) is not None:
            self.calls[gid] = entry
            close_fds(call.fds)
            self._finish(entry, envelope.Reply(gid, envelope.Status.REFUSED, b"", refusal))
            return gid
        if parent is not None:
            self._deadlocks.link(self.calls[parent], gid)
        if trust is None:
            entry.call = envelope.Call(gid, call.target, call.method, call.payload, parent, trusted=caller.trusted,
                                       fds=call.fds)
        else:  # forwarded by the task pool: its trust, and the results of its Future arguments
            entry.call = envelope.Call(gid, call.target, call.method, call.payload, parent, trusted=trust,
                                       resolved=call.resolved, fds=call.fds)
        self.calls[gid] = entry
        if self.log_calls:
            self.log.debug("call.submitted", actor=a.label, method=call.method, call_id=gid,
                           parent_call_id=parent, caller=caller.label)
        if call.deps:
            self._futures.wait(entry, caller, call.deps)
        else:
            self._admit(a, entry)
        return gid

    def _admit(self, a: ActorEntry, entry: CallEntry) -> None:
        # A re-entrant call must be flagged even within the window: the actor's own
        # FIFO would otherwise hold it behind the very call that waits for it.
        reentrant = (a.endpoint is not None and entry.parent_call_id is not None
                     and _deadlock.reentrant(self.calls, a, entry))
        if (not reentrant and entry.parent_call_id is not None and a.endpoint is not None
                and not starts_at_once(a.active, a.max_concurrency, False)):
            # A nested call that must wait for a slot is the only kind that can close a cycle.
            refusal = self._deadlocks.refusal(entry, a, self.log)
            if refusal is not None:
                self._finish(entry, envelope.Reply(entry.call_id, envelope.Status.REFUSED, b"", refusal))
                return
        if a.endpoint is not None and (reentrant or len(a.running) < a.window):
            self._start(a, entry, reentrant)
        else:
            a.queue.append(entry)

    def _admit_released(self, entry: CallEntry) -> None:
        """``entry``'s Future arguments all arrived: on to its actor, if that can still serve."""
        a = self.actors.get(entry.actor_id)
        if a is None or a.closed is not None:
            self._finish(entry, unservable(entry.call_id, entry.actor_id, a))
            return
        self._admit(a, entry)

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
            call = envelope.Call(call.call_id, call.target, call.method, call.payload, call.parent_call_id,
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
        # Strict FIFO. Re-entrant calls never wait here: route() admits them at
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

    def reply(self, callee: Endpoint, reply: envelope.Reply, *, trusted: bool | None = None) -> None:
        """A result from ``callee``; ignored unless it answers a call delivered to it (``trusted``: see _finish)."""
        entry = self.calls.get(reply.call_id)
        if entry is None or entry.callee is not callee:
            close_fds(reply.fds)
            return
        self._finish(entry, reply, trusted)

    def _finish(self, entry: CallEntry, reply: envelope.Reply, trusted: bool | None = None) -> None:
        """``entry`` ended with ``reply`` (``trusted``: whether its payload is host-encoded, when
        not its callee's trust): out of the table, and the reply on to its caller."""
        del self.calls[entry.call_id]
        a = self.actors.get(entry.actor_id)
        if a is not None:
            if a.running.pop(entry.call_id, None) is not None:
                self._release_slot(a, entry)
            if entry.counted:
                a.unfinished -= 1
        if entry.parent_call_id is not None:
            self._deadlocks.unlink(entry)
        # Descriptors of a call never delivered, or of results it never received, die with it.
        if entry.call is not None:
            close_fds(entry.call.fds)
            entry.call = None
        if entry.results is not None:
            for r in entry.results.values():
                close_fds(r.fds)
            entry.results = None
        if trusted is None:
            trusted = entry.callee.trusted if entry.callee is not None else True
        if entry.dependents:
            self._futures.finished(entry, reply, trusted)
        caller = entry.caller
        waiting = caller.outgoing.pop(entry.caller_local_id, None) == entry.call_id
        if self.log_calls:
            log_finished(self.log, entry, a, reply)
        if waiting and caller.alive:
            caller.deliver_reply(envelope.Reply(entry.caller_local_id, reply.status, reply.payload, reply.detail,
                                                trusted=trusted, fds=reply.fds))
        else:
            close_fds(reply.fds)
        if a is not None and a.queue:
            self._pump(a)

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
            self._finish(entry, envelope.Reply(gid, envelope.Status.CANCELLED))
        elif entry.state == QUEUED:
            a = self.actors.get(entry.actor_id)
            if a is not None:
                try:
                    a.queue.remove(entry)
                except ValueError:
                    pass
            self._finish(entry, envelope.Reply(gid, envelope.Status.CANCELLED))
        elif entry.state in (RUNNING, DELIVERED):
            # The entry stays until the callee acknowledges, so its concurrency
            # slot is not reused while the method may still be running.
            entry.state = CANCELLING
            assert entry.callee is not None
            entry.callee.deliver_cancel(gid)

    # -- inspection --------------------------------------------------------------

    def pending_calls(self) -> list[CallInfo]:
        """A snapshot of every call in flight."""
        return snapshot(self.calls, self.actors)

