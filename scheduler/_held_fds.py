"""The descriptors one actor has sent that the host may still hold open, and their bound.

A received tensor keeps its segment's descriptor open while it lives, a queued call
its arguments': an actor must not fill the host's descriptor table that way.
"""

from __future__ import annotations

import os

# Descriptors received from one actor that the host may hold at once; no ordinary
# program holds this many.
DEFAULT_MAX_HELD_FDS = 1024


class HeldFds:
    """Descriptors received from one actor, each with the identity (st_dev, st_ino) of its
    file: a number closed and reused for another file no longer counts. Checked lazily
    (only near the limit, or when asked)."""

    __slots__ = ("_held", "label", "limit")

    def __init__(self, label: str, limit: int = DEFAULT_MAX_HELD_FDS) -> None:
        self.label = label
        self.limit = limit
        self._held: dict[int, tuple[int, int]] = {}

    def count(self) -> int:
        """Descriptors received from this actor that the host holds open now."""
        self._prune()
        return len(self._held)

    def admit(self, fds: tuple[int, ...]) -> str | None:
        """Count ``fds`` as held; why not (naming the limit and the remedy), if that goes over it."""
        held = self._held
        if len(held) + len(fds) > self.limit:
            self._prune()
            if len(held) + len(fds) > self.limit:
                return (f"actor {self.label} sent {len(fds)} descriptors (tensors or arrays) while the host holds "
                        f"{len(held)} it sent before, over the limit of {self.limit} per actor; "
                        "release what you hold from it (drop its tensors and results, await or cancel its "
                        "calls), or send fewer, larger tensors")
        for fd in fds:
            st = os.fstat(fd)
            held[fd] = (st.st_dev, st.st_ino)
        return None

    def _prune(self) -> None:
        held = self._held
        for fd, ident in list(held.items()):
            try:
                st = os.fstat(fd)
            except OSError:
                del held[fd]
                continue
            if (st.st_dev, st.st_ino) != ident:
                del held[fd]
