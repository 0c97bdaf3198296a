"""What an actor process writes to the host, and what it writes instead when the host
would refuse a frame (over its size limit, or carrying too many descriptors)."""

from __future__ import annotations

import asyncio
import os
import sys

from scheduler import Connection, ConnectionClosed, close_fds, envelope, too_many_fds

from ._codec import Codec
from ._errors import SerializationError


class Outbox:
    """Sends envelopes to the host from any thread. A frame the host would refuse would
    make it hang up on the whole actor: such a message fails alone instead."""

    def __init__(self, conn: Connection, codec: Codec, stopped: asyncio.Event) -> None:
        self._conn = conn
        self._codec = codec
        self._stopped = stopped

    def send(self, msg: envelope.Message) -> None:
        """Write ``msg``; the descriptors it carries are closed here, sent or not."""
        fds: tuple[int, ...] = getattr(msg, "fds", ())
        try:
            if self._stopped.is_set() and isinstance(msg, envelope.Reply):
                return  # stopping: the host fails these calls as stopped, not cancelled
            body = envelope.encode(msg)
            too_many = too_many_fds(len(fds), "a call's arguments" if isinstance(msg, envelope.Call) else "the result")
            if too_many is None and len(body) <= self._conn.max_frame:
                self._conn.send(body, fds)
                return
            stand_in = self._stand_in(msg, too_many, len(body))
            if stand_in is not None:
                self._conn.send(stand_in, ())
        except ConnectionClosed:
            pass  # the host is gone; the reader sees EOF and we exit
        finally:
            close_fds(fds)  # the kernel duplicated the sent ones into the message

    def encode_exc(self, exc: BaseException) -> bytes:
        """``exc`` for a reply (or, when it won't encode, a RuntimeError saying what it was)."""
        try:
            return self._codec.dumps(exc)
        except Exception:
            return self._codec.dumps(RuntimeError(f"{type(exc).__qualname__}: {exc}"))

    def _stand_in(self, msg: envelope.Message, too_many: str | None, size: int) -> bytes | None:
        """What to send in place of ``msg``, which the host would refuse (None: nothing);
        raises for a call of ours, which fails in its caller."""
        limit = self._conn.max_frame
        exc = SerializationError(too_many or (
            f"{'a call' if isinstance(msg, envelope.Call) else 'the result'} encodes to {size} bytes, over "
            f"the host's frame limit of {limit} bytes; pass big data as torch tensors or "
            "numpy arrays (they travel in shared memory, not in the frame), or raise "
            "Runtime(max_frame_size=...)"))
        match msg:
            case envelope.Reply():
                return envelope.encode(envelope.Reply(msg.call_id, envelope.Status.ERROR, self.encode_exc(exc)))
            case envelope.Ready():  # a constructor error too big to send: say so, briefly
                return envelope.encode(envelope.Ready(os.getpid(), self._codec.dumps(SerializationError(
                    f"the constructor raised an error that encodes to {size} bytes, over the host's "
                    f"frame limit of {limit} bytes; raise a shorter one"))))
            case envelope.Log():  # a log event is never worth failing the code that logged it
                print(f"actorbox: a log event of {size} bytes is over the frame limit; dropped", file=sys.stderr)
                return None
        raise exc
