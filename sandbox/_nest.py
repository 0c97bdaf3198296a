"""A forked child's own sandbox inside its zygote's (the child side of issue 17).

A zygote runs inside the bubblewrap sandbox an actor of its environment and policy
would get, and forks actors. Each forked child calls ``enter_nested`` before it runs
anything of the actor: it unshares user, mount, IPC, pid (and, unless its policy
allows the network, network) namespaces, maps its uid, makes ``/`` private, mounts its
own tmpfs ``/tmp`` and ``/dev/shm``, and forks the init of its own pid namespace
(``become_init``), which forks the actor (the caller of ``enter_nested`` stays behind
only to reap it and pass its exit status on). The actor then calls ``seal``: ``/proc`` is covered by a tmpfs
holding only its own ``/proc/self`` (and the system-wide files programs read), and every
capability is dropped. ``no_new_privs`` and the resource limits are inherited from the
zygote's sandbox.

Plain ctypes over libc: the zygote must start no thread and load nothing it need not.
Linux, x86_64 and aarch64.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import signal
import struct
from dataclasses import dataclass

CLONE_NEWNS = 0x00020000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_NOEXEC = 1, 2, 4, 8
_MS_BIND, _MS_MOVE, _MS_REC, _MS_PRIVATE = 4096, 8192, 16384, 1 << 18
_PR_SET_PDEATHSIG, _PR_GET_DUMPABLE, _PR_SET_DUMPABLE, _PR_CAPBSET_DROP = 1, 3, 4, 24
_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL = 47, 4
_CAPSET = {"x86_64": 126, "aarch64": 91}
_CAP_V3 = 0x20080522
# (audit arch, the set*id and setgroups syscalls) per machine: see _refuse_identity_changes.
_SETID = {"x86_64": (0xC000003E, (105, 106, 113, 114, 116, 117, 119, 122, 123)),
          "aarch64": (0xC00000B7, (143, 144, 145, 146, 147, 149, 151, 152, 159))}
# System-wide files of /proc that libraries read (CPU count and features, memory, load):
# they were readable in the actor's own sandbox before, and show nothing of other processes.
_PROC_FILES = ("cpuinfo", "meminfo", "stat", "uptime", "loadavg", "version", "filesystems", "swaps")
_PROC_LINKS = {"net": "self/net", "mounts": "self/mounts", "thread-self": "self"}


class NestError(OSError):
    """A step of the nested sandbox failed; the message names the step and the errno."""


@dataclass(frozen=True, slots=True)
class NestSpec:
    """What the child's own sandbox is: the uid it sees, its scratch size, whether it keeps the network."""

    uid: int  # the uid (and gid) the actor sees inside; the kernel's is the zygote's
    tmpfs_size: int
    network: bool
    max_processes: int  # its own RLIMIT_NPROC: counted in its own user namespace
    max_open_files: int  # its own RLIMIT_NOFILE (the zygote's is larger: it holds a pidfd per actor)


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _check(rc: int, step: str) -> None:
    if rc != 0:
        e = ctypes.get_errno()
        raise NestError(e, f"{step}: {os.strerror(e)} ({errno.errorcode.get(e, e)})")


def enter_nested(spec: NestSpec) -> int:
    """Unshare the namespaces, mount the private scratch, fork the actor; returns fork()'s result.

    In the returned child (0) the caller goes on as the actor and must call ``seal``;
    in the parent (the actor's pid in this namespace) it should only ``reap`` it.
    """
    import resource

    libc = _libc()
    uid, gid = os.getuid(), os.getgid()
    flags = CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWIPC | CLONE_NEWPID | (0 if spec.network else CLONE_NEWNET)
    _check(libc.unshare(flags), "unshare(user, mount, ipc, pid, net)")
    # After the unshare: the kernel counts processes per user namespace and checks each
    # level up against the limit its creator had. With the zygote's (large) limit at
    # creation, the zygote's actors together may use it; with this one set now, this actor
    # alone gets the policy's, counted in its own namespace (one actor at its limit
    # keeps no sibling from starting).
    resource.setrlimit(resource.RLIMIT_NPROC, (spec.max_processes, spec.max_processes))
    nofile = min(spec.max_open_files, resource.getrlimit(resource.RLIMIT_NOFILE)[1])
    resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
    # A non-dumpable process's /proc files belong to root: its own maps could not be written.
    dumpable = libc.prctl(_PR_GET_DUMPABLE, 0, 0, 0, 0)
    if dumpable == 0:
        libc.prctl(_PR_SET_DUMPABLE, 1, 0, 0, 0)
    try:
        for name, text in (("setgroups", "deny"), ("uid_map", f"{spec.uid} {uid} 1"),
                           ("gid_map", f"{spec.uid} {gid} 1")):
            with open(f"/proc/self/{name}", "w") as f:
                f.write(text)
    finally:
        if dumpable == 0:
            libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0)
    # Only ever in the new mount namespace: nothing propagates back to the zygote's.
    _check(libc.mount(None, b"/", None, _MS_REC | _MS_PRIVATE, None), "make / private")
    if not spec.network:
        _loopback_up()
    opts = f"size={spec.tmpfs_size},mode=1777".encode()
    _check(libc.mount(b"tmpfs", b"/dev/shm", b"tmpfs", _MS_NOSUID | _MS_NODEV, opts), "tmpfs on /dev/shm")
    _own_tmp(libc, opts)
    return os.fork()


def _own_tmp(libc: ctypes.CDLL, opts: bytes) -> None:
    """A fresh tmpfs on /tmp that keeps what the sandbox bound below /tmp (an actor's module may live there).

    Built in the new (still empty) /dev/shm: the binds found under /tmp are bound again
    into it, then it is moved over /tmp in one step. A bind is a copy of the same mount,
    read-only where the sandbox's was.
    """
    stage = "/dev/shm/.actorbox-tmp"
    os.mkdir(stage, 0o700)
    _check(libc.mount(b"tmpfs", stage.encode(), b"tmpfs", _MS_NOSUID | _MS_NODEV, opts), "tmpfs on /tmp")
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    for point in sorted({p for p in points if p.startswith("/tmp/")}, key=lambda p: p.count("/")):
        target = stage + point[len("/tmp"):]
        if os.path.isdir(point):
            os.makedirs(target, exist_ok=True)
        else:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            open(target, "a").close()
        _check(libc.mount(point.encode(), target.encode(), None, _MS_BIND | _MS_REC, None), f"bind {point}")
    _check(libc.mount(stage.encode(), b"/tmp", None, _MS_MOVE, None), "move the tmpfs over /tmp")
    os.rmdir(stage)


def _loopback_up() -> None:
    """Bring up the new network namespace's loopback, as bubblewrap does (its own 127.0.0.1 only)."""
    import fcntl
    import socket

    flags = 0x1 | 0x8 | 0x40  # IFF_UP | IFF_LOOPBACK | IFF_RUNNING
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        fcntl.ioctl(s, 0x8914, struct.pack("16sH22x", b"lo", flags))  # SIOCSIFFLAGS


def reap(pid: int) -> int:
    """Wait for the actor and return its exit status as bubblewrap reports it (signal N: 128+N)."""
    while True:
        try:
            _, status = os.waitpid(pid, 0)
        except InterruptedError:
            continue
        if os.WIFSIGNALED(status):
            return 128 + os.WTERMSIG(status)
        return os.waitstatus_to_exitcode(status) & 0xFF


def become_init(close_fd: int = -1) -> None:
    """In the first process of the new pid namespace: fork the actor, then only reap until it exits.

    The actor must not be pid 1: the kernel drops every signal a namespace's init has no
    handler for when it comes from inside, so an actor that was pid 1 could not SIGKILL
    itself, nor die of its own raise(SIGSEGV). This init drops its capabilities and is not
    dumpable, so the actor (same uid, no capability) can neither ptrace nor signal it; it
    dies with the reaper outside, and when it exits the kernel kills the whole namespace.
    Returns only in the actor. ``close_fd``: a descriptor only the actor keeps (the init closes it).
    """
    libc = _libc()
    _check(libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "die with the reaper")
    actor = os.fork()
    if actor == 0:
        return
    try:
        if close_fd >= 0:
            os.close(close_fd)
        _drop_caps(libc)
        libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0)
        while True:
            try:
                pid, status = os.wait()
            except InterruptedError:
                continue
            except ChildProcessError:
                os._exit(0)
            if pid == actor:
                os._exit(128 + os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.waitstatus_to_exitcode(status))
    finally:
        os._exit(70)


def seal() -> None:
    """In the actor (pid 2 of its namespace): die with its init, hide /proc, drop every capability.

    The reaper outside is what the host kills to kill the actor: with it gone, the init
    inside gets SIGKILL, and with pid 1 gone the kernel kills everything in the namespace.
    """
    libc = _libc()
    _check(libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "die with its init")
    _hide_proc(libc)
    _drop_caps(libc)
    _refuse_identity_changes(libc)


def _hide_proc(libc: ctypes.CDLL) -> None:
    """Cover /proc with a tmpfs holding only this process's own entry and system-wide files.

    A fresh procfs cannot be mounted here (bubblewrap's /proc carries locked overmounts),
    and the zygote's /proc lists every sibling: so the actor gets binds of what it needs.
    Built on a staging tmpfs in its own /tmp, then moved over /proc in one step.
    """
    me = os.readlink("/proc/self")  # this process's pid in the zygote's pid namespace
    stage = "/tmp/.actorbox-proc"
    os.mkdir(stage, 0o755)
    _check(libc.mount(b"tmpfs", stage.encode(), b"tmpfs", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC, b"size=64k,mode=0555"),
           "tmpfs for /proc")
    for name in ("self", str(os.getpid())):  # for code that opens /proc/<getpid()> (psutil)
        os.mkdir(f"{stage}/{name}")
        _check(libc.mount(f"/proc/{me}".encode(), f"{stage}/{name}".encode(), None, _MS_BIND | _MS_REC, None),
               f"bind /proc/self to {name}")
    for name in _PROC_FILES:
        if os.path.exists(f"/proc/{name}"):
            open(f"{stage}/{name}", "w").close()
            _check(libc.mount(f"/proc/{name}".encode(), f"{stage}/{name}".encode(), None, _MS_BIND, None),
                   f"bind /proc/{name}")
    if os.path.isdir("/proc/sys"):
        os.mkdir(f"{stage}/sys")
        _check(libc.mount(b"/proc/sys", f"{stage}/sys".encode(), None, _MS_BIND | _MS_REC, None), "bind /proc/sys")
    for name, target in _PROC_LINKS.items():
        os.symlink(target, f"{stage}/{name}")
    _check(libc.mount(stage.encode(), b"/proc", None, _MS_MOVE, None), "move the tmpfs over /proc")
    os.rmdir(stage)


def _drop_caps(libc: ctypes.CDLL) -> None:
    """Empty the bounding and ambient sets, then the effective, permitted and inheritable ones."""
    libc.prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    cap = 0
    while libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) == 0:
        cap += 1
    nr = _CAPSET.get(platform.machine())
    if nr is None:
        raise NestError(errno.ENOSYS, f"capset: unknown syscall number on {platform.machine()}")
    hdr = struct.pack("Ii", _CAP_V3, 0)
    _check(libc.syscall(nr, ctypes.c_char_p(hdr), ctypes.c_char_p(bytes(24))), "drop capabilities")


class _SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte), ("k", ctypes.c_uint32)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_SockFilter))]


def _refuse_identity_changes(libc: ctypes.CDLL) -> None:
    """A seccomp filter: every set*id and setgroups call fails with EPERM.

    Only the actor's own uid is mapped in its user namespace, so without this
    ``setuid(0)`` would fail with EINVAL ("no such uid here") where an actor of its own
    sandbox gets EPERM: the same refusal, said as the kernel says it to a process
    without privilege. An actor has no capability to change its identity anyway.
    """
    arch, calls = _SETID.get(platform.machine(), (None, ()))
    if arch is None:
        raise NestError(errno.ENOSYS, f"seccomp: unknown syscall numbers on {platform.machine()}")
    n = len(calls)
    allow, deny = 4 + n, 5 + n
    prog = [(0x20, 0, 0, 4),  # A = arch
            (0x15, 0, allow - 2, arch),  # another ABI: not ours to judge
            (0x20, 0, 0, 0),  # A = syscall number
            (0x35, deny - 4, 0, 0x40000000)]  # x32 calls (numbers with that bit): refused
    prog += [(0x15, deny - (4 + i) - 1, 0, nr) for i, nr in enumerate(calls)]
    prog += [(0x06, 0, 0, 0x7FFF0000), (0x06, 0, 0, 0x00050000 | errno.EPERM)]  # allow; errno EPERM
    filters = (_SockFilter * len(prog))(*[_SockFilter(*ins) for ins in prog])
    fprog = _SockFprog(len(prog), filters)
    _check(libc.prctl(22, 2, ctypes.byref(fprog), 0, 0), "seccomp filter")  # PR_SET_SECCOMP, FILTER
