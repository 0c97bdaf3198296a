"""Deadlocks: would admitting this call close a cycle of calls that can never end?

Two answers live here. A call one of whose ancestors runs on its target is re-entrant
(``reentrant``): the target waits on it, so the router admits it past ``max_concurrency``
instead of queueing it. Any other call that must wait for a slot is checked for a cycle.

The scheduler sees every call, so it can keep the wait-for graph of the calls in its table:

- a call *running* on an actor waits for the calls it made that have not finished (its
  children: the scheduler cannot see which of them it awaits, so it takes all of them);
- a call *waiting for a slot* of an actor (queued because the actor runs
  ``max_concurrency`` calls already) waits for that actor's running calls: it starts as
  soon as enough of them end;
- a call *waiting for Futures* given as arguments waits for their calls.

A call is blocked for good when what it waits for is blocked for good: a running call
when one of its children is, a call waiting for a slot when at least ``max_concurrency``
of the actor's running calls are (fewer, and one that ends passes its slot on). The set
of such calls is the greatest fixpoint of that rule over the calls reachable from the
new one, computed by removing, until nothing changes, every call that could go on
(linear: each removal updates the counts of the calls that wait for it).

The check runs only for a nested call (one with a parent) that must wait for a slot:
only such a call can close a cycle (a root call has no caller in the table waiting on
it; a call that starts at once waits for nothing yet). A re-entrant call is admitted
past the limit (scheduler._router) and never waits for a slot. It reports a deadlock
only when the new call lies on a cycle back to its own parent, so a call merely queued
behind calls that are stuck elsewhere is left alone. Cancelling calls are taken as
going on (they end when the callee acknowledges).

What it costs is bounded: one check visits at most ``MAX_VISITS`` calls, and all checks
together at most ``BUDGET_PER_S`` per second (a token bucket of ``BUDGET_BURST``), so an
actor that makes many queued nested calls cannot make the host's loop spend more than a
slice of its time here; a check over budget reports nothing (the call waits, as it would
without detection) and says so in a ``deadlock.check_skipped`` event (at most one a
second). A visit costs ~0.6-1 µs (``python benchmarks/deadlock_check.py``): a check ~5 ms
at most, a burst ~10 ms, and ~2% of the loop while an actor floods it with checks, plus
~1-2 µs per nested call that must wait (the bookkeeping of a check given up).
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

from ._call_table import DELIVERED, QUEUED, RUNNING, WAITING, ActorEntry, CallEntry

# Calls one check may visit; a wait-for graph of real cycles is a handful of calls.
MAX_VISITS = 5000
# Visits all checks may make per second, and at most at once.
BUDGET_PER_S = 20_000
BUDGET_BURST = 10_000
# Seconds between two deadlock.check_skipped events (each says how many were skipped).
REPORT_EVERY_S = 1.0
# Longest parent chain followed when deciding re-entrancy (bounds the walk).
_MAX_ANCESTRY = 1000


def reentrant(calls: dict[int, CallEntry], a: ActorEntry, entry: CallEntry) -> bool:
    """True when an ancestor of ``entry`` is running on ``a`` (so ``a`` waits on it, and queueing
    ``entry`` would deadlock: the router admits it past the limit instead)."""
    pid = entry.parent_call_id
    for _ in range(_MAX_ANCESTRY):
        if pid is None:
            return False
        p = calls.get(pid)
        if p is None:
            return False
        if p.actor_id == a.actor_id and p.state != QUEUED:
            return True
        pid = p.parent_call_id
    return False


class DeadlockDetector:
    """Finds the cycle a new call would close (``cycle``); keeps the check's time budget."""

    def __init__(self, calls: dict[int, CallEntry], actors: dict[int, ActorEntry]) -> None:
        self._calls = calls
        self._actors = actors
        self._tokens = float(BUDGET_BURST)
        self._refilled = time.monotonic()
        self.skipped = 0  # checks given up for the budget, not reported yet
        self._reported = -REPORT_EVERY_S

    def skipped_report(self) -> int:
        """Checks skipped since the last report, when one is due (at most every REPORT_EVERY_S, so
        a flood of skipped checks costs no event each); 0 otherwise."""
        if not self.skipped:
            return 0
        now = time.monotonic()
        if now - self._reported < REPORT_EVERY_S:
            return 0
        n, self.skipped, self._reported = self.skipped, 0, now
        return n

    def link(self, parent: CallEntry, child: int) -> None:
        """``parent`` made call ``child``: it waits for it (until ``unlink``)."""
        if parent.children is None:
            parent.children = {child}
        else:
            parent.children.add(child)

    def unlink(self, entry: CallEntry) -> None:
        """``entry`` left the table: its parent no longer waits for it."""
        p = self._calls.get(entry.parent_call_id) if entry.parent_call_id is not None else None
        if p is not None and p.children is not None:
            p.children.discard(entry.call_id)

    def refusal(self, new: CallEntry, actor: ActorEntry, log: Any) -> dict[str, Any] | None:
        """The refusal detail of ``new``, a nested call that must wait for a slot of ``actor``,
        if it would close a cycle (logged as deadlock.detected); None to let it wait."""
        found = self.cycle(new, actor)
        if found is not None:
            log.warning("deadlock.detected", call_id=new.call_id, actor=actor.label, method=new.method,
                        cycle=[e.call_id for e, _ in found])
            return detail(found)
        skipped = self.skipped_report()
        if skipped:
            log.warning("deadlock.check_skipped", call_id=new.call_id, skipped=skipped)
        return None

    def _spend(self) -> int:
        """Visits this check may make now (0: none left)."""
        now = time.monotonic()
        self._tokens = min(float(BUDGET_BURST), self._tokens + (now - self._refilled) * BUDGET_PER_S)
        self._refilled = now
        return min(MAX_VISITS, int(self._tokens))

    def _waits_for(self, e: CallEntry, new: CallEntry, new_actor: ActorEntry,
                   holders: dict[int, list[CallEntry]]) -> tuple[list[CallEntry], int]:
        """What ``e`` waits for, and how many of those must be blocked for ``e`` to be (0: never);
        ``holders``: each actor's running calls, as far as this check has listed them."""
        if e is new:
            return _holders(new_actor, holders), new_actor.max_concurrency
        state = e.state
        if state == RUNNING and e.began:
            kids = e.children
            if not kids:
                return [], 0
            calls = self._calls
            return [calls[c] for c in kids if c in calls], 1
        if state in (QUEUED, DELIVERED) and not e.began:
            a = self._actors.get(e.actor_id)
            if a is None or a.endpoint is None:
                return [], 0
            return _holders(a, holders), a.max_concurrency
        if state == WAITING and e.deps:
            calls = self._calls
            return [calls[d] for d in e.deps if d in calls], 1
        return [], 0  # cancelling, or waiting for nothing we can see: it goes on

    def cycle(self, new: CallEntry, actor: ActorEntry) -> list[tuple[CallEntry, ActorEntry | None]] | None:
        """The cycle ``new`` would close if it waited for a slot of ``actor``: the calls from
        ``new`` round to its parent, each with its actor (None: no deadlock, or not checked)."""
        parent = self._calls.get(new.parent_call_id) if new.parent_call_id is not None else None
        if parent is None or _unawaited(parent, actor, self._actors):
            return None
        budget = self._spend()
        if budget <= 0:
            self.skipped += 1
            return None
        # 1. The calls reachable from ``new``, what each waits for, who waits for each.
        succ: dict[int, list[CallEntry]] = {}
        need: dict[int, int] = {}
        preds: dict[int, list[int]] = {}
        holders: dict[int, list[CallEntry]] = {}
        todo = deque([new])
        seen = {new.call_id}
        while todo:
            if len(seen) > budget:
                self._tokens -= len(seen)
                self.skipped += 1
                return None
            e = todo.popleft()
            nxt, k = self._waits_for(e, new, actor, holders)
            succ[e.call_id], need[e.call_id] = nxt, k
            for n in nxt:
                preds.setdefault(n.call_id, []).append(e.call_id)
                if n.call_id not in seen:
                    seen.add(n.call_id)
                    todo.append(n)
        self._tokens -= len(seen)
        if parent.call_id not in seen:
            return None  # nothing new waits for leads back to its caller: no cycle through it
        # 2. Remove every call that can go on, until only the blocked ones are left.
        blocked = dict.fromkeys(seen, True)
        count = {cid: len(succ[cid]) for cid in seen}
        gone = deque(cid for cid in seen if need[cid] == 0 or count[cid] < need[cid])
        for cid in gone:
            blocked[cid] = False
        while gone:
            cid = gone.popleft()
            for p in preds.get(cid, ()):
                if blocked[p]:
                    count[p] -= 1
                    if count[p] < need[p]:
                        blocked[p] = False
                        gone.append(p)
        if not blocked[new.call_id] or not blocked[parent.call_id]:
            return None
        # 3. The path from ``new`` to its parent through blocked calls: the cycle to report.
        back: dict[int, CallEntry | None] = {new.call_id: None}
        path_todo = deque([new])
        while path_todo and parent.call_id not in back:
            e = path_todo.popleft()
            for n in succ[e.call_id]:
                if blocked[n.call_id] and n.call_id not in back:
                    back[n.call_id] = e
                    path_todo.append(n)
        if parent.call_id not in back:
            return None
        path: list[CallEntry] = []
        node: CallEntry | None = parent
        while node is not None:
            path.append(node)
            node = back[node.call_id]
        path.reverse()
        return [(e, actor if e is new else self._actors.get(e.actor_id)) for e in path]


def _unawaited(parent: CallEntry, actor: ActorEntry, actors: dict[int, ActorEntry]) -> bool:
    """Whether nothing in the table waits for ``parent`` now, so no cycle can lead back to it from
    a new call to ``actor``: it is a root call (no call waits for its children), no call waits for
    its result as an argument, and no call waits for a slot of its actor (nor will the new one).
    The task pool's calls are such parents: tasks the host submits and the pool passes on to a
    busy worker skip the walk (and its time budget) with this."""
    if parent.parent_call_id is not None or parent.dependents or parent.actor_id == actor.actor_id:
        return False
    pa = actors.get(parent.actor_id)
    return pa is not None and not pa.queue and not pa.unstarted


def _holders(a: ActorEntry, known: dict[int, list[CallEntry]]) -> list[CallEntry]:
    """The calls holding one of ``a``'s slots (running there now), listed once per check."""
    found = known.get(a.actor_id)
    if found is None:
        found = known[a.actor_id] = [e for e in a.running.values() if e.began]
    return found


def describe(cycle: list[tuple[CallEntry, ActorEntry | None]]) -> str:
    """The DeadlockError message for ``cycle`` (from ``DeadlockDetector.cycle``): every
    actor, method and call id in it, and how each waits for the next."""
    def name(e: CallEntry, a: ActorEntry | None) -> str:
        return f"{a.label if a else e.actor_id}.{e.method}() [call {e.call_id}]"

    new, new_actor = cycle[0]
    parent, parent_actor = cycle[-1]
    steps = []
    for (e, a), (nxt, nxt_actor) in zip(cycle, cycle[1:] + cycle[:1], strict=True):
        if e is new or (not e.began and e.state in (QUEUED, DELIVERED)):
            max_c = a.max_concurrency if a else "?"
            steps.append(f"{name(e, a)} would wait for a free slot of {a.label if a else e.actor_id} "
                         f"(max_concurrency={max_c}), held by {name(nxt, nxt_actor)}")
        else:
            steps.append(f"{name(e, a)} waits for {name(nxt, nxt_actor)}")
    return (f"calling {name(new, new_actor)} from {name(parent, parent_actor)} would deadlock, so it fails "
            f"(the other calls go on): " + "; ".join(steps) + ". Raise max_concurrency of one of these "
            "actors, or do not wait for a call into an actor that is busy waiting for you")


def detail(cycle: list[tuple[CallEntry, ActorEntry | None]]) -> dict[str, Any]:
    """The refusal detail of a call that would deadlock (read by actorbox's outcome)."""
    return {"reason": "deadlock", "message": describe(cycle),
            "cycle": [e.call_id for e, _ in cycle]}
