"""Tasks waiting for tasks that can never start: the task pool's deadlock check.

A task that submits a task (directly, or through an actor it calls) and waits for it holds
its worker and its resources meanwhile. When every queued task needs more than is left
once those waiting tasks' holdings are set aside (their CPUs, GPUs, custom amounts, or the
pool's worker slots), none of them can ever start, so the waiting tasks never end: as Ray
without its "a task blocked in get gives its CPU back", they would wait for good. The pool
checks for this while tasks are queued (``TaskPool.run``, a few times a second) and fails
the queued tasks that such a task waits for with ``DeadlockError``, so their callers go on.

Sound under the scheduler's own assumption (``scheduler._deadlock``): a running call waits
for every call it made that has not ended. Whatever else holds resources (actors, workers
running tasks nothing queued waits for, draining workers) is counted as going to give them
back; a deadlock is reported only when no queued task would fit even then.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable, Iterable
from typing import TYPE_CHECKING, Any

from ._resources import CPU, GPU, Demand

if TYPE_CHECKING:
    from scheduler._call_table import CallEntry

    from ._task_workers import Worker, WorkerSet

# Longest chain of parent calls followed from a queued task (bounds the walk).
_MAX_ANCESTRY = 1000


def stuck_tasks(queues: dict[tuple[Hashable, Demand], deque[Any]], workers: WorkerSet,
                total: dict[str, float]) -> list[tuple[Any, str]]:
    """The queued tasks (the pool's) to fail as deadlocked, each with the reason; [] when any
    queued task could still start once whatever is not waiting for a queued task is given back."""
    shapes = [(demand, q) for (_, demand), q in queues.items() if q]
    if not shapes:
        return []
    busy = [w for w in workers.workers.values() if w.tasks or w.grant is not None]
    # Cheap first: if a task fits even with every busy worker holding on, nothing is stuck.
    if _any_fits(shapes, total, busy, workers.max_workers):
        return []
    calls, actors = workers.scheduler.calls, workers.scheduler.actors
    blocked: dict[int, Worker] = {}  # workers running a task that waits for a queued one
    waits: dict[int, bool] = {}  # the calls that wait for a queued task (its ancestors...), walked once each
    nested = [task for _, q in shapes for task in q if task.call.parent_call_id is not None]
    for task in nested:
        _up(task.call.parent_call_id, calls, workers.workers, blocked, waits)
    # An actor whose every slot runs a call that waits serves none of the calls waiting for a slot
    # (or in its own queue): they wait as well, and so does every call up their chains.
    full: set[int] = set()
    grew = bool(waits)
    while grew:
        grew = False
        for aid in {calls[c].actor_id for c in waits if c in calls} - full:
            a = actors.get(aid)
            began = [e for e in a.running.values() if e.began] if a is not None else []
            if a is None or len(began) < a.max_concurrency or any(e.call_id not in waits for e in began):
                continue
            full.add(aid)
            grew = True
            for e in [*a.running.values(), *a.queue]:
                if not e.began and e.call_id not in waits:
                    _up(e.call_id, calls, workers.workers, blocked, waits)
    if not blocked or _any_fits(shapes, total, blocked.values(), workers.max_workers):
        return []
    held = _held(blocked.values())
    what = ", ".join(f"{v:g} {k}" for k, v in held.items() if v > 0) or "nothing"
    return [(task, f"task {task.spec.name}() can never start: {len(blocked)} running task(s) wait for it (or "
                   f"for tasks queued with it, perhaps through calls to actors) while holding {what} of the "
                   f"Runtime's {total[CPU]:g} CPU/{total[GPU]:g} GPU and {len(blocked)} of its "
                   f"{workers.max_workers} task worker(s), leaving too little for any queued task; give the Runtime "
                   "more (Runtime(num_cpus=...)), ask less for the inner tasks, or submit them from the host "
                   "instead of from inside a task")
            for task in nested]


def _up(call_id: int, calls: dict[int, CallEntry], live: dict[int, Worker], blocked: dict[int, Worker],
        memo: dict[int, bool]) -> bool:
    """Whether a call up the chain from ``call_id`` runs on a pool worker (each such worker is put in
    ``blocked``); ``memo`` keeps the answer for every call passed (each waits, as the call it was walked
    from does), so shared chains are walked once."""
    path: list[tuple[int, bool]] = []  # from call_id up: (call id, whether it runs on a worker)
    above = False  # whether a call above the path (memo) runs on a worker, or one above it
    cid: int | None = call_id
    for _ in range(_MAX_ANCESTRY):
        if cid is None:
            break
        if cid in memo:
            above = memo[cid]
            break
        entry = calls.get(cid)
        if entry is None:
            break
        w = live.get(entry.actor_id)
        on_worker = w is not None and entry.began
        if w is not None and on_worker:
            blocked[w.actor_id] = w
        path.append((cid, on_worker))
        cid = entry.parent_call_id
    for c, on_worker in reversed(path):
        above = above or on_worker
        memo[c] = above
    return above


def _held(holders: Iterable[Worker]) -> dict[str, float]:
    held: dict[str, float] = {}
    for w in holders:
        g = w.grant
        if g is not None and not g.released:
            for name, amount in g.demand.items():
                held[name] = held.get(name, 0.0) + amount
    return held


def _any_fits(shapes: list[tuple[Demand, deque[Any]]], total: dict[str, float], holders: Iterable[Worker],
              max_workers: int) -> bool:
    """Whether a queued task's demand fits in ``total`` less what ``holders`` hold, with a worker slot left."""
    holders = list(holders)
    if max_workers - len(holders) < 1:
        return False
    held = _held(holders)
    return any(all(amount <= total.get(name, 0.0) - held.get(name, 0.0) + 1e-9 for name, amount in demand.items())
               for demand, _ in shapes)
