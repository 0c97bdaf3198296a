"""What a Ray worker returns, and how the host reads it: actorbox's codec, not pickle.

A worker (an actor's shell or a task) never returns the user's value to Ray as it is:
it encodes it with actorbox's codec (msgpack and its allow-list, the same encoder an
actor process uses), turns the shared-memory segments the encoding made for tensors and
arrays into plain bytes (a Ray worker shares no descriptors with the host), and returns
``[status, payload, buffers]``: a str, bytes and a list of bytes, which Ray carries
without pickling any object of the user's. The host checks that shape strictly, writes
each buffer into a sealed memfd again and decodes the payload as it decodes an actor's
(``trusted=False``: builtins, allow-listed exceptions, tensors, arrays; nothing
unpickled). Handles in arguments travel as :class:`HandleRef` (Ray pickles arguments,
host to worker, as the local backend cloudpickles them).
"""

from __future__ import annotations

import os
from typing import Any

from .._codec import Codec
from .._errors import SerializationError
from .._shm import write_segment

OK = "ok"
ERR = "err"
# At most this many buffers (tensors and arrays) in one result.
MAX_BUFFERS = 4096


def encode_outcome(codec: Codec, value: Any, *, raised: bool = False) -> list[Any]:
    """``value`` (or the exception ``raised``) as the worker returns it; a value that can't
    be encoded becomes the SerializationError saying why."""
    if raised:
        return [ERR, codec.dumps(value), []]
    try:
        payload, fds = codec.dumps_fds(value)
    except SerializationError as exc:
        return [ERR, codec.dumps(exc), []]
    try:
        buffers = [_read_fd(fd) for fd in fds]
    finally:
        for fd in fds:
            os.close(fd)
    return [OK, payload, buffers]


def _read_fd(fd: int) -> bytes:
    size = os.fstat(fd).st_size
    out = bytearray(size)
    view = memoryview(out)
    done = 0
    while done < size:
        n = os.preadv(fd, [view[done:]], done)
        if n <= 0:
            raise SerializationError("a shared-memory segment shrank while it was read")
        done += n
    return bytes(out)


def decode_outcome(codec: Codec, wire: Any) -> tuple[bool, Any]:
    """``(ok, value)`` of what a worker returned; raises SerializationError for anything that
    is not ``[status, payload, buffers]`` or does not decode under the allow-list."""
    if type(wire) not in (list, tuple) or len(wire) != 3:
        raise SerializationError(f"a Ray worker returned {type(wire).__name__}, not actorbox's result triple")
    status, payload, buffers = wire
    if status not in (OK, ERR) or type(payload) is not bytes or type(buffers) not in (list, tuple) \
            or len(buffers) > MAX_BUFFERS or not all(type(b) is bytes for b in buffers):
        raise SerializationError("a Ray worker returned a malformed result")
    if status == ERR:
        error = codec.loads(payload, False)
        if not isinstance(error, BaseException):
            raise SerializationError("a Ray worker's error is not an exception")
        return False, error
    fds: list[int] = []
    try:
        for b in buffers:
            fds.append(write_segment(memoryview(b)))
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return True, codec.loads_fds(payload, False, fds)


class HandleRef:
    """An actor handle as it travels in a Ray call's arguments (rebuilt where it arrives)."""

    __slots__ = ("actor_id", "label", "name", "ray_handle")

    def __init__(self, actor_id: int, name: str | None, label: str, ray_handle: Any) -> None:
        self.actor_id = actor_id
        self.name = name
        self.label = label
        self.ray_handle = ray_handle

    def __reduce__(self) -> tuple[Any, tuple[int, str | None, str, Any]]:
        return (HandleRef, (self.actor_id, self.name, self.label, self.ray_handle))


def swap(value: Any, fn: Any, depth: int = 0) -> Any:
    """``value`` with ``fn`` applied to each item of the containers it is made of (lists,
    tuples, dicts, sets), returning the same object where nothing changed."""
    t = type(value)
    if depth > 32 or t not in (list, tuple, dict, set, frozenset):
        return fn(value)
    if t is dict:
        items = {k: swap(v, fn, depth + 1) for k, v in value.items()}
        return value if all(items[k] is value[k] for k in value) else items
    seq = [swap(v, fn, depth + 1) for v in value]
    return value if all(a is b for a, b in zip(seq, value, strict=True)) else t(seq)
