"""The zygote process: ``python -m actorbox._zygote FD MODE --forks=actorbox._child [MODULE...]`` (issue 17).

Started by the host exactly as an actor of its environment and sandbox policy would be
(same bubblewrap command, binds, uid and limits), it imports what every actor of that
environment would import (actorbox's actor side, torch when the host uses it, the
``preload`` modules of its key: never an extension's own module), freezes its heap
(``gc.freeze``: forked children then share those pages) and forks actors on request.
``MODE`` is ``nested`` (each child builds its own sandbox inside this one, see
``sandbox._nest``) or ``plain`` (unsandboxed actors: a child only forks).

Fork safety: no thread is started and no torch op runs here (torch's thread pools do not
survive a fork), the socket is served with blocking ``poll``, and each child reseeds
every generator it inherited.

Protocol (SOCK_SEQPACKET, one msgpack list per message, each at most ``MAX_MESSAGE``):
host -> zygote ``["fork", id, uid, tmpfs_size, network, max_processes, max_open_files, max_frame]`` with
the actor's socket end and its stdout and stderr write ends (SCM_RIGHTS); zygote -> host
``["ready", nested_ok, reason]`` once, ``["forked", id]`` with the child's pidfd once the child
says its own sandbox is built (before it runs anything of the actor), ``["failed", id, reason]``
(the fork, or something before the sandbox, failed: out of processes or descriptors),
``["unfit", id, reason]`` (the child could not build its sandbox, e.g. a bind of this zygote's
sandbox points at a directory deleted since: the host retires this zygote) and
``["exit", id, status]`` once a forked child is reaped (status as ``Popen.returncode``:
negative for a signal). The zygote never receives anything an actor sends; the host treats
all it sends as untrusted.
"""

from __future__ import annotations

import array
import faulthandler
import gc
import importlib
import os
import random
import select
import signal
import socket
import sys
import traceback
from typing import Any

import msgpack

from ._zygotes import CHILD_MARKER, MAX_MESSAGE


def _send(sock: socket.socket, msg: list[Any], fd: int | None = None) -> None:
    data = msgpack.packb(msg, use_bin_type=True)
    if fd is None:
        sock.send(data)
    else:
        sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]).tobytes())])


def _recv(sock: socket.socket) -> tuple[list[Any], list[int]] | None:
    """One request from the host (trusted, checked all the same); None when the host is gone."""
    data, anc, _, _ = sock.recvmsg(MAX_MESSAGE, socket.CMSG_SPACE(3 * 4))
    fds: list[int] = []
    for level, kind, payload in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.extend(array.array("i", payload[: len(payload) - len(payload) % 4]))
    if not data:
        for fd in fds:
            os.close(fd)
        return None
    return msgpack.unpackb(data, raw=False), fds


def _import(modules: list[str]) -> None:
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception:
            continue


class _Report:
    """A forked child's one word to its zygote, on a pipe: its sandbox is built (``ok``), or why not.

    ``N`` + text: a step of the nested sandbox failed (``sandbox._nest.NestError``: this zygote
    can serve no actor, it is retired); ``E`` + text: something else failed before (a fork out of
    processes: that actor alone starts without the zygote). Nothing written (EOF): the child died first.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def ok(self) -> None:
        self._say(b"ok")

    def fail(self, exc: BaseException) -> None:
        from sandbox._nest import NestError

        self._say((b"N" if isinstance(exc, NestError) else b"E") + f"{type(exc).__name__}: {exc}".encode()[:900])

    def _say(self, data: bytes) -> None:
        if self.fd >= 0:
            try:
                os.write(self.fd, data)  # at most PIPE_BUF: one atomic write
            except OSError:
                pass
            self.close()


def _become_actor(sock_fd: int, out: int, err: int, req: list[Any], nested: bool, report: _Report) -> None:
    """In the forked child: own descriptors only, own sandbox, fresh seeds, then actorbox._child."""
    os.setsid()
    os.dup2(out, 1)
    os.dup2(err, 2)
    keep = sorted({0, 1, 2, sock_fd, report.fd})
    for lo, hi in zip(keep, [*keep[1:], 1 << 20], strict=True):
        os.closerange(lo + 1, hi)
    _, _, uid, tmpfs_size, network, max_processes, max_open_files, max_frame = req
    if nested:
        from sandbox._nest import NestSpec, become_init, enter_nested, reap, seal

        pid = enter_nested(NestSpec(uid if uid >= 0 else os.getuid(), tmpfs_size, network, max_processes,
                                    max_open_files))
        if pid:  # the reaper: the actor reports, not this one
            report.close()
            os._exit(reap(pid))
        become_init(close_fd=report.fd)  # (the init closes its copy)
        seal()
    report.ok()  # its own sandbox is built: nothing of the actor ran yet
    _reseed()
    sys.argv = ["actorbox._child", str(sock_fd), str(max_frame)]
    from actorbox._child import main

    main()


def _reseed() -> None:
    """No two actors draw the same numbers: every generator inherited from the zygote reseeds from the OS."""
    random.seed()
    if "numpy" in sys.modules:
        sys.modules["numpy"].random.seed()
    if "torch" in sys.modules:
        sys.modules["torch"].seed()


def _probe(nested: bool) -> tuple[bool, str]:
    """Whether a child can build its own sandbox here: tried once, in a child that only does that."""
    if not nested:
        return True, ""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            from sandbox._nest import NestSpec, become_init, enter_nested, reap, seal

            child = enter_nested(NestSpec(os.getuid(), 1 << 20, False, 64, 64))
            if child:
                os._exit(reap(child))
            become_init()
            seal()
            os._exit(0)
        except BaseException as exc:
            os.write(w, f"{type(exc).__name__}: {exc}".encode()[:1000])
            os._exit(1)
    os.close(w)
    reason = os.read(r, 1000).decode("utf-8", "replace")
    os.close(r)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    return code == 0, reason or ("" if code == 0 else f"the probe child exited with {code}")


def serve(sock: socket.socket, nested: bool) -> None:
    """Fork actors on request until the host hangs up; report each child's pidfd and exit status."""
    children: dict[int, tuple[int, int]] = {}  # pidfd -> (request id, pid)
    building: dict[int, tuple[int, int, int]] = {}  # report pipe -> (request id, pid, pidfd): not yet sandboxed
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    while True:
        for fd, _ in poller.poll():
            if fd in children:
                rid, pid = children.pop(fd)
                poller.unregister(fd)
                if not nested:  # its session's other processes go with it (its pid is still its own: unreaped)
                    _killpg(pid)
                _, status = os.waitpid(pid, 0)
                os.close(fd)
                _send(sock, ["exit", rid, os.waitstatus_to_exitcode(status)])
                continue
            if fd in building:
                rid, pid, pidfd = building.pop(fd)
                poller.unregister(fd)
                word = os.read(fd, 1024)
                os.close(fd)
                if word == b"ok":
                    children[pidfd] = (rid, pid)
                    poller.register(pidfd, select.POLLIN)
                    _send(sock, ["forked", rid], pidfd)
                else:
                    _send(sock, _refusal(rid, word, _kill_and_reap(pid, pidfd)))
                continue
            got = _recv(sock)
            if got is None:
                return
            req, fds = got
            if not (isinstance(req, list) and len(req) == 8 and req[0] == "fork" and len(fds) == 3):
                for x in fds:
                    os.close(x)
                continue
            try:
                pid, pidfd, said = _fork(fds, req, nested)
            except OSError as exc:  # out of processes or descriptors: this actor starts without us
                _send(sock, ["failed", req[1], f"fork: {exc}"])
                continue
            finally:
                for x in fds:
                    os.close(x)
            building[said] = (req[1], pid, pidfd)  # "forked" once it says its sandbox is built
            poller.register(said, select.POLLIN)


def _refusal(rid: int, word: bytes, status: int) -> list[Any]:
    """The answer for a child that did not build its sandbox: "unfit" (a step of it failed) or "failed"."""
    text = word[1:].decode("utf-8", "replace")
    if word[:1] == b"N":
        return ["unfit", rid, f"its forked child could not build its sandbox: {text}"]
    return ["failed", rid, f"the forked child failed before it ran the actor: {text}" if text else
            f"the forked child exited with {status} before its sandbox was built"]


def _kill_and_reap(pid: int, pidfd: int) -> int:
    """SIGKILL a child that will not be an actor (through its pidfd), reap it; its exit status."""
    try:
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
    except ProcessLookupError:
        pass
    _killpg(pid)  # (unreaped: the group is still its own)
    _, status = os.waitpid(pid, 0)
    os.close(pidfd)
    return os.waitstatus_to_exitcode(status)


def _killpg(pid: int) -> None:
    """SIGKILL the session a forked child leads (called only while it is unreaped: its pid cannot be reused)."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except OSError:
        pass


def _fork(fds: list[int], req: list[Any], nested: bool) -> tuple[int, int, int]:
    """Fork the actor; (its pid, a pidfd of it, the read end of its report pipe).

    Raises OSError (nothing is left forked then)."""
    r, w = os.pipe()
    try:
        pid = os.fork()
    except OSError:
        os.close(r)
        os.close(w)
        raise
    if pid == 0:
        os.close(r)
        report = _Report(w)
        try:
            _become_actor(fds[0], fds[1], fds[2], req, nested, report)
        except BaseException as exc:
            report.fail(exc)  # (no-op once it said ok: then this is the actor's own end)
            traceback.print_exc()
        finally:
            os._exit(70)
    os.close(w)
    try:
        return pid, os.pidfd_open(pid), r
    except OSError:
        os.close(r)
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        raise


def main() -> None:
    args = sys.argv[1:]
    if len(args) < 3 or not args[0].isdigit() or args[1] not in ("nested", "plain") or args[2] != CHILD_MARKER:
        print(f"usage: python -m actorbox._zygote FD nested|plain {CHILD_MARKER} [MODULE...]  (started by "
              "actorbox.Runtime, not by hand)", file=sys.stderr)
        sys.exit(2)
    faulthandler.enable()
    sock = socket.socket(fileno=int(args[0]))
    os.set_inheritable(sock.fileno(), False)
    nested = args[1] == "nested"
    if not nested:  # no sandbox to die with the host: SIGKILL when the host's spawner thread is gone
        import ctypes

        ctypes.CDLL(None).prctl(1, 9, 0, 0, 0)  # PR_SET_PDEATHSIG, SIGKILL
    # What every actor imports before its class: forked children then start with it.
    _import(["asyncio", "actorbox._child", "actorbox._actor_server", "actorbox._construction", *args[3:]])
    ok, reason = _probe(nested)
    gc.collect()
    gc.freeze()  # the heap so far stays shared with every child (no refcount or GC writes to it)
    _send(sock, ["ready", ok, reason])
    if ok:
        serve(sock, nested)
    os._exit(0)


if __name__ == "__main__":
    main()
