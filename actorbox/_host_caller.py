"""``HostCaller``: the host's side of calls: what ``handle.method()`` in the host's code goes through.

The scheduler and the pending table belong to the loop thread: a sync host-resident
method calling out from a worker thread is marshalled there (``HostLoop.run``). The
host's calls are trusted: the scheduler does not ask them for a token, and they may
pass pending Futures as arguments.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from scheduler import Endpoint, close_fds, envelope

from ._caller import Caller, current_call
from ._future import Future
from ._objects import ObjectRef

if TYPE_CHECKING:
    from ._host_loop import HostLoop
    from ._services import HostServices


class HostCaller(Caller):
    """Originates the host's calls, as ``endpoint`` (the host's endpoint in the scheduler)."""

    futures_as_args = True
    # actorbox.submit() in the host: the running Runtime's rt.submit (set by the Runtime).
    submit_task: Callable[..., Any] | None = None

    def __init__(self, services: HostServices, loop: HostLoop, endpoint: Endpoint) -> None:
        Caller.__init__(self)
        self.services = services
        self.codec = services.codec
        self.loop = loop
        self.endpoint = endpoint

    def call(self, actor_id: int, label: str, method: str, args: tuple[Any, ...], kwargs: dict[str, Any],
             token: bytes = b"") -> Any:
        if self.on_loop_thread():
            return Caller.call(self, actor_id, label, method, args, kwargs)
        return self.loop.run(Caller.call, self, actor_id, label, method, args, kwargs)

    def submit(self, actor_id: int, label: str, method: str, payload: bytes, fds: tuple[int, ...] = (),
               deps: tuple[int, ...] = (), token: bytes = b"") -> Any:
        parent = current_call.get()
        if self.on_loop_thread():
            return self._submit(actor_id, label, method, payload, fds, deps, parent)
        return self.loop.run(self._submit, actor_id, label, method, payload, fds, deps, parent)

    def cancel(self, fut: Any) -> None:
        if self.on_loop_thread():
            Caller.cancel(self, fut)
        else:
            self.loop.run(Caller.cancel, self, fut)

    def soon_on_loop(self, func: Callable[[], None]) -> None:
        self.loop.soon(func)

    def on_loop_thread(self) -> bool:
        return self.loop.on_loop_thread()

    def _send_call(self, call: envelope.Call) -> None:
        self.services.scheduler.route(self.endpoint, call)

    def _send_cancel(self, local_id: int) -> None:
        self.services.scheduler.cancel(self.endpoint, local_id)

    def get_actor(self, name: str) -> Any:
        return self.services.get_actor(name)

    def hold_result(self, fut: Future[Any]) -> None:
        self.services.object_store.hold_result(fut)  # results held for the host's code expire too

    def result_read(self, fut: Future[Any]) -> None:
        self.services.object_store.result_read(fut)

    def ipc_reaches(self, actor_id: int) -> bool:
        return self.services.cuda_ipc_reaches(actor_id)

    def ipc_from(self, actor_id: int) -> bool:
        return self.services.cuda_ipc_reaches(actor_id)  # unsandboxed: trusted code, whose handles open here

    async def get_object(self, object_id: str) -> Any:
        return self.services.object_store.get(object_id)

    async def release_object(self, object_id: str) -> None:
        self.services.object_store.release(object_id)

    def _settled(self, value: Any, label: str, method: str) -> Any:
        # The host holds put objects: a top-level ObjectRef argument becomes the value
        # (its tensors already in shared memory, so nothing is copied).
        if isinstance(value, ObjectRef):
            return self.services.object_store.get(value.object_id)
        return Caller._settled(self, value, label, method)

    def fail_pending(self) -> None:
        """The Runtime is exiting and nothing will answer calls now: those unanswered fail,
        and so does any call made from now on (a host-resident method still running in a
        worker may make one), so no task or thread waits for one for ever."""
        self.loop.closed = True
        pending, self.pending = self.pending, {}
        for lid, fut in pending.items():
            fut._resolve(envelope.Reply(lid, envelope.Status.STOPPED, detail={"message": (
                f"the Runtime exited before {fut.actor}.{fut.method}() [call {lid}] finished; keep the "
                "'async with Runtime()' block open until the calls you wait for are done")}))

    def _submit(self, actor_id: int, label: str, method: str, payload: bytes, fds: tuple[int, ...],
                deps: tuple[int, ...], parent: int | None, token: bytes = b"") -> Future[Any]:
        if not self.loop.closed:
            return Caller._submit(self, actor_id, label, method, payload, fds, deps, parent)
        close_fds(fds)
        lid = next(self._local_ids)
        fut: Future[Any] = Future(self, lid, label, method, actor_id)
        fut._resolve(envelope.Reply(lid, envelope.Status.STOPPED, detail={"message": (
            f"{label}.{method}() [call {lid}] can't run: the Runtime has exited; make calls inside the "
            "'async with Runtime()' block, or start a new Runtime")}))
        return fut
