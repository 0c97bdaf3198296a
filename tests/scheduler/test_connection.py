"""Tests for scheduler/_connection.py: framed, fd-passing connections over a real socketpair."""

from __future__ import annotations

import array
import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest

from scheduler._connection import Connection, ConnectionClosed
from scheduler._framing import FrameError, encode_header

pytestmark = pytest.mark.anyio

TIMEOUT = 10


class Inbox:
    """Collects (body, fds) frames and lets a test wait for a number of them."""

    def __init__(self) -> None:
        self.frames: list[tuple[bytes, list[int]]] = []
        self._changed = anyio.Event()

    def __call__(self, body: bytes, fds: list[int]) -> None:
        self.frames.append((body, fds))
        self._changed.set()

    async def wait_for(self, n: int) -> list[tuple[bytes, list[int]]]:
        with anyio.fail_after(TIMEOUT):
            while len(self.frames) < n:
                await self._changed.wait()
                self._changed = anyio.Event()
        return self.frames

    def close_fds(self) -> None:
        for _, fds in self.frames:
            for fd in fds:
                os.close(fd)


@asynccontextmanager
async def connected(**kwargs: Any) -> AsyncIterator[tuple[Connection, Inbox, Connection, Inbox]]:
    """Two running Connections over a socketpair; both are closed (and their run() awaited) on exit."""
    a_sock, b_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    a_in, b_in = Inbox(), Inbox()
    a = Connection(a_sock, a_in, **kwargs)
    b = Connection(b_sock, b_in, **kwargs)
    try:
        with anyio.fail_after(TIMEOUT):
            async with anyio.create_task_group() as tg:
                tg.start_soon(a.run)
                tg.start_soon(b.run)
                await anyio.sleep(0)
                try:
                    yield a, a_in, b, b_in
                finally:
                    a.close()
                    b.close()
    finally:
        a_in.close_fds()
        b_in.close_fds()


async def test_frames_both_ways() -> None:
    """Frames sent on either end arrive whole and in order at the other end."""
    async with connected() as (a, a_in, b, b_in):
        for i in range(20):
            a.send(b"a->b %d" % i)
            b.send(b"b->a %d" % i)
        assert [body for body, _ in await b_in.wait_for(20)] == [b"a->b %d" % i for i in range(20)]
        assert [body for body, _ in await a_in.wait_for(20)] == [b"b->a %d" % i for i in range(20)]
        assert all(fds == [] for _, fds in a_in.frames + b_in.frames)


async def test_empty_frame() -> None:
    """A frame with an empty body is delivered as b''."""
    async with connected() as (a, _, _b, b_in):
        a.send(b"")
        a.send(b"after")
        assert await b_in.wait_for(2) == [(b"", []), (b"after", [])]


async def test_fd_passing() -> None:
    """A pipe's read end sent with a frame arrives as a new fd that reads what is written to the pipe."""
    r, w = os.pipe()
    try:
        async with connected() as (a, _, _b, b_in):
            a.send(b"here is a pipe", (r,))
            [(body, fds)] = await b_in.wait_for(1)
            assert body == b"here is a pipe"
            assert len(fds) == 1
            os.close(r)  # the sender keeps ownership of its copy; the receiver's stays valid
            r = -1
            os.write(w, b"through the pipe")
            assert os.read(fds[0], 100) == b"through the pipe"
            assert not os.get_inheritable(fds[0])  # received with MSG_CMSG_CLOEXEC
    finally:
        os.close(w)
        if r >= 0:
            os.close(r)


async def test_fds_stay_with_their_frames() -> None:
    """fds sent with several frames in both directions are attached to the right frames."""
    pipes = [os.pipe() for _ in range(3)]
    try:
        async with connected() as (a, a_in, b, b_in):
            a.send(b"two", (pipes[0][0], pipes[1][0]))
            a.send(b"none")
            a.send(b"one", (pipes[2][0],))
            b.send(b"back", (pipes[1][0],))
            got = await b_in.wait_for(3)
            assert [(body, len(fds)) for body, fds in got] == [(b"two", 2), (b"none", 0), (b"one", 1)]
            [(body, back_fds)] = await a_in.wait_for(1)
            assert body == b"back" and len(back_fds) == 1
            for i, w in ((0, pipes[0][1]), (1, pipes[1][1]), (2, pipes[2][1])):
                os.write(w, b"pipe%d" % i)
            assert os.read(got[0][1][0], 10) == b"pipe0"
            assert os.read(got[0][1][1], 10) == b"pipe1"
            assert os.read(got[2][1][0], 10) == b"pipe2"
    finally:
        for r, w in pipes:
            os.close(r)
            os.close(w)


async def test_large_frame_is_buffered_through_the_writer() -> None:
    """An 8 MiB frame (far beyond the socket buffer) arrives intact, followed by later frames in order."""
    big = os.urandom(1024) * (8 * 1024)
    async with connected() as (a, a_in, b, b_in):
        a.send(big)
        a.send(b"after")
        b.send(big[::-1])
        got = await b_in.wait_for(2)
        assert len(got[0][0]) == len(big) and got[0][0] == big
        assert got[1] == (b"after", [])
        [(back, _)] = await a_in.wait_for(1)
        assert back == big[::-1]
        assert a.bytes_out >= len(big) and b.bytes_in >= len(big)


async def test_large_frame_with_fd() -> None:
    """The fd of a frame too large for one write still arrives with that frame."""
    r, w = os.pipe()
    try:
        async with connected() as (a, _, _b, b_in):
            a.send(b"y" * (4 * 1024 * 1024), (r,))
            a.send(b"next")
            got = await b_in.wait_for(2)
            assert len(got[0][0]) == 4 * 1024 * 1024 and len(got[0][1]) == 1
            assert got[1] == (b"next", [])
            os.write(w, b"ok")
            assert os.read(got[0][1][0], 2) == b"ok"
    finally:
        os.close(r)
        os.close(w)


async def test_a_queued_frame_carries_the_fds_it_was_sent_with_though_the_caller_closed_them() -> None:
    """send() lets the caller close its fds at once. A frame queued behind a full socket
    kept their numbers only: it then carried whatever file took a number next (another
    actor's memory, a socket), or failed with EBADF and left the connection dead."""
    async with connected() as (a, _, _b, b_in):
        a.send(b"x" * (4 * 1024 * 1024))  # fills the socket: what follows is queued
        meant = []
        for i in range(3):
            r, w = os.pipe()
            os.write(w, b"meant %d" % i)
            os.close(w)
            a.send(b"frame %d" % i, (r,))
            os.close(r)
            meant.append(i)
        others = [os.pipe() for _ in range(3)]  # take the numbers just freed
        try:
            for _r, w in others:
                os.write(w, b"another file")
            got = await b_in.wait_for(4)
            for i, (body, fds) in zip(meant, got[1:4], strict=True):
                assert body == b"frame %d" % i and len(fds) == 1
                assert os.read(fds[0], 100) == b"meant %d" % i
        finally:
            for r, w in others:
                os.close(r)
                os.close(w)
        assert not a.closed


async def test_fds_of_frames_never_sent_are_closed_with_the_connection() -> None:
    """Duplicates held for queued frames are released when the connection closes first."""
    before = len(os.listdir("/proc/self/fd"))
    a_sock, b_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    a = Connection(a_sock, Inbox())
    with b_sock:
        a.send(b"x" * (4 * 1024 * 1024))  # never read: stays queued
        r, w = os.pipe()
        a.send(b"with an fd", (r,))
        os.close(r)
        os.close(w)
        a.close()
    assert len(os.listdir("/proc/self/fd")) <= before


async def test_send_before_run_is_flushed() -> None:
    """A large frame queued before run() starts is written once run() is serving."""
    a_sock, b_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    b_in = Inbox()
    a = Connection(a_sock, lambda body, fds: None)
    b = Connection(b_sock, b_in)
    big = b"q" * (2 * 1024 * 1024)
    a.send(big)
    with anyio.fail_after(TIMEOUT):
        async with anyio.create_task_group() as tg:
            tg.start_soon(b.run)
            tg.start_soon(a.run)
            assert await b_in.wait_for(1) == [(big, [])]
            a.close()
            b.close()


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_send_from_worker_thread() -> None:
    """On asyncio, send() from another thread (an actor's worker) delivers even a frame that must be buffered."""
    big = b"t" * (3 * 1024 * 1024)
    async with connected() as (a, _, _b, b_in):
        await anyio.to_thread.run_sync(a.send, big)
        await anyio.to_thread.run_sync(a.send, b"small")
        assert await b_in.wait_for(2) == [(big, []), (b"small", [])]


async def test_eof_ends_run() -> None:
    """When the peer closes its socket, run() returns normally."""
    a_sock, b_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    inbox = Inbox()
    conn = Connection(a_sock, inbox)
    b_sock.sendall(encode_header(4, 0) + b"last")
    b_sock.close()
    try:
        with anyio.fail_after(TIMEOUT):
            await conn.run()
        assert inbox.frames == [(b"last", [])]
    finally:
        conn.close()


async def test_close_ends_run() -> None:
    """close() on a running connection makes its run() return, and later sends raise ConnectionClosed."""
    a_sock, b_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    conn = Connection(a_sock, lambda body, fds: None)
    try:
        with anyio.fail_after(TIMEOUT):
            async with anyio.create_task_group() as tg:
                tg.start_soon(conn.run)
                await anyio.sleep(0.01)
                conn.close()
        assert conn.closed
        with pytest.raises(ConnectionClosed):
            conn.send(b"too late")
        conn.close()  # idempotent
    finally:
        b_sock.close()


async def test_send_to_vanished_peer_raises_connection_closed() -> None:
    """Sending after the peer's socket is gone raises ConnectionClosed, not a raw OSError."""
    a_sock, b_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    conn = Connection(a_sock, lambda body, fds: None)
    b_sock.close()
    try:
        with pytest.raises(ConnectionClosed):
            conn.send(b"anyone there?")
    finally:
        conn.close()


async def _run_expecting(conn: Connection, exc_type: type[BaseException]) -> BaseException:
    with anyio.fail_after(TIMEOUT):
        with pytest.raises(exc_type) as info:
            await conn.run()
    return info.value


async def test_oversize_frame_makes_run_raise_frame_error() -> None:
    """A frame over max_frame makes run() raise FrameError (not wrapped in an ExceptionGroup)."""
    a_sock, b_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    conn = Connection(b_sock, lambda body, fds: None, max_frame=1024)
    a_sock.sendall(encode_header(1025, 0) + b"x" * 1025)
    try:
        err = await _run_expecting(conn, FrameError)
        assert "exceeds the limit" in str(err)
    finally:
        conn.close()
        a_sock.close()


async def test_frame_at_limit_is_accepted() -> None:
    """A frame of exactly max_frame bytes is delivered."""
    async with connected(max_frame=1024) as (a, _, _b, b_in):
        a.send(b"m" * 1024)
        assert await b_in.wait_for(1) == [(b"m" * 1024, [])]


async def test_handler_exception_ends_run() -> None:
    """An exception raised by on_frame ends run() with that exception."""

    class Refused(Exception):
        pass

    def on_frame(body: bytes, fds: list[int]) -> None:
        raise Refused(body)

    a_sock, b_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    conn = Connection(b_sock, on_frame)
    a_sock.sendall(encode_header(3, 0) + b"bad")
    try:
        err = await _run_expecting(conn, Refused)
        assert err.args == (b"bad",)
    finally:
        conn.close()
        a_sock.close()


async def test_close_releases_fds_of_partial_frame() -> None:
    """fds that arrived with a frame whose body never completed are closed by close()."""
    r, w = os.pipe()
    a_sock, b_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    inbox = Inbox()
    conn = Connection(b_sock, inbox)
    try:
        socket.send_fds(a_sock, [encode_header(100, 1) + b"partial"], [r])
        os.close(r)  # from now on the only read end is the one travelling to conn
        r = -1
        with anyio.fail_after(TIMEOUT):
            async with anyio.create_task_group() as tg:
                tg.start_soon(conn.run)
                while conn.bytes_in == 0:
                    await anyio.sleep(0.005)
                os.write(w, b"x")  # the received read end is open, held by the decoder
                conn.close()
        assert inbox.frames == []
        with pytest.raises(BrokenPipeError):  # no read end left anywhere
            os.write(w, b"x")
    finally:
        a_sock.close()
        os.close(w)
        if r >= 0:
            os.close(r)


def _read_end_is_open(w: int) -> bool:
    """Whether a read end of the pipe whose write end is ``w`` is still open anywhere."""
    try:
        os.write(w, b"x")
    except BrokenPipeError:
        return False
    return True


async def test_fds_of_good_frames_sharing_a_read_with_a_bad_one_are_closed() -> None:
    """A good frame with an fd and an oversize header in one read: run() raises and the good frame's fd is
    closed at once, not dropped open (an actor left 1.5 GiB of memfds in the host that way)."""
    r, w = os.pipe()
    a_sock, b_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    inbox = Inbox()
    conn = Connection(b_sock, inbox, max_frame=1024)
    try:
        socket.send_fds(a_sock, [encode_header(4, 1) + b"good" + encode_header(1025, 0)], [r])
        os.close(r)
        err = await _run_expecting(conn, FrameError)
        assert "exceeds the limit" in str(err)
        assert inbox.frames == []
        assert not _read_end_is_open(w), "the good frame's descriptor was left open"
    finally:
        conn.close()
        a_sock.close()
        os.close(w)


async def test_fds_of_frames_behind_one_the_handler_refuses_are_closed() -> None:
    """When on_frame raises, the frames read with it but not yet handled have their fds closed."""
    r, w = os.pipe()

    def on_frame(body: bytes, fds: list[int]) -> None:
        raise ValueError(body)

    a_sock, b_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    conn = Connection(b_sock, on_frame)
    try:
        socket.send_fds(a_sock, [encode_header(3, 0) + b"bad" + encode_header(4, 1) + b"next"], [r])
        os.close(r)
        await _run_expecting(conn, ValueError)
        assert not _read_end_is_open(w), "the unhandled frame's descriptor was left open"
    finally:
        conn.close()
        a_sock.close()
        os.close(w)


async def test_fds_no_frame_claims_are_closed_before_the_connection_is() -> None:
    """fds sent with a frame claiming none end run() with FrameError and are already closed (60 of them
    used to stay open until the actor died, under the 64 that made the host hang up)."""
    pipes = [os.pipe() for _ in range(60)]
    a_sock, b_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    inbox = Inbox()
    conn = Connection(b_sock, inbox)
    try:
        socket.send_fds(a_sock, [encode_header(3, 0) + b"log"], [r for r, _ in pipes])
        for r, _ in pipes:
            os.close(r)
        err = await _run_expecting(conn, FrameError)
        assert "60 file descriptors arrived that no frame claims" in str(err)
        assert not any(_read_end_is_open(w) for _, w in pipes)
    finally:
        conn.close()
        a_sock.close()
        for _, w in pipes:
            os.close(w)


async def test_frames_sent_while_a_read_is_dispatched_go_out_together(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a connection with batch_writes, the frames that one read's handlers send go out in one write at the
    end of that read, in order; a frame with descriptors goes after those batched before it, with its
    descriptors; a send outside a read writes at once."""
    pipe_r, pipe_w = os.pipe()
    x_sock, y_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    p_sock, r_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    y_in = Inbox()
    x, y = Connection(x_sock, Inbox()), Connection(y_sock, y_in)
    x.batch_writes = True
    writes: list[int] = []
    write = x._write

    def counted(data: bytes, fds: Any) -> None:
        writes.append(len(fds))
        write(data, fds)

    def relay(body: bytes, fds: list[int]) -> None:
        x.send(body, tuple(fds))
        for fd in fds:
            os.close(fd)  # the sender keeps ownership of what it sends

    monkeypatch.setattr(x, "_write", counted)
    r = Connection(r_sock, relay)
    frames = [encode_header(len(b), n) + b for b, n in ((b"one", 0), (b"two", 0), (b"pipe", 1), (b"four", 0))]
    try:
        with anyio.fail_after(TIMEOUT):
            async with anyio.create_task_group() as tg:
                for conn in (x, y, r):
                    tg.start_soon(conn.run)
                await anyio.sleep(0)
                # One segment, so the relay reads all four frames at once (the descriptor with its first byte).
                p_sock.sendmsg([b"".join(frames)], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [pipe_r]))])
                got = await y_in.wait_for(4)
                assert [(body, len(fds)) for body, fds in got] == [(b"one", 0), (b"two", 0), (b"pipe", 1),
                                                                    (b"four", 0)]
                assert writes == [0, 1, 0]  # one, two | pipe with its descriptor | four
                os.write(pipe_w, b"through")
                assert os.read(got[2][1][0], 10) == b"through"
                x.send(b"outside a read")
                assert writes == [0, 1, 0, 0]
                assert (await y_in.wait_for(5))[4] == (b"outside a read", [])
                for conn in (x, y, r):
                    conn.close()
    finally:
        y_in.close_fds()
        p_sock.close()
        for fd in (pipe_r, pipe_w):
            os.close(fd)
