"""An actor that writes whatever frames it is handed on its own socket (for the fuzz suite).

The frames come from hypothesis in the host test (tests/strategies.py): the actor is
only the mouth. Descriptors it attaches are duplicates of a small sealed memfd, of
/dev/null and of a pipe end, so the host receives every kind of descriptor.
"""

from __future__ import annotations

import fcntl
import os

import actorbox

from .saboteur import send_raw, send_with_fds


def _descriptors(n):
    """``n`` descriptors of mixed kinds (the caller closes them once they are sent)."""
    out = []
    for i in range(n):
        kind = i % 3
        if kind == 0:
            fd = os.memfd_create("fuzz", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
            os.ftruncate(fd, 4096)
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW)
        elif kind == 1:
            fd = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
        else:
            r, fd = os.pipe()
            os.close(r)
        out.append(fd)
    return out


@actorbox.actor(max_restarts=10_000)
class FrameSender:
    """Writes raw frames (wire bytes, with n descriptors each) on its socket, then answers."""

    def send(self, frames):
        for data, nfds in frames:
            fds = _descriptors(min(nfds, 200))  # the kernel passes at most 253 per message
            try:
                if fds:
                    send_with_fds(data, fds)
                else:
                    send_raw(data)
            finally:
                for fd in fds:
                    os.close(fd)
        return len(frames)

    def ping(self):
        return "pong"
