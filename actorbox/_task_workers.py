"""``WorkerSet``: the task pool's worker actors: started on demand, reused, drained, retired when idle."""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio.abc

from scheduler import Scheduler

from ._actors import StartRequest
from ._task_worker import TaskWorker

# Seconds a worker may go on running a cancelled task (a sync function, which can't be
# interrupted) before it is killed and its resources given back.
DRAIN_S = 1.0

if TYPE_CHECKING:
    from ._actors import ActorTable
    from ._resources import Resources
    from ._task_specs import TaskSpec


@dataclass(slots=True, eq=False)
class Worker:
    """One worker actor of the pool."""

    actor_id: int
    label: str
    token: bytes
    kind: Hashable
    loaded: set[str] = field(default_factory=set)  # keys of the tasks it can run
    task: Any = None  # the pool's task running (or draining) on it
    idle_since: float = 0.0


class WorkerSet:
    """Workers by kind: idle ones to reuse, starting ones, draining ones; at most ``max_workers``."""

    def __init__(self, scheduler: Scheduler, actors: ActorTable, tg: anyio.abc.TaskGroup, resources: Resources,
                 log: Any, idle_s: float, closing: Callable[[], bool]) -> None:
        self.scheduler = scheduler
        self.actors = actors
        self.tg = tg
        self.log = log
        self.idle_s = idle_s
        self.closing = closing
        # One per CPU (at least one), plus one per GPU: more would only wait for resources.
        self.max_workers = max(1, math.ceil(resources.total["CPU"])) + int(resources.total["GPU"])
        self.workers: dict[int, Worker] = {}  # every live worker, by actor id
        self.idle: dict[Hashable, list[Worker]] = {}
        self.draining: list[Worker] = []  # its task was cancelled while running: busy until it ends there
        self.starting: dict[Hashable, int] = {}
        # Set by the pool: a worker became ready; a worker of a kind could not start.
        self.on_ready: Callable[[], None] = lambda: None
        self.on_start_failed: Callable[[Hashable, BaseException], None] = lambda kind, exc: None

    def take_idle(self, kind: Hashable) -> Worker | None:
        """An idle, alive worker of ``kind`` (taken out of the idle list), or None."""
        idle = self.idle.get(kind)
        while idle:
            w = idle.pop()
            a = self.scheduler.actors.get(w.actor_id)
            if a is not None and a.endpoint is not None and a.closed is None:
                return w
            self.drop(w)  # died while idle
        return None

    def maybe_start(self, spec: TaskSpec, kind: Hashable, gpu_ids: tuple[int, ...], waiting: int) -> None:
        """Start one more worker of ``kind`` (``spec``'s, with ``gpu_ids`` visible) if ``waiting`` tasks of it
        outnumber those starting."""
        starting = self.starting.get(kind, 0)
        if self.closing() or starting >= waiting:
            return
        if len(self.workers) + sum(self.starting.values()) >= self.max_workers:
            # Full: an idle worker of another kind makes room (it would be retired anyway).
            other = next((w for k, ws in self.idle.items() if k != kind for w in ws), None)
            if other is None:
                return
            self.idle[other.kind].remove(other)
            self.retire(other)
        self.starting[kind] = starting + 1
        self.tg.start_soon(self._start, spec, kind, gpu_ids)

    async def _start(self, spec: TaskSpec, kind: Hashable, gpu_ids: tuple[int, ...]) -> None:
        opts = spec.options.worker_options()
        if gpu_ids:
            opts = dataclasses.replace(opts, gpu_ids=gpu_ids)
        req = StartRequest({"cls": TaskWorker}, "TaskWorker", "task-worker", (), {}, None, opts,
                           list(spec.paths), list(spec.module_paths), spec.requirements)
        try:
            entry = await self.actors.start(req)
        except Exception as exc:
            self.starting[kind] -= 1
            self.on_start_failed(spec.kind, exc)
            return
        except BaseException:
            self.starting[kind] -= 1
            raise
        self.starting[kind] -= 1
        worker = Worker(entry.actor_id, entry.label, entry.token, kind)
        self.workers[worker.actor_id] = worker
        self.to_idle(worker)
        self.on_ready()

    def to_idle(self, worker: Worker) -> None:
        worker.task = None
        worker.idle_since = time.monotonic()
        self.idle.setdefault(worker.kind, []).append(worker)

    def drain(self, worker: Worker, task: Any) -> None:
        """``task`` was cancelled while running on ``worker``: busy until the call ends there."""
        worker.task = task
        worker.idle_since = time.monotonic()  # here: since when it drains
        self.draining.append(worker)

    def drained(self) -> list[Any]:
        """Workers whose cancelled task has ended there are free again (or gone); returns those tasks.

        A sync function can't be interrupted: a worker still running a cancelled task after
        ``DRAIN_S`` is killed, so the task's resources come back in bounded time."""
        done = []
        now = time.monotonic()
        for w in list(self.draining):
            a = self.scheduler.actors.get(w.actor_id)
            gone = a is None or a.endpoint is None or a.closed is not None
            if not gone and a is not None and a.running and now - w.idle_since > DRAIN_S and \
                    w.actor_id in self.workers:
                del self.workers[w.actor_id]
                self.tg.start_soon(self._forget, w, 0.0)
            if a is None or gone or not a.running:
                self.draining.remove(w)
                done.append(w.task)
                if gone:
                    self.drop(w)
                else:
                    self.to_idle(w)
        return done

    def drop(self, worker: Worker) -> None:
        """A worker that died or stopped: forgotten (the actor table reaps it)."""
        if self.workers.pop(worker.actor_id, None) is not None:
            self.tg.start_soon(self._forget, worker)

    def retire(self, worker: Worker) -> None:
        """Stop a worker no longer needed (idle for ``idle_s``, or making room)."""
        if self.workers.pop(worker.actor_id, None) is not None:
            if self.scheduler.log_calls:
                self.log.debug("task_worker.retired", actor=worker.label, idle_s=self.idle_s)
            self.tg.start_soon(self._forget, worker)

    async def _forget(self, worker: Worker, grace: float | None = None) -> None:
        sup = self.actors.supervisors.get(worker.actor_id)
        if grace is not None and sup is not None:
            await sup.stop(grace)  # killed at once: it runs a cancelled task no one waits for
        await self.actors.stop(worker.actor_id)
        self.actors.supervisors.pop(worker.actor_id, None)
        self.scheduler.remove_actor(worker.actor_id)

    def retire_idle(self) -> None:
        """Stop the workers idle for longer than ``idle_s``."""
        now = time.monotonic()
        for idle in self.idle.values():
            for w in [w for w in idle if now - w.idle_since > self.idle_s]:
                idle.remove(w)
                self.retire(w)
