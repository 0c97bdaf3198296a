"""Length-prefixed frames with attached file descriptors.

A frame on the wire is an 8-byte header -- body length (u32, little endian) and
the number of file descriptors that travel with it (u32) -- followed by the body.
The descriptors ride as SCM_RIGHTS ancillary data on the ``sendmsg`` that carries
the frame's first byte, so by the time a frame's body is complete its descriptors
have always arrived (the kernel delivers ancillary data with the first byte of the
segment it was sent with, and we never split a header across two sends' fds).
"""

from __future__ import annotations

import struct
from collections import deque

from ._fds import MAX_FDS_PER_FRAME as MAX_FDS_PER_FRAME
from ._fds import close_fds

HEADER = struct.Struct("<II")
DEFAULT_MAX_FRAME = 64 * 1024 * 1024


class FrameError(Exception):
    """The peer broke the framing rules; the connection cannot continue."""


def encode_header(body_len: int, nfds: int) -> bytes:
    return HEADER.pack(body_len, nfds)


class FrameDecoder:
    """Incremental decoder: feed bytes and descriptors, get whole frames back.

    Invariant: ``self._fds`` holds descriptors received but not yet claimed by a
    complete frame; they are owned by the decoder and closed by ``close()``.
    """

    __slots__ = ("_buf", "_fds", "max_frame")

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self._buf = bytearray()
        self._fds: deque[int] = deque()
        self.max_frame = max_frame

    def feed(self, data: bytes | memoryview, fds: list[int] | tuple[int, ...] = ()) -> list[tuple[bytes, list[int]]]:
        """Add received bytes and fds; return the frames now complete, in order.

        Every descriptor fed ends up in exactly one place: in a returned frame (its
        owner's now), held for the one incomplete frame that claims it, or closed. On a
        FrameError nothing is returned: the frames complete before the bad one are
        dropped with it (the connection ends) and every descriptor is closed, theirs too.
        """
        if not self._buf and not self._fds and len(data) >= 8:
            # The common read: exactly one whole frame, nothing left over (no buffering).
            body_len, nfds = HEADER.unpack_from(data, 0)
            if len(data) == 8 + body_len and nfds == len(fds) <= MAX_FDS_PER_FRAME and body_len <= self.max_frame:
                return [(bytes(data[8:]), list(fds))]
        if fds:
            self._fds.extend(fds)
        frames: list[tuple[bytes, list[int]]] = []
        try:
            self._parse(data, frames)
        except FrameError:
            for _body, frame_fds in frames:
                close_fds(frame_fds)
            self._buf.clear()
            self.close()
            raise
        return frames

    def _parse(self, data: bytes | memoryview, frames: list[tuple[bytes, list[int]]]) -> None:
        buf = self._buf
        buf += data
        pos = 0
        n = len(buf)
        hsize = HEADER.size
        while n - pos >= hsize:
            body_len, nfds = HEADER.unpack_from(buf, pos)
            if body_len > self.max_frame:
                raise FrameError(
                    f"frame of {body_len} bytes exceeds the limit of {self.max_frame} bytes"
                )
            if nfds > MAX_FDS_PER_FRAME:
                raise FrameError(f"frame claims {nfds} file descriptors (limit {MAX_FDS_PER_FRAME})")
            end = pos + hsize + body_len
            if end > n:
                break
            if nfds > len(self._fds):
                raise FrameError(f"frame claims {nfds} file descriptors but {len(self._fds)} arrived")
            frame_fds = [self._fds.popleft() for _ in range(nfds)]
            with memoryview(buf) as view:  # one copy of the body (a bytearray slice would be a second)
                frames.append((bytes(view[pos + hsize : end]), frame_fds))
            pos = end
        if pos:
            del buf[:pos]
        # The kernel hands over descriptors with the read holding the first byte of the
        # frame they were sent with, so what is left can only belong to the one incomplete
        # frame at the buffer's start: exactly as many as its header claims once the header
        # is in, none when nothing is buffered. Any other descriptor was sent outside a frame
        # (an actor could fill our descriptor table that way): never held, the peer is cut off.
        left = len(self._fds)
        if not left:
            return
        claimed = HEADER.unpack_from(buf, 0)[1] if len(buf) >= hsize else (0 if not buf else MAX_FDS_PER_FRAME)
        if left > claimed:
            raise FrameError(f"{left - claimed} file descriptors arrived that no frame claims")
        if len(buf) >= hsize and left < claimed:
            raise FrameError(f"frame claims {claimed} file descriptors but {left} arrived")

    def close(self) -> None:
        """Close the descriptors held for an incomplete frame (idempotent)."""
        fds, self._fds = self._fds, deque()
        close_fds(fds)

