"""Shared-memory segments for tensors and arrays: sealed memfds passed as file descriptors.

A segment is an anonymous memory file (``memfd_create``) sealed against
shrinking, mapped MAP_SHARED. Sending a tensor sends the segment's fd over the
socket (SCM_RIGHTS); the receiver maps the same pages, so nothing is copied and
an in-place write on one side is seen by the other. The memory lives as long as
any process maps it or holds its fd: there is no name in /dev/shm to race on or
to leak.

Trust: a segment an actor sends is only mapped after checking that the fd is a
memfd sealed against shrinking (so the sender can't truncate it under us and
fault the receiver with SIGBUS), that its size is what the tensor's description
says (the sender's own export makes it so), that it is not sparse (every page
the receiver may touch was allocated, and paid for, by the sender), and that the
tensor's shape, strides and offset stay inside it.
"""

from __future__ import annotations

import ctypes
import fcntl
import mmap
import os
import threading
import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from ._errors import SerializationError, UsageError
from ._threads import StartedThread, start_thread

_SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_SEAL


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
        # Segments allocated here whose pages may not all exist yet (a shared_empty tensor
        # written in part): filled before their descriptor first leaves, since a receiver
        # refuses a sparse segment. fd -> nbytes.
        self._unfilled: dict[int, int] = {}
        self._pool: dict[int, list[int]] = {}  # nbytes -> fds
        self.pool_bytes = 0
        self._drained = False  # the pool was freed for good (drain_pool)
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
        _Finalizer(mm, self._forget, base, fd, id(mm), inode, nbytes, poolable)

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
            if poolable and not exported and not self._drained and self.pool_bytes + nbytes <= self.pool_limit:
                self._pool.setdefault(nbytes, []).append(fd)
                self.pool_bytes += nbytes
                return
            self._unfilled.pop(fd, None)
        try:
            os.close(fd)
        except OSError:
            pass

    def exported(self, fd: int) -> None:
        """The segment's descriptor is being sent: others may map it, so it is never pooled.
        One allocated here is filled first if sparse: receivers refuse holes (see ``attach``)."""
        with self._lock:
            self._exported.add(fd)
            nbytes = self._unfilled.pop(fd, 0)
        if nbytes and os.fstat(fd).st_blocks * 512 < nbytes:
            os.posix_fallocate(fd, 0, nbytes)  # zero pages where none were written: the contents stay

    def copy_fresh(self, address: int, nbytes: int) -> int:
        """A new sealed segment holding a copy of ``nbytes`` at ``address``; returns its fd
        (the caller owns it). The copy goes into a spare segment when one of a fitting size
        is ready (no page to allocate: a plain memcpy), else into a new one."""
        self.created += 1
        spare = self.spares.take(nbytes)
        if spare is None:
            return write_segment(memoryview((ctypes.c_char * nbytes).from_address(address)))
        fd, base, size = spare
        ctypes.memmove(base, address, nbytes)
        self.spares.retire(base, size)
        return fd

    def drain_pool(self) -> None:
        """Free the pool, for good: a segment dropped later (a tensor that outlived the
        Runtime) is closed, not pooled."""
        self.spares.close()
        with self._lock:
            self._drained = True
            pool, self._pool = self._pool, {}
            fds = [fd for group in list(pool.values()) for fd in group]
            self.pool_bytes = 0
            for fd in fds:
                self._unfilled.pop(fd, None)
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
        fresh = False
        if fd < 0:
            fd = os.memfd_create("actorbox", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
            try:
                os.ftruncate(fd, nbytes)
                fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS)
            except BaseException:
                os.close(fd)
                raise
            self.created += 1
            fresh = True
        else:
            flags |= mmap.MAP_POPULATE  # its pages exist: map them all now, no faults later
        try:
            mm = mmap.mmap(fd, nbytes, flags, mmap.PROT_READ | mmap.PROT_WRITE)
        except BaseException:
            os.close(fd)
            raise
        base = _address(mm)
        st = os.fstat(fd)
        if fresh:
            with self._lock:
                self._unfilled[fd] = nbytes
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
        if size > spare_size(nbytes):
            # The sender's own export never makes a segment bigger than this (an exact copy,
            # or a spare rounded up by at most an eighth): the rest would be pages nobody reads.
            os.close(fd)
            raise SerializationError(
                f"a shared tensor of {nbytes} bytes came in a {size}-byte memory file (at most "
                f"{spare_size(nbytes)} expected for it); refused: send the tensor itself, not a view into a "
                "larger memory file")
        if st.st_blocks * 512 < size:
            # Sparse: a hole costs the sender nothing, and the host would allocate its pages
            # when reading them. Checked on the count of pages the file holds (fstat, O(1));
            # SEEK_HOLE would find the same at O(pages) (~4 ms per GiB).
            os.close(fd)
            raise SerializationError(
                f"a shared memory file of {size} bytes holds only {st.st_blocks * 512} bytes of pages (it is "
                "sparse: its holes were never paid for by the sender); refused: a tensor sent by actorbox is "
                "always written in full; fill a hand-made one first (os.posix_fallocate)")
        try:
            mm = mmap.mmap(fd, nbytes, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except (OSError, ValueError) as exc:
            os.close(fd)
            raise SerializationError(f"cannot map a shared tensor's memory: {exc}") from None
        base = _address(mm)
        self._register(fd, mm, nbytes, base, inode)
        return mm, base


if TYPE_CHECKING:
    _Finalize = weakref.finalize[..., Any]
else:
    _Finalize = weakref.finalize


class _Finalizer(_Finalize):
    """``weakref.finalize`` that Ctrl-C cannot lose under trio.

    trio raises KeyboardInterrupt in whatever frame runs when SIGINT arrives, and one
    raised in a finalizer is swallowed by the garbage collector ("Exception ignored in:
    <finalize object>"): the program went on as if Ctrl-C had never been pressed (seen
    in about one of 16 Ctrl-Cs of a loop of tensor calls), and the segment's descriptor
    stayed open. trio never interrupts a frame named ``__del__``, nor what it calls: it
    delivers the KeyboardInterrupt to the main task instead. So the call runs in one.
    """

    __slots__ = ()

    def __del__(self, _: Any = None) -> Any | None:  # only ever reached as __call__ (below)
        return super().__call__(_)

    __call__ = cast("Callable[..., Any]", __del__)  # (mypy reads a dunder's parameters as positional-only)
    del __del__  # not a destructor: the function keeps its name, which is what trio reads


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
    nbytes = data.nbytes
    fd = os.memfd_create("actorbox", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        os.ftruncate(fd, nbytes)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS)
        view = data.cast("B")
        done = 0
        while done < nbytes:
            done += os.pwrite(fd, view[done:], done)
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


# -- spare segments ---------------------------------------------------------------------

# Below this a spare does not pay: a 1 MB copy back to back with calls measured ~15%
# slower with spares (their making competes for the CPU) and no faster with pauses.
SPARE_MIN = 2 << 20
_SPARE_IDLE = 30.0  # seconds a size goes unasked before its spares are freed
_SPARE_SIZES = 32  # sizes tracked at most; the least recently asked is dropped
_SPARE_STALE = 2.0  # seconds unasked after which a size's spares may make room for another's
_SPARE_PAUSE = 0.1  # seconds the thread pauses after a MemoryError of its own
# The background thread works in steps of this many bytes: one system call over a big
# range can hold a CPU for milliseconds before the kernel lets a woken thread run.
_STEP = 256 << 10
_ZEROS = bytes(_STEP)


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
            raise UsageError(f"ACTORBOX_SHM_SPARE_BYTES={raw!r} is not a number of bytes; "
                             "set it to an integer (0 turns spare segments off)") from None
        if value < 0:
            raise UsageError(f"ACTORBOX_SHM_SPARE_BYTES={raw!r} is negative; use 0 to turn spare segments off")
        return value
    return min(1 << 30, _physical_memory() // 16)


class Spares:
    """Segments made ahead of time, off the sending thread, for fresh copies.

    Copying a fresh tensor into a new memfd costs more than the copy itself: the
    kernel allocates every page on the way (a 100 MB copy takes about 1.5x a
    ``clone()`` here, and shmem never gets huge pages). Once a size has been sent, a
    background thread makes a segment of that size ready -- its pages written and
    mapped -- so the next fresh copy of a similar size is a plain memcpy. A spare is
    used once: after its descriptor is sent it is never reused, since nothing can
    prove that a peer stopped mapping it (an actor could keep a mapping and read the
    next tensor that went into it). Not even the kernel: a write lease on the
    sender's own open file description is granted once no other description of the
    file is left, but a peer can keep the pages without one -- an ``O_PATH`` handle
    (reopened read-write through /proc later), or the pages spliced into a pipe --
    and an ``open()`` while the lease is held sends the sender SIGIO, which kills it.
    Up to ``limit`` bytes are kept ready; a size not
    asked for in 30 s is freed. A used spare is also unmapped on that thread.

    The thread runs at idle priority and makes its system calls through ctypes, which
    releases the GIL: Python's own ``mmap`` holds the GIL while the kernel populates
    or tears down a mapping, which would stall the event loop for the whole time.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._cond = threading.Condition(threading.Lock())
        self._ready: dict[int, list[tuple[int, int]]] = {}  # size -> [(fd, base address of its mapping)]
        self._asked: dict[int, float] = {}  # size -> when last asked for (monotonic), oldest first
        self._retired: list[tuple[int, int]] = []  # (base, size) of used spares' mappings
        self._ready_bytes = 0
        self._thread: StartedThread | None = None
        self._gen = 0  # bumped by close(): a thread of an older generation stops and keeps nothing
        self.hits = 0
        self.misses = 0

    @property
    def ready_bytes(self) -> int:
        return self._ready_bytes

    def take(self, nbytes: int) -> tuple[int, int, int] | None:
        """A ready spare for ``nbytes`` as (fd, base address, size), or None; either way the
        size is noted, so a spare of it is made for next time. Once filled, the caller
        hands the mapping back with :meth:`retire`."""
        if nbytes < SPARE_MIN or self.limit <= 0:
            return None
        size = spare_size(nbytes)
        if size > self.limit:
            return None
        with self._cond:
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
            if self._thread is None:
                try:  # (never waits on the new thread: see actorbox._threads)
                    self._thread = start_thread("actorbox-shm-spares", self._serve, self._gen)
                except RuntimeError:  # no thread to be had (a process limit): copy as before
                    self.limit = 0
                    return None
            self._cond.notify()
        return None if got is None else (got[0], got[1], size)

    def held_fds(self) -> set[int]:
        """Descriptors of the spares ready now."""
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

    def close(self) -> None:
        """Free every spare and stop the thread (spares come back when sizes are asked again).

        Called on the host's event loop (Runtime exit): it waits for the thread briefly
        only. A thread starved of CPU (it runs at idle priority) stops when it next runs,
        and frees whatever it was making itself."""
        with self._cond:
            self._gen += 1
            self._cond.notify_all()
            thread, self._thread = self._thread, None
        if thread is not None and not thread.is_current():
            thread.join(timeout=0.1)
        with self._cond:
            for size, group in self._ready.items():
                for fd, base in group:
                    _munmap(base, size)
                    os.close(fd)
            for base, size in self._retired:
                _munmap(base, size)
            self._ready.clear()
            self._asked.clear()
            self._retired.clear()
            self._ready_bytes = 0

    def _wanted(self) -> int | None:
        """The most recently asked size short of a spare, if the budget allows one more."""
        for size in reversed(self._asked):
            if not self._ready.get(size) and self._ready_bytes + size <= self.limit:
                return size
        return None

    def _make_room(self) -> list[tuple[int, int, int]]:
        """When the most recently asked size lacks a spare and the budget is spent, free
        spares of sizes not asked for lately (oldest first); returns them as (fd, base, size).
        Sizes asked for at about the same time keep theirs: no two sizes evict each other."""
        want = next((s for s in reversed(self._asked) if not self._ready.get(s)), None)
        if want is None or self._ready_bytes + want <= self.limit:
            return []
        now = time.monotonic()
        out: list[tuple[int, int, int]] = []
        for size, asked in list(self._asked.items()):  # oldest first
            if self._ready_bytes + want <= self.limit:
                break
            if size != want and now - asked > _SPARE_STALE and self._ready.get(size):
                group = self._ready.pop(size)
                self._ready_bytes -= size * len(group)
                out.extend((fd, base, size) for fd, base in group)
        return out

    def _expired(self) -> list[tuple[int, int, int]]:
        """Forget sizes not asked for lately; returns their spares as (fd, base, size)."""
        now = time.monotonic()
        for size, asked in list(self._asked.items()):
            if now - asked > _SPARE_IDLE:
                del self._asked[size]
        out: list[tuple[int, int, int]] = []
        for size in [s for s in self._ready if s not in self._asked]:
            group = self._ready.pop(size)
            self._ready_bytes -= size * len(group)
            out.extend((fd, base, size) for fd, base in group)
        return out

    def _serve(self, gen: int) -> None:
        """The thread's main: it runs until close(), through a MemoryError (near the memory
        limit), pausing briefly after one; a bug ends it, printed (senders then copy)."""
        while True:
            try:
                self._run(gen)
                return
            except MemoryError:
                time.sleep(_SPARE_PAUSE)

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
                    if self._retired or freed or size is not None:
                        break
                    self._cond.wait(timeout=_SPARE_IDLE if self._ready else None)  # (then look for idle sizes)
                retired, self._retired = self._retired, []
            for base, n in retired:
                _munmap(base, n)
            for fd, base, n in freed:
                _munmap(base, n)
                os.close(fd)
            if size is None:
                continue
            try:
                fd, base = _make_spare(size, lambda: self._gen != gen)
            except OSError:  # out of memory or descriptors: senders make their own segments
                with self._cond:
                    self._asked.pop(size, None)
                continue
            with self._cond:
                if self._gen == gen and size in self._asked and self._ready_bytes + size <= self.limit:
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


def _make_spare(size: int, stop: Callable[[], bool]) -> tuple[int, int]:
    """A sealed segment of ``size`` bytes whose pages exist and are mapped here: (fd, base).
    Gives up (OSError) as soon as ``stop()`` is true, so closing never waits for a big one."""
    fd = os.memfd_create("actorbox", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        os.ftruncate(fd, size)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS)
        # Writing zeros allocates the pages without the clearing a first fault does, and
        # populating the mapping then only fills page tables: about 40% cheaper than faulting in.
        zeros = memoryview(_ZEROS)
        done = 0
        while done < size:
            if stop():
                raise InterruptedError("spare segments closed")
            done += os.pwrite(fd, zeros[:min(len(zeros), size - done)], done)
        base = _libc.mmap(None, size, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_SHARED, fd, 0)
        if base is None or base == _MAP_FAILED:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
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
