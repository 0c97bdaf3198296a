"""Host-resident actors: ordinary objects registered under a name, served on the host's loop.

Calls to them arrive through the scheduler like any other call, so concurrency limits,
re-entrancy and tracing apply; async methods run as tasks on the host's loop, sync
methods on the Runtime's own worker threads. ``ResidentServer`` runs one call and
returns its reply; the host's endpoint (``_host.py``) hands calls in and replies back.
"""

from __future__ import annotations

import contextvars
import inspect
import sys
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
import sniffio

from scheduler import close_fds, envelope

from ._caller import current_call
from ._dispatch import resolve_method
from ._errors import ActorboxError, MethodNotFoundError, PrivateMethodError, UsageError

if TYPE_CHECKING:
    from ._codec import Codec
    from ._host_loop import HostLoop


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
        raise UsageError(f"methods= takes a list of method names, not the string {methods!r}; write [{methods!r}]")
    out = frozenset(methods)
    for m in sorted(out):
        if not isinstance(m, str):
            raise UsageError(f"methods= takes method names (strings), got {m!r}")
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


class ResidentServer:
    """Runs calls to the host-resident actors (``residents``, by actor id)."""

    def __init__(self, codec: Codec, loop: HostLoop, grace_period: float) -> None:
        self.codec = codec
        self.loop = loop
        self.grace_period = grace_period  # how long a cancelled sync method is waited for
        self.residents: dict[int, Resident] = {}
        self.scopes: dict[int, anyio.CancelScope] = {}
        self.executor = ThreadPoolExecutor(max_workers=32, thread_name_prefix="actorbox-host")

    def cancel(self, call_id: int) -> None:
        scope = self.scopes.get(call_id)
        if scope is not None:
            scope.cancel()

    async def serve(self, call: envelope.Call) -> envelope.Reply:
        """Run one call to a host-resident actor; its reply (a failure is a reply too)."""
        res = self.residents.get(call.target)
        fds: tuple[int, ...] | None = call.fds  # owned here until decoded
        reply: envelope.Reply
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
                reply = envelope.Reply(call.call_id, envelope.Status.OK, payload, fds=out)
            except anyio.get_cancelled_exc_class():
                if not scope.cancel_called:
                    raise
                reply = envelope.Reply(call.call_id, envelope.Status.CANCELLED)
            except Exception as exc:
                reply = envelope.Reply(call.call_id, envelope.Status.ERROR, self.codec.dumps(exc))
            finally:
                self.scopes.pop(call.call_id, None)
                close_fds(fds or ())  # never decoded (refused or failed before): release them
        return reply

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
                self.loop.soon(done.set)  # not waiting: a loop that stopped would never run it
            except RuntimeError:
                pass  # the Runtime's loop is gone; nobody waits for this result

        self.executor.submit(work)
        try:
            await done.wait()
        except anyio.get_cancelled_exc_class():
            # The method keeps running in its thread: hold the call (and its
            # concurrency slot) until it returns, as an actor process would.
            with anyio.move_on_after(self.grace_period, shield=True):
                await done.wait()
            raise
        ok, value = box[0]
        if ok:
            return value
        raise value

    def close(self, timeout: float) -> None:
        """Stop the worker threads, waiting at most ``timeout`` s in all for host-resident
        methods still running in them (runs once, at Runtime exit)."""
        self.executor.shutdown(wait=False, cancel_futures=True)
        deadline = time.monotonic() + timeout
        for t in list(getattr(self.executor, "_threads", ())):
            t.join(max(0.0, deadline - time.monotonic()))
