"""An actor process's admission queue: which delivered calls run now, which wait.

The scheduler delivers calls ahead of their turn (pipelining, see scheduler._router),
so the actor keeps its own slots by the rule the router mirrors (scheduler's
``starts_at_once`` / ``slot_passes_on``). Calls arrive on the loop thread but finish on
any thread, hence the lock.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable

from scheduler import slot_passes_on, starts_at_once

from ._job import Job


class AdmissionQueue:
    """``max_concurrency`` slots and a FIFO of the calls waiting for one.

    Invariant: ``active`` == calls admitted and not finished; ``waiting`` is FIFO."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.max_concurrency = 1  # set from the actor's spec at INIT
        self.active = 0
        self.waiting: deque[Job] = deque()

    def admit(self, job: Job) -> bool:
        """Take a slot for ``job`` (True: start it now), or queue it (False)."""
        with self.lock:
            if starts_at_once(self.active, self.max_concurrency, job.call.reentrant):
                self.active += 1
                return True
            self.waiting.append(job)
            return False

    def release(self, claim: Callable[[Job], None]) -> Job | None:
        """A call that held a slot finished: the oldest waiting job, which takes its slot,
        or None (the slot is freed). ``claim`` runs on that job under the lock, so a cancel
        finds the job either still waiting or claimed, never in between."""
        with self.lock:
            if slot_passes_on(self.active, self.max_concurrency, len(self.waiting)):
                job = self.waiting.popleft()
                claim(job)
                return job
            self.active -= 1
            return None

    def withdraw(self, call_id: int) -> Job | None:
        """Take call ``call_id`` out of the queue, if it waits there (it won't run)."""
        with self.lock:
            for job in self.waiting:
                if job.call.call_id == call_id:
                    self.waiting.remove(job)
                    return job
        return None
