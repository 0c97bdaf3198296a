"""An actor that reports its uid and holds threads up to its process limit (tests/security/test_actor_uids.py)."""

from __future__ import annotations

import os
import threading

import actorbox


@actorbox.actor
class UidHolder:
    def __init__(self) -> None:
        self._stop = threading.Event()

    def uid(self) -> int:
        return os.getuid()

    def hold_threads(self) -> int:
        """Start threads until the uid's process limit refuses one; returns how many were started."""
        n = 0
        while n < 1000:
            try:
                threading.Thread(target=self._stop.wait, daemon=True).start()
            except RuntimeError:  # can't start new thread: RLIMIT_NPROC of this uid is reached
                return n
            n += 1
        return n
