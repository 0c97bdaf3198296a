"""Hostile actors that try to get out of their sandbox.

Every probe reports what happened as plain data instead of raising, so the test
in the host can assert the exact failure: ``{"ok": True, "value": ...}`` when the
attempt worked, ``{"ok": False, "error": "PermissionError", "errno": 13, ...}``
when the sandbox stopped it.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import sys
import sysconfig
import time

import actorbox


def _attempt(fn, *args):
    try:
        value = fn(*args)
    except OSError as exc:  # socket.gaierror and socket.timeout are OSErrors too
        return {"ok": False, "error": type(exc).__name__, "errno": exc.errno,
                "errno_name": errno.errorcode.get(exc.errno or 0, str(exc.errno)), "detail": str(exc)}
    return {"ok": True, "value": value}


def _read(path):
    with open(path, "rb") as f:
        return f.read(256).decode("utf-8", "replace")


def _write(path, data):
    with open(path, "w") as f:
        f.write(data)
    return path


def _append(path, data):
    with open(path, "a") as f:
        f.write(data)
    return path


def _tcp(host, port):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.settimeout(3)
        s.connect((host, port))
        s.sendall(b"escaped")
        return "connected"
    finally:
        s.close()


def _udp(host, port):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        return s.sendto(b"escaped", (host, port))
    finally:
        s.close()


def _unix_abstract(name):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.settimeout(3)
        s.connect("\0" + name)
        s.sendall(b"escaped")
        return "connected"
    finally:
        s.close()


def _lines(path):
    try:
        with open(path) as f:
            return f.read().splitlines()
    except OSError:
        return None


def _status_fields():
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            out[key] = value.strip()
    return out


@actorbox.actor
class Prober:
    """Tries, one probe per method, to reach what its sandbox must hide."""

    def read(self, path):
        return _attempt(_read, path)

    def listdir(self, path):
        return _attempt(lambda p: sorted(os.listdir(p)), path)

    def write(self, path, data="pwned by an actor\n"):
        return _attempt(_write, path, data)

    def append(self, path, data="# pwned by an actor\n"):
        return _attempt(_append, path, data)

    def mkdir(self, path):
        return _attempt(os.mkdir, path)

    def own_paths(self):
        """Where this actor's own code and environment live (as the actor sees them)."""
        return {"module": os.path.abspath(__file__), "package": os.path.dirname(os.path.abspath(__file__)),
                "prefix": sys.prefix, "purelib": sysconfig.get_paths()["purelib"],
                "actorbox": os.path.dirname(os.path.abspath(actorbox.__file__))}

    def tcp_connect(self, host, port):
        return _attempt(_tcp, host, port)

    def udp_send(self, host, port):
        return _attempt(_udp, host, port)

    def unix_connect(self, abstract_name):
        return _attempt(_unix_abstract, abstract_name)

    def interfaces(self):
        return [name for _, name in socket.if_nameindex()]

    def network(self):
        """The network namespace as the kernel describes it (read only: nothing is sent anywhere)."""
        dev = _lines("/proc/net/dev")
        route = _lines("/proc/net/route")
        route6 = _lines("/proc/net/ipv6_route")
        return {
            "interfaces": [name for _, name in socket.if_nameindex()],
            "dev": None if dev is None else [line.split(":")[0].strip() for line in dev[2:]],
            "routes4": None if route is None else route[1:],  # past the header line
            # [destination, prefix length, flags, device] per IPv6 route
            "routes6": None if route6 is None else [[f[0], f[1], f[8], f[9]] for f in map(str.split, route6)],
        }

    def processes(self):
        """Every process this actor can see: [pid, cmdline]."""
        out = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/cmdline", "rb") as f:
                        cmd = f.read().replace(b"\0", b" ").decode("utf-8", "replace").strip()
                except OSError:
                    cmd = "?"
                out.append([int(entry), cmd])
        return out

    def signal(self, pid, sig=0):
        return _attempt(os.kill, pid, sig)

    def open_fds(self):
        """Every descriptor this process holds: [fd, what it is, peer pid of a socket or None]."""
        out = []
        me = os.getpid()
        for name in sorted(os.listdir("/proc/self/fd"), key=int):
            fd = int(name)
            try:
                target = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                continue  # the directory listing's own descriptor, already closed
            peer = None
            if target.startswith("socket:"):
                try:
                    s = socket.socket(fileno=os.dup(fd))
                    try:
                        peer = struct.unpack("3i", s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[0]
                    finally:
                        s.close()
                except OSError:
                    peer = -1
                peer = "self" if peer == me else peer
            out.append([fd, target, peer])
        return out

    def environ(self):
        return dict(os.environ)

    def identity(self):
        st = _status_fields()
        return {"uid": os.getuid(), "euid": os.geteuid(), "gid": os.getgid(), "egid": os.getegid(),
                "groups": os.getgroups(),
                "caps": {k: int(st[k], 16) for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")},
                "no_new_privs": int(st.get("NoNewPrivs", "-1"))}

    def become_root(self):
        return _attempt(os.setuid, 0)


@actorbox.actor(sandbox=actorbox.SandboxPolicy(max_processes=64))
class ForkBomb:
    """Forks until the kernel says no; every child waits on a pipe and exits when it closes."""

    def bomb(self, max_forks=1000, deadline_s=10.0):
        r, w = os.pipe()
        children = []
        stopped_by = None
        end = time.monotonic() + deadline_s
        try:
            while len(children) < max_forks and time.monotonic() < end:
                try:
                    pid = os.fork()
                except OSError as exc:
                    stopped_by = {"error": type(exc).__name__, "errno": exc.errno}
                    break
                if pid == 0:  # child: hold a process slot until the parent lets go
                    try:
                        os.close(w)
                        os.read(r, 1)
                    finally:
                        os._exit(0)
                children.append(pid)
        finally:
            os.close(w)
            os.close(r)
            for pid in children:
                try:
                    os.waitpid(pid, 0)
                except ChildProcessError:
                    pass
        return {"forked": len(children), "stopped_by": stopped_by}

    def after(self):
        """Still alive and able to start a process once the bomb is over."""
        pid = os.fork()
        if pid == 0:
            os._exit(7)
        return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


MiB = 1 << 20


@actorbox.actor(sandbox=actorbox.SandboxPolicy(memory_limit=256 * MiB))
class MemoryBomb:
    """Allocates until the memory limit stops it."""

    def bomb(self, max_mib=4096, chunk_mib=16):
        hoard = []
        try:
            while len(hoard) * chunk_mib < max_mib:
                hoard.append(bytearray(chunk_mib * MiB))  # zero-filled: the pages are really touched
        except MemoryError:
            got = len(hoard) * chunk_mib
        else:
            got = None
        hoard.clear()
        if got is not None:
            raise MemoryError(f"memory limit reached after {got} MiB")
        return f"allocated {max_mib} MiB without hitting any limit"

    def fill_tmp(self, directory="/tmp", max_mib=512, chunk_mib=16):
        """Writes into ``directory`` (the private /tmp or /dev/shm: a tmpfs, held in RAM) until refused."""
        path = os.path.join(directory, "actorbox-hoard")
        written = 0
        chunk = b"\1" * (chunk_mib * MiB)
        stopped_by = None
        try:
            with open(path, "wb") as f:
                while written < max_mib:
                    f.write(chunk)
                    f.flush()
                    written += chunk_mib
        except OSError as exc:
            stopped_by = {"error": type(exc).__name__, "errno": exc.errno}
        finally:
            try:
                os.unlink(path)
            except OSError:
                pass
        return {"written_mib": written, "stopped_by": stopped_by}

    def small(self):
        return len(bytearray(MiB))

