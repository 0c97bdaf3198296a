"""Shared-memory segments for tensors and arrays: sealed memfds passed as file descriptors.

A segment is an anonymous memory file (``memfd_create``) sealed against
shrinking, mapped MAP_SHARED. Sending a tensor sends the segment's fd over the
socket (SCM_RIGHTS); the receiver maps the same pages, so nothing is copied and
an in-place write on one side is seen by the other. The memory lives as long as
any process maps it or holds its fd: there is no name in /dev/shm to race on or
to leak.

Trust: a segment an actor sends is only mapped after checking that the fd is a
memfd sealed against shrinking (so the sender can't truncate it under us and
fault the receiver with SIGBUS) and that the tensor's shape, strides and offset
stay inside it.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import functools
import mmap
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from typing import Any

from ._errors import SerializationError

_SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_SEAL


class Segment:
    """One mapped memfd. ``fd`` stays open while the mapping lives, so it can be re-sent."""

    __slots__ = ("__weakref__", "fd", "mm", "nbytes")

    def __init__(self, fd: int, mm: mmap.mmap, nbytes: int) -> None:
        self.fd = fd
        self.mm = mm
        self.nbytes = nbytes


class SegmentTable:
    """The segments this process maps, found by the base address of their mapping.

    An entry lives exactly as long as its mmap object: the tensors or arrays built
    on it keep it alive through the buffer protocol, and when the last one goes the
    finalizer closes the fd and forgets the entry.
    """

    def __init__(self) -> None:
        # Re-entrant: a mapping's finalizer (_forget) can run inside any allocation, this
        # lock held or not; code under it iterates over snapshots only.
        self._lock = threading.RLock()
        self._by_base: dict[int, tuple[int, int]] = {}  # base address -> (fd, nbytes)
        self._mm_base: dict[int, int] = {}  # id(mmap) -> base address, for numpy's .base chains
        # (st_dev, st_ino) -> (mapping, base, nbytes) of the segments mapped here: a segment
        # that comes back (the host's tensor, returned by an actor) reuses its live mapping
        # instead of a second mmap whose pages would all fault again on first touch.
        self._by_inode: dict[tuple[int, int], tuple[weakref.ref[mmap.mmap], int, int]] = {}
        self.created = 0  # segments allocated here (a fresh tensor was copied in)
        # Segments allocated here and never sent keep their pages when their last
        # tensor goes: the next allocation of the same size maps them again, with no
        # page faults to pay (up to ``pool_limit`` bytes are kept).
        self._exported: set[int] = set()  # fds of segments whose descriptor left this process
        self._pool: dict[int, list[int]] = {}  # nbytes -> fds
        self.pool_bytes = 0
        self.pool_limit = 1 << 30
        # A peer's segment larger than this machine's memory can't be real data: a sparse
        # memfd claiming terabytes would only exhaust memory once touched.
        self.max_segment = _physical_memory()
        self.spares = Spares(default_spare_bytes())

    def __len__(self) -> int:
        return len(self._by_base)

    def _register(self, fd: int, mm: mmap.mmap, nbytes: int, base: int, inode: tuple[int, int], *,
                  poolable: bool = False) -> None:
        with self._lock:
            self._by_base[base] = (fd, nbytes)
            self._mm_base[id(mm)] = base
            self._by_inode[inode] = (weakref.ref(mm), base, nbytes)
        weakref.finalize(mm, self._forget, base, fd, id(mm), inode, nbytes, poolable)

    def _forget(self, base: int, fd: int, mm_id: int, inode: tuple[int, int], nbytes: int = 0,
                poolable: bool = False) -> None:
        with self._lock:
            if self._by_base.get(base, (None,))[0] == fd:
                del self._by_base[base]
            if self._mm_base.get(mm_id) == base:
                del self._mm_base[mm_id]
            if self._by_inode.get(inode, (None, None))[1] == base:
                del self._by_inode[inode]
            exported = fd in self._exported
            self._exported.discard(fd)
            if poolable and not exported and self.pool_bytes + nbytes <= self.pool_limit:
                self._pool.setdefault(nbytes, []).append(fd)
                self.pool_bytes += nbytes
                return
        try:
            os.close(fd)
        except OSError:
            pass

    def exported(self, fd: int) -> None:
        """The segment's descriptor is being sent: others may map it, so it is never pooled."""
        with self._lock:
            self._exported.add(fd)

    def copy_fresh(self, address: int, nbytes: int) -> int:
        """A sealed segment holding a copy of ``nbytes`` at ``address``; returns a descriptor
        of it that the caller owns (to send). The copy goes into memory whose pages exist
        when there is some (a plain memcpy): a segment sent before that the kernel says
        nobody else holds any more, or a spare made ready in the background. Else it
        goes into a new segment."""
        self.created += 1
        spares = self.spares
        slot = spares.take(nbytes)
        if slot is None:
            data = memoryview((ctypes.c_char * nbytes).from_address(address))
            slot = spares.new_slot(nbytes, data) if spares.recycles(nbytes) else None
            if slot is None:
                return write_segment(data)
        else:
            try:
                slot.fill(address, nbytes)
            except OSError:  # its mapping failed (out of memory or map count): a new segment
                spares.discard(slot)
                return write_segment(memoryview((ctypes.c_char * nbytes).from_address(address)))
        if not spares.recycling:  # the kernel can't tell us when it is free: send it, use it once
            if slot.base:
                spares.retire(slot.base, slot.size)
            return slot.fd
        try:
            sent = _reopen(slot.fd)
        except OSError:
            spares.recycling = False
            if slot.base:
                spares.retire(slot.base, slot.size)
            return slot.fd
        spares.lend(slot)
        return sent

    def drain_pool(self) -> None:
        self.spares.close()
        with self._lock:
            pool, self._pool = self._pool, {}
            fds = [fd for group in list(pool.values()) for fd in group]
            self.pool_bytes = 0
        for fd in fds:
            os.close(fd)

    def base_of(self, mm: mmap.mmap) -> int | None:
        """The base address of one of our mappings, if ``mm`` is one."""
        return self._mm_base.get(id(mm))

    def lookup(self, base: int) -> tuple[int, int] | None:
        """(fd, nbytes) of the segment mapped at ``base``, if it is one of ours."""
        return self._by_base.get(base)

    def allocate(self, nbytes: int) -> tuple[mmap.mmap, int]:
        """A sealed segment of ``nbytes`` (> 0), mapped; returns (mmap, base address).

        Reuses a pooled segment of that size when there is one (its old contents stay:
        callers overwrite or zero it)."""
        with self._lock:
            pooled = self._pool.get(nbytes)
            fd = pooled.pop() if pooled else -1
            if fd >= 0:
                self.pool_bytes -= nbytes
        flags = mmap.MAP_SHARED
        if fd < 0:
            fd = os.memfd_create("actorbox", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
            try:
                os.ftruncate(fd, nbytes)
                fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS)
            except BaseException:
                os.close(fd)
                raise
            self.created += 1
        else:
            flags |= mmap.MAP_POPULATE  # its pages exist: map them all now, no faults later
        try:
            mm = mmap.mmap(fd, nbytes, flags, mmap.PROT_READ | mmap.PROT_WRITE)
        except BaseException:
            os.close(fd)
            raise
        base = _address(mm)
        st = os.fstat(fd)
        self._register(fd, mm, nbytes, base, (st.st_dev, st.st_ino), poolable=True)
        return mm, base

    def attach(self, fd: int, nbytes: int) -> tuple[mmap.mmap, int]:
        """Map a segment received from a peer, after checking it is safe to map.

        Takes ownership of ``fd`` (closed with the mapping, or now on refusal).
        """
        try:
            st = os.fstat(fd)
            seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
        except OSError as exc:
            os.close(fd)
            raise SerializationError(f"a shared tensor's descriptor is not a memory file ({exc.strerror})") from None
        size, inode = st.st_size, (st.st_dev, st.st_ino)
        with self._lock:
            known = self._by_inode.get(inode)
        if known is not None and type(nbytes) is int and 0 < nbytes <= known[2]:
            mapped = known[0]()
            if mapped is not None:  # the same memory, already mapped and checked here
                os.close(fd)
                return mapped, known[1]
        if not seals & fcntl.F_SEAL_SHRINK:
            os.close(fd)
            raise SerializationError("a shared tensor's memory file is not sealed against shrinking; refused")
        if type(nbytes) is not int or nbytes <= 0 or nbytes > size:
            os.close(fd)
            raise SerializationError(f"a shared tensor claims {nbytes!r} bytes of a {size}-byte memory file")
        if size > self.max_segment:
            os.close(fd)
            raise SerializationError(
                f"a shared memory file of {size} bytes is larger than this machine's memory "
                f"({self.max_segment} bytes); refused")
        try:
            mm = mmap.mmap(fd, nbytes, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except (OSError, ValueError) as exc:
            os.close(fd)
            raise SerializationError(f"cannot map a shared tensor's memory: {exc}") from None
        base = _address(mm)
        self._register(fd, mm, nbytes, base, inode)
        return mm, base


def _physical_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return 1 << 40


def write_segment(data: memoryview) -> int:
    """A new sealed memfd holding a copy of ``data``; returns its fd (the caller owns it).

    The copy goes through write(2), not a mapping: the kernel fills fresh pages
    directly, which costs about half of faulting them in through a mapping first.
    """
    fd = _new_memfd(data.nbytes, _SEALS)
    try:
        _pwrite_all(fd, data.cast("B"))
    except BaseException:
        os.close(fd)
        raise
    return fd


def _address(mm: mmap.mmap) -> int:
    # from_buffer exports the buffer only for this call; the view is dropped at once.
    view = (ctypes.c_char * 1).from_buffer(mm)
    try:
        return ctypes.addressof(view)
    finally:
        del view


# -- spare and recycled segments ---------------------------------------------------------

# Below this a spare does not pay: a 1 MB copy back to back with calls measured ~15%
# slower with spares (their making competes for the CPU) and no faster with pauses.
SPARE_MIN = 2 << 20
# From this size on a fresh copy's segment is kept after it is sent, and reused once the
# kernel says no other process holds it: below it a new segment costs about as much as
# checking and reopening one.
RECYCLE_MIN = 64 << 10
_RECYCLE_PROBES = 4  # sent segments of a size checked per copy, oldest first
_RECYCLE_PER_SIZE = 16  # sent segments kept per size at most ...
_RECYCLE_SLOTS = 256  # ... and in all (each holds a descriptor)
_SPARE_IDLE = 30.0  # seconds a size goes unasked before its spares are freed
_SPARE_SIZES = 32  # sizes tracked at most; the least recently asked is dropped
_SPARE_STALE = 2.0  # seconds unasked after which a size's spares may make room for another's
# The background thread works in steps of this many bytes: one system call over a big
# range can hold a CPU for milliseconds before the kernel lets a woken thread run.
_STEP = 256 << 10
_ZEROS = bytes(_STEP)
# A recycled segment is sealed against growing as well: a peer that held it must not be
# able to make it bigger (memory we would keep) or hide bytes past its end for the next.
_RECYCLE_SEALS = _SEALS | fcntl.F_SEAL_GROW


def spare_size(nbytes: int) -> int:
    """The segment size a copy of ``nbytes`` goes into: rounded up to one eighth of its
    power of two (and to whole pages), so similar sizes share spares and at most 12.5%
    of a segment is unused."""
    step = max(mmap.PAGESIZE, 1 << max(0, nbytes.bit_length() - 4))
    return -(-nbytes // step) * step


def default_spare_bytes() -> int:
    """``ACTORBOX_SHM_SPARE_BYTES``, else 1 GiB or one sixteenth of memory, whichever is less."""
    raw = os.environ.get("ACTORBOX_SHM_SPARE_BYTES", "").strip()
    if raw:
        try:
            value = int(raw)
        except ValueError:
            raise ValueError(f"ACTORBOX_SHM_SPARE_BYTES={raw!r} is not a number of bytes; "
                             "set it to an integer (0 turns spare segments off)") from None
        if value < 0:
            raise ValueError(f"ACTORBOX_SHM_SPARE_BYTES={raw!r} is negative; use 0 to turn spare segments off")
        return value
    return min(1 << 30, _physical_memory() // 16)


def _reopen(fd: int) -> int:
    """A new open file description of the memory file ``fd`` refers to (not a dup: the
    kernel counts descriptions, which is how a recycled segment is known to be free)."""
    return os.open(f"/proc/self/fd/{fd}", os.O_RDWR | os.O_CLOEXEC)


@functools.cache
def _descriptions_counted() -> bool:
    """Whether this kernel grants a write lease on a memory file's description exactly when
    no other description of it is open (what recycling relies on), checked once per
    process on a scratch file: held by a second description (read-only, the weakest), a
    lease must be refused; alone, granted."""
    try:
        fd = _new_memfd(mmap.PAGESIZE, _RECYCLE_SEALS)
    except OSError:
        return False
    try:
        own = _reopen(fd)
    except OSError:
        return False
    finally:
        os.close(fd)

    def lease() -> bool:
        try:
            fcntl.fcntl(own, fcntl.F_SETLEASE, fcntl.F_WRLCK)
        except OSError:
            return False
        fcntl.fcntl(own, fcntl.F_SETLEASE, fcntl.F_UNLCK)
        return True

    try:
        other = os.open(f"/proc/self/fd/{own}", os.O_RDONLY | os.O_CLOEXEC)
        try:
            refused = not lease()
        finally:
            os.close(other)
        return refused and lease()
    except OSError:
        return False
    finally:
        os.close(own)


class Slot:
    """A segment kept for fresh copies: its own description ``fd`` (never sent: what goes
    out is a reopened one), its mapping here (``base``, 0 until first reused), its
    ``size``, and how many bytes from the start may hold data (``dirty``)."""

    __slots__ = ("base", "dirty", "fd", "size")

    def __init__(self, fd: int, base: int, size: int, dirty: int) -> None:
        self.fd = fd
        self.base = base
        self.size = size
        self.dirty = dirty

    def fill(self, address: int, nbytes: int) -> None:
        """Copy ``nbytes`` at ``address`` to the start; zero what an earlier, longer copy
        left past it, so a receiver that maps the whole file sees nothing of it."""
        if not self.base:
            self.base = _map(self.fd, self.size, populate=True)
        ctypes.memmove(self.base, address, nbytes)
        if self.dirty > nbytes:
            ctypes.memset(self.base + nbytes, 0, self.dirty - nbytes)
        self.dirty = nbytes

    def free(self) -> None:
        if self.base:
            _munmap(self.base, self.size)
            self.base = 0
        os.close(self.fd)


class Spares:
    """Segments for fresh copies whose pages already exist, so the copy is a plain memcpy.

    Copying a fresh tensor into a new memfd costs more than the copy itself: the
    kernel allocates every page on the way (a 100 MB copy takes about 1.5x a
    ``clone()`` here, and shmem never gets huge pages). Two sources avoid that:

    *Recycled segments.* A fresh copy of ``RECYCLE_MIN`` bytes or more goes out as a
    new open file description of a segment this process keeps (``lend``). The kernel
    counts the descriptions of a file, and every descriptor or mapping of one, in any
    process or in flight in a socket, holds its description. So once the only
    description left is our own -- checked with a write lease, which the kernel grants
    only then (``_unused``) -- no peer can read or write the segment any more, however
    it was forwarded, and the next copy of that size reuses it. Where leases or
    ``/proc/self/fd`` are not available, ``recycling`` turns off and each segment is
    used once.

    *Spares.* Once a size of ``SPARE_MIN`` or more has been sent, a background thread
    makes a segment of that size ready -- its pages written and mapped -- for when no
    recycled one is free (the receiver still holds the last one).

    Up to ``limit`` bytes are kept, ready and sent together; a size not asked for in
    30 s is freed. The thread runs at idle priority and makes its system calls
    through ctypes, which releases the GIL: Python's own ``mmap`` holds the GIL while
    the kernel populates or tears down a mapping, which would stall the event loop.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.recycling = True
        self._cond = threading.Condition(threading.Lock())
        self._ready: dict[int, list[tuple[int, int]]] = {}  # size -> [(fd, base address of its mapping)]
        self._asked: dict[int, float] = {}  # size -> when last asked for (monotonic), oldest first
        self._lent: dict[int, deque[Slot]] = {}  # size -> segments sent, oldest first
        self._lent_used: dict[int, float] = {}  # size -> when a segment of it was last sent
        self._retired: list[tuple[int, int]] = []  # (base, size) of used spares' mappings
        self._dropped: list[Slot] = []  # segments to free on the thread
        self._ready_bytes = 0
        self._lent_bytes = 0
        self._lent_count = 0
        self._thread: threading.Thread | None = None
        self._gen = 0  # bumped by close(): a thread of an older generation stops and keeps nothing
        self.hits = 0
        self.misses = 0
        self.reused = 0  # fresh copies that went into a recycled segment

    @property
    def ready_bytes(self) -> int:
        return self._ready_bytes

    @property
    def lent_bytes(self) -> int:
        return self._lent_bytes

    def recycles(self, nbytes: int) -> bool:
        """Whether a fresh copy of ``nbytes`` goes into a segment kept for reuse."""
        if not (self.recycling and nbytes >= RECYCLE_MIN and 0 < spare_size(nbytes) <= self.limit):
            return False
        if not _descriptions_counted():
            self.recycling = False
        return self.recycling

    def take(self, nbytes: int) -> Slot | None:
        """A segment for a fresh copy of ``nbytes`` whose pages exist: a recycled one no
        one else holds, else a ready spare; None if neither. The size is noted, so a
        spare of it is made for next time. The caller fills it, then hands it back with
        :meth:`lend` (or, when not recycling, unmaps it with :meth:`retire`)."""
        if nbytes < RECYCLE_MIN or self.limit <= 0:
            return None
        size = spare_size(nbytes)
        if size > self.limit:
            return None
        with self._cond:
            slot = self._reclaim(size) if self.recycling else None
            if slot is not None or nbytes < SPARE_MIN:
                return slot
            self._asked.pop(size, None)
            self._asked[size] = time.monotonic()
            while len(self._asked) > _SPARE_SIZES:
                del self._asked[next(iter(self._asked))]
            ready = self._ready.get(size)
            got = ready.pop() if ready else None
            if got is not None:
                self._ready_bytes -= size
                self.hits += 1
            else:
                self.misses += 1
            if not self._start_thread():
                self.limit = 0  # no thread to be had (a process limit): copy as before
            self._cond.notify()
        if got is None:
            return None
        return Slot(got[0], got[1], size, 0)

    def new_slot(self, nbytes: int, data: memoryview) -> Slot | None:
        """A new segment of ``nbytes``' size holding ``data``, to be kept after it is sent;
        None (and recycling off) where a memory file can't be reopened."""
        size = spare_size(nbytes)
        fd = _new_memfd(size, _RECYCLE_SEALS)
        try:
            own = _reopen(fd)
        except OSError:  # no /proc: nothing to count descriptions with
            self.recycling = False
            os.close(fd)
            return None
        os.close(fd)
        try:
            _pwrite_all(own, data.cast("B"))
        except BaseException:
            os.close(own)
            raise
        return Slot(own, 0, size, nbytes)

    def lend(self, slot: Slot) -> None:
        """Keep a segment whose new description was just made to be sent: it is reused
        when that description is gone everywhere. Beyond the budget, it is freed here
        (its receivers keep the memory until they let go)."""
        now = time.monotonic()
        with self._cond:
            size = slot.size
            group = self._lent.get(size)
            if (self.limit > 0 and (group is None or len(group) < _RECYCLE_PER_SIZE)
                    and self._lent_count < _RECYCLE_SLOTS):
                self._dropped += self._evict(size, now)
                if self._ready_bytes + self._lent_bytes + size <= self.limit and self._start_thread():
                    if not self._lent_bytes:
                        self._cond.notify()  # the thread now has something to expire: wake it to time it
                    if group is None:
                        group = self._lent[size] = deque()
                    group.append(slot)
                    self._lent_bytes += size
                    self._lent_count += 1
                    self._lent_used[size] = now
                    return
            if self._thread is not None:
                self._dropped.append(slot)
                self._cond.notify()
                return
        slot.free()

    def held_fds(self) -> set[int]:
        """Descriptors of the segments kept here now (ready or sent)."""
        with self._cond:
            return ({fd for group in self._ready.values() for fd, _ in group}
                    | {slot.fd for group in self._lent.values() for slot in group})

    def ready_fds(self) -> set[int]:
        """Descriptors of the spares ready now (never sent)."""
        with self._cond:
            return {fd for group in self._ready.values() for fd, _ in group}

    def retire(self, base: int, size: int) -> None:
        """Unmap a used spare's mapping on the background thread."""
        with self._cond:
            if self._thread is not None:
                self._retired.append((base, size))
                self._cond.notify()
                return
        _munmap(base, size)

    def discard(self, slot: Slot) -> None:
        """Free a segment taken but not sent (on the background thread when there is one)."""
        with self._cond:
            if self._thread is not None:
                self._dropped.append(slot)
                self._cond.notify()
                return
        slot.free()

    def close(self) -> None:
        """Free every spare and kept segment, and stop the thread (they come back when
        sizes are asked again).

        Called on the host's event loop (Runtime exit): it waits for the thread briefly
        only. A thread starved of CPU (it runs at idle priority) stops when it next runs,
        and frees whatever it was making itself."""
        with self._cond:
            self._gen += 1
            self._cond.notify_all()
            thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=0.1)
        with self._cond:
            for size, group in self._ready.items():
                for fd, base in group:
                    _munmap(base, size)
                    os.close(fd)
            for base, size in self._retired:
                _munmap(base, size)
            for slot in [s for group in self._lent.values() for s in group] + self._dropped:
                slot.free()
            self._ready.clear()
            self._asked.clear()
            self._retired.clear()
            self._lent.clear()
            self._lent_used.clear()
            self._dropped.clear()
            self._ready_bytes = self._lent_bytes = self._lent_count = 0

    def _start_thread(self) -> bool:
        if self._thread is None:
            thread = threading.Thread(target=self._run, args=(self._gen,), name="actorbox-shm-spares", daemon=True)
            try:
                thread.start()
            except RuntimeError:
                return False
            self._thread = thread
        return True

    def _unused(self, fd: int) -> bool:
        """Whether ``fd``'s description is the only one of its memory file left anywhere:
        the kernel grants a write lease only then (and counts mappings and descriptors in
        flight too). The lease is dropped at once."""
        try:
            fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_WRLCK)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EBUSY):
                self.recycling = False  # no leases on this kernel or file system: use segments once
            return False
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
        return True

    def _reclaim(self, size: int) -> Slot | None:
        """A sent segment of ``size`` that no one else holds any more, if one of the oldest is."""
        group = self._lent.get(size)
        if not group:
            return None
        for _ in range(min(_RECYCLE_PROBES, len(group))):
            if self._unused(group[0].fd):
                slot = group.popleft()
                self._lent_bytes -= size
                self._lent_count -= 1
                self.reused += 1
                self._lent_used[size] = time.monotonic()
                return slot
            group.rotate(-1)
        return None

    def _evict(self, size: int, now: float) -> list[Slot]:
        """Sent segments of other sizes, unused for a while, that make room for one of ``size``."""
        out: list[Slot] = []
        for other, used in sorted(self._lent_used.items(), key=lambda kv: kv[1]):
            if self._ready_bytes + self._lent_bytes + size <= self.limit:
                break
            group = self._lent.get(other)
            if other != size and group and now - used > _SPARE_STALE:
                del self._lent[other]
                self._lent_bytes -= other * len(group)
                self._lent_count -= len(group)
                out += group
        return out

    def _wanted(self) -> int | None:
        """The most recently asked size short of a spare, if the budget allows one more."""
        for size in reversed(self._asked):
            if not self._ready.get(size) and self._ready_bytes + self._lent_bytes + size <= self.limit:
                return size
        return None

    def _make_room(self) -> list[tuple[int, int, int]]:
        """When the most recently asked size lacks a spare and the budget is spent, free
        spares of sizes not asked for lately (oldest first); returns them as (fd, base, size).
        Sizes asked for at about the same time keep theirs: no two sizes evict each other."""
        want = next((s for s in reversed(self._asked) if not self._ready.get(s)), None)
        if want is None or self._ready_bytes + self._lent_bytes + want <= self.limit:
            return []
        now = time.monotonic()
        out: list[tuple[int, int, int]] = []
        for size, asked in list(self._asked.items()):  # oldest first
            if self._ready_bytes + self._lent_bytes + want <= self.limit:
                break
            if size != want and now - asked > _SPARE_STALE and self._ready.get(size):
                group = self._ready.pop(size)
                self._ready_bytes -= size * len(group)
                out.extend((fd, base, size) for fd, base in group)
        return out

    def _expired(self) -> list[tuple[int, int, int]]:
        """Forget sizes not asked for lately; returns their spares as (fd, base, size) and
        moves their sent segments to ``_dropped``."""
        now = time.monotonic()
        for size, asked in list(self._asked.items()):
            if now - asked > _SPARE_IDLE:
                del self._asked[size]
        out: list[tuple[int, int, int]] = []
        for size in [s for s in self._ready if s not in self._asked]:
            group = self._ready.pop(size)
            self._ready_bytes -= size * len(group)
            out.extend((fd, base, size) for fd, base in group)
        for size, used in list(self._lent_used.items()):
            if now - used > _SPARE_IDLE:
                del self._lent_used[size]
                slots = self._lent.pop(size, ())
                self._lent_bytes -= size * len(slots)
                self._lent_count -= len(slots)
                self._dropped += slots
        return out

    def _run(self, gen: int) -> None:
        try:  # this thread only: run when a CPU would otherwise idle, never ahead of calls
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        except (AttributeError, OSError):
            pass
        while True:
            with self._cond:
                freed: list[tuple[int, int, int]] = []
                while True:
                    if self._gen != gen:
                        return
                    freed += self._expired()
                    freed += self._make_room()
                    size = self._wanted()
                    if self._retired or self._dropped or freed or size is not None:
                        break
                    idle = self._ready or self._lent
                    self._cond.wait(timeout=_SPARE_IDLE if idle else None)  # (then look for idle sizes)
                retired, self._retired = self._retired, []
                dropped, self._dropped = self._dropped, []
            for base, n in retired:
                _munmap(base, n)
            for slot in dropped:
                slot.free()
            for fd, base, n in freed:
                _munmap(base, n)
                os.close(fd)
            if size is None:
                continue
            try:
                fd, base = _make_spare(size, lambda: self._gen != gen, reopen=self.recycling)
            except OSError:  # out of memory or descriptors: senders make their own segments
                with self._cond:
                    self._asked.pop(size, None)
                continue
            with self._cond:
                if (self._gen == gen and size in self._asked
                        and self._ready_bytes + self._lent_bytes + size <= self.limit):
                    self._ready.setdefault(size, []).append((fd, base))
                    self._ready_bytes += size
                    continue
            _munmap(base, size)
            os.close(fd)


_libc = ctypes.CDLL(None, use_errno=True)  # CDLL calls release the GIL
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long)
_libc.munmap.restype = ctypes.c_int
_libc.munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
_MAP_FAILED = ctypes.c_void_p(-1).value


_libc.madvise.restype = ctypes.c_int
_libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
_MADV_POPULATE_WRITE = 23  # Linux 5.14


def _munmap(base: int, size: int) -> None:
    for at in range(0, size, _STEP):
        _libc.munmap(base + at, min(_STEP, size - at))


def _map(fd: int, size: int, *, populate: bool) -> int:
    """Map ``size`` bytes of ``fd`` shared, read-write, with the GIL released; the base address.
    ``populate``: fill the page tables now (the pages exist), so the first copy takes no faults."""
    flags = mmap.MAP_SHARED | (getattr(mmap, "MAP_POPULATE", 0x8000) if populate else 0)
    base = _libc.mmap(None, size, mmap.PROT_READ | mmap.PROT_WRITE, flags, fd, 0)
    if base is None or base == _MAP_FAILED:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(base)


def _new_memfd(size: int, seals: int) -> int:
    fd = os.memfd_create("actorbox", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        os.ftruncate(fd, size)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _pwrite_all(fd: int, view: memoryview, start: int = 0) -> None:
    done = 0
    while done < view.nbytes:
        done += os.pwrite(fd, view[done:], start + done)


def _make_spare(size: int, stop: Callable[[], bool], *, reopen: bool = False) -> tuple[int, int]:
    """A sealed segment of ``size`` bytes whose pages exist and are mapped here: (fd, base).
    ``reopen``: ``fd`` is a description of its own, so it can be recycled once sent.
    Gives up (OSError) as soon as ``stop()`` is true, so closing never waits for a big one."""
    fd = _new_memfd(size, _RECYCLE_SEALS if reopen else _SEALS)
    try:
        if reopen:  # (never lend the memfd's first description: the kernel doesn't count it)
            own = _reopen(fd)
            os.close(fd)
            fd = own
        # Writing zeros allocates the pages without the clearing a first fault does, and
        # populating the mapping then only fills page tables: about 40% cheaper than faulting in.
        zeros = memoryview(_ZEROS)
        done = 0
        while done < size:
            if stop():
                raise InterruptedError("spare segments closed")
            done += os.pwrite(fd, zeros[:min(len(zeros), size - done)], done)
        base = _map(fd, size, populate=False)
        for at in range(0, size, _STEP):
            if _libc.madvise(base + at, min(_STEP, size - at), _MADV_POPULATE_WRITE) != 0:
                break  # an older kernel: the first copy into it faults the rest in
    except BaseException:
        os.close(fd)
        raise
    return fd, base


def extent(shape: list[int], strides: list[int], offset: int) -> int:
    """Elements spanned by a strided view, from element 0 of its storage (0 when empty)."""
    if any(s == 0 for s in shape):
        return 0
    return offset + sum((n - 1) * st for n, st in zip(shape, strides, strict=True)) + 1


def check_layout(shape: Any, strides: Any, offset: Any) -> tuple[list[int], list[int], int]:
    """Validate a peer's view description: non-negative ints, same rank."""
    if not (type(shape) is list and type(strides) is list and type(offset) is int and offset >= 0
            and len(shape) == len(strides) and len(shape) <= 64
            and all(type(n) is int and n >= 0 for n in shape)
            and all(type(st) is int and st >= 0 for st in strides)):
        raise SerializationError("malformed tensor layout (shape, strides, offset)")
    return shape, strides, offset
