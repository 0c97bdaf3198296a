"""The caller of this process (the host's Runtime or the actor's own), found through a ContextVar.

It sits at the bottom of actorbox's modules: handles rebuilt from a pickle and the public
helpers (``get_actor``, ``shared_empty``) look their caller up here, and need nothing else.
"""

from __future__ import annotations

import contextvars
from typing import Any, Protocol

from ._shm import SegmentTable


class _HasSegments(Protocol):
    @property
    def segments(self) -> SegmentTable: ...


class ProcessCaller(Protocol):
    """What code running in a process asks of that process's caller."""

    @property
    def codec(self) -> _HasSegments: ...

    def get_actor(self, name: str) -> Any: ...


# Set by Runtime.__aenter__ in the host and by the actor-process entry point.
process_caller: contextvars.ContextVar[Any] = contextvars.ContextVar("actorbox_process_caller", default=None)
