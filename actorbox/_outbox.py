"""What an actor process writes to the host, and what it writes instead when the host
would refuse a frame (over its size limit, or carrying too many descriptors), or when
it cannot write a call's answer at all (out of memory, most likely).

Every call gets one answer, so that none waits forever: its reply; else, when that
cannot be encoded or sent, a short MemoryError (or RuntimeError) saying so, encoded
with a packer kept for the purpose (a new one allocates 1 MiB first); else, when even
that fails, or when a write failed partway so that the connection's framing is no
longer known, the process ends with ``UNANSWERED_EXIT``: the host then fails its calls
with ActorDiedError (and restarts it per max_restarts). A frame that cannot be read or
dispatched for want of memory ends the process too, with ``UNREADABLE_EXIT``.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from typing import NoReturn

import msgpack

from scheduler import Connection, ConnectionClosed, close_fds, envelope, too_many_fds

from ._codec import EXT_EXCEPTION, Codec
from ._errors import SerializationError

# The status an actor process ends with when it cannot answer a call (see the module docstring).
UNANSWERED_EXIT = 86
_LAST_WORDS = (f"actorbox: this actor could not send an answer to the host; it exits (status {UNANSWERED_EXIT}) "
               "so that the host fails its calls instead of waiting for them\n").encode()


def give_up(what: str) -> NoReturn:
    """End the process now: ``what`` could not be sent, and nothing else can be on this
    connection. A line on stderr says why (the host shows it in ActorDiedError)."""
    try:
        line = (f"actorbox: this actor could not send {what} to the host (out of memory, most likely); it "
                f"exits (status {UNANSWERED_EXIT}) so that the host fails its calls instead of waiting for "
                "them\n").encode()
    except BaseException:  # (no memory even for that)
        line = _LAST_WORDS
    try:
        os.write(2, line)
    except BaseException:
        pass
    os._exit(UNANSWERED_EXIT)


# The status an actor process ends with when it runs out of memory reading (or dispatching) a
# frame from the host: the frame is lost, and with it perhaps a call the host waits for.
UNREADABLE_EXIT = 87
_UNREADABLE_WORDS = (f"actorbox: this actor ran out of memory reading a call (or another message) from the host; "
                     f"it exits (status {UNREADABLE_EXIT}) so that the host fails its calls instead of waiting "
                     "for them; raise its SandboxPolicy(memory_limit=...), or pass it smaller arguments\n").encode()


def exit_out_of_memory_reading() -> NoReturn:
    """End the process now: a MemoryError came up while a frame was read or dispatched (see
    ``UNREADABLE_EXIT``). The line on stderr is made in advance: there may be no memory for it."""
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException:
        pass
    try:
        os.write(2, _UNREADABLE_WORDS)
    except BaseException:
        pass
    os._exit(UNREADABLE_EXIT)


class Outbox:
    """Sends envelopes to the host from any thread. A frame the host would refuse would
    make it hang up on the whole actor: such a message fails alone instead."""

    def __init__(self, conn: Connection, codec: Codec, stopped: asyncio.Event) -> None:
        self._conn = conn
        self._codec = codec
        self._stopped = stopped
        # For answers that must go out when memory has run out: small ones, one at a time.
        self._spare = msgpack.Packer(use_bin_type=True)
        self._spare_lock = threading.Lock()

    def send(self, msg: envelope.Message) -> None:
        """Write ``msg``; the descriptors it carries are closed here, sent or not. What fails
        before anything is written (encoding it, out of memory) is raised; a failed write
        ends the process (``give_up``): the connection's framing is no longer known."""
        fds: tuple[int, ...] = getattr(msg, "fds", ())
        try:
            if self._stopped.is_set() and isinstance(msg, envelope.Reply):
                return  # stopping: the host fails these calls as stopped, not cancelled
            body = envelope.encode(msg)
            too_many = too_many_fds(len(fds), "a call's arguments" if isinstance(msg, envelope.Call) else "the result")
            if too_many is None and len(body) <= self._conn.max_frame:
                self._write(body, fds)
                return
            stand_in = self._stand_in(msg, too_many, len(body))
            if stand_in is not None:
                self._write(stand_in, ())
        finally:
            close_fds(fds)  # the kernel duplicated the sent ones into the message

    def _write(self, body: bytes, fds: tuple[int, ...]) -> None:
        try:
            self._conn.send(body, fds)
        except ConnectionClosed:
            pass  # the host is gone; the reader sees EOF and we exit
        except BaseException:  # part of the frame may be out: nothing after it would parse
            give_up("a message")

    def send_ready(self, error: BaseException | None = None) -> None:
        """READY, with the constructor's (or the start's) ``error`` if it failed; the process
        ends when it cannot be sent, so that the host's start fails instead of waiting."""
        try:
            self.send(envelope.Ready(os.getpid(), None if error is None else self.encode_exc(error)))
        except BaseException:
            give_up("the outcome of its start")

    def send_failure(self, call_id: int, method: str, cause: BaseException, outcome: BaseException | None,
                     returned: bool = False) -> None:
        """Answer call ``call_id`` (of ``method``) whose reply could not be encoded or sent
        (``cause``; ``outcome``: the exception the reply was to carry, if any; ``returned``: the
        method returned, and ``outcome`` came from encoding its value), with a short error built
        without big allocations; the process ends when even that cannot be sent."""
        if self._stopped.is_set():
            return  # as send(): the host fails the calls of a stopping actor itself
        try:
            frame = self._failure_frame(call_id, method, cause, outcome, returned)
            self._conn.send(frame, ())
        except ConnectionClosed:
            pass
        except BaseException:
            give_up(f"its answer to {method}()")

    def _failure_frame(self, call_id: int, method: str, cause: BaseException, outcome: BaseException | None,
                       returned: bool = False) -> bytes:
        """The REPLY frame (as ``envelope.encode`` lays it out) of a call whose answer failed with ``cause``."""
        short_of_memory = isinstance(cause, MemoryError)
        what = "ran out of memory" if short_of_memory else f"failed ({type(cause).__name__})"
        said = "it returned a value"
        if outcome is not None:
            said = f"{said}; encoding it raised" if returned else "it raised"
            said += f" {type(outcome).__name__}"
            try:
                text = str(outcome)[:1000]
                said += f": {text}" if text else ""
            except BaseException:
                pass
        message = (f"the actor {what} while encoding or sending its answer to {method}() ({said}); "
                   "raise its SandboxPolicy(memory_limit=...), or return or raise something smaller")[:4096]
        kind = "MemoryError" if short_of_memory else "RuntimeError"
        fields: list[object] = ["builtins", kind, [message], message, "", {}]
        with self._spare_lock:
            payload = self._spare.pack(msgpack.ExtType(EXT_EXCEPTION, self._spare.pack(fields)))
            return self._spare.pack([int(envelope.Kind.REPLY), call_id, int(envelope.Status.ERROR), payload,
                                     None, False, 0])

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
