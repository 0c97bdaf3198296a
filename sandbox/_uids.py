"""Machine-wide unique uids for sandboxed actors of a root host.

Per-uid limits (RLIMIT_NPROC counts every process and thread of a uid) are per
actor only if no two live actors on the machine share a uid, whichever Runtime
(process) started them. Numbering by actor id gave the first actor of every
Runtime uid 200001. Instead each actor process leases a uid: an exclusive
``flock`` on ``<lock dir>/<uid>``, taken without waiting (the lowest free one
wins), held until the actor's process is reaped, and released by the kernel if
the host dies. Lock files are never removed (removing one races with a process
that has it open but not locked yet), so there are only as many as actors ever
ran at once.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import weakref

UID_BASE = 200_000
UID_COUNT = 1 << 20
# /run is root's and in memory: the leases of a booted machine, gone at reboot.
DEFAULT_LOCK_DIR = "/run/actorbox-uids"


class UidLease:
    """A uid held for one actor process; ``release()`` when that process is gone (idempotent)."""

    def __init__(self, uid: int, fd: int) -> None:
        self.uid = uid
        # Released when dropped too, so a lost lease does not keep its uid for the host's lifetime.
        self._close = weakref.finalize(self, os.close, fd)

    def release(self) -> None:
        self._close()


def _lock_dir(path: str) -> str:
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    st = os.lstat(path)
    # Root's own private directory: nobody else may plant or hold its lock files.
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077:
        raise OSError(errno.EPERM, f"{path} must be a directory owned by uid {os.geteuid()} with mode 0700; "
                                   "remove it and start again")
    return path


def lease_uid(lock_dir: str = DEFAULT_LOCK_DIR) -> UidLease:
    """Lease the lowest uid from ``UID_BASE + 1`` on that no live actor of this machine holds.

    Raises OSError when the lock directory cannot be used or every uid is taken.
    """
    if not os.path.isdir(os.path.dirname(lock_dir)):
        lock_dir = os.path.join("/tmp", os.path.basename(lock_dir))  # no /run: checked all the same
    dir_fd = os.open(_lock_dir(lock_dir), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for n in range(1, UID_COUNT + 1):
            uid = UID_BASE + n
            fd = os.open(str(uid), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            except BaseException:
                os.close(fd)
                raise
            return UidLease(uid, fd)
    finally:
        os.close(dir_fd)
    raise OSError(errno.EAGAIN, f"all {UID_COUNT} actor uids from {UID_BASE + 1} are in use on this machine")
