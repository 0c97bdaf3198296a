"""A call whose answer cannot be sent still ends, with a typed error: nothing waits forever.

An actor that has used up its ``SandboxPolicy(memory_limit=...)`` may have no memory
left to encode its reply (msgpack allocates 1 MiB before it writes a byte): the reply
path used to raise in the actor, send nothing and leave the caller waiting for good.
Now (actorbox._outbox):

- a reply that cannot be encoded or sent is replaced with a short ``MemoryError`` that
  says which call it answers and what to do, encoded without big allocations;
- when even that cannot be sent, the actor exits (status 86, a line on stderr), and the
  call fails with ``ActorDiedError``; a restart follows per ``max_restarts``;
- an actor that dies halfway through writing a frame fails the call with ``ActorDiedError``.

Each holds with zygotes (the actor forked from a prepared process) and without.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time

import anyio
import pytest

import actorbox
from actorbox._codec import Codec
from actorbox._outbox import UNANSWERED_EXIT, Outbox
from scheduler import Connection, envelope

pytestmark = pytest.mark.anyio

MiB = 1 << 20
LIMIT = 128 * MiB
CALL_TIMEOUT = 60.0  # fails instead of hanging; a sandboxed start under load takes a few seconds
ZYGOTES = pytest.mark.parametrize("zygotes", [True, False], ids=["zygotes", "no-zygotes"])


def _hoard(held: list[bytearray], smallest: int) -> None:
    """Allocate until MemoryError, in ever smaller pieces down to ``smallest`` bytes, keeping them all."""
    size = MiB
    while size >= smallest:
        try:
            held.append(bytearray(size))
        except MemoryError:
            size //= 2


def _trim() -> None:
    """Give the freed pieces back to the kernel: pieces the hoarding threads took live in their own malloc
    arenas, which glibc keeps mapped after a free, so under memory_limit (RLIMIT_AS) the answer to release()
    could still fail to get its packer's buffer."""
    import ctypes

    ctypes.CDLL(None).malloc_trim(0)


@actorbox.actor(max_restarts=1)
class Hoarder:
    """Sync methods only: its calls run inline on the actor's loop thread."""

    def __init__(self):
        self.held = []
        self.threads = []
        self.let_go = threading.Event()

    def hoard_and_raise(self):
        _hoard(self.held, 64 << 10)
        raise RuntimeError("the hoard is full")

    def hoard_and_return(self):
        result = list(range(1000))  # made first: the method returns, encoding its value fails
        _hoard(self.held, 64 << 10)
        return result

    def hoard_in_threads(self, n):
        """``n`` threads hoard at once, and live on (holding their stacks) until release(); then this one."""
        result = list(range(1000))
        go, done, self.let_go = threading.Event(), threading.Semaphore(0), threading.Event()

        def hoard():
            go.wait()
            _hoard(self.held, 64 << 10)
            done.release()
            self.let_go.wait()

        self.threads = [threading.Thread(target=hoard) for _ in range(n)]
        for t in self.threads:  # all started before any hoards
            t.start()
        go.set()
        for _ in self.threads:
            done.acquire()
        _hoard(self.held, 64 << 10)  # what the threads' arenas left of the data limit
        return result

    def hoard_everything(self):
        result = list(range(1000))
        _hoard(self.held, 8)
        return result

    def cannot_answer(self):
        """Hoards, and its stand-in answer finds no memory either (as it might, with less luck)."""
        from actorbox._context import process_caller

        def no_memory(*args):
            raise MemoryError

        process_caller.get().outbox._failure_frame = no_memory
        result = list(range(1000))
        _hoard(self.held, 64 << 10)
        return result

    def release(self):
        self.let_go.set()
        for t in self.threads:
            t.join()
        n = len(self.held)
        self.held.clear()
        _trim()
        return n

    def pid(self):
        return os.getpid()

    def half_a_frame(self):
        """Writes the header of a 1000-byte frame and 10 bytes of it, then dies."""
        from actorbox._context import process_caller
        from scheduler._framing import encode_header

        sock = process_caller.get().conn.sock
        sock.setblocking(True)
        sock.send(encode_header(1000, 0) + b"\x00" * 10)
        time.sleep(0.2)
        os._exit(3)


@actorbox.actor
class AsyncHoarder:
    """Has an async method: its sync calls run on worker threads, its async ones on the loop."""

    def __init__(self):
        self.held = []

    async def hoard_and_raise(self):
        _hoard(self.held, 64 << 10)
        raise RuntimeError("the hoard is full")

    def sync_hoard_and_return(self):
        result = list(range(1000))
        _hoard(self.held, 64 << 10)
        return result

    def release(self):
        n = len(self.held)
        self.held.clear()
        _trim()
        return n

    def pid(self):
        return os.getpid()


def _runtime(zygotes: bool) -> actorbox.Runtime:
    return actorbox.Runtime(sandbox_policy=actorbox.SandboxPolicy(memory_limit=LIMIT), zygotes=zygotes)


async def _expect_memory_error(call, method: str, said: str) -> MemoryError:
    with anyio.fail_after(CALL_TIMEOUT), pytest.raises(MemoryError) as info:
        await call
    text = str(info.value)
    assert f"ran out of memory while encoding or sending its answer to {method}()" in text, text
    assert said in text, text
    assert "memory_limit" in text, text
    return info.value


@ZYGOTES
async def test_an_error_that_cannot_be_encoded_arrives_as_a_short_memory_error(zygotes: bool) -> None:
    async with _runtime(zygotes) as rt:
        hoarder = await rt.start(Hoarder)
        pid = await hoarder.pid()
        await _expect_memory_error(hoarder.hoard_and_raise(), "hoard_and_raise",
                                   "it raised RuntimeError: the hoard is full")
        with anyio.fail_after(CALL_TIMEOUT):
            assert await hoarder.release() > 0
            assert await hoarder.pid() == pid  # the same process goes on serving


@ZYGOTES
async def test_a_result_that_cannot_be_encoded_arrives_as_a_short_memory_error(zygotes: bool) -> None:
    async with _runtime(zygotes) as rt:
        hoarder = await rt.start(Hoarder)
        await _expect_memory_error(hoarder.hoard_and_return(), "hoard_and_return",
                                   "it returned a value; encoding it raised MemoryError")
        with anyio.fail_after(CALL_TIMEOUT):
            assert await hoarder.release() > 0
        await _expect_memory_error(hoarder.hoard_in_threads(4), "hoard_in_threads",
                                   "it returned a value; encoding it raised MemoryError")
        with anyio.fail_after(CALL_TIMEOUT):
            assert await hoarder.release() > 0


@ZYGOTES
async def test_async_and_worker_thread_calls_answer_too(zygotes: bool) -> None:
    async with _runtime(zygotes) as rt:
        hoarder = await rt.start(AsyncHoarder)
        pid = await hoarder.pid()
        await _expect_memory_error(hoarder.hoard_and_raise(), "hoard_and_raise",
                                   "it raised RuntimeError: the hoard is full")
        with anyio.fail_after(CALL_TIMEOUT):
            assert await hoarder.release() > 0
        await _expect_memory_error(hoarder.sync_hoard_and_return(), "sync_hoard_and_return",
                                   "it returned a value; encoding it raised MemoryError")
        with anyio.fail_after(CALL_TIMEOUT):
            assert await hoarder.release() > 0
            assert await hoarder.pid() == pid


@ZYGOTES
async def test_an_actor_that_cannot_answer_at_all_exits_and_the_call_fails_actor_died(zygotes: bool) -> None:
    async with _runtime(zygotes) as rt:
        hoarder = await rt.start(Hoarder)  # max_restarts=1
        with anyio.fail_after(CALL_TIMEOUT), pytest.raises(actorbox.ActorDiedError) as info:
            await hoarder.cannot_answer()
        err = info.value
        assert (err.exit_code, err.method) == (UNANSWERED_EXIT, "cannot_answer"), str(err)
        assert "could not send its answer to cannot_answer() to the host" in (err.stderr or ""), str(err)
        with anyio.fail_after(CALL_TIMEOUT):  # restarted per max_restarts: a fresh instance holds nothing
            assert await hoarder.release() == 0


@ZYGOTES
async def test_an_actor_with_no_memory_left_at_all_still_ends_the_call(zygotes: bool) -> None:
    """Down to its last few bytes: the short answer makes it (MemoryError), or the actor exits
    (ActorDiedError); which depends on what the failed encodings left free."""
    async with _runtime(zygotes) as rt:
        hoarder = await rt.start(Hoarder)
        with anyio.fail_after(CALL_TIMEOUT), pytest.raises((MemoryError, actorbox.ActorDiedError)) as info:
            await hoarder.hoard_everything()
        if isinstance(info.value, actorbox.ActorDiedError):
            assert info.value.exit_code == UNANSWERED_EXIT, str(info.value)
        else:
            assert "ran out of memory while encoding or sending its answer to hoard_everything()" in str(info.value)
        with anyio.fail_after(CALL_TIMEOUT):  # the same instance, or a restarted one
            await hoarder.release()


@ZYGOTES
async def test_an_actor_that_dies_halfway_through_a_frame_fails_the_call_actor_died(zygotes: bool) -> None:
    async with _runtime(zygotes) as rt:
        hoarder = await rt.start(Hoarder)
        with anyio.fail_after(CALL_TIMEOUT), pytest.raises(actorbox.ActorDiedError) as info:
            await hoarder.half_a_frame()
        assert (info.value.exit_code, info.value.method) == (3, "half_a_frame"), str(info.value)
        with anyio.fail_after(CALL_TIMEOUT):  # restarted (max_restarts=1)
            assert await hoarder.release() == 0


def _untrusted_reply(frame: bytes) -> envelope.Reply:
    reply = envelope.decode(frame, (), from_actor=True)
    assert isinstance(reply, envelope.Reply)
    return reply


def test_the_short_answer_is_a_reply_the_host_accepts() -> None:
    """The stand-in is laid out as envelope.encode lays out a REPLY, and decodes (as an actor's,
    untrusted) to a MemoryError; another failure than running out of memory gives a RuntimeError."""
    a, b = socket.socketpair()
    try:
        codec = Codec(allow_pickle=False, make_handle=lambda *args: pytest.fail("no handle in a failure"))
        outbox = Outbox(Connection(a, lambda body, fds: None), codec, asyncio.Event())
        frame = outbox._failure_frame(7, "fetch", MemoryError(), KeyError("k" * 5000))
        reply = _untrusted_reply(frame)
        assert reply == envelope.Reply(7, envelope.Status.ERROR, reply.payload)
        assert len(frame) < 4200  # the message is cut at 4096 characters
        exc = codec.loads(reply.payload, False)
        assert type(exc) is MemoryError
        assert str(exc).startswith("the actor ran out of memory while encoding or sending its answer to fetch() "
                                   "(it raised KeyError: 'kkk"), str(exc)
        other = codec.loads(_untrusted_reply(outbox._failure_frame(8, "fetch", OSError("no"), None)).payload, False)
        assert type(other) is RuntimeError
        assert "the actor failed (OSError) while encoding or sending its answer to fetch() (it returned a value)" \
            in str(other)
    finally:
        a.close()
        b.close()
