"""The host's object store: ``rt.put`` objects, shared by reference with any actor.

A put object is encoded once, with its tensors and arrays moved into shared-memory
segments, and held as (payload, descriptors): every process that gets it maps the
same memory, nothing is copied again. Objects are held for others, so they have a
time-based retention (default 30 s, ``Runtime(object_retention=...)`` or
``ACTORBOX_OBJECT_RETENTION``) plus explicit release, and the store has a capacity.

Results of the host's calls that carry shared memory are held too until read: one not
read within the retention has its memory released, and reading it then raises
ObjectNotFoundError (a result read, or whose Future is dropped, is not held any more).
"""

from __future__ import annotations

import math
import os
import secrets
import time
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import structlog

from scheduler import dup_all

from ._errors import ObjectNotFoundError, ObjectStoreFullError, UsageError

if TYPE_CHECKING:
    from collections.abc import Generator

log = structlog.get_logger("actorbox")

SERVICE_NAME = "actorbox.objects"  # the host-resident actor through which actors reach the store


class ObjectClient(Protocol):
    """How an ObjectRef reaches the store (a ``Caller`` does this: the host's directly, an
    actor's through the store's host-resident actor)."""

    async def get_object(self, object_id: str) -> Any: ...

    async def release_object(self, object_id: str) -> None: ...


class PayloadCodec(Protocol):
    """What the store asks of the codec (a ``Codec``): it sits below the codec, which encodes
    ObjectRefs, so it names only what it uses."""

    def dumps_fds(self, obj: Any, *, ipc: bool = False) -> tuple[bytes, tuple[int, ...]]: ...

    def loads_fds(self, data: bytes, trusted: bool, fds: tuple[int, ...] | list[int], *,
                  ipc: bool = False) -> Any: ...


class ObjectRef:
    """A reference to an object in the host's object store: pass it to any call, ``await`` it for the value.

    As a top-level argument of a call made by the host it is replaced by the value.
    """

    __slots__ = ("_caller", "object_id")

    def __init__(self, caller: ObjectClient, object_id: str) -> None:
        self._caller = caller
        self.object_id = object_id

    def __repr__(self) -> str:
        return f"<ObjectRef {self.object_id}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ObjectRef) and other.object_id == self.object_id

    def __hash__(self) -> int:
        return hash(("ObjectRef", self.object_id))

    def __await__(self) -> Generator[Any, None, Any]:
        return self._caller.get_object(self.object_id).__await__()

    async def release(self) -> None:
        """Drop the store's copy now (memory still mapped by someone stays valid for them)."""
        await self._caller.release_object(self.object_id)


@dataclass(slots=True)
class _Stored:
    payload: bytes
    fds: tuple[int, ...]
    nbytes: int
    created: float
    expires: float | None


def check_retention(value: Any, where: str) -> float | None:
    """A retention in seconds (a finite number, 0 or more), or None: kept until released."""
    if value is None:
        return None
    if isinstance(value, (int, float)) and type(value) is not bool and math.isfinite(value) and value >= 0:
        return float(value)
    raise UsageError(f"{where} must be a number of seconds (0 or more) or None (kept until released), "
                     f"not {value!r}")


class ObjectStore:
    """Objects the host holds for others, by id. Lives on the host's event loop."""

    def __init__(self, codec: PayloadCodec, *, retention: float | None, capacity: int) -> None:
        self.codec = codec
        self.retention = retention
        self.capacity = capacity
        self._objects: dict[str, _Stored] = {}
        self.used = 0
        # Results with shared memory nobody has read: id(Future) -> (expiry, the Future),
        # in arrival order (so in expiry order). Entries leave when read or dropped.
        self._unread: dict[int, tuple[float, weakref.ref[Any]]] = {}

    def hold_result(self, fut: Any) -> None:
        """A result carrying shared memory arrived for the host (loop thread)."""
        if self.retention is None:
            return
        key = id(fut)
        unread = self._unread

        def __del__(_ref: weakref.ref[Any]) -> None:  # named so: see _shm._Finalizer (Ctrl-C under trio)
            unread.pop(key, None)

        self._unread[key] = (time.monotonic() + self.retention, weakref.ref(fut, __del__))

    def result_read(self, fut: Any) -> None:
        """It was read (any thread): its memory is the reader's now."""
        self._unread.pop(id(fut), None)

    def put(self, obj: Any, retention: float | str | None = "default") -> str:
        keep = self.retention if retention == "default" else check_retention(retention, "rt.put(retention=...)")
        payload, fds = self.codec.dumps_fds(obj, ipc=False)  # any process may read it, the host too
        nbytes = len(payload) + sum(os.fstat(fd).st_size for fd in fds)
        if self.used + nbytes > self.capacity:
            for fd in fds:
                os.close(fd)
            raise ObjectStoreFullError(
                f"putting {nbytes} bytes would exceed the object store's capacity ({self.used} of "
                f"{self.capacity} bytes used); release objects (await ref.release()) or pass a larger "
                "Runtime(object_store_capacity=...)", capacity=self.capacity, used=self.used, requested=nbytes)
        now = time.monotonic()
        object_id = secrets.token_hex(16)
        self._objects[object_id] = _Stored(payload, fds, nbytes, now, None if keep is None else now + keep)
        self.used += nbytes
        log.info("object.put", object_id=object_id, bytes=nbytes, retention_s=keep)
        return object_id

    def get(self, object_id: str) -> Any:
        """The value, mapping the same shared memory the store holds."""
        s = self._objects.get(object_id)
        if s is None:
            raise ObjectNotFoundError(
                f"no object {object_id} in the store: it was released or expired (the store keeps objects "
                f"{self.retention} s unless put with another retention); put it with a longer retention "
                "(rt.put(obj, retention=...)) or use it sooner", object_id=object_id)
        return self.codec.loads_fds(s.payload, True, dup_all(s.fds))

    def release(self, object_id: str, *, event: str = "object.released") -> bool:
        s = self._objects.pop(object_id, None)
        if s is None:
            return False
        for fd in s.fds:
            os.close(fd)
        self.used -= s.nbytes
        if event == "object.expired":
            log.info(event, object_id=object_id, bytes=s.nbytes, age_s=round(time.monotonic() - s.created, 3))
        else:
            log.info(event, object_id=object_id, bytes=s.nbytes)
        return True

    def expire(self, now: float | None = None) -> int:
        """Drop every object, and the memory of every unread result, past its retention;
        returns how many."""
        now = time.monotonic() if now is None else now
        due = [k for k, s in self._objects.items() if s.expires is not None and s.expires <= now]
        for k in due:
            self.release(k, event="object.expired")
        return len(due) + self._expire_results(now)

    def _expire_results(self, now: float) -> int:
        n = 0
        while self._unread:
            try:
                key, (expires, ref) = next(iter(self._unread.items()))
            except RuntimeError:  # changed by another thread meanwhile: look again
                continue
            if expires > now:
                break
            self._unread.pop(key, None)
            fut = ref()
            if fut is not None and fut._expire(
                    f"the result of {fut.actor}.{fut.method}() [call {fut.call_id}] was not read within the "
                    f"object retention ({self.retention} s), so its shared memory was released; read results "
                    "sooner, or give Runtime(object_retention=...) more seconds (None keeps them until read)"):
                n += 1
                log.info("object.expired", result_of=f"{fut.actor}.{fut.method}()", call_id=fut.call_id)
        return n

    def stats(self) -> dict[str, Any]:
        """Counts, bytes, capacity and the oldest object (id and age in seconds)."""
        now = time.monotonic()
        oldest = min(self._objects.items(), key=lambda kv: kv[1].created, default=None)
        return {
            "objects": len(self._objects),
            "bytes": self.used,
            "capacity": self.capacity,
            "retention_s": self.retention,
            "unread_results": len(self._unread),
            "oldest": None if oldest is None else {"object_id": oldest[0],
                                                    "age_s": round(now - oldest[1].created, 3),
                                                    "bytes": oldest[1].nbytes},
        }

    def objects(self) -> list[dict[str, Any]]:
        """What the store holds, oldest first: id, bytes, age and seconds left before it
        expires (None: kept until released)."""
        now = time.monotonic()
        return [{"object_id": k, "bytes": s.nbytes, "age_s": round(now - s.created, 3),
                 "expires_in_s": None if s.expires is None else round(max(0.0, s.expires - now), 3)}
                for k, s in sorted(self._objects.items(), key=lambda kv: kv[1].created)]

    def __contains__(self, object_id: object) -> bool:
        return object_id in self._objects

    def close(self) -> None:
        for k in list(self._objects):
            self.release(k)


class ObjectService:
    """The store as a host-resident actor, for code inside actors (reached by ``ObjectRef``)."""

    def __init__(self, store: ObjectStore) -> None:
        self._store = store

    # Async: they run on the host's loop, which owns the store (sync methods would run on threads).
    async def get(self, object_id: str) -> Any:
        if type(object_id) is not str:
            raise TypeError("object ids are strings")
        return self._store.get(object_id)

    async def release(self, object_id: str) -> bool:
        if type(object_id) is not str:
            raise TypeError("object ids are strings")
        return self._store.release(object_id)
