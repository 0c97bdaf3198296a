"""An actor process serving its instance to the host over one Unix socket.

``ActorServer`` reads frames and dispatches them by kind: INIT to the construction,
CALL and CANCEL to the calls this actor serves, REPLY to its own pending calls (the
actor is a caller too, of other actors by handle or name), NAMES to its name table,
STOP to the end. The path of one sync call, top to bottom (see docs/architecture.md):

  ActorServer._on_frame        (loop thread, under the connection's read lock)
  Calls.start                  resolve the method, admit the call or queue it
  Calls.launch                 task, inline, or worker thread
  Calls.run_deferred           inline: once the read is over (Connection.after_read)
  Calls._run_inline / _run_on_worker   back to back while the queue holds sync calls
  CallRunner.run_sync          decode, call the method, encode
  Outbox.send                  the reply (a stand-in error if the host would refuse it)
"""

from __future__ import annotations

import asyncio
import contextvars
import socket
import sys
import threading
from collections.abc import Callable
from typing import Any

from scheduler import Connection, close_fds, envelope

from ._call_runner import CallRunner
from ._caller import Caller
from ._calls import Calls
from ._codec import Codec
from ._construction import Construction
from ._errors import ActorNotFoundError
from ._handle import ActorHandle
from ._inline import InlineCalls, exit_now
from ._objects import ObjectRef
from ._outbox import Outbox, exit_out_of_memory_reading
from ._workers import Workers


class ActorServer(Caller):
    """One actor process: its connection to the host, the frames it reads, and its role as
    a caller of other actors."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__()
        self.loop = asyncio.get_running_loop()
        self.loop_thread = threading.get_ident()
        self.conn = Connection(sock, self._on_frame)
        self.codec = Codec(allow_pickle=False,
                           make_handle=lambda aid, name, label, token: ActorHandle(self, aid, name, label, token),
                           make_ref=lambda object_id: ObjectRef(self, object_id))
        self.names: dict[str, tuple[int, bytes]] = {}  # name -> (actor id, reference token)
        self.stopped = asyncio.Event()
        self.outbox = Outbox(self.conn, self.codec, self.stopped)
        self.inline = InlineCalls(self.loop, self.conn, lambda: bool(self.pending))
        self.calls = Calls(self.loop, self.conn, CallRunner(self.codec, self.outbox), self.outbox, self.inline,
                           Workers(256, "actorbox-call"))
        self.construction = Construction(self.loop, self.conn, self.codec, self.outbox, self.calls)
        self.conn.after_read = self._after_read

    # -- incoming frames -------------------------------------------------------------

    def _on_frame(self, body: bytes, fds: list[int]) -> None:
        try:
            msg = envelope.decode(body, fds)
        except envelope.EnvelopeError:  # this handler owns fds, even when it refuses their frame
            close_fds(fds)
            raise
        match msg:
            case envelope.Call():
                self.calls.start(msg)
            case envelope.Reply():
                self.on_reply(msg)
            case envelope.Cancel():
                self.calls.cancel(msg.call_id)
            case envelope.Names():
                self.names = msg.names
            case envelope.Init():
                self.names = msg.names
                self.construction.begin(msg)
            case envelope.Stop():
                if self.inline.depth or threading.get_ident() != self.loop_thread:
                    exit_now()  # a call runs inline on the loop: it could not see this until it returns
                self.stopped.set()

    def _after_read(self) -> None:
        """On the loop thread after each read, with the read lock released: what a frame
        deferred to run here (construction, an inline call), unless stopping."""
        if self.stopped.is_set():
            return  # stopping: start nothing more
        self.construction.run_deferred()
        if not self.stopped.is_set():
            self.calls.run_deferred()

    async def serve(self) -> None:
        self.calls.base_ctx = contextvars.copy_context()  # process_caller is set by now
        reader = asyncio.ensure_future(self.conn.run())
        stop = asyncio.ensure_future(self.stopped.wait())
        await asyncio.wait([reader, stop], return_when=asyncio.FIRST_COMPLETED)
        failure = reader.exception() if reader.done() and not reader.cancelled() else None
        if isinstance(failure, MemoryError):  # a frame lost: its call would wait forever
            exit_out_of_memory_reading()
        self.calls.runner.cancel_tasks()
        if failure is not None:
            print(f"actorbox: connection to the host failed: {failure!r}", file=sys.stderr)

    # -- Caller ----------------------------------------------------------------------

    def _send_call(self, call: envelope.Call) -> None:
        self.outbox.send(call)

    def _send_cancel(self, local_id: int) -> None:
        self.outbox.send(envelope.Cancel(local_id))

    def on_loop_thread(self) -> bool:
        return threading.get_ident() == self.loop_thread

    def soon_on_loop(self, func: Callable[[], None]) -> None:
        try:
            self.loop.call_soon_threadsafe(func)
        except RuntimeError:
            pass  # the loop has closed: the process is exiting and nothing awaits there

    def pumps_here(self) -> bool:
        return self.inline.pumps_here()

    def pump(self, fut: Any, timeout: float | None) -> bool:
        return self.inline.pump(fut, timeout)

    def get_actor(self, name: str) -> ActorHandle:
        ref = self.names.get(name)
        if ref is None:
            known = ", ".join(sorted(self.names)) or "none"
            raise ActorNotFoundError(
                f"no actor named {name!r} is registered with the host (registered: {known}); "
                f"register it first (a name registered later reaches running actors too): "
                f"rt.register({name!r}, obj) or "
                f"rt.start(Cls, name={name!r})", name=name)
        return ActorHandle(self, ref[0], name, name, ref[1])

