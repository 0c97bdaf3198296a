"""The calls an actor process serves, from arrival to the slot each frees.

A call is admitted (or queued behind ``max_concurrency``), then started where it
runs: a task on the loop (async methods), inline on the loop thread (the sync calls
of an inline actor, see actorbox._inline), or a worker thread. A call that ends hands
its slot to the next queued call, which runs in the same place where it can: back to
back on the same thread, with no hand-off between them.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from typing import Any

from scheduler import Connection, close_fds, envelope

from ._admission import AdmissionQueue
from ._call_runner import CallRunner
from ._caller import current_call
from ._dispatch import resolve_method
from ._errors import ActorboxError
from ._inline import InlineCalls
from ._job import Job, SyncCall
from ._outbox import Outbox
from ._workers import Workers


class Calls:
    """Admits each call and starts it in its place (see the module docstring)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, conn: Connection, runner: CallRunner,
                 outbox: Outbox, inline: InlineCalls, workers: Workers) -> None:
        self._loop = loop
        self._loop_thread = threading.get_ident()
        self._conn = conn
        self._outbox = outbox
        self.runner = runner
        self.inline = inline
        self.workers = workers
        self.admission = AdmissionQueue()
        self.instance: Any = None  # set once constructed
        self.label = "actor"
        # Resolved (bound method, is_async) by name; only successful lookups are kept.
        self._methods: dict[str, tuple[Any, bool]] = {}
        # Each call's context copies this (set again in ActorServer.serve(), once process_caller is).
        self.base_ctx = contextvars.copy_context()
        self._deferred: tuple[Job, SyncCall] | None = None  # to run inline once the read is over

    # -- arrival (loop thread) -------------------------------------------------------

    def start(self, call: envelope.Call) -> None:
        """A call arrived: run it now or queue it behind max_concurrency."""
        try:
            if self.instance is None:
                raise ActorboxError(f"{self.label} is not constructed yet")
            resolved = self._methods.get(call.method)
            if resolved is None:
                resolved = resolve_method(self.instance, call.method, self.label, call.call_id)
                self._methods[call.method] = resolved
        except ActorboxError as exc:
            self.runner.refuse(call, envelope.Status.ERROR, self._outbox.encode_exc(exc))
            return
        # Each call runs in its own copy of the process's base context, wherever it runs
        # (frames read by a pump run inside the waiting call's context: not that one).
        ctx = self.base_ctx.copy()
        ctx.run(current_call.set, call.call_id)
        job = Job(call, resolved[0], resolved[1], ctx)
        if self.admission.admit(job):
            self.launch(job)

    def cancel(self, call_id: int) -> None:
        """A cancel arrived (the loop thread, or a thread reading in its stead)."""
        queued = self.admission.withdraw(call_id)
        if queued is not None:
            self.runner.refuse(queued.call, envelope.Status.CANCELLED)
        else:
            self.runner.cancel(call_id)

    # -- where a call runs -----------------------------------------------------------

    def launch(self, job: Job) -> None:
        """Start an admitted call (loop thread, or a thread reading while the loop runs a call)."""
        on_loop = threading.get_ident() == self._loop_thread
        if job.is_async:
            self.inline.ok = False  # the loop must stay free for it (and for any like it)
            if on_loop:
                self._start_task(job)
            else:
                self._loop.call_soon_threadsafe(self.launch, job)
            return
        if self.inline.ok and not on_loop and not job.call.reentrant:
            # Read by the watchdog as an inline run ends: run it on the loop thread too, so an
            # inline actor's calls keep to one thread. Not a re-entrant call: the inline call
            # under the loop waits for its chain, so it runs on a worker now (as one a pump
            # reads does), or never.
            self._loop.call_soon_threadsafe(self.launch, job)
            return
        token = self.runner.token(job.call.call_id)
        if self.inline.ok and on_loop and not self.inline.depth and len(self.runner.running) == 1:
            # Not now: this runs under the connection's read lock, which the call must not
            # hold (its nested calls and the watchdog read frames while it runs).
            self._deferred = (job, token)
            if not self._conn.loop_reading:  # not launched from the loop's read after all
                self._loop.call_soon(self.run_deferred)
        else:
            try:
                self.workers.submit(self._run_on_worker, job, token)
            except Exception as exc:  # no thread for it: answered now, never left waiting
                self._no_thread(job, token, exc)

    def _no_thread(self, job: Job, token: SyncCall, cause: Exception) -> None:
        """No worker thread could be started for ``job`` (``cause``): answer it with an error
        that says so and pass its slot on. The next queued call tries again (on the loop, so
        that a queue of them is not a recursion); calls that find a thread free run."""
        call = job.call
        self.runner.running.pop(call.call_id, None)
        if token.cancelled:
            self.runner.refuse(call, envelope.Status.CANCELLED)
        else:
            close_fds(call.fds)
            try:
                error = no_thread_error(call.method, cause)
            except BaseException:  # (no memory for the message): the cause as it is
                error = cause
            self.runner.answer(call, error)
        nxt = self.next_in_slot()
        if nxt is not None:
            self._loop.call_soon_threadsafe(self.launch, nxt)

    def run_deferred(self) -> None:
        """After the loop's read: run the sync call deferred by launch(), inline."""
        deferred, self._deferred = self._deferred, None
        if deferred is not None:
            self._run_inline(*deferred)

    def _run_inline(self, job: Job, token: SyncCall) -> None:
        """Run sync calls on the loop thread, back to back while the queue holds them."""
        inline = self.inline
        inline.begin_run()
        try:
            while True:
                inline.call_hidden(job.ctx, self.runner.run_sync, job, token)
                nxt = self.next_in_slot()
                if nxt is None:
                    return
                if nxt.is_async:
                    inline.ok = False
                    self._start_task(nxt)
                    return
                job, token = nxt, self.runner.token(nxt.call.call_id)
        finally:
            inline.end_run()

    def _run_on_worker(self, job: Job, token: SyncCall) -> None:
        """Run sync calls back to back in this worker thread while the queue holds sync
        calls: no hand-off to the loop between them."""
        while True:
            job.ctx.run(self.runner.run_sync, job, token)
            nxt = self.next_in_slot()
            if nxt is None:
                return
            if nxt.is_async or (self.inline.ok and not nxt.call.reentrant):
                # An inline actor's call queued behind a re-entrant one (run here, on a
                # worker) still runs on the loop thread, where its other calls run.
                self._loop.call_soon_threadsafe(self.launch, nxt)
                return
            job, token = nxt, self.runner.token(nxt.call.call_id)

    def _start_task(self, job: Job) -> None:
        """Start an async call's task (loop thread)."""
        self.runner.start_task(job, job.ctx.run(self._loop.create_task, self._run_async(job)))

    async def _run_async(self, job: Job) -> None:
        await self.runner.run_async(job)
        nxt = self.next_in_slot()
        if nxt is not None:
            self.launch(nxt)

    def next_in_slot(self) -> Job | None:
        """A call finished: the next queued call to run in its slot, if any. It is among
        the running calls from here on, so a cancel finds it on its way to a thread."""
        return self.admission.release(self.runner.claim)


def no_thread_error(method: str, cause: Exception, serving: bool = True) -> Exception:
    """What a call (or, not ``serving`` yet, a start) answers when no thread could be started
    to run it: ``cause``'s type (RuntimeError, or MemoryError), saying what happened and what to do."""
    message = (f"the actor could not start a thread to run {method}() ({type(cause).__name__}: {cause}): none "
               "of its threads was free and the process is at its limit of threads "
               "(SandboxPolicy(max_processes=...)) or of memory (memory_limit=...); raise that limit")
    if serving:
        message += (", or run fewer calls at once (max_concurrency=...) or fewer threads in its methods. The "
                    "actor serves on: a call made once a thread is free runs")
    return MemoryError(message) if isinstance(cause, MemoryError) else RuntimeError(message)
