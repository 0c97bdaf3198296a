"""Pickling what the host sends an actor, refusing handles to the host's own resources.

The host cloudpickles what msgpack cannot carry (host -> actor only). cloudpickle
"pickles" an open file by reading it into an ``io.StringIO``, and other handles (a
socket, a lock, a process) either fail with a bare ``TypeError`` or arrive as
something else. None of them can work in the actor: it is another process, in a
sandbox that does not share the host's descriptors, memory or children. So each is
refused wherever it sits in the value (an argument, an attribute of one, an item of
a list), with a ``SerializationError`` saying what to send instead.
"""

from __future__ import annotations

import asyncio
import io
import mmap
import select
import selectors
import socket
import subprocess
import threading
from typing import TYPE_CHECKING, Any

import cloudpickle

if TYPE_CHECKING:  # cloudpickle ships no type hints; its pickler is a pickle.Pickler
    from pickle import Pickler as _CloudPickler
else:
    _CloudPickler = cloudpickle.CloudPickler

from ._errors import SerializationError

# In-memory streams hold no resource of the host: they pickle as their contents.
_MEMORY_STREAMS = (io.BytesIO, io.StringIO)

_LOCKS: tuple[type[Any], ...] = (type(threading.Lock()), type(threading.RLock()), threading.Condition,
                                 threading.Semaphore, threading.Event)
_POLLERS: tuple[type[Any], ...] = tuple(
    t for t in (getattr(select, "epoll", None), getattr(select, "poll", None), getattr(select, "kqueue", None),
                getattr(select, "devpoll", None)) if isinstance(t, type))

# (types, what it is, what to send instead), checked in order.
_REFUSED: tuple[tuple[tuple[type[Any], ...], str, str], ...] = (
    ((io.IOBase,), "an open file of the host",
     "send its contents (f.read()), or send its path and make that readable in the actor's sandbox "
     "(SandboxPolicy(readable_paths=[...])) so the actor opens it there"),
    ((socket.socket,), "a socket of the host",
     "send the data it carries, or let the actor open its own connection "
     "(SandboxPolicy(network=True) for a sandboxed one)"),
    ((mmap.mmap,), "a memory map of the host",
     "send a numpy array or torch tensor instead (they travel as shared memory, without copying)"),
    ((selectors.BaseSelector, asyncio.AbstractEventLoop, *_POLLERS), "an event loop or poller of the host",
     "send the values it produced; an actor has its own loop"),
    ((subprocess.Popen,), "a process the host started",
     "send its pid or its output; the actor cannot wait for or signal the host's children"),
    (_LOCKS, "a lock or event of the host's threads",
     "leave it out: it guards memory of the host process only. An actor runs one call at a time "
     "unless its max_concurrency says otherwise; guard shared state inside the actor"),
)


def describe_refused(obj: Any) -> str | None:
    """Why ``obj`` may not be sent to an actor, with what to send instead; None when it may."""
    if isinstance(obj, _MEMORY_STREAMS):
        return None
    for types, what, instead in _REFUSED:
        if isinstance(obj, types):
            t = type(obj)
            name = getattr(obj, "name", None) if isinstance(obj, io.IOBase) else None
            named = f" ({name!r})" if isinstance(name, str | int) else ""
            return (f"cannot send a {t.__module__}.{t.__qualname__}{named} to an actor: it is {what}, which "
                    f"the actor (another process, in its own sandbox) cannot use; {instead}")
    return None


class _Pickler(_CloudPickler):
    """cloudpickle, except that a handle to a host resource anywhere in the value is refused."""

    def __init__(self, file: io.BytesIO) -> None:
        super().__init__(file, protocol=cloudpickle.DEFAULT_PROTOCOL)
        # Types seen in this value that may be sent: the check runs once per type, not per
        # object (200,000 small objects: +45% over cloudpickle alone checked each, +17% once per type).
        self._allowed: set[type[Any]] = set()

    def reducer_override(self, obj: Any) -> Any:
        t = type(obj)
        if t not in self._allowed:
            why = describe_refused(obj)
            if why is not None:
                raise SerializationError(why)
            self._allowed.add(t)
        return super().reducer_override(obj)


def dumps(obj: Any) -> bytes:
    """``obj`` cloudpickled; SerializationError for a file, socket, lock or other host handle in it."""
    with io.BytesIO() as f:
        _Pickler(f).dump(obj)
        return f.getvalue()
