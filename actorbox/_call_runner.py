"""Running one admitted call in an actor process: decode its arguments, call the
method, send the reply; and the table of running calls a cancel looks in."""

from __future__ import annotations

import asyncio
import os

from scheduler import close_fds, envelope

from ._codec import Codec
from ._job import Job, SyncCall
from ._outbox import Outbox

# CUDA IPC tensors are taken from the host only, and only outside a sandbox: inside one,
# the driver can't open them (it needs the sender's /dev/shm and user), and its
# counter-file protocol has no business with an untrusted process.
_IPC_IN = os.environ.get("ACTORBOX_SANDBOXED") != "1"


class CallRunner:
    """Runs calls and answers each exactly once: OK, ERROR, or CANCELLED (a call
    cancelled before it starts never starts)."""

    def __init__(self, codec: Codec, outbox: Outbox) -> None:
        self._codec = codec
        self._outbox = outbox
        self.running: dict[int, asyncio.Task[None] | SyncCall] = {}
        self.begun: set[int] = set()  # async calls whose coroutine has started
        self.cancelled_early: set[int] = set()  # async calls cancelled before they started

    def claim(self, job: Job) -> None:
        """``job`` left the queue for a slot: from here on a cancel finds it, on its way to a thread."""
        self.running[job.call.call_id] = SyncCall()

    def token(self, call_id: int) -> SyncCall:
        """The running entry of a sync call about to run: the one claim() made, which a
        cancel may have marked on the call's way here, or a new one."""
        token = self.running.get(call_id)
        if not isinstance(token, SyncCall):
            token = self.running[call_id] = SyncCall()
        return token

    def cancel(self, call_id: int) -> None:
        """Cancel a running call: a task is cancelled, a sync call marked."""
        job = self.running.get(call_id)
        if isinstance(job, asyncio.Task):
            if call_id in self.begun:
                job.cancel()
            else:
                # Task.cancel() before the first step would skip run_async's own
                # handling (no reply, slot never freed): let it see the flag instead.
                self.cancelled_early.add(call_id)
        elif job is not None:
            job.cancelled = True

    def refuse(self, call: envelope.Call, status: envelope.Status, payload: bytes = b"") -> None:
        """Answer a call that won't run (its descriptors are closed)."""
        close_fds(call.fds)
        self.answer(call, envelope.Reply(call.call_id, status, payload))

    def start_task(self, job: Job, task: asyncio.Task[None]) -> None:
        """Record an async call's task (loop thread)."""
        cid = job.call.call_id
        handed = self.running.get(cid)
        if isinstance(handed, SyncCall) and handed.cancelled:  # cancelled on its way here
            self.cancelled_early.add(cid)
        self.running[cid] = task

    def cancel_tasks(self) -> None:
        for job in list(self.running.values()):
            if isinstance(job, asyncio.Task):
                job.cancel()

    def run_sync(self, job: Job, token: SyncCall) -> None:
        call = job.call
        if token.cancelled:  # cancelled before it started: it never does
            self.running.pop(call.call_id, None)
            self.refuse(call, envelope.Status.CANCELLED)
            return
        reply: envelope.Reply | BaseException
        returned = False
        try:
            args, kwargs = self._codec.decode_call(call.payload, call.trusted, call.fds, call.resolved,
                                                   ipc=call.trusted and _IPC_IN)
            result = job.func(*args, **kwargs)
            returned = True
            payload, out = (b"", ()) if result is None else self._codec.dumps_fds(result, ipc=call.trusted)
            reply = envelope.Reply(call.call_id, envelope.Status.OK, payload, fds=out)
        except BaseException as exc:  # the caller's to handle: sent back, not raised here
            reply = exc
        self.running.pop(call.call_id, None)
        if token.cancelled:
            if isinstance(reply, envelope.Reply):
                close_fds(reply.fds)
            reply = envelope.Reply(call.call_id, envelope.Status.CANCELLED)  # result discarded
        self.answer(call, reply, returned)

    def answer(self, call: envelope.Call, reply: envelope.Reply | BaseException, returned: bool = False) -> None:
        """Send ``call``'s one answer: ``reply``, or the exception it raised (``returned``: raised
        encoding the value the method returned). When that cannot
        be encoded or sent (out of memory, most likely), a short error says so instead; when
        even that cannot be sent, the process ends (Outbox.send_failure): never no answer."""
        outcome = reply if isinstance(reply, BaseException) else None
        try:
            if isinstance(reply, BaseException):
                reply = envelope.Reply(call.call_id, envelope.Status.ERROR, self._outbox.encode_exc(reply))
            self._outbox.send(reply)
        except BaseException as exc:  # nothing of it was written (Outbox.send): answer briefly
            self._outbox.send_failure(call.call_id, call.method, exc, outcome, returned)

    async def run_async(self, job: Job) -> None:
        call = job.call
        cid = call.call_id
        if cid in self.cancelled_early:
            # Cancelled before the task first ran: the coroutine never started.
            self.cancelled_early.discard(cid)
            self.running.pop(cid, None)
            self.refuse(call, envelope.Status.CANCELLED)
            return
        self.begun.add(cid)
        reply: envelope.Reply | BaseException
        returned = False
        try:
            args, kwargs = self._codec.decode_call(call.payload, call.trusted, call.fds, call.resolved,
                                                   ipc=call.trusted and _IPC_IN)
            result = await job.func(*args, **kwargs)
            returned = True
            payload, out = (b"", ()) if result is None else self._codec.dumps_fds(result, ipc=call.trusted)
            reply = envelope.Reply(cid, envelope.Status.OK, payload, fds=out)
        except asyncio.CancelledError:
            reply = envelope.Reply(cid, envelope.Status.CANCELLED)
        except BaseException as exc:  # the caller's to handle: sent back, not raised here
            reply = exc
        finally:
            self.begun.discard(cid)
        self.running.pop(cid, None)
        self.answer(call, reply, returned)
