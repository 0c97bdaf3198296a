"""Spare segments (actorbox/_shm.py ``Spares``): fresh copies into memory made ready ahead of time.

A fresh tensor or array of 2 MiB or more is copied into a segment whose pages a
background thread already allocated and mapped, so the copy is a plain memcpy.
What must hold, and is checked here with real memfds, real threads and real
(sandboxed) actors:

- a spare is used once: every fresh copy goes out in a memory file no other copy
  ever used (a peer may keep mapping what it was sent, so reuse would leak data);
- its contents are exactly the copied bytes, and whatever lies past them is zeros;
- the ready bytes never exceed the limit; a size not asked for lately is freed;
  ``close()`` frees everything at once, even a big spare being made;
- making a big spare never stalls the event loop (its system calls release the GIL);
- ``ACTORBOX_SHM_SPARE_BYTES`` sets the limit, in the host and in actors; a bad
  value is a clear error;
- host and actor both use spares, and values still arrive bit-exact.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import threading
import time

import anyio
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import actorbox
from actorbox import _shm
from actorbox._context import process_caller

MiB = 1 << 20
CALL_TIMEOUT = 30.0


def memfds() -> set[int]:
    """Inodes of the actorbox memory files this process holds open."""
    out = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}").startswith("/memfd:actorbox"):
                out.add(os.stat(f"/proc/self/fd/{name}").st_ino)
        except OSError:
            continue
    return out


def wait_for(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for the spare-segment thread")
        time.sleep(0.005)


def fresh_copy(table: _shm.SegmentTable, data: bytes) -> int:
    """Copy ``data`` the way a fresh tensor is copied; returns the new segment's fd."""
    buf = bytearray(data)
    import ctypes

    address = ctypes.addressof((ctypes.c_char * len(buf)).from_buffer(buf))
    return table.copy_fresh(address, len(buf))


def read_fd(fd: int, start: int, stop: int) -> bytes:
    return os.pread(fd, stop - start, start)


@pytest.fixture
def table():
    t = _shm.SegmentTable()
    t.spares.limit = 64 * MiB
    yield t
    t.drain_pool()


# -- sizes -------------------------------------------------------------------------------------


@given(st.integers(min_value=1, max_value=1 << 40))
def test_spare_size_covers_the_copy_in_whole_pages_with_at_most_an_eighth_to_spare(n):
    size = _shm.spare_size(n)
    assert size >= n
    assert size % mmap.PAGESIZE == 0
    assert size <= max(n + n // 8, mmap.PAGESIZE) + mmap.PAGESIZE
    assert _shm.spare_size(size) == size  # a class's own size maps to itself


# -- used once, contents exact ------------------------------------------------------------------


def test_a_fresh_copy_uses_a_ready_spare_and_no_spare_is_ever_used_twice(table):
    """After the first copy of a size, the next ones hit a spare; every copy gets its own memory file."""
    n = 2 * MiB + 123
    inodes = set()
    fds = []
    for i in range(6):
        data = bytes([i + 1]) * n
        fd = fresh_copy(table, data)
        fds.append(fd)
        inodes.add(os.fstat(fd).st_ino)
        assert read_fd(fd, 0, n) == data
        size = os.fstat(fd).st_size
        assert read_fd(fd, n, size) == bytes(size - n), "a spare's tail holds something other than zeros"
        assert fcntl.fcntl(fd, fcntl.F_GET_SEALS) & fcntl.F_SEAL_SHRINK
        wait_for(lambda: table.spares.held_fds())  # the next one is ready before the next copy
    assert len(inodes) == 6, "a memory file was used for two fresh copies"
    assert table.spares.misses == 1 and table.spares.hits == 5
    for fd in fds:
        os.close(fd)


def test_small_copies_never_use_spares(table):
    fd = fresh_copy(table, b"x" * (_shm.SPARE_MIN - 1))
    os.close(fd)
    time.sleep(0.05)
    assert table.spares.hits == table.spares.misses == 0
    assert table.spares.held_fds() == set()


# -- bounded ------------------------------------------------------------------------------------


def test_ready_bytes_never_exceed_the_limit(table):
    table.spares.limit = 12 * MiB
    for k in range(1, 9):  # eight sizes between 2 and 16 MiB
        os.close(fresh_copy(table, b"\1" * (k * 2 * MiB)))
        time.sleep(0.02)
        assert table.spares.ready_bytes <= table.spares.limit
    time.sleep(0.2)
    assert 0 < table.spares.ready_bytes <= table.spares.limit
    sizes = {os.fstat(fd).st_size for fd in table.spares.held_fds()}
    assert sum(sizes) <= table.spares.limit


def test_a_size_bigger_than_the_limit_and_a_zero_limit_make_no_spares(table):
    table.spares.limit = 2 * MiB
    os.close(fresh_copy(table, b"\2" * (4 * MiB)))
    time.sleep(0.1)
    assert table.spares.held_fds() == set() and table.spares.misses == 0
    table.spares.limit = 0
    os.close(fresh_copy(table, b"\2" * (2 * MiB)))
    time.sleep(0.1)
    assert table.spares.held_fds() == set()


def test_a_new_size_takes_the_room_of_one_not_asked_for_lately(table, monkeypatch):
    """Over the budget, a size unasked for a while gives its spare up to the newest; two sizes
    asked for at about the same time don't evict each other (no thrashing)."""
    monkeypatch.setattr(_shm, "_SPARE_STALE", 0.5)

    def ready_sizes():
        return sorted(os.fstat(fd).st_size for fd in table.spares.held_fds())

    table.spares.limit = 6 * MiB
    os.close(fresh_copy(table, b"\1" * (4 * MiB)))
    wait_for(lambda: ready_sizes() == [4 * MiB])
    os.close(fresh_copy(table, b"\2" * (5 * MiB)))  # 4 + 5 MiB won't fit; the 4 MiB size is recent
    time.sleep(0.2)
    assert ready_sizes() == [4 * MiB]
    time.sleep(0.5)
    os.close(fresh_copy(table, b"\2" * (5 * MiB)))  # now the 4 MiB size is stale: it makes room
    wait_for(lambda: ready_sizes() == [5 * MiB])
    assert table.spares.ready_bytes <= table.spares.limit


def test_a_size_not_asked_for_lately_is_freed(table, monkeypatch):
    monkeypatch.setattr(_shm, "_SPARE_IDLE", 0.3)
    before = memfds()
    os.close(fresh_copy(table, b"\3" * (2 * MiB)))
    wait_for(lambda: table.spares.held_fds())
    wait_for(lambda: not table.spares.held_fds(), timeout=5)
    assert table.spares.ready_bytes == 0
    wait_for(lambda: memfds() <= before, timeout=5)  # closed by the thread just after it lets go


def test_close_frees_every_spare_and_does_not_wait_for_a_big_one(table):
    before = memfds()
    os.close(fresh_copy(table, b"\4" * (2 * MiB)))
    wait_for(lambda: table.spares.held_fds())
    table.spares.limit = 1 << 30
    os.close(fresh_copy(table, b"\5" * (768 * MiB)))  # the thread now makes a 768 MiB spare
    time.sleep(0.05)
    t0 = time.monotonic()
    table.spares.close()
    took = time.monotonic() - t0
    assert table.spares.held_fds() == set() and table.spares.ready_bytes == 0
    assert took < 0.5, f"close() waited {took:.2f} s for a spare being made"
    # The thread drops what it was making and ends on its own, soon after.
    wait_for(lambda: not any(t.name == "actorbox-shm-spares" and t.is_alive() for t in threading.enumerate()))
    wait_for(lambda: memfds() <= before)


def test_making_a_big_spare_does_not_stall_other_threads(table):
    """The thread's system calls release the GIL: the calling thread keeps running meanwhile."""
    table.spares.limit = 1 << 30
    os.close(fresh_copy(table, b"\6" * (512 * MiB)))  # a 512 MiB spare: ~0.3 s of kernel work here
    gaps = []
    last = time.perf_counter()
    deadline = last + 10
    while True:  # at least one look: the spare may be ready at the first
        time.sleep(0.001)
        now = time.perf_counter()
        gaps.append(now - last)
        last = now
        if table.spares.held_fds() or last >= deadline:
            break
    assert table.spares.held_fds(), "the spare was not made"
    assert max(gaps) < 0.1, f"this thread was held up for {max(gaps) * 1000:.0f} ms while a spare was made"


# -- configuration ------------------------------------------------------------------------------


def test_the_environment_variable_sets_the_limit(monkeypatch):
    monkeypatch.setenv("ACTORBOX_SHM_SPARE_BYTES", "12345678")
    assert _shm.SegmentTable().spares.limit == 12345678
    monkeypatch.setenv("ACTORBOX_SHM_SPARE_BYTES", "0")
    assert _shm.SegmentTable().spares.limit == 0
    monkeypatch.delenv("ACTORBOX_SHM_SPARE_BYTES")
    assert 0 < _shm.SegmentTable().spares.limit <= 1 << 30


@pytest.mark.parametrize("value", ["lots", "-1", "1.5"])
def test_a_bad_limit_is_a_clear_error(monkeypatch, value):
    monkeypatch.setenv("ACTORBOX_SHM_SPARE_BYTES", value)
    with pytest.raises(ValueError, match="ACTORBOX_SHM_SPARE_BYTES") as ei:
        _shm.SegmentTable()
    assert "0 turns spare segments off" in str(ei.value) or "use 0" in str(ei.value)


# -- with actors --------------------------------------------------------------------------------


@actorbox.actor
class Inodes:
    """Reports which memory file each received tensor lives in, and makes fresh ones."""

    def inode(self, t):
        fd, _ = process_caller.get().codec.segments.lookup(t.untyped_storage().data_ptr())
        return os.fstat(fd).st_ino, float(t.double().sum())

    def make(self, n, value):
        return torch.full((n,), float(value), dtype=torch.float32)

    def spares(self):
        s = process_caller.get().codec.segments.spares
        return {"limit": s.limit, "hits": s.hits}



@pytest.mark.anyio
async def test_fresh_tensors_to_and_from_an_actor_use_spares_and_never_share_memory():
    """Host -> actor: each fresh tensor arrives in a memory file of its own, bit-exact, and the
    host's spares are used; actor -> host: the actor's spares are used and values arrive exact."""
    n = 600_000  # 2.4 MB of float32
    async with actorbox.Runtime() as rt:
        box = await rt.start(Inodes)
        seen = set()
        for i in range(8):
            t = torch.full((n,), float(i))
            with anyio.fail_after(CALL_TIMEOUT):
                ino, total = await box.inode(t)
            assert total == float(i) * n
            seen.add(ino)
            await anyio.sleep(0.05)  # time for the next spare to be made
        assert len(seen) == 8, "two fresh tensors shared one memory file"
        assert rt.codec.segments.spares.hits >= 6
        for i in range(8):
            with anyio.fail_after(CALL_TIMEOUT):
                r = await box.make(n, i)
            assert torch.equal(r, torch.full((n,), float(i)))
            del r
            await anyio.sleep(0.05)
        with anyio.fail_after(CALL_TIMEOUT):
            assert (await box.spares())["hits"] >= 6
    assert rt.codec.segments.spares.held_fds() == set()


@pytest.mark.anyio
async def test_the_limit_reaches_sandboxed_actors(monkeypatch):
    monkeypatch.setenv("ACTORBOX_SHM_SPARE_BYTES", "0")
    async with actorbox.Runtime() as rt:
        box = await rt.start(Inodes)
        with anyio.fail_after(CALL_TIMEOUT):
            assert (await box.spares())["limit"] == 0


def test_a_segment_dropped_after_the_pool_was_drained_is_freed_not_pooled():
    """At Runtime exit the pool is drained; a shared_empty tensor that outlived the Runtime
    went into the pool when dropped later, and its memory and descriptor were never freed."""
    import gc

    import torch

    t = _shm.SegmentTable()
    mm, _ = t.allocate(1 * MiB)
    x = torch.frombuffer(mm, dtype=torch.uint8)
    fds0 = len(os.listdir("/proc/self/fd"))
    t.drain_pool()
    del x, mm
    gc.collect()
    assert t.pool_bytes == 0
    assert len(os.listdir("/proc/self/fd")) <= fds0 - 1, "the dropped segment's descriptor was kept"
