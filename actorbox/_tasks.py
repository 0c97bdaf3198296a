"""``TaskPool``: tasks, run on pooled worker actors (host side).

The pool is an endpoint of the scheduler, registered as the actor ``actorbox.tasks``:
``rt.submit(fn, ...)`` is a call to it whose method is the task's key, routed like any
call (so Futures as arguments are resolved by the scheduler, tensors travel as
segments, and the call is in ``rt.pending_calls()``). The pool queues it until its
resources are free and a worker of its kind is idle, then passes the call on, payload,
descriptors and Future results untouched, to a ``TaskWorker`` actor
(``_task_worker``), and passes the worker's reply back; a short task may be passed to a
busy worker ahead of its turn (pipelining: ``_task_workers.WorkerSet.pipeline_target``).
It never decodes what a caller or a worker sent: a worker's result reaches the caller
with the worker's (untrusted) stamp.

Workers are pooled by kind: who submitted (the host, or one actor: an actor's tasks
never share a process with another's), the environment (dependencies), the sandbox
choice and the function's import roots. They start on demand, at most one per CPU of
the Runtime (at least one), and one idle longer than ``idle_s`` is stopped.

A task whose worker dies is tried again on another worker up to ``max_retries`` times,
then fails with ``TaskFailedError`` listing every attempt's cause; an exception the
task raises is passed back as it is, unless ``retry_exceptions``.
"""

from __future__ import annotations

import itertools
import os
import secrets
import time
from abc import abstractmethod
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc

from scheduler import ActorEntry, Endpoint, Scheduler, close_fds, envelope

from ._errors import ActorboxError, PendingCallsLimitError, TaskFailedError, UsageError
from ._outcome import error_for
from ._resources import Demand, Resources
from ._submit import TASK_LABEL, TASKS_NAME
from ._task_deadlock import stuck_tasks
from ._task_specs import TaskSpec, TaskSpecs
from ._task_workers import Worker, WorkerSet

if TYPE_CHECKING:
    from ._actors import ActorTable
    from ._codec import Codec
    from ._future import Future
    from ._host_caller import HostCaller

DEFAULT_IDLE_S = 30.0
_POOL_ID = 0
_ENDED = (envelope.Status.DIED, envelope.Status.STOPPED, envelope.Status.NO_ACTOR)
_RAN = (envelope.Status.OK, envelope.Status.ERROR)


@dataclass(slots=True, eq=False)
class _Task:
    gid: int  # the scheduler's id of the call to the pool
    seq: int  # submission order (the oldest of several runnable tasks goes first)
    spec: TaskSpec
    call: envelope.Call  # as delivered: payload, trust, Future results, descriptors
    submitted_at: float
    causes: list[str] = field(default_factory=list)
    attempts: int = 0
    worker: Worker | None = None
    local_id: int | None = None  # the call passed on to the worker (or its function's load)
    owns_fds: bool = True  # until its last attempt takes the call's descriptors (earlier ones get duplicates)


class _Endings(Endpoint):
    """How a task's attempt ends (the half of ``TaskPool`` that answers): tried again, failed with
    every cause, or answered; the pool's trace events."""

    scheduler: Scheduler
    codec: Codec
    log: Any
    closing: Callable[[], bool]
    _tasks: dict[int, _Task]

    @abstractmethod
    def _enqueue(self, task: _Task, *, front: bool = False) -> None:
        """Queue ``task`` (again)."""

    def _after_attempt(self, task: _Task, worker: Worker, reply: envelope.Reply) -> None:
        if task.gid not in self._tasks:  # it ended already (the Runtime is closing)
            close_fds(reply.fds)
            return
        status = reply.status
        opts = task.spec.options
        if status == envelope.Status.DIED or (status in _ENDED and not self.closing()):
            died = error_for("DIED", reply.detail, worker.label, task.spec.key, task.gid)
            task.causes.append(str(died))
            if task.attempts <= opts.max_retries:
                self._retry(task, worker)
                return
            self._finish(task, self._error_reply(task, TaskFailedError(
                f"its worker died on all {task.attempts} attempt(s) (max_retries={opts.max_retries})",
                actor=worker.label, method=task.spec.key, call_id=task.gid, pid=_int(reply.detail, "pid"),
                exit_code=_int(reply.detail, "exit_code"), signal=_int(reply.detail, "signal"),
                stderr=_str(reply.detail, "stderr"), causes=task.causes)), True)
        elif status == envelope.Status.ERROR and opts.retry_exceptions and task.attempts <= opts.max_retries:
            close_fds(reply.fds)
            task.causes.append("it raised an exception (retry_exceptions=True)")
            self._retry(task, worker)
        else:
            self._finish(task, reply, reply.trusted)

    def _retry(self, task: _Task, worker: Worker) -> None:
        self._event("task.retried", task, worker=worker.label, attempt=task.attempts, cause=task.causes[-1])
        self._enqueue(task)

    def _finish(self, task: _Task, reply: envelope.Reply, trusted: bool) -> None:
        if self._tasks.pop(task.gid, None) is None:
            close_fds(reply.fds)
            return
        if task.owns_fds:
            task.owns_fds = False
            close_fds(task.call.fds)
        status = reply.status
        if self.scheduler.log_calls:  # (the fields cost more than the check when no one logs)
            self._event("task.finished" if status == envelope.Status.OK else
                        "task.cancelled" if status == envelope.Status.CANCELLED else "task.failed", task,
                        status=status.name.lower(), attempts=task.attempts,
                        duration_ms=round((time.monotonic() - task.submitted_at) * 1000, 3))
        self.scheduler.reply(self, envelope.Reply(task.gid, status, reply.payload, reply.detail, fds=reply.fds),
                             trusted=trusted)

    def _error_reply(self, task: _Task, exc: BaseException) -> envelope.Reply:
        return envelope.Reply(task.gid, envelope.Status.ERROR, self.codec.dumps(exc))

    def _refuse(self, call: envelope.Call, exc: ActorboxError) -> None:
        close_fds(call.fds)
        self.scheduler.reply(self, envelope.Reply(call.call_id, envelope.Status.ERROR, self.codec.dumps(exc)),
                             trusted=True)

    def _event(self, event: str, task: _Task, **fields: Any) -> None:
        if self.scheduler.log_calls:
            self.log.debug(event, task=task.spec.name, call_id=task.gid, **fields)


class TaskPool(_Endings):
    """The scheduler's endpoint for ``actorbox.tasks``: queues, admits and runs tasks on workers."""

    label = TASKS_NAME
    trusted = True  # its own messages (loads, failures) are the host's; workers' replies keep their stamp

    def __init__(self, scheduler: Scheduler, codec: Codec, actors: ActorTable, tg: anyio.abc.TaskGroup,
                 resources: Resources, log: Any, max_pending: int | None, idle_s: float, *,
                 closing: Callable[[], bool]) -> None:
        Endpoint.__init__(self)
        self.scheduler = scheduler
        self.codec = codec
        self.resources = resources
        self.log = log
        self.max_pending = max_pending
        self.closing = closing
        self._seq = itertools.count()
        self._ids = itertools.count(1)
        self.specs = TaskSpecs(resources, actors.supervisors.get)
        self._tasks: dict[int, _Task] = {}  # unfinished, by the scheduler's call id
        self._queues: dict[tuple[Hashable, Demand], deque[_Task]] = {}  # by shape: kind and demand
        self._running: dict[int, _Task] = {}  # by the local id of the call passed on
        self._loads: dict[int, _Task] = {}  # tasks waiting for their function to load, by the load's id
        self.workers = WorkerSet(scheduler, actors, tg, resources, log, idle_s, closing)
        self.workers.on_ready = self._pump
        self.workers.on_start_failed = self._fail_kind
        resources.listeners.append(self._pump)  # an actor that ends gives resources back
        self._pumping = False
        self._pump_again = False
        self.actor_id = _register(scheduler, self)

    # -- submitting (host) -----------------------------------------------------------

    def submit(self, caller: HostCaller, fn: Callable[..., Any], args: tuple[Any, ...],
               kwargs: dict[str, Any]) -> Future[Any]:
        """``rt.submit(fn, ...)``: the task's Future; raises at once when it can never run or is one too many."""
        spec = self.specs.of_function(fn)
        if self.max_pending is not None and len(self._tasks) >= self.max_pending:
            raise PendingCallsLimitError(
                f"task {spec.name}() was refused: {len(self._tasks)} tasks are unfinished, the limit of "
                f"Runtime(max_pending_tasks={self.max_pending}); await some of them first (or raise the limit)",
                actor=TASK_LABEL, method=spec.key, limit=self.max_pending)
        fut: Future[Any] = caller.call(self.actor_id, TASK_LABEL, spec.key, args, kwargs)
        return fut

    # -- the endpoint ----------------------------------------------------------------

    def deliver_call(self, call: envelope.Call) -> None:
        try:
            entry = None if call.trusted else self.scheduler.calls.get(call.call_id)
            spec = self.specs.of_call(call.method, call.trusted, entry.caller if entry is not None else None)
            if spec is None:
                raise UsageError(f"{call.method!r} is no task this Runtime knows; submit a function "
                                 "with rt.submit(fn, ...) or actorbox.submit(fn, ...)")
        except ActorboxError as exc:
            self._refuse(call, exc)
            return
        if self.max_pending is not None and len(self._tasks) >= self.max_pending:
            close_fds(call.fds)
            self.scheduler.reply(self, envelope.Reply(call.call_id, envelope.Status.REFUSED, detail={
                "reason": "max_pending_calls", "limit": self.max_pending,
                "message": f"{len(self._tasks)} tasks are unfinished, the limit of "
                           f"Runtime(max_pending_tasks={self.max_pending}); await some of them first"}))
            return
        task = _Task(call.call_id, next(self._seq), spec, call, submitted_at=time.monotonic())
        self._tasks[call.call_id] = task
        if self.scheduler.log_calls:
            self._event("task.submitted", task)
        if self._queues.get((spec.kind, spec.demand)):
            # Older tasks of its shape wait: it can't run before them, and nothing changed since
            # the last pump left them there (whatever frees a worker or resources pumps).
            self._enqueue(task)
            return
        self._enqueue(task)
        self._pump()

    def deliver_reply(self, reply: envelope.Reply) -> None:
        task = self._loads.pop(reply.call_id, None)
        if task is not None and reply.status == envelope.Status.OK:
            close_fds(reply.fds)
            assert task.worker is not None
            task.worker.loaded.add(task.spec.key)
            self._forward(task, task.worker)
            return
        if task is None:
            task = self._running.pop(reply.call_id, None)
        if task is None:
            close_fds(reply.fds)
            return
        worker = task.worker
        assert worker is not None
        if reply.status in _ENDED:
            self._worker_ended(worker, task, reply)
        else:
            self._attempt_ended(worker, task, reply)
        self._pump()

    def _attempt_ended(self, worker: Worker, task: _Task, reply: envelope.Reply) -> None:
        """``task`` ended on ``worker``, which lives on: the next task queued there begins (it
        keeps the worker's resources), or the worker gives them back and is idle."""
        following = self.workers.ended(worker, task, reply.status in _RAN)
        if following is not None and self.scheduler.log_calls:
            self._event("task.started", following, worker=worker.label, attempt=following.attempts)
        task.worker = task.local_id = None
        self.workers.release_if_free(worker)
        self._after_attempt(task, worker, reply)

    def _worker_ended(self, worker: Worker, task: _Task, reply: envelope.Reply) -> None:
        """``worker`` died or stopped (``reply`` says so for ``task``): the task that ran there is
        tried again or fails (``_after_attempt``); those queued behind it never ran, so they go
        back to the front of their queue as they were, their attempt not counted."""
        tasks, ran = self.workers.lost(worker)
        if not tasks:
            tasks, ran = [task], task
        for t in reversed(tasks):
            if t is not task:
                self._running.pop(t.local_id or 0, None)
                self._loads.pop(t.local_id or 0, None)
            t.worker = t.local_id = None
            if t is ran or self.closing():
                self._after_attempt(t, worker, reply if t is task else
                                    envelope.Reply(t.gid, reply.status, b"", reply.detail))
            elif t.gid in self._tasks:
                t.attempts -= 1
                self._enqueue(t, front=True)

    def deliver_cancel(self, call_id: int) -> None:
        task = self._tasks.get(call_id)
        if task is None:
            return
        if task.worker is None:  # queued: out of its queue, never run
            self._dequeue(task)
            self._finish(task, envelope.Reply(call_id, envelope.Status.CANCELLED), True)
            return
        # Passed on (running there, or queued in the worker: the worker drops it unrun): the
        # worker is told; the caller hears at once. The worker is busy (and its resources held)
        # until the call ends there, or it is killed (WorkerSet.drained).
        worker, lid = task.worker, task.local_id
        assert lid is not None
        self._running.pop(lid, None)
        self._loads.pop(lid, None)
        gid = self.outgoing.get(lid)
        self.scheduler.cancel(self, lid)
        task.worker = task.local_id = None
        self.workers.withdraw(worker, task, gid)
        self._finish(task, envelope.Reply(call_id, envelope.Status.CANCELLED), True)

    # -- queueing and admission --------------------------------------------------------

    def _enqueue(self, task: _Task, *, front: bool = False) -> None:
        key = (task.spec.kind, task.spec.demand)
        q = self._queues.get(key)
        if q is None:
            q = self._queues[key] = deque()
        if front:
            q.appendleft(task)
        else:
            q.append(task)

    def _dequeue(self, task: _Task) -> None:
        q = self._queues.get((task.spec.kind, task.spec.demand))
        if q is not None and task in q:
            q.remove(task)

    def _pump(self) -> None:
        """Run every queued task that fits now, oldest first; a task that does not fit does not
        hold up others of another shape (demand and kind) behind it."""
        if self._pumping:
            self._pump_again = True
            return
        self._pumping = True
        try:
            self._pump_again = True
            while self._pump_again:
                self._pump_again = False
                if self.workers.draining:
                    for drained in self.workers.drained():
                        if drained.actor_id in self.workers.workers:
                            self.workers.release_if_free(drained)
                        elif not drained.tasks:
                            self.resources.release(drained.grant, wake=False)
                queues = list(self._queues.items())
                if len(queues) > 1:
                    queues.sort(key=lambda kq: kq[1][0].seq if kq[1] else -1)
                older_waits = False  # an older task (of another shape) waits: pipeline nothing past it
                for key, q in queues:
                    while q:
                        task = q[0]
                        worker = None
                        if self.resources.fits(task.spec.demand):
                            kind, gpus = _worker_kind(task.spec, self.resources)
                            worker = self.workers.take_idle(kind)
                            if worker is None:
                                self.workers.maybe_start(task.spec, kind, gpus, sum(
                                    len(q) for k, q in self._queues.items() if k[0] == task.spec.kind))
                        if worker is not None:
                            q.popleft()
                            self._dispatch(task, worker)
                            continue
                        worker = None if older_waits else self.workers.pipeline_target(task, self._loads)
                        if worker is None:
                            break
                        q.popleft()
                        task.attempts += 1
                        task.worker = worker
                        worker.tasks.append(task)
                        self._forward(task, worker)
                    if q:
                        older_waits = True
                    elif self._queues.get(key) is q:
                        del self._queues[key]
        finally:
            self._pumping = False

    def _dispatch(self, task: _Task, worker: Worker) -> None:
        """Run ``task`` on ``worker``, idle: it takes the task's resources (held until nothing runs there)."""
        spec = task.spec
        worker.grant = self.resources.acquire(spec.demand)
        worker.demand = spec.demand
        task.worker = worker
        worker.tasks.append(task)
        task.attempts += 1
        if spec.key not in worker.loaded:
            # The task is passed on once the load is done: an actor resolves a call's method
            # when the call arrives, even one queued behind others.
            lid = task.local_id = next(self._ids)
            self._loads[lid] = task
            payload, fds = self.codec.encode_call((spec.key, spec.load), {})
            self.scheduler.route(self, envelope.Call(lid, worker.actor_id, "load", payload, token=worker.token,
                                                     fds=fds))
            return
        self._forward(task, worker)

    def _forward(self, task: _Task, worker: Worker) -> None:
        """Pass ``task`` (in ``worker.tasks``) on to ``worker``: to run now if first there, else queued there."""
        spec = task.spec
        lid = task.local_id = next(self._ids)
        self._running[lid] = task
        call = task.call
        ahead = worker.tasks[0] is not task
        # A task that may be tried again keeps its descriptors; each attempt gets duplicates (one
        # queued in a worker too: if the worker dies first, it runs elsewhere).
        if call.fds and (ahead or task.attempts <= spec.options.max_retries):
            fds = tuple(os.dup(fd) for fd in call.fds)
        else:
            fds, task.owns_fds = call.fds, False
        if not ahead:
            worker.head_since = time.monotonic()
            if self.scheduler.log_calls:
                self._event("task.started", task, worker=worker.label, attempt=task.attempts)
        self.scheduler.route(self, envelope.Call(lid, worker.actor_id, spec.key, call.payload, task.gid,
                                                 resolved=call.resolved, token=worker.token, fds=fds),
                             trust=call.trusted)

    # -- ending --------------------------------------------------------------------------

    def _fail_kind(self, kind: Hashable, exc: BaseException) -> None:
        """A worker of ``kind`` could not start: the tasks queued for that kind fail with why."""
        for key in [k for k in self._queues if k[0] == kind]:
            for task in self._queues.pop(key):
                self._finish(task, self._error_reply(task, exc), True)

    async def run(self) -> None:
        """Retire workers idle for longer than the idle time; notice drained ones; fail queued tasks that
        tasks waiting for them leave no room for (``_task_deadlock``) (until cancelled)."""
        while True:
            await anyio.sleep(max(0.05, min(0.5, self.workers.idle_s / 4)))
            if self.workers.draining or self.workers.start_failed_at:
                self._pump()
            for task, why in stuck_tasks(self._queues, self.workers, self.resources.total):
                self._dequeue(task)
                self.log.warning("deadlock.detected", task=task.spec.name, call_id=task.gid)
                self._finish(task, envelope.Reply(task.gid, envelope.Status.REFUSED, b"", {
                    "reason": "deadlock", "message": why}), True)
            self.workers.retire_idle()

    def close(self) -> None:
        """The Runtime exits: queued tasks fail as stopped (running ones fail with their workers)."""
        for worker in self.workers.workers.values():
            self.resources.release(worker.grant, wake=False)
            worker.grant = None
        for task in list(self._tasks.values()):
            self._finish(task, envelope.Reply(task.gid, envelope.Status.STOPPED, detail={
                "message": f"the Runtime exited before task {task.spec.name}() ran; keep the 'async with "
                           "Runtime()' block open until the tasks you wait for are done"}), True)
        self._queues.clear()

    # -- reports ---------------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        """Tasks queued and running, and workers (``ps``)."""
        queued = sum(len(q) for q in self._queues.values()) + \
            sum(max(0, len(w.tasks) - 1) for w in self.workers.workers.values())  # pipelined: queued in a worker
        return {"queued": queued, "running": len(self._tasks) - queued, "workers": len(self.workers.workers),
                "idle_workers": sum(len(ws) for ws in self.workers.idle.values())}



def _register(scheduler: Scheduler, pool: TaskPool) -> int:
    """Make ``pool`` the actor ``actorbox.tasks``; its id is 0, outside the scheduler's numbering,
    so the user's first actor is still #1. The pool admits tasks itself: the scheduler never
    queues them (a max_concurrency of no practical limit)."""
    scheduler.actors[_POOL_ID] = ActorEntry(_POOL_ID, TASKS_NAME, TASKS_NAME, 1 << 30, secrets.token_bytes(16))
    scheduler.names[TASKS_NAME] = _POOL_ID
    scheduler.attach(_POOL_ID, pool)
    return _POOL_ID


def _worker_kind(spec: TaskSpec, resources: Resources) -> tuple[Hashable, tuple[int, ...]]:
    """The kind of worker ``spec`` runs on now: a GPU task's sees the GPUs it is about to be given."""
    gpus = resources.peek_gpus(spec.demand.gpus) if spec.demand.gpus else ()
    return ((spec.kind, gpus) if gpus else spec.kind), gpus


def check_task_settings(max_pending_tasks: object, idle_s: object) -> tuple[int | None, float]:
    """Runtime(max_pending_tasks=..., task_worker_idle_s=...) checked; UsageError saying what is wrong."""
    if max_pending_tasks is not None and (type(max_pending_tasks) is not int or max_pending_tasks < 1):
        raise UsageError(f"max_pending_tasks must be None (no limit) or an int >= 1, got {max_pending_tasks!r}")
    if isinstance(idle_s, bool) or not isinstance(idle_s, (int, float)) or not idle_s > 0:
        raise UsageError(f"task_worker_idle_s must be a number of seconds > 0, got {idle_s!r}")
    return max_pending_tasks, float(idle_s)


def _int(detail: dict[str, Any] | None, key: str) -> int | None:
    v = (detail or {}).get(key)
    return v if type(v) is int else None


def _str(detail: dict[str, Any] | None, key: str) -> str | None:
    v = (detail or {}).get(key)
    return v if type(v) is str else None

