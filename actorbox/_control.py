"""The control socket: each running Runtime answers ``python -m actorbox ps`` on a Unix socket.

Sockets live in a per-user directory (``$XDG_RUNTIME_DIR/actorbox``, else
``/tmp/actorbox-<uid>``) that only the user can enter (mode 0700, checked: never
one another user owns or others can write); each Runtime's socket is named by its
pid (``<pid>.sock``, ``<pid>-2.sock`` for a second Runtime in one process), has
mode 0600 and is removed when the Runtime exits. A connection from another uid
(SO_PEERCRED) is closed unanswered. The protocol is one JSON line each way: the
client sends ``{"command": "ps"}``; nothing else it sends is used. The answer is
``{"ok": true, "snapshot": ...}`` or ``{"ok": false, "error": ...}``.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import stat
import struct
import tempfile
from typing import Any

import anyio
import anyio.abc
import structlog

from ._errors import ActorboxError
from ._inspect import Inspectable, snapshot

log = structlog.get_logger("actorbox")

MAX_REQUEST = 4096  # bytes; a request is one short JSON line
REQUEST_TIMEOUT_S = 5.0
# accept() failing for want of descriptors (EMFILE, ENFILE) or kernel memory: the
# connection stays queued and the socket stays readable, so retry after a pause that
# grows from the first to the last value (seconds), instead of spinning or giving up.
ACCEPT_BACKOFF_S = (0.1, 1.0)
_OUT_OF_RESOURCES = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
COMMANDS = ("ping", "ps")
# sockaddr_un's sun_path holds 108 bytes on Linux, the terminating NUL included.
_MAX_PATH = 107


def control_dir() -> str:
    """Where this user's Runtimes put their control sockets."""
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and os.path.isabs(xdg) and os.path.isdir(xdg):
        return os.path.join(xdg, "actorbox")
    return os.path.join(tempfile.gettempdir(), f"actorbox-{os.getuid()}")


def check_dir(path: str, *, create: bool) -> bool:
    """True when ``path`` is a directory only this user can use (created 0700 if ``create``).

    False when it does not exist (and ``create`` is false); ActorboxError when it is
    a symlink, not a directory, owned by someone else or open to others.
    """
    if create:
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise ActorboxError(
            f"{path} is not a private directory of this user (it must be a directory owned by uid "
            f"{os.getuid()} with mode 0700); remove it, or set XDG_RUNTIME_DIR to a private directory")
    return True


def _bind(directory: str) -> tuple[socket.socket, str]:
    pid = os.getpid()
    n = 1
    while n < 1000:
        path = os.path.join(directory, f"{pid}.sock" if n == 1 else f"{pid}-{n}.sock")
        if len(os.fsencode(path)) > _MAX_PATH:
            raise ActorboxError(f"control socket path {path!r} is too long for a Unix socket; "
                                "set XDG_RUNTIME_DIR to a shorter directory")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(path)
        except OSError as exc:
            sock.close()
            if exc.errno != errno.EADDRINUSE:
                raise
            if _stale(path):  # left by a process that had our pid before us: take its name
                os.unlink(path)
            else:  # another Runtime of this process
                n += 1
            continue
        os.chmod(path, 0o600)
        sock.listen(16)
        sock.setblocking(False)
        return sock, path
    raise ActorboxError(f"no free control socket name for pid {pid} in {directory}")


def _stale(path: str) -> bool:
    """True when nothing listens on ``path`` (a socket file whose server is gone)."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        return True
    except OSError:
        return False
    finally:
        probe.close()
    return False


def remove_stale(directory: str | None = None) -> list[str]:
    """Remove the sockets of hosts that died without removing them (SIGKILL, SIGTERM, a
    crash: no exit code ran); returns their paths. A Runtime starting and ``ps`` call it.

    Only a socket whose pid is gone *and* on which nobody listens: a live process may
    have bound its socket and not yet listen on it, and a process of another pid
    namespace sharing the directory still answers.
    """
    removed = []
    for pid, path in list_sockets(directory):
        if pid == os.getpid() or _pid_alive(pid):
            continue  # our own are handled by _bind
        if _stale(path):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass  # another Runtime starting removed it first
            else:
                removed.append(path)
                log.debug("control.stale_removed", path=path)
    return removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _peer_uid(sock: socket.socket) -> int | None:
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except (OSError, AttributeError):
        return None
    return int(struct.unpack("3i", creds)[1])


class ControlServer:
    """A Runtime's control socket; ``serve`` runs in the Runtime's task group."""

    def __init__(self, rt: Inspectable) -> None:
        self.rt = rt
        self.directory = control_dir()
        check_dir(self.directory, create=True)
        remove_stale(self.directory)
        self._sock, self.path = _bind(self.directory)
        self._ino = os.stat(self.path).st_ino
        self._listener: anyio.abc.SocketListener | None = None

    async def serve(self) -> None:
        """Answer connections until cancelled; the socket file is removed on the way out.

        Nothing that goes wrong here reaches the Runtime: an accept that fails for want
        of descriptors is retried (logged once per episode), anything else ends the
        control socket with an error event, never the Runtime.
        """
        try:
            self._listener = await anyio.abc.SocketListener.from_socket(self._sock)
            async with self._listener, anyio.create_task_group() as tg:
                while True:
                    stream = await self._accept(self._listener)
                    tg.start_soon(self._answer, stream)
        except Exception as exc:
            log.error("control.failed", path=self.path, error=f"{type(exc).__name__}: {exc}",
                      consequence="python -m actorbox ps cannot see this Runtime any more")
        finally:
            self.close()

    async def _accept(self, listener: anyio.abc.SocketListener) -> anyio.abc.SocketStream:
        """The next connection; waits out a shortage of descriptors instead of failing."""
        delay, most = ACCEPT_BACKOFF_S
        failing = False
        while True:
            try:
                stream = await listener.accept()
            except (OSError, anyio.BrokenResourceError) as exc:
                # anyio reports accept()'s OSError as BrokenResourceError, the listener still open.
                cause = exc if isinstance(exc, OSError) else exc.__cause__
                code = cause.errno if isinstance(cause, OSError) else None
                if code == errno.ECONNABORTED:  # the client gave up while queued
                    continue
                if code not in _OUT_OF_RESOURCES:
                    raise
                if not failing:
                    log.warning("control.accept_failed", path=self.path, error=str(cause),
                                consequence="ps waits until descriptors are free again; retrying")
                    failing = True
                await anyio.sleep(delay)
                delay = min(delay * 2, most)
                continue
            if failing:
                log.info("control.accept_resumed", path=self.path)
            return stream

    async def _answer(self, stream: anyio.abc.SocketStream) -> None:
        # One connection's failure is its own: never the control socket's or the Runtime's.
        try:
            await self._answer_one(stream)
        except Exception as exc:
            log.warning("control.request_failed", error=f"{type(exc).__name__}: {exc}")

    async def _answer_one(self, stream: anyio.abc.SocketStream) -> None:
        async with stream:
            uid = _peer_uid(stream.extra(anyio.abc.SocketAttribute.raw_socket))
            if uid != os.getuid():
                log.warning("control.refused", peer_uid=uid, reason="another user's connection")
                return
            reply: dict[str, Any] = {"ok": False, "error": "no request within the time limit"}
            with anyio.move_on_after(REQUEST_TIMEOUT_S):
                request = await _read_line(stream)
                reply = self._reply(request)
            try:
                await stream.send(json.dumps(reply, default=str).encode() + b"\n")
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                pass  # the client went away; nothing to tell it

    def _reply(self, request: bytes | None) -> dict[str, Any]:
        try:
            command = json.loads(request)["command"] if request else None
        except (ValueError, TypeError, KeyError, RecursionError):  # RecursionError: nested thousands deep
            command = None
        # Only the command's name is used, and only when it is one of ours.
        if command not in COMMANDS:
            return {"ok": False, "error": f"expected one JSON line {{\"command\": NAME}} with NAME in {COMMANDS}"}
        if command == "ping":
            return {"ok": True, "pid": os.getpid()}
        try:
            return {"ok": True, "snapshot": snapshot(self.rt)}
        except Exception as exc:  # e.g. psutil failing for want of descriptors: answer all the same
            return {"ok": False, "error": f"could not take a snapshot: {type(exc).__name__}: {exc}"}

    def close(self) -> None:
        """Close the socket and remove its file (if it is still ours); idempotent."""
        self._sock.close()
        try:
            if os.stat(self.path).st_ino == self._ino:
                os.unlink(self.path)
        except FileNotFoundError:
            pass


async def _read_line(stream: anyio.abc.SocketStream) -> bytes | None:
    data = b""
    while b"\n" not in data and len(data) <= MAX_REQUEST:
        try:
            data += await stream.receive(MAX_REQUEST)
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            break
    line = data.split(b"\n", 1)[0]
    return line if 0 < len(line) <= MAX_REQUEST else None


# -- the client side (``python -m actorbox ps``) -------------------------------------------


def list_sockets(directory: str | None = None) -> list[tuple[int, str]]:
    """(pid, path) of each control socket in this user's directory, by pid."""
    directory = directory or control_dir()
    if not check_dir(directory, create=False):
        return []
    out = []
    for name in os.listdir(directory):
        stem = name.removesuffix(".sock")
        head = stem.split("-", 1)[0]
        if name.endswith(".sock") and head.isdigit():
            out.append((int(head), os.path.join(directory, name)))
    return sorted(out)


def query(path: str, command: str = "ps", timeout: float = REQUEST_TIMEOUT_S) -> dict[str, Any]:
    """Send ``command`` to the Runtime listening on ``path``; returns its JSON answer.

    Raises OSError when nothing answers (ConnectionRefusedError: a stale socket file).
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(path)
        s.sendall(json.dumps({"command": command}).encode() + b"\n")
        chunks = []
        while True:
            chunk = s.recv(1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
    reply = json.loads(b"".join(chunks) or b"null")
    if not isinstance(reply, dict):
        raise OSError(errno.EPROTO, f"no answer from {path}")
    return reply
