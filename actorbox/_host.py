"""The host's endpoint: it originates calls and serves host-resident named actors.

Host-resident actors are ordinary objects registered under a name. Calls to
them arrive through the scheduler like any other call, so concurrency limits,
re-entrancy and tracing apply; async methods run as tasks on the host's loop,
sync methods on the Runtime's own worker threads.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import inspect
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import anyio.abc
import anyio.lowlevel
import sniffio

from scheduler import Endpoint, Scheduler
from scheduler import envelope as env

from ._caller import Caller, current_call
from ._dispatch import resolve_method
from ._errors import ActorboxError, MethodNotFoundError, PrivateMethodError
from ._future import Future
from ._objects import ObjectRef

if TYPE_CHECKING:
    from ._runtime import Runtime

T = TypeVar("T")

_LOOP_CHECK = 0.5  # s between checks that the loop a thread waits on still runs


@dataclass(slots=True)
class Resident:
    name: str
    obj: Any
    methods: frozenset[str]  # what callers may call (exposed_methods)


def exposed_methods(obj: Any, methods: Iterable[str] | None, name: str) -> frozenset[str]:
    """The methods of host-resident ``obj`` that callers may call.

    ``methods`` given: exactly those, each a public method of ``obj``'s class. Else the
    public methods whose definition (the one a call would run) is on a class outside
    the standard library: what the application wrote, not what it inherited from
    ``dict``, ``UserDict`` or ``MutableMapping`` (``pop``, ``clear``, ...), which would
    hand an actor the object's whole state.
    """
    cls = type(obj)
    if methods is None:
        return frozenset(m for m in dir(cls) if not m.startswith("_") and _is_method(cls, m)
                         and not _from_stdlib(cls, m))
    if isinstance(methods, str):
        raise TypeError(f"methods= takes a list of method names, not the string {methods!r}; write [{methods!r}]")
    out = frozenset(methods)
    for m in sorted(out):
        if not isinstance(m, str):
            raise TypeError(f"methods= takes method names (strings), got {m!r}")
        if m.startswith("_"):
            raise PrivateMethodError(f"register({name!r}, methods=...): {m!r} is private; names starting with "
                                     "'_' cannot be exposed", actor=name, method=m, call_id=None)
        if not _is_method(cls, m):
            public = sorted(n for n in dir(cls) if not n.startswith("_") and _is_method(cls, n))
            raise MethodNotFoundError(f"register({name!r}, methods=...): {cls.__qualname__} has no method {m!r}; "
                                      f"its public methods are: {', '.join(public) or '(none)'}",
                                      actor=name, method=m, call_id=None)
    return out


def _is_method(cls: type, name: str) -> bool:
    attr = inspect.getattr_static(cls, name, None)  # the same rule as resolve_method
    return attr is not None and (inspect.isfunction(attr) or isinstance(attr, (staticmethod, classmethod)))


def _from_stdlib(cls: type, name: str) -> bool:
    """Whether the definition of ``name`` a call would run comes from the standard library (or builtins)."""
    for c in cls.__mro__:
        if name in c.__dict__:
            return c.__module__.partition(".")[0] in sys.stdlib_module_names
    return True


class HostEndpoint(Endpoint, Caller):
    label = "host"
    trusted = True

    def __init__(self, rt: Runtime, scheduler: Scheduler, tg: anyio.abc.TaskGroup) -> None:
        Endpoint.__init__(self)
        Caller.__init__(self)
        self.rt = rt
        self.codec = rt.codec
        self.scheduler = scheduler
        self.tg = tg
        self.residents: dict[int, Resident] = {}
        self.scopes: dict[int, anyio.CancelScope] = {}
        self.executor = ThreadPoolExecutor(max_workers=32, thread_name_prefix="actorbox-host")
        self.token = anyio.lowlevel.current_token()
        self.library = sniffio.current_async_library()
        self.closed = False  # set as the Runtime exits: calls fail from then on
        self.loop_thread = threading.get_ident()

    # -- Caller --------------------------------------------------------------------
    # The scheduler and the pending table belong to the loop thread: a sync
    # host-resident method calling out from a worker thread is marshalled there.

    futures_as_args = True

    # The host's own calls are trusted: the scheduler does not ask them for a token.
    def call(self, actor_id: int, label: str, method: str, args: tuple[Any, ...], kwargs: dict[str, Any],
             token: bytes = b"") -> Any:
        if self.on_loop_thread():
            return Caller.call(self, actor_id, label, method, args, kwargs)
        return self._on_loop(Caller.call, self, actor_id, label, method, args, kwargs)

    def submit(self, actor_id: int, label: str, method: str, payload: bytes, fds: tuple[int, ...] = (),
               deps: tuple[int, ...] = (), token: bytes = b"") -> Any:
        parent = current_call.get()
        if self.on_loop_thread():
            return self._submit(actor_id, label, method, payload, fds, deps, parent)
        return self._on_loop(self._submit, actor_id, label, method, payload, fds, deps, parent)

    def cancel(self, fut: Any) -> None:
        if self.on_loop_thread():
            Caller.cancel(self, fut)
        else:
            self._on_loop(Caller.cancel, self, fut)

    def _on_loop(self, func: Callable[..., T], *args: Any) -> T:
        """Run ``func`` on the loop thread, in this thread's context (it holds current_call:
        the parent of a call made here), and wait for its result.

        Not anyio.from_thread: trio's refuses a thread that runs an event loop of its own,
        as a sync method inside ``anyio.run()`` does."""
        ctx = contextvars.copy_context()
        ctx.run(sniffio.current_async_library_cvar.set, self.library)
        done: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            try:
                done.set_result(ctx.run(func, *args))
            except BaseException as exc:
                done.set_exception(exc)
                if not isinstance(exc, Exception):
                    raise  # KeyboardInterrupt, SystemExit: the loop's to handle too

        gone = ActorboxError("the Runtime has exited, so no call can be made from this thread; start a new "
                             "Runtime, or keep it open until the threads that call actors are done")
        try:
            self.soon_on_loop(run)
        except RuntimeError as exc:  # asyncio's closed loop, trio's RunFinishedError
            raise gone from exc
        while True:
            try:
                return done.result(timeout=_LOOP_CHECK)
            except TimeoutError:
                # An asyncio loop that stopped (not closed yet) took the callback and will
                # never run it; trio runs every callback it accepts.
                native = self.token.native_token
                if self.closed and isinstance(native, asyncio.AbstractEventLoop) and not native.is_running():
                    raise gone from None

    def soon_on_loop(self, func: Callable[[], None]) -> None:
        native = self.token.native_token
        if isinstance(native, asyncio.AbstractEventLoop):
            native.call_soon_threadsafe(func)
        else:
            native.run_sync_soon(func)  # type: ignore[attr-defined]  # trio.lowlevel.TrioToken

    def _send_call(self, call: env.Call) -> None:
        self.scheduler.submit(self, call)

    def _send_cancel(self, local_id: int) -> None:
        self.scheduler.cancel(self, local_id)

    def on_loop_thread(self) -> bool:
        return threading.get_ident() == self.loop_thread

    def get_actor(self, name: str) -> Any:
        return self.rt.get_actor(name)

    def hold_result(self, fut: Future[Any]) -> None:
        self.rt.object_store.hold_result(fut)  # results held for the host's code expire too

    def result_read(self, fut: Future[Any]) -> None:
        self.rt.object_store.result_read(fut)

    def ipc_reaches(self, actor_id: int) -> bool:
        return self.rt.cuda_ipc_reaches(actor_id)

    def ipc_from(self, actor_id: int) -> bool:
        return self.rt.cuda_ipc_reaches(actor_id)  # unsandboxed: trusted code, whose handles open here

    async def get_object(self, object_id: str) -> Any:
        return self.rt.object_store.get(object_id)

    async def release_object(self, object_id: str) -> None:
        self.rt.object_store.release(object_id)

    def _settled(self, value: Any, label: str, method: str) -> Any:
        # The host holds put objects: a top-level ObjectRef argument becomes the value
        # (its tensors already in shared memory, so nothing is copied).
        if isinstance(value, ObjectRef):
            return self.rt.object_store.get(value.object_id)
        return Caller._settled(self, value, label, method)

    async def stop_actor(self, actor_id: int) -> None:
        await self.rt._stop_actor(actor_id)

    # -- Endpoint ------------------------------------------------------------------

    def deliver_reply(self, reply: env.Reply) -> None:
        self.on_reply(reply)

    def deliver_call(self, call: env.Call) -> None:
        self.tg.start_soon(self._serve, call)

    def deliver_cancel(self, call_id: int) -> None:
        scope = self.scopes.get(call_id)
        if scope is not None:
            scope.cancel()

    async def _serve(self, call: env.Call) -> None:
        res = self.residents.get(call.target)
        fds: tuple[int, ...] | None = call.fds  # owned here until decoded
        reply: env.Reply
        with anyio.CancelScope() as scope:
            self.scopes[call.call_id] = scope
            current_call.set(call.call_id)
            try:
                if res is None:
                    raise ActorboxError(f"host-resident actor {call.target} is gone")
                if call.method not in res.methods and not call.method.startswith("_"):
                    raise MethodNotFoundError(
                        f"{res.name} has no method {call.method!r} that callers may call; its callable methods "
                        f"are: {', '.join(sorted(res.methods)) or '(none)'} (the host chooses them with "
                        f"rt.register({res.name!r}, obj, methods=[...]))",
                        actor=res.name, method=call.method, call_id=call.call_id)
                func, is_async = resolve_method(res.obj, call.method, res.name, call.call_id)
                fds = None  # decode_call owns them now, and closes them if it fails
                args, kwargs = self.codec.decode_call(call.payload, call.trusted, call.fds, call.resolved)
                if is_async:
                    result = await func(*args, **kwargs)
                else:
                    result = await self._in_thread(func, args, kwargs)
                payload, out = (b"", ()) if result is None else self.codec.dumps_fds(result, ipc=False)
                reply = env.Reply(call.call_id, env.Status.OK, payload, fds=out)
            except anyio.get_cancelled_exc_class():
                if not scope.cancel_called:
                    raise
                reply = env.Reply(call.call_id, env.Status.CANCELLED)
            except Exception as exc:
                reply = env.Reply(call.call_id, env.Status.ERROR, self.codec.dumps(exc))
            finally:
                self.scopes.pop(call.call_id, None)
                for fd in fds or ():  # never decoded (refused or failed before): release them
                    os.close(fd)
        self.scheduler.reply(self, reply)

    async def _in_thread(self, func: Any, args: list[Any], kwargs: dict[str, Any]) -> Any:
        done = anyio.Event()
        box: list[tuple[bool, Any]] = []
        ctx = contextvars.copy_context()
        # The copy would say the host's async library runs in the worker thread: anyio.run()
        # there would refuse to start, and a nested loop's helpers would pick the wrong library.
        ctx.run(sniffio.current_async_library_cvar.set, None)

        def work() -> None:
            try:
                box.append((True, ctx.run(func, *args, **kwargs)))
            except BaseException as exc:
                box.append((False, exc))
            try:
                self.soon_on_loop(done.set)  # not waiting: a loop that stopped would never run it
            except RuntimeError:
                pass  # the Runtime's loop is gone; nobody waits for this result

        self.executor.submit(work)
        try:
            await done.wait()
        except anyio.get_cancelled_exc_class():
            # The method keeps running in its thread: hold the call (and its
            # concurrency slot) until it returns, as an actor process would.
            with anyio.move_on_after(self.rt.grace_period, shield=True):
                await done.wait()
            raise
        ok, value = box[0]
        if ok:
            return value
        raise value

    def fail_pending(self) -> None:
        """The Runtime is exiting and nothing will answer calls now: those unanswered fail,
        and so does any call made from now on (a host-resident method still running in a
        worker may make one), so no task or thread waits for one for ever."""
        self.closed = True
        pending, self.pending = self.pending, {}
        for lid, fut in pending.items():
            fut._resolve(env.Reply(lid, env.Status.STOPPED, detail={"message": (
                f"the Runtime exited before {fut.actor}.{fut.method}() [call {lid}] finished; keep the "
                "'async with Runtime()' block open until the calls you wait for are done")}))

    def _submit(self, actor_id: int, label: str, method: str, payload: bytes, fds: tuple[int, ...],
                deps: tuple[int, ...], parent: int | None, token: bytes = b"") -> Future[Any]:
        if not self.closed:
            return Caller._submit(self, actor_id, label, method, payload, fds, deps, parent)
        for fd in fds:
            os.close(fd)
        lid = next(self._local_ids)
        fut: Future[Any] = Future(self, lid, label, method, actor_id)
        fut._resolve(env.Reply(lid, env.Status.STOPPED, detail={"message": (
            f"{label}.{method}() [call {lid}] can't run: the Runtime has exited; make calls inside the "
            "'async with Runtime()' block, or start a new Runtime")}))
        return fut

    def close(self, timeout: float) -> None:
        """Stop the worker threads, waiting at most ``timeout`` s in all for host-resident
        methods still running in them (runs once, at Runtime exit)."""
        self.executor.shutdown(wait=False, cancel_futures=True)
        deadline = time.monotonic() + timeout
        for t in list(getattr(self.executor, "_threads", ())):
            t.join(max(0.0, deadline - time.monotonic()))
