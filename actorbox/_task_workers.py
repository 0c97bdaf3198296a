"""``WorkerSet``: the task pool's worker actors: started on demand, reused, drained, retired when idle."""

from __future__ import annotations

import dataclasses
import math
import time
from collections import deque
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
# Pipelining: a busy worker is passed more tasks (one runs, the rest wait in its own queue, so
# the next starts there with no round trip to the host), but only tasks of a function whose
# runs took less than PIPELINE_MAX_S (a running mean measured in the host, round trip included),
# behind one as short, and only as many as are expected to run in PIPELINE_MAX_S together (at
# most PIPELINE_DEPTH in flight): a task queued behind others could wait while a worker
# elsewhere is idle, for that long at most. See docs/architecture.md, "Tasks (issue 18): design".
PIPELINE_DEPTH = 32
# Seconds before another worker of a kind is started after one failed to while others of that kind live.
START_RETRY_S = 1.0
PIPELINE_MAX_S = 0.002

if TYPE_CHECKING:
    from ._actors import ActorTable
    from ._resources import Resources
    from ._task_specs import TaskSpec


@dataclass(slots=True, eq=False)
class Worker:
    """One worker actor of the pool.

    It runs one task at a time, in the order they were passed on: ``tasks[0]`` runs (or is
    about to), the others wait in the worker's own queue (pipelined). The resources of the
    running task are held as the worker's ``grant`` until nothing is in flight there any more,
    so a pipelined task takes them over from the one before it with no round trip."""

    actor_id: int
    label: str
    token: bytes
    kind: Hashable
    loaded: set[str] = field(default_factory=set)  # keys of the tasks it can run
    tasks: deque[Any] = field(default_factory=deque)  # the pool's tasks passed on to it, oldest (running) first
    grant: Any = None  # the resources its tasks run with (a Grant), while any is in flight
    demand: Any = None  # what ``grant`` holds: only tasks asking for exactly this are pipelined to it
    head_since: float = 0.0  # when tasks[0] began (passed on, or the reply before it arrived)
    cancelled: list[int] = field(default_factory=list)  # scheduler ids of its cancelled calls not yet ended
    idle_since: float = 0.0  # since when it is idle; while draining, since when it drains


class WorkerSet:
    """Workers by kind: idle ones to reuse, starting ones, draining ones; at most ``max_workers``."""

    def __init__(self, scheduler: Scheduler, actors: ActorTable, tg: anyio.abc.TaskGroup, resources: Resources,
                 log: Any, idle_s: float, closing: Callable[[], bool]) -> None:
        self.scheduler = scheduler
        self.actors = actors
        self.resources = resources
        self.run_s: dict[str, float] = {}  # by task key: a running mean of its runs' time (see PIPELINE_MAX_S)
        self.tg = tg
        self.log = log
        self.idle_s = idle_s
        self.closing = closing
        # One per CPU (at least one), plus one per GPU: more would only wait for resources.
        self.max_workers = max(1, math.ceil(resources.total["CPU"])) + int(resources.total["GPU"])
        self.workers: dict[int, Worker] = {}  # every live worker, by actor id
        self.idle: dict[Hashable, list[Worker]] = {}
        self.draining: list[Worker] = []  # a call on it was cancelled: busy until that ends there
        self.starting: dict[Hashable, int] = {}
        self.start_failed_at: dict[Hashable, float] = {}  # by kind: a start failed while others of it lived
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
        if kind in self.start_failed_at:  # (the pool's run loop pumps while this holds, so it is tried again)
            if time.monotonic() - self.start_failed_at[kind] < START_RETRY_S:
                return
            del self.start_failed_at[kind]
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
            if not self.closing() and any(w.kind == kind for w in self.workers.values()):
                # Workers of its kind live (this one failed for want of descriptors or memory, say): the
                # queued tasks wait for them rather than fail with it.
                self.log.warning("task_worker.start_failed", error=str(exc), workers_of_its_kind=sum(
                    w.kind == kind for w in self.workers.values()), next_try_s=START_RETRY_S)
                self.start_failed_at[kind] = time.monotonic()
                return
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
        if worker.actor_id not in self.workers:
            return  # killed (or retired) meanwhile
        worker.idle_since = time.monotonic()
        self.idle.setdefault(worker.kind, []).append(worker)

    # -- the tasks in flight on a worker (pipelining) ----------------------------------------

    def short(self, key: str) -> bool:
        """Whether task ``key``'s runs have taken less than PIPELINE_MAX_S (False until one has ended)."""
        return self.run_s.get(key, PIPELINE_MAX_S) < PIPELINE_MAX_S

    def pipeline_target(self, task: Any, loads: dict[int, Any]) -> Worker | None:
        """A busy worker ``task`` (the pool's) may be queued on, the one with the fewest tasks; or None.

        Only a short task the host's own code submitted (its call to the pool has no parent: no call
        in the table waits for it, so queueing it cannot close a cycle of waits that a free worker
        would have broken), not a GPU task (its worker depends on the GPUs free when it starts). The
        worker has the function loaded, holds exactly the task's demand, is not draining, has
        fewer tasks than run in PIPELINE_MAX_S (at most PIPELINE_DEPTH), and runs a short task (no
        function's load, in ``loads``) that began less than PIPELINE_MAX_S ago."""
        spec = task.spec
        if task.call.parent_call_id is not None or spec.demand.gpus or not self.short(spec.key):
            return None
        depth = min(PIPELINE_DEPTH, 1 + int(PIPELINE_MAX_S / max(self.run_s[spec.key], 1e-6)))
        now = time.monotonic()
        best: Worker | None = None
        for w in self.workers.values():
            n = len(w.tasks)
            if (w.kind == spec.kind and 0 < n < depth and (best is None or n < len(best.tasks))
                    and w.demand == spec.demand and spec.key in w.loaded and not w.cancelled
                    and now - w.head_since < PIPELINE_MAX_S and self.short(w.tasks[0].spec.key)
                    and w.tasks[0].local_id not in loads):
                best = w
        return best

    def ended(self, worker: Worker, task: Any, ran: bool) -> Any:
        """``task``'s call on ``worker`` ended (``ran``: with its result or exception); returns the
        task that begins there now (queued behind it), if any."""
        tasks = worker.tasks
        if tasks and tasks[0] is task:
            tasks.popleft()
            now = time.monotonic()
            if ran:
                took, mean = now - worker.head_since, self.run_s.get(task.spec.key)
                self.run_s[task.spec.key] = took if mean is None else mean + (took - mean) * 0.25
            worker.head_since = now
            return tasks[0] if tasks else None
        try:  # refused before it ran (its frame too big for the worker, say)
            tasks.remove(task)
        except ValueError:
            pass
        return None

    def withdraw(self, worker: Worker, task: Any, call_id: int | None) -> None:
        """``task`` on ``worker`` was cancelled (its call ``call_id``, the scheduler's, told so): the
        worker drains it if it may run there still, and the rest go on."""
        tasks = worker.tasks
        if tasks and tasks[0] is task:
            tasks.popleft()
            worker.head_since = time.monotonic()
        else:
            try:
                tasks.remove(task)
            except ValueError:
                pass
        if call_id is not None and call_id in self.scheduler.calls:
            self.drain(worker, call_id)
        self.release_if_free(worker)

    def release_if_free(self, worker: Worker) -> None:
        """If nothing runs on ``worker`` any more, its resources come back and it is idle (a draining
        worker is made idle by ``drained``)."""
        if not self.busy(worker):
            self.resources.release(worker.grant, wake=False)
            worker.grant = None
            if worker not in self.draining:
                self.to_idle(worker)

    def lost(self, worker: Worker) -> tuple[list[Any], Any]:
        """``worker`` died or stopped: its tasks, oldest first, and the one that ran there (None when
        a cancelled call ran ahead of them all); its resources come back."""
        tasks = list(worker.tasks)
        worker.tasks.clear()
        self.resources.release(worker.grant, wake=False)
        worker.grant = None
        self.drop(worker)
        return tasks, (None if worker.cancelled or not tasks else tasks[0])

    def busy(self, worker: Worker) -> bool:
        """Whether anything still runs (or may) on ``worker``: a task, or a cancelled call not ended there."""
        if worker.cancelled:
            calls = self.scheduler.calls
            worker.cancelled = [gid for gid in worker.cancelled if gid in calls]
        return bool(worker.tasks or worker.cancelled)

    def drain(self, worker: Worker, call_id: int) -> None:
        """The call ``call_id`` (the scheduler's) on ``worker`` was cancelled: the worker stays busy
        (its resources held) until the call ends there (see ``drained``)."""
        worker.cancelled.append(call_id)
        if worker not in self.draining:
            worker.idle_since = time.monotonic()  # here: since when it drains
            self.draining.append(worker)

    def drained(self) -> list[Worker]:
        """Draining workers whose cancelled calls have all ended there (or that are gone).

        A sync function can't be interrupted: a worker still running a cancelled call after
        ``DRAIN_S`` is killed (tasks queued behind it there are run again elsewhere), so its
        resources come back in bounded time."""
        done = []
        now = time.monotonic()
        for w in list(self.draining):
            a = self.scheduler.actors.get(w.actor_id)
            gone = a is None or a.endpoint is None or a.closed is not None
            if not gone and self.busy(w) and w.cancelled:
                if now - w.idle_since > DRAIN_S and w.actor_id in self.workers:
                    del self.workers[w.actor_id]
                    self.tg.start_soon(self._forget, w, 0.0)
                continue
            self.draining.remove(w)
            w.cancelled.clear()
            done.append(w)
            if gone:
                self.drop(w)
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
