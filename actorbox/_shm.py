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

import fcntl
import mmap
import os
import threading
import weakref
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

    def drain_pool(self) -> None:
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
    import ctypes

    # from_buffer exports the buffer only for this call; the view is dropped at once.
    view = (ctypes.c_char * 1).from_buffer(mm)
    try:
        return ctypes.addressof(view)
    finally:
        del view


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
