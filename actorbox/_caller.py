"""The caller side of calls, shared by the host and actor processes.

A Caller numbers its calls, keeps their Futures until the reply arrives, and
has replies turned into values or exceptions (``_outcome``). The host's caller hands
calls to the scheduler directly; an actor's caller writes them to its socket.
"""

from __future__ import annotations

import abc
import contextvars
import itertools
from collections.abc import Callable
from typing import Any

from scheduler import close_fds, envelope

from . import _errors
from ._codec import Codec
from ._future import Future
from ._objects import SERVICE_NAME
from ._outcome import outcome

# The call this code is running on behalf of (its id as known to the scheduler),
# so nested calls carry their parent and re-entrant chains can be admitted.
current_call: contextvars.ContextVar[int | None] = contextvars.ContextVar("actorbox_current_call", default=None)


class Caller(abc.ABC):
    """Makes calls for one process; a subclass says how envelopes leave it and how its loop
    is reached (it is the :class:`~actorbox._future.Resolver` of the Futures it makes)."""

    codec: Codec

    def __init__(self) -> None:
        self._local_ids = itertools.count(1)
        self.pending: dict[int, Future[Any]] = {}

    # -- to implement ------------------------------------------------------------

    @abc.abstractmethod
    def _send_call(self, call: envelope.Call) -> None:
        """Send ``call`` towards the scheduler (it is this caller's from now on)."""

    @abc.abstractmethod
    def _send_cancel(self, local_id: int) -> None:
        """Ask the scheduler to cancel this caller's call ``local_id``."""

    @abc.abstractmethod
    def on_loop_thread(self) -> bool:
        """Whether this is the thread of this process's event loop."""

    @abc.abstractmethod
    def soon_on_loop(self, func: Callable[[], None]) -> None:
        """Run ``func`` on the loop thread soon (called from any other thread)."""

    def pump(self, fut: Future[Any], timeout: float | None) -> bool:
        """Wait for ``fut`` on the loop thread by reading frames here, where that is safe
        (a sync call running inline on the loop); False where it is not."""
        return False

    def pumps_here(self) -> bool:
        """Whether this thread is the loop thread blocked in a sync call running inline, so a
        Future awaited here (in a nested event loop) must read its own reply with :meth:`pump`."""
        return False

    @abc.abstractmethod
    def get_actor(self, name: str) -> Any:
        """A handle to the actor registered as ``name``."""

    def hold_result(self, fut: Future[Any]) -> None:
        """A result carrying shared memory arrived and waits to be read."""
        return None  # only the host's store expires unread results; an actor's are its own

    def result_read(self, fut: Future[Any]) -> None:
        """That result was read (any thread)."""
        return None

    async def get_object(self, object_id: str) -> Any:
        """The value of an ObjectRef (outside the host: fetched from the host's store)."""
        return await self.get_actor(SERVICE_NAME).get(object_id)

    async def release_object(self, object_id: str) -> None:
        await self.get_actor(SERVICE_NAME).release(object_id)

    # -- shared ------------------------------------------------------------------

    # Whether this caller may pass pending Futures as arguments (the scheduler waits for
    # them). Only the host can: its Futures and the scheduler share one thread, so a
    # Future it sees pending is still in the call table when the call is submitted.
    futures_as_args = False

    def call(self, actor_id: int, label: str, method: str, args: tuple[Any, ...],
             kwargs: dict[str, Any], token: bytes = b"") -> Future[Any]:
        """Encode the arguments and submit the call (the path of ``handle.method(...)``);
        ``token``: the target's reference token, from the handle."""
        if not args and not kwargs:  # the common no-argument call: nothing to settle or encode
            return self.submit(actor_id, label, method, b"", token=token)
        args = tuple(self._settled(a, label, method) for a in args)
        kwargs = {k: self._settled(v, label, method) for k, v in kwargs.items()}
        deps: list[Future[Any]] = []
        payload, fds = self.codec.encode_call(args, kwargs, deps, ipc=self.ipc_reaches(actor_id))
        if deps and not self.futures_as_args:
            close_fds(fds)
            raise _errors.SerializationError(
                f"{label}.{method}(): a pending Future can be an argument only of calls made by the host; "
                "inside an actor, await it and pass its value")
        if any(dep._caller is not self for dep in deps):
            close_fds(fds)
            raise _errors.SerializationError(
                f"{label}.{method}(): a Future from another process or Runtime can't be an argument; await it first")
        return self.submit(actor_id, label, method, payload, fds, tuple(dep.call_id for dep in deps), token)

    def ipc_reaches(self, actor_id: int) -> bool:
        """Whether actor ``actor_id`` can open this process's CUDA IPC handles, and takes them."""
        return False  # actors take CUDA IPC tensors from the host only

    def ipc_from(self, actor_id: int) -> bool:
        """Whether a result from actor ``actor_id`` may hold CUDA IPC tensors."""
        return False

    def _settled(self, value: Any, label: str, method: str) -> Any:
        """A finished Future argument is replaced by its value (or fails the call at once)."""
        # type(), not isinstance(): Future is an ABC (a Coroutine), whose isinstance costs ~75 ns more per
        # argument, and it is never subclassed.
        if type(value) is Future and value.done():
            try:
                return value._outcome()
            except BaseException as exc:
                raise _errors.DependencyFailedError(
                    f"{label}.{method}() was not run: its argument {value.actor}.{value.method}() "
                    f"[call {value.call_id}] failed with {type(exc).__name__}: {exc}",
                    actor=label, method=method, call_id=None) from exc
        return value

    def submit(self, actor_id: int, label: str, method: str, payload: bytes,
               fds: tuple[int, ...] = (), deps: tuple[int, ...] = (), token: bytes = b"") -> Future[Any]:
        return self._submit(actor_id, label, method, payload, fds, deps, current_call.get(), token)

    def _submit(self, actor_id: int, label: str, method: str, payload: bytes, fds: tuple[int, ...],
                deps: tuple[int, ...], parent: int | None, token: bytes = b"") -> Future[Any]:
        lid = next(self._local_ids)
        fut: Future[Any] = Future(self, lid, label, method, actor_id)
        self.pending[lid] = fut
        try:
            self._send_call(envelope.Call(lid, actor_id, method, payload, parent, deps=deps, token=token, fds=fds))
        except BaseException:
            del self.pending[lid]  # never sent: nothing will answer it
            raise
        return fut

    def cancel(self, fut: Future[Any]) -> None:
        if self.pending.pop(fut.call_id, None) is not None:
            self._send_cancel(fut.call_id)
            fut._resolve(envelope.Reply(fut.call_id, envelope.Status.CANCELLED))

    def on_reply(self, reply: envelope.Reply) -> None:
        fut = self.pending.pop(reply.call_id, None)
        if fut is not None and reply.status == envelope.Status.OK:
            fut._resolve(reply)  # the Future owns the reply's fds until it is decoded (or dropped)
            if reply.fds:
                self.hold_result(fut)
            return
        close_fds(reply.fds)  # only a result may carry descriptors
        if fut is not None:
            fut._resolve(envelope.Reply(reply.call_id, reply.status, reply.payload, reply.detail, reply.trusted))

    def outcome(self, fut: Future[Any], reply: envelope.Reply) -> Any:
        """The value ``reply`` holds for ``fut``, or a Raised failure (see ``_outcome``)."""
        return outcome(self.codec, reply, fut.actor, fut.method, fut.call_id, ipc=self.ipc_from(fut.actor_id))
