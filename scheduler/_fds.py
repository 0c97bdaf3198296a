"""File descriptors that travel with frames: closing, duplicating and counting them.

The one place for these helpers: every owner of received descriptors (connections,
endpoints, the router, and actorbox's caller, child and object store) closes them
with ``close_fds`` on every path, so a descriptor never outlives its owner.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

# Descriptors one frame may carry; the receiving decoder refuses a frame claiming more.
MAX_FDS_PER_FRAME = 64


def close_fds(fds: Iterable[int]) -> None:
    """Close each of ``fds``, ignoring ones already closed (cleanup must not stop half way)."""
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def dup_all(fds: Sequence[int]) -> tuple[int, ...]:
    """Duplicates of ``fds`` (close-on-exec); none are left open if one can't be made."""
    out: list[int] = []
    try:
        for fd in fds:
            out.append(os.dup(fd))
    except BaseException:
        close_fds(out)
        raise
    return tuple(out)


def too_many_fds(nfds: int, what: str) -> str | None:
    """Why a message whose ``what`` carries ``nfds`` descriptors can't be sent, if so: the
    peer would refuse the frame and hang up, so the sender fails that message instead."""
    if nfds <= MAX_FDS_PER_FRAME:
        return None
    verb = "hold" if what.endswith("s") else "holds"
    return (f"{what} {verb} {nfds} tensors or arrays, over the {MAX_FDS_PER_FRAME} one message can carry (each "
            "travels as a descriptor); stack them into fewer (torch.stack, np.stack) or send them in several calls")
