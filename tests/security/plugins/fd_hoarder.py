"""A hostile actor that tries to make the host hold descriptors (and the memory behind them).

Each attack is one ``sendmsg`` on the actor's own socket, built by hand: frames
whose descriptors the host would keep without any message claiming them, or a
good frame carrying a big memfd followed in the same read by a bad frame.
"""

from __future__ import annotations

import struct

import actorbox
from actorbox._caller import current_call

from .saboteur import CANCEL, OK, REPLY, Ext, frame, pack, send_with_fds
from .shm_saboteur import EXT_TENSOR, tensor

LEAK_NAME = "hostile-leak"


def _named_memfd(nbytes):
    import fcntl
    import os

    fd = os.memfd_create(LEAK_NAME, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    os.ftruncate(fd, nbytes)
    os.posix_fallocate(fd, 0, nbytes)
    fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_SEAL)
    return fd


@actorbox.actor
class FdHoarder:
    """Sends descriptors the host must close at once, or must not hold beyond its limit."""

    def ping(self):
        return "pong"

    def good_then_bad(self, nbytes):
        """In one sendmsg: a genuine reply to this call holding a ``nbytes`` tensor, then a frame
        header over the host's limit (the host hangs up; the good frame's memfd must not stay)."""
        import os

        fd = _named_memfd(nbytes)
        body = pack([REPLY, current_call.get(), OK, pack(Ext(EXT_TENSOR, pack(tensor("uint8", (nbytes,), (1,), 0, 0,
                                                                                     nbytes)))), None, True, 1])
        try:
            send_with_fds(frame(body, 1) + struct.pack("<II", 2**31, 0), [fd])
        finally:
            os.close(fd)
        return "not reached"

    def unclaimed(self, n):
        """A valid frame that claims no descriptor (a cancel) with ``n`` memfds attached anyway."""
        import os

        fds = [_named_memfd(4096) for _ in range(n)]
        try:
            send_with_fds(frame(pack([CANCEL, 90_000_000])), fds)
        finally:
            for fd in fds:
                os.close(fd)
        return "not reached"

    def tensor(self, n):
        """A genuine fresh tensor of ``n`` bytes (its own segment, one descriptor)."""
        import torch

        return torch.full((n,), 7, dtype=torch.uint8)

    def sixty_fds_per_reply(self):
        """A genuine reply holding 60 tensors (60 descriptors)."""
        import torch

        return [torch.full((16,), i, dtype=torch.uint8) for i in range(60)]


@actorbox.actor(max_restarts=2)
class RestartingHoarder(FdHoarder):
    """The same, restarted after each disconnect (twice)."""
