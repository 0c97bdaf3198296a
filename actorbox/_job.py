"""A call admitted in an actor process, and the mark a cancel leaves on a running sync call."""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from typing import Any, NamedTuple

from scheduler import envelope


class Job(NamedTuple):
    """One call to run: its envelope, the bound method, whether that is a coroutine
    function, and the context the call runs in (a copy of the process's, per call)."""

    call: envelope.Call
    func: Callable[..., Any]
    is_async: bool
    ctx: contextvars.Context


class SyncCall:
    """A sync call's entry among the running calls. A thread can't be interrupted, so a
    cancel only marks it: the call reads the mark before it starts (then it never does)
    and when it ends (then its result is dropped)."""

    __slots__ = ("cancelled",)

    def __init__(self) -> None:
        self.cancelled = False
