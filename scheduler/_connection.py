"""A framed, fd-passing Unix-socket connection on a non-blocking socket.

anyio socket streams cost 37-74 us per round trip on this class of machine and
cannot pass descriptors, so the hot path sits on the raw socket: on asyncio the
socket is watched with ``loop.add_reader`` (frames are parsed and dispatched from
the reader callback, with no task switch); on any other backend (trio) a reader
task waits with ``anyio.wait_readable``. Writes go straight to ``sendmsg`` and
only fall back to a buffer drained on writability when the socket is full.

``send`` may be called from any thread (an actor's worker threads reply directly,
which saves a thread hop per call); everything else runs on the event loop.

Write batching (``batch_writes``, the host's side of each actor connection): frames that
the loop thread sends while it dispatches one read (a *turn*: the frames of one
``recvmsg``) go out together when the turn ends, one ``sendmsg`` for what a batch of
replies set off (the task pool passing the next tasks on, say) instead of one each. A
frame with descriptors is not batched (they ride on the first byte of their own send):
it goes after the frames batched before it.
"""

from __future__ import annotations

import array
import errno
import socket
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

import anyio
import sniffio

from ._fds import close_fds, dup_all
from ._framing import DEFAULT_MAX_FRAME, MAX_FDS_PER_FRAME, FrameDecoder, FrameError, encode_header

_RECV_SIZE = 256 * 1024
# Most a read turn takes in before it lets the loop run (the socket stays readable, so
# the rest is read on the next turn): a peer writing a 64 MiB frame as fast as it can
# would otherwise have the whole frame read, copied and dispatched in one turn.
_READ_TURN = 8 * 1024 * 1024
# Bytes queued for a peer that is not reading before the connection is given up:
# a peer that stops reading must not make us buffer without bound.
DEFAULT_MAX_PENDING = 256 * 1024 * 1024
_ANCBUF = socket.CMSG_SPACE(MAX_FDS_PER_FRAME * 4)
# Plain ints: `&` on the socket module's IntFlag members runs enum code, on every read.
_MSG_CTRUNC = int(socket.MSG_CTRUNC)
_MSG_CMSG_CLOEXEC = int(socket.MSG_CMSG_CLOEXEC)

FrameHandler = Callable[[bytes, list[int]], None]


class _Turn(threading.local):
    """The connections with frames batched in the read turn this thread is dispatching (None: no turn)."""

    dirty: list[_Writer] | None = None


_turn = _Turn()


class ConnectionClosed(Exception):
    """The connection is closed; nothing more can be sent on it."""


class _Writer:
    """The sending half of a ``Connection``: frames written at once, or queued (with duplicates of
    their descriptors) and drained when the socket is writable; batched per read turn."""

    def __init__(self, sock: socket.socket, max_pending: int) -> None:
        sock.setblocking(False)
        self.sock = sock
        self._lock = threading.Lock()
        # Invariant: _pending holds (data, fds) not yet fully written, in order;
        # when it is non-empty every new send appends to it instead of writing.
        self._pending: deque[tuple[memoryview, tuple[int, ...]]] = deque()
        self._pending_bytes = 0
        self.max_pending = max_pending
        self.batch_writes = False  # see the module's docstring
        self._batch: list[bytes] = []  # frames batched in this turn (under _lock)
        self.hangup_reason: str | None = None  # why we hung up on the peer, if we did
        self._closed = False
        self._loop: Any = None  # asyncio loop when on asyncio, else None
        self._loop_thread = 0
        self._writable: anyio.Event | None = None
        self.bytes_out = 0

    def send(self, body: bytes, fds: tuple[int, ...] | list[int] = ()) -> None:
        """Queue one frame for sending (thread-safe, never blocks).

        The caller keeps ownership of the fds and may close them as soon as this returns:
        a frame that can't go out now keeps duplicates of them until it does.
        """
        data = encode_header(len(body), len(fds)) + body
        if self.batch_writes:
            dirty = _turn.dirty
            if dirty is not None and not fds:
                with self._lock:
                    if self._closed:
                        raise ConnectionClosed("connection is closed")
                    if not self._batch:
                        dirty.append(self)
                    self._batch.append(data)
                return
            if self._batch:  # frames batched before this one go first (and not with its descriptors)
                self.flush_batch()
        self._write(data, fds)

    def flush_batch(self) -> None:
        """Write the frames batched in this turn (the turn's end does; any thread may)."""
        with self._lock:
            if not self._batch:
                return
            batch, self._batch = self._batch, []
        try:
            self._write(b"".join(batch), ())
        except ConnectionClosed:
            pass  # as a send to a closed connection: whoever watches it fails what was in flight

    def _write(self, data: bytes, fds: tuple[int, ...] | list[int]) -> None:
        with self._lock:
            if self._closed:
                raise ConnectionClosed("connection is closed")
            if not self._pending:
                sent = self._try_send(memoryview(data), tuple(fds))
                if sent == len(data):
                    return
                self._pending.append((memoryview(data)[sent:], () if sent else dup_all(fds)))
                self._pending_bytes = len(data) - sent
            else:
                if self._pending_bytes + len(data) > self.max_pending:
                    # The peer stopped reading: hang up (its reader sees EOF, we see it die).
                    self.hangup_reason = f"it stopped reading: more than {self.max_pending} bytes were queued for it"
                    self._closed = True
                    self._drop_pending()
                    try:
                        self.sock.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                    raise ConnectionClosed(self.hangup_reason)
                self._pending.append((memoryview(data), dup_all(fds)))
                self._pending_bytes += len(data)
            first = len(self._pending) == 1
        if first:
            self._arm_writer()

    def _try_send(self, view: memoryview, fds: tuple[int, ...]) -> int:
        try:
            if fds:
                anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]
                n = self.sock.sendmsg([view], anc)
            else:
                n = self.sock.send(view)
        except (BlockingIOError, InterruptedError):
            return 0
        except OSError as exc:
            if exc.errno in (errno.EPIPE, errno.ECONNRESET, errno.EBADF, errno.ENOTCONN):
                self._closed = True
                raise ConnectionClosed(f"peer went away ({exc.strerror})") from None
            raise
        self.bytes_out += n
        return n

    def flush(self) -> bool:
        """Write what is pending now, from any thread (for when the loop is busy); True when
        nothing is left pending."""
        with self._lock:
            while self._pending:
                view, fds = self._pending[0]
                try:
                    sent = self._try_send(view, fds)
                except ConnectionClosed:
                    self._drop_pending()
                    return True
                self._pending_bytes -= sent
                if sent and fds:  # the kernel has put them in the message: ours go
                    close_fds(fds)
                if sent == len(view):
                    self._pending.popleft()
                elif sent == 0:
                    return False
                else:
                    self._pending[0] = (view[sent:], ())
            return True

    def _drop_pending(self) -> None:
        """Forget what was not sent, closing its fds (under _lock)."""
        for _view, fds in self._pending:
            close_fds(fds)
        self._pending.clear()

    def _arm_writer(self) -> None:
        if self._loop is not None:
            loop = self._loop
            if self._loop_thread == threading.get_ident():
                loop.add_writer(self.sock.fileno(), self._on_writable_asyncio)
            else:
                loop.call_soon_threadsafe(self._arm_writer)
        elif self._writable is not None:
            # Generic backends are only used by the host, which sends from its loop.
            self._writable.set()

    def _on_writable_asyncio(self) -> None:
        if self._closed or self.flush():
            try:
                self._loop.remove_writer(self.sock.fileno())
            except (ValueError, OSError):
                pass


class Connection(_Writer):
    """One end of a host<->actor socket. ``run()`` reads until EOF or a framing error.

    ``on_frame(body, fds)`` is called on the event loop for every complete frame;
    the handler owns the fds. An exception raised by ``on_frame`` ends ``run()``
    with that exception (the peer sent something we will not process).
    """

    def __init__(self, sock: socket.socket, on_frame: FrameHandler, *, max_frame: int = DEFAULT_MAX_FRAME,
                 max_pending: int = DEFAULT_MAX_PENDING) -> None:
        _Writer.__init__(self, sock, max_pending)
        self._on_frame = on_frame
        self._decoder = FrameDecoder(max_frame)
        self._rbuf = bytearray(_RECV_SIZE)
        # Held by whoever reads and dispatches frames: the loop's reader, or another
        # thread that reads while the loop is busy (read_now).
        self.read_lock = threading.Lock()
        # Called on the loop thread after each read, with read_lock released (for work a
        # frame handler deferred because it must not hold up other readers).
        self.after_read: Callable[[], None] | None = None
        self.loop_reading = False  # the loop thread is inside a read (its frame handlers run)
        self._done: Any = None
        self.bytes_in = 0

    @property
    def max_frame(self) -> int:
        """The largest frame body accepted from the peer (and, by agreement, sent to it)."""
        return self._decoder.max_frame

    @max_frame.setter
    def max_frame(self, value: int) -> None:
        self._decoder.max_frame = value

    # -- reading ---------------------------------------------------------------

    def _read_available(self) -> bool:
        """Read and dispatch everything available; False on EOF."""
        sock = self.sock
        buf = self._rbuf
        budget = _READ_TURN
        while True:
            try:
                # Into a preallocated buffer: recvmsg() would allocate (and shrink) a
                # 256 KiB bytes object per read, ~13 us of each hop on this class of machine.
                nread, anc, flags, _ = sock.recvmsg_into([buf], _ANCBUF, _MSG_CMSG_CLOEXEC)
            except (BlockingIOError, InterruptedError):
                return True
            except (ConnectionResetError, OSError) as exc:
                if isinstance(exc, ConnectionResetError) or exc.errno in (errno.ECONNRESET, errno.EBADF):
                    return False
                raise
            fds = _received_fds(anc) if anc else []  # (most reads carry none: no call)
            if flags & _MSG_CTRUNC:
                close_fds(fds)
                raise FrameError("file descriptors were truncated: too many in one message, or this process is out "
                                 "of descriptors (its RLIMIT_NOFILE; raise it with ulimit -n)")
            if not nread:
                close_fds(fds)
                return False
            self.bytes_in += nread
            frames = self._decoder.feed(memoryview(buf)[:nread], fds)  # (on a FrameError it closed them all)
            for i, (body, ffds) in enumerate(frames):
                try:
                    self._on_frame(body, ffds)  # owns ffds from here, even when it raises
                except BaseException:
                    # The connection ends here: the frames behind this one are never handled.
                    for _, later in frames[i + 1:]:
                        close_fds(later)
                    raise
            budget -= nread
            if nread < _RECV_SIZE or budget <= 0:
                return True

    def _read_turn(self) -> bool:
        """``_read_available`` as one turn: frames the handlers send on connections with
        ``batch_writes`` go out at its end."""
        if _turn.dirty is not None:  # a turn is open on this thread already: it writes them
            return self._read_available()
        dirty: list[_Writer] = []
        _turn.dirty = dirty
        try:
            return self._read_available()
        finally:
            _turn.dirty = None
            for conn in dirty:
                conn.flush_batch()

    def read_now(self, *, wait: bool = True) -> bool | None:
        """Read and dispatch what is available, from any thread (for when the loop thread
        is busy). False on EOF; None, without reading, when ``wait`` is false and another
        thread is reading."""
        if not self.read_lock.acquire(blocking=wait):
            return None
        try:
            return self._read_available()
        finally:
            self.read_lock.release()

    async def run(self) -> None:
        """Serve the connection until the peer closes it; raises on a framing error."""
        if sniffio.current_async_library() == "asyncio":
            await self._run_asyncio()
        else:
            await self._run_generic()

    async def _run_asyncio(self) -> None:
        import asyncio

        loop = asyncio.get_running_loop()
        self._loop = loop
        self._loop_thread = threading.get_ident()
        done: asyncio.Future[BaseException | None] = loop.create_future()
        self._done = done
        fd = self.sock.fileno()

        read_lock = self.read_lock

        def on_readable() -> None:
            if not read_lock.acquire(blocking=False):
                return  # another thread is reading just now; the socket stays readable for us
            self.loop_reading = True
            try:
                alive = self._read_turn()
            except BaseException as exc:  # reported through run(), never lost
                if not done.done():
                    done.set_result(exc)
                loop.remove_reader(fd)
                return
            finally:
                self.loop_reading = False
                read_lock.release()
            if not alive and not done.done():
                done.set_result(None)
                loop.remove_reader(fd)
            elif self.after_read is not None:
                self.after_read()

        loop.add_reader(fd, on_readable)
        if self._pending:
            self._arm_writer()
        try:
            exc = await done
        finally:
            _unwatch(loop, fd)
        if exc is not None:
            raise exc

    async def _run_generic(self) -> None:
        self._writable = anyio.Event()
        if self._pending:
            self._writable.set()
        failure: BaseException | None = None
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._writer_task)
            try:
                while True:
                    await anyio.wait_readable(self.sock)
                    if not self._read_turn():
                        break
            except (anyio.ClosedResourceError, OSError) as exc:
                if not self._closed:
                    failure = exc
            except Exception as exc:  # raised below, outside the task group, as itself
                failure = exc
            finally:
                tg.cancel_scope.cancel()
        if failure is not None:
            raise failure

    async def _writer_task(self) -> None:
        while True:
            assert self._writable is not None
            await self._writable.wait()
            self._writable = anyio.Event()
            while not self.flush():
                await anyio.wait_writable(self.sock)

    def close(self) -> None:
        """Close the socket and release undelivered fds (idempotent)."""
        with self._lock:
            if self._closed and self.sock.fileno() < 0:
                return
            self._closed = True
            self._drop_pending()
            self._batch.clear()
        self._decoder.close()
        fd = self.sock.fileno()
        if fd >= 0:
            if self._loop is not None:
                _unwatch(self._loop, fd)
                if self._done is not None and not self._done.done():
                    self._done.set_result(None)
            else:
                try:
                    anyio.notify_closing(self.sock)
                except Exception:
                    pass
            self.sock.close()

    @property
    def closed(self) -> bool:
        return self._closed


def _received_fds(anc: list[tuple[int, int, bytes]]) -> list[int]:
    """The descriptors in ``recvmsg``'s ancillary data (they are ours to close from here)."""
    fds: list[int] = []
    for level, typ, cdata in anc:
        if level == socket.SOL_SOCKET and typ == socket.SCM_RIGHTS:
            a = array.array("i")
            a.frombytes(cdata[: len(cdata) - (len(cdata) % a.itemsize)])
            fds.extend(a)
    return fds


def _unwatch(loop: Any, fd: int) -> None:
    """Stop an asyncio loop watching ``fd`` (if it does; a closed loop raises RuntimeError)."""
    for remove in (loop.remove_reader, loop.remove_writer):
        try:
            remove(fd)
        except (ValueError, OSError, RuntimeError):
            pass
