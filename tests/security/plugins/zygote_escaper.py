"""An actor forked from a zygote that tries to get out of its own nested sandbox (issue 17).

Each probe runs inside the actor and reports what the kernel said; the host-side test
decides what counts as held. Plain ctypes over libc, as the nested sandbox itself.
"""

from __future__ import annotations

import ctypes
import errno
import os
import signal
import socket
import time
from collections.abc import Callable

import actorbox

_CLONE_NEWNS, _CLONE_NEWUSER = 0x00020000, 0x10000000
_MNT_DETACH = 2


def _err(exc: OSError) -> str:
    return errno.errorcode.get(exc.errno or 0, str(exc))


def _in_child(fn: Callable[[], str]) -> str:
    """Run ``fn`` in a forked child (namespaces and mounts it changes die with it); its one-line answer."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            out = fn()
        except Exception as exc:  # reported; the child exits either way
            out = f"{type(exc).__name__}: {exc}"
        os.write(w, out.encode()[:4000])
        os._exit(0)
    os.close(w)
    chunks = []
    while data := os.read(r, 4096):
        chunks.append(data)
    os.close(r)
    os.waitpid(pid, 0)
    return b"".join(chunks).decode()


def _map_root(uid: int, gid: int) -> None:
    """Map root of the new user namespace, where the actor's /proc lets it (capabilities there need no map)."""
    for name, text in (("setgroups", "deny"), ("uid_map", f"0 {uid} 1"), ("gid_map", f"0 {gid} 1")):
        try:
            with open(f"/proc/self/{name}", "w") as f:
                f.write(text)
        except OSError:
            pass


def _renest_and_uncover_proc() -> str:
    """In a fresh user and mount namespace (full capabilities there): take the cover off /proc."""
    libc = ctypes.CDLL(None, use_errno=True)
    uid, gid = os.getuid(), os.getgid()
    if libc.unshare(_CLONE_NEWUSER | _CLONE_NEWNS) != 0:
        return f"unshare: {errno.errorcode.get(ctypes.get_errno())}"
    _map_root(uid, gid)
    results = []
    for target in (b"/proc", b"/proc/self", b"/tmp", b"/dev/shm"):
        rc = libc.umount2(target, _MNT_DETACH)
        results.append(f"umount {target.decode()}: {'ok' if rc == 0 else errno.errorcode.get(ctypes.get_errno())}")
    results.append("proc: " + ",".join(sorted(e for e in os.listdir("/proc") if e.isdigit())))
    return "; ".join(results)


@actorbox.actor
class Escaper:
    """Tries what a hostile actor forked from a zygote would try."""

    def renest(self) -> str:
        return _in_child(_renest_and_uncover_proc)

    def setuid_root(self) -> str:
        try:
            os.setuid(0)
        except OSError as exc:
            return _err(exc)
        return "ok"

    def rewrite_uid_map(self) -> str:
        try:
            with open("/proc/self/uid_map", "w") as f:
                f.write("0 0 4294967295")
        except OSError as exc:
            return _err(exc)
        return "ok"

    def listen_abstract(self, name: str) -> bool:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.bind("\0" + name)
        self._sock.listen()
        return True

    def connect_abstract(self, name: str) -> str:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            try:
                s.connect("\0" + name)
            except OSError as exc:
                return _err(exc)
        return "ok"

    def leave(self, name: str) -> list[str]:
        """Writes a file into /tmp and /dev/shm; returns what each already held.

        A project under /tmp has its module's directory chain bound into every actor's own /tmp by the sandbox
        (this module's own path): that entry is the sandbox's, not a sibling's, and is left out."""
        own = os.path.abspath(__file__).split(os.sep)
        bound = f"/tmp/{own[2]}" if own[1] == "tmp" else None
        seen = []
        for d in ("/tmp", "/dev/shm"):
            seen += [f"{d}/{e}" for e in os.listdir(d) if f"{d}/{e}" != bound]
            with open(f"{d}/{name}", "w") as f:
                f.write("left by a sibling")
        return seen

    def identity(self) -> list[int]:
        return [os.getuid(), os.getpid()]

    def child_threads_in_proc_self(self) -> int:
        """How many threads a single-threaded child of this actor finds in its /proc/self/task."""
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                os.write(w, str(len(os.listdir("/proc/self/task"))).encode())
            finally:
                os._exit(0)
        os.close(w)
        found = int(os.read(r, 32))
        os.close(r)
        os.waitpid(pid, 0)
        return found

    def orphan(self) -> int:
        """Leaves a daemon behind (double fork, own session, SIGTERM and SIGHUP ignored); its pid here."""
        r, w = os.pipe()
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
                signal.signal(signal.SIGHUP, signal.SIG_IGN)
                os.write(w, str(os.getpid()).encode())
                while True:
                    time.sleep(1000)
            os._exit(0)
        os.close(w)
        pid = int(os.read(r, 32))
        os.close(r)
        return pid
