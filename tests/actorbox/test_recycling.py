"""Recycled segments (actorbox/_shm.py ``Spares.lend`` and ``take``): a fresh copy's memory
file is reused once the kernel says no other open description of it is left anywhere.

Every descriptor and mapping of a memory file, in any process or in flight in a
socket, holds the open file description it came from; a fresh copy goes out as a
description of its own, and the kernel grants a write lease on the sender's
description only when no other one exists. What must hold, with real memfds, real
processes and real sandboxed actors:

- a segment is reused once every receiver let go: the same memory file, exactly
  the new bytes, zeros past them;
- it is never reused while anything holds it: a descriptor (or a dup of it), a
  mapping whose descriptor was closed, a descriptor in flight in a socket, another
  process, a read-only reopen of it;
- a receiver can't grow a sent segment;
- kept bytes stay under the limit, an idle size's segments are freed, ``close()``
  frees everything;
- where descriptions can't be counted (no ``/proc/self/fd``), each segment is used once;
- with actors: a tensor an actor keeps, or one passed on to a second actor that
  keeps it, is never overwritten by later fresh tensors, while segments let go are
  reused, in the host and in the actor.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import mmap
import os
import signal
import socket
import time

import anyio
import pytest
import torch

import actorbox
from actorbox import _shm
from actorbox._context import process_caller

MiB = 1 << 20
N = 1 * MiB  # a size that is recycled (>= RECYCLE_MIN) but gets no spares (< SPARE_MIN)
CALL_TIMEOUT = 30.0


def fresh_copy(table: _shm.SegmentTable, data: bytes) -> int:
    """Copy ``data`` the way a fresh tensor is copied; returns the descriptor to send."""
    buf = bytearray(data)
    address = ctypes.addressof((ctypes.c_char * len(buf)).from_buffer(buf))
    return table.copy_fresh(address, len(buf))


def inode(fd: int) -> int:
    return os.fstat(fd).st_ino


@pytest.fixture
def table():
    t = _shm.SegmentTable()
    t.spares.limit = 64 * MiB
    yield t
    t.drain_pool()


def test_the_kernel_counts_descriptions_here():
    """The premise, on this kernel: leases on memory files work (else recycling is off)."""
    t = _shm.SegmentTable()
    try:
        os.close(fresh_copy(t, b"\0" * N))
        os.close(fresh_copy(t, b"\0" * N))
        assert t.spares.recycling and t.spares.reused == 1
    finally:
        t.drain_pool()


def test_a_segment_let_go_is_reused_with_the_new_bytes_and_zeros_past_them(table):
    fd = fresh_copy(table, b"\1" * N)
    first = inode(fd)
    os.close(fd)
    fd = fresh_copy(table, b"\2" * (N - 5000))  # shorter: what the first copy left past it is zeroed
    try:
        assert inode(fd) == first and table.spares.reused == 1
        assert os.pread(fd, N - 5000, 0) == b"\2" * (N - 5000)
        size = os.fstat(fd).st_size
        assert os.pread(fd, size, N - 5000) == bytes(size - (N - 5000)), "bytes of an earlier copy are readable"
        assert fcntl.fcntl(fd, fcntl.F_GET_SEALS) & fcntl.F_SEAL_SHRINK
    finally:
        os.close(fd)


def test_a_receiver_cannot_grow_a_sent_segment(table):
    fd = fresh_copy(table, b"\1" * N)
    try:
        with pytest.raises(PermissionError):
            os.ftruncate(fd, 1 << 40)
    finally:
        os.close(fd)


def _still_held(table: _shm.SegmentTable, held_inode: int, n: int = 3) -> None:
    """The next fresh copies of the size never land in the held memory file."""
    for _ in range(n):
        fd = fresh_copy(table, b"\7" * N)
        assert inode(fd) != held_inode, "a memory file someone still holds was reused"
        os.close(fd)


def test_a_held_descriptor_or_a_dup_of_it_blocks_reuse(table):
    fd = fresh_copy(table, b"\1" * N)
    held = inode(fd)
    dup = os.dup(fd)
    os.close(fd)
    _still_held(table, held)
    assert os.pread(dup, N, 0) == b"\1" * N
    os.close(dup)
    fd = fresh_copy(table, b"\3" * N)
    assert inode(fd) == held  # let go: reused
    os.close(fd)


def test_a_mapping_whose_descriptor_was_closed_blocks_reuse(table):
    fd = fresh_copy(table, b"\1" * N)
    held = inode(fd)
    mm = mmap.mmap(fd, N)
    os.close(fd)
    _still_held(table, held)
    assert mm[:N] == b"\1" * N, "a mapped copy was overwritten"
    mm.close()
    fd = fresh_copy(table, b"\3" * N)
    assert inode(fd) == held
    os.close(fd)


def test_a_read_only_reopen_blocks_reuse(table):
    fd = fresh_copy(table, b"\1" * N)
    held = inode(fd)
    ro = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY)
    os.close(fd)
    _still_held(table, held)
    assert os.pread(ro, N, 0) == b"\1" * N
    os.close(ro)


def test_a_descriptor_in_flight_and_in_another_process_blocks_reuse(table):
    """Sent over a socket and not yet received, then received and mapped by a child
    process: reused only after the child unmapped it."""
    fd = fresh_copy(table, b"\1" * N)
    held = inode(fd)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    socket.send_fds(ours, [b"x"], [fd])
    os.close(fd)
    _still_held(table, held)  # only the socket holds it now
    pid = os.fork()
    if pid == 0:  # the child: receive, map, report what it sees, wait, unmap
        try:
            _, fds, _, _ = socket.recv_fds(theirs, 1, 1)
            m = mmap.mmap(fds[0], N)
            os.close(fds[0])
            theirs.sendall(b"1" if m[:N] == b"\1" * N else b"0")
            theirs.recv(1)
            ok = m[:N] == b"\1" * N
            m.close()
            theirs.sendall(b"1" if ok else b"0")
        finally:
            os._exit(0)
    try:
        assert ours.recv(1) == b"1"
        _still_held(table, held)  # the child maps it
        ours.sendall(b"g")
        assert ours.recv(1) == b"1", "the child's copy changed while it mapped it"
    finally:
        os.waitpid(pid, 0)
        ours.close()
        theirs.close()
    fd = fresh_copy(table, b"\3" * N)
    assert inode(fd) == held
    os.close(fd)


def test_kept_bytes_stay_under_the_limit_and_close_frees_them(table):
    table.spares.limit = 4 * MiB
    held = [fresh_copy(table, b"\1" * N) for _ in range(8)]  # receivers hold all eight
    assert table.spares.lent_bytes + table.spares.ready_bytes <= table.spares.limit
    assert len(table.spares.held_fds()) <= 4
    for fd in held:
        os.close(fd)
    fd = fresh_copy(table, b"\2" * N)
    os.close(fd)
    assert table.spares.reused == 1
    table.spares.close()
    assert table.spares.held_fds() == set() and table.spares.lent_bytes == 0


def test_small_copies_are_not_kept(table):
    os.close(fresh_copy(table, b"\1" * (_shm.RECYCLE_MIN - 1)))
    assert table.spares.held_fds() == set()


def test_an_idle_sizes_segments_are_freed(table, monkeypatch):
    monkeypatch.setattr(_shm, "_SPARE_IDLE", 0.3)
    os.close(fresh_copy(table, b"\1" * N))
    assert table.spares.held_fds()
    deadline = time.monotonic() + 5
    while table.spares.held_fds() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert table.spares.held_fds() == set() and table.spares.lent_bytes == 0


def test_without_proc_each_segment_is_used_once(table, monkeypatch):
    """Where a memory file can't be reopened (no /proc), descriptions can't be counted:
    recycling turns off and every copy gets its own memory file, still exact."""

    def no_proc(fd: int) -> int:
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", f"/proc/self/fd/{fd}")

    monkeypatch.setattr(_shm, "_reopen", no_proc)
    seen = set()
    for i in range(3):
        fd = fresh_copy(table, bytes([i + 1]) * N)
        assert os.pread(fd, N, 0) == bytes([i + 1]) * N
        seen.add(inode(fd))
        os.close(fd)
    assert len(seen) == 3 and not table.spares.recycling and table.spares.reused == 0


# -- with actors --------------------------------------------------------------------------------


@actorbox.actor
class Keeper:
    """Keeps what it is asked to; reports its segments' recycling."""

    def __init__(self):
        self.kept = []

    def keep(self, t):
        self.kept.append(t)
        return float(t.double().sum())

    def look(self, t):
        return float(t.double().sum())

    def echo(self, t):
        return t

    def sums(self):
        return [float(t.double().sum()) for t in self.kept]

    def make(self, n, value):
        return torch.full((n,), float(value), dtype=torch.float32)

    def reused(self):
        return process_caller.get().codec.segments.spares.reused

    def inode(self, t, keep=False):
        """The memory file ``t`` arrived in (kept when ``keep``)."""
        if keep:
            self.kept.append(t)
        fd, _ = process_caller.get().codec.segments.lookup(t.untyped_storage().data_ptr())
        return os.fstat(fd).st_ino


async def call(aw):
    with anyio.fail_after(CALL_TIMEOUT):
        return await aw


@pytest.mark.anyio
async def test_fresh_tensors_reuse_segments_but_never_overwrite_what_an_actor_keeps():
    n = N // 4  # float32: 1 MiB
    async with actorbox.Runtime() as rt:
        box = await rt.start(Keeper)
        spares = rt.codec.segments.spares
        assert await call(box.keep(torch.full((n,), 1.0))) == n  # kept by the actor
        before = spares.reused
        for i in range(20):  # looked at and let go: their segments go round
            assert await call(box.look(torch.full((n,), float(i)))) == float(i) * n
        assert spares.reused - before >= 15, "segments the actor let go were not reused"
        assert await call(box.sums()) == [float(n)], "a kept tensor was overwritten"


@pytest.mark.anyio
async def test_a_tensor_passed_on_to_a_second_actor_is_never_overwritten():
    """The host's fresh tensor goes to A, A's result (the same memory) straight to B, which
    keeps it; the host never knows B has it, and the kernel still does."""
    n = N // 4
    async with actorbox.Runtime() as rt:
        a = await rt.start(Keeper)
        b = await rt.start(Keeper)
        spares = rt.codec.segments.spares
        fa = a.echo(torch.full((n,), 5.0))
        assert await call(b.keep(fa)) == 5.0 * n
        r = await call(fa)  # the host takes A's result too, then lets it go
        del r, fa
        before = spares.reused
        for i in range(20):
            assert await call(a.look(torch.full((n,), float(i)))) == float(i) * n
        assert spares.reused - before >= 15
        assert await call(b.sums()) == [5.0 * n], "a tensor the second actor keeps was overwritten"


@pytest.mark.anyio
async def test_an_actors_results_reuse_its_segments_and_kept_results_stay_intact():
    n = N // 4
    async with actorbox.Runtime() as rt:
        box = await rt.start(Keeper)
        kept = await call(box.make(n, -1))
        for i in range(20):
            r = await call(box.make(n, i))
            assert torch.equal(r, torch.full((n,), float(i)))
            del r
        assert await call(box.reused()) >= 15, "the actor's results did not reuse its segments"
        assert torch.equal(kept, torch.full((n,), -1.0)), "a result the host keeps was overwritten"


def test_a_kernel_that_does_not_count_descriptions_turns_recycling_off(table, monkeypatch):
    """The once-per-process check decides: where a lease would be granted beside another
    description, nothing is ever reused."""
    monkeypatch.setattr(_shm, "_descriptions_counted", lambda: False)
    seen = set()
    for i in range(3):
        fd = fresh_copy(table, bytes([i + 1]) * N)
        seen.add(inode(fd))
        os.close(fd)
    assert len(seen) == 3 and not table.spares.recycling and table.spares.held_fds() == set()


@pytest.mark.anyio
async def test_a_killed_actors_segments_are_reused():
    """What a SIGKILLed actor held is reclaimed: the kernel closed its descriptions, and the
    host's next fresh copies go into that memory again."""
    n = N // 4
    async with actorbox.Runtime() as rt:
        victim = await rt.start(Keeper)
        other = await rt.start(Keeper)
        held = await call(victim.inode(torch.full((n,), 1.0), keep=True))
        seen = {await call(other.inode(torch.full((n,), 2.0))) for _ in range(5)}
        assert held not in seen, "a memory file the actor keeps was reused"
        (pid,) = [a.pid for a in rt.actors() if a.label == victim.label]
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(actorbox.ActorDiedError):
            await call(victim.sums())
        seen = set()
        for _ in range(50):
            seen.add(await call(other.inode(torch.full((n,), 3.0))))
            if held in seen:
                break
            await anyio.sleep(0.02)
        assert held in seen, "the dead actor's memory file was never reused"
