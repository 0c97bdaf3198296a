"""The threads that run an actor's sync calls (and constructs it, unless inline)."""

from __future__ import annotations

import queue
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

from ._threads import start_thread

# How long a worker thread pauses after a failure of its own (not a job's: a MemoryError
# near the memory limit, say) before it serves on.
_PAUSE = 0.01


class Workers:
    """Threads that run submitted jobs: ThreadPoolExecutor's job, minus its per-job
    Future and bookkeeping (this is every sync call's path). Grows to ``max_workers``
    threads while none is idle; threads live as long as the process. Starting one never
    waits on it (see actorbox._threads), and one serves on through failures of its own."""

    def __init__(self, max_workers: int, name: str) -> None:
        self._jobs: queue.SimpleQueue[tuple[Callable[..., object], tuple[Any, ...]]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0  # threads waiting for a job and not yet promised one
        self._threads = 0
        self._max = max_workers
        self._name = name

    def submit(self, fn: Callable[..., object], *args: Any) -> None:
        """Run ``fn(*args)`` on an idle thread, else on a new one, else (``max_workers`` threads
        busy) on the first to finish its job. When a new thread cannot start (``RuntimeError:
        can't start new thread`` at the process's thread or memory limit, or a MemoryError) and
        none has come free meanwhile, that is raised and nothing is queued: a job queued with
        no thread to run it would never run, and its call never be answered."""
        with self._lock:
            spawn = self._idle == 0 and self._threads < self._max
            if spawn:
                self._threads += 1
                number = self._threads
            elif self._idle:
                self._idle -= 1
        if spawn:
            try:
                start_thread(f"{self._name}-{number}", self._work)
            except Exception:
                with self._lock:
                    self._threads -= 1
                    freed = self._idle > 0
                    if freed:
                        self._idle -= 1
                if not freed:
                    raise
        self._jobs.put((fn, args))

    def _work(self) -> None:
        """A worker thread's main, for the life of the process. A failure outside a job (a
        MemoryError near the memory limit, getting a job or counting itself idle) pauses it
        briefly, then it goes on: a job is taken off the queue only as it is about to run,
        and a thread owes its idle count until it has paid it."""
        owes_idle = False  # a job has run here since this thread last counted itself idle
        while True:
            try:
                if owes_idle:
                    with self._lock:
                        self._idle += 1
                    owes_idle = False
                fn, args = self._jobs.get()
                owes_idle = True
                try:
                    fn(*args)
                except BaseException:  # jobs report their own failures; this is a bug in one
                    traceback.print_exc()
            except BaseException:  # (the report's own MemoryError among them)
                try:
                    time.sleep(_PAUSE)
                except BaseException:
                    pass
