"""The threads that run an actor's sync calls (and constructs it, unless inline)."""

from __future__ import annotations

import queue
import threading
import traceback
from collections.abc import Callable
from typing import Any


class Workers:
    """Threads that run submitted jobs: ThreadPoolExecutor's job, minus its per-job
    Future and bookkeeping (this is every sync call's path). Grows to ``max_workers``
    threads while none is idle; threads live as long as the process."""

    def __init__(self, max_workers: int, name: str) -> None:
        self._jobs: queue.SimpleQueue[tuple[Callable[..., object], tuple[Any, ...]]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0  # threads waiting for a job and not yet promised one
        self._threads = 0
        self._max = max_workers
        self._name = name

    def submit(self, fn: Callable[..., object], *args: Any) -> None:
        with self._lock:
            spawn = self._idle == 0 and self._threads < self._max
            if spawn:
                self._threads += 1
            elif self._idle:
                self._idle -= 1
        self._jobs.put((fn, args))
        if spawn:
            threading.Thread(target=self._work, name=f"{self._name}-{self._threads}", daemon=True).start()

    def _work(self) -> None:
        get = self._jobs.get
        while True:
            fn, args = get()
            try:
                fn(*args)
            except BaseException:  # jobs report their own failures; this is a bug in one
                traceback.print_exc()
            with self._lock:
                self._idle += 1
