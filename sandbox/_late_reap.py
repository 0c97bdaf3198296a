"""Processes killed but not gone yet when their supervisor stopped waiting for them.

A SIGKILLed process is normally gone within milliseconds. A machine tearing down
hundreds of large address spaces at once (200 torch-importing actors stopped together
on two cores), or a process the kernel holds in uninterruptible I/O, can take longer
than a stop may wait. Such a process is handed here with its pidfd and what must
happen once it is gone (reap it, release its uid lease): one daemon thread polls the
pidfds of all of them, so nothing is held after the process exits and nothing waits on
an event loop meanwhile. ``pending()`` lists those not gone yet (a Runtime waits a
little for them as it exits, and reports any that outlive it).
"""

from __future__ import annotations

import os
import select
import threading
from collections.abc import Callable

# How often the thread looks for new entries (a process that exits is seen at once).
_POLL_MS = 100

_lock = threading.Lock()
_pending: dict[int, tuple[int, Callable[[], object]]] = {}  # pidfd -> (pid, what to do once it is gone)
_running = False


def reap_later(pidfd: int, pid: int, when_gone: Callable[[], object]) -> None:
    """Take ``pidfd`` (of a process already sent SIGKILL): once the process has exited, call
    ``when_gone`` (errors ignored: it runs on the reaper thread) and close ``pidfd``."""
    global _running
    with _lock:
        _pending[pidfd] = (pid, when_gone)
        if _running:
            return
        _running = True
    try:
        threading.Thread(target=_run, name="actorbox-late-reaper", daemon=True).start()
    except RuntimeError:  # no thread to be had now: the next call tries again
        with _lock:
            _running = False


def pending() -> list[int]:
    """The pids handed here whose processes have not exited yet."""
    with _lock:
        return [pid for pid, _ in _pending.values()]


def _forget_in_child() -> None:
    """A forked copy of the host holds copies of the pidfds but no reaper thread, and the processes
    are not its children: it leaves them to the parent."""
    global _running, _lock
    _lock = threading.Lock()  # another thread may have held it at the fork
    for fd in _pending:
        try:
            os.close(fd)
        except OSError:
            pass
    _pending.clear()
    _running = False


os.register_at_fork(after_in_child=_forget_in_child)


def _run() -> None:
    global _running
    while True:
        with _lock:
            fds = list(_pending)
            if not fds:
                _running = False
                return
        poller = select.poll()  # (not select.select: the host's descriptors go past 1024)
        for fd in fds:
            poller.register(fd, select.POLLIN)
        for fd, _ in poller.poll(_POLL_MS):
            with _lock:
                _, when_gone = _pending.pop(fd)
            try:
                when_gone()
            except Exception:
                pass
            os.close(fd)
