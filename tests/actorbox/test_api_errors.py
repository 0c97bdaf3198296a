"""Every error actorbox's public API raises for bad input is an ``ActorboxError`` (issue 16, point 3).

Constructor arguments that can't be sent fail with ``SerializationError`` naming the
argument, before any process starts; the rest of the API is walked with bad input.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.to_thread
import pytest

import actorbox

pytestmark = pytest.mark.anyio


@actorbox.actor
class Plain:
    """Takes anything as constructor arguments; answers ok() and, slowly, nap()."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args

    def ok(self, *args: Any) -> str:
        return "ok"

    async def nap(self, s: float) -> str:
        await anyio.sleep(s)
        return "woke"


def _generator() -> Any:
    return (x for x in [1])


@pytest.mark.parametrize(("args", "kwargs", "named", "says"), [
    ((threading.Lock(),), {}, "positional argument 1", "a lock or event of the host's threads"),
    ((1, _generator()), {}, "positional argument 2", "builtins.generator) can't be pickled"),
    ((), {"lock": threading.Lock()}, "keyword argument 'lock'", "a lock or event of the host's threads"),
])
async def test_a_constructor_argument_that_cant_be_sent_raises_serialization_error_naming_it(
        args: tuple[Any, ...], kwargs: dict[str, Any], named: str, says: str) -> None:
    """rt.start(Cls, <unpicklable or host resource>) raises SerializationError naming the argument; nothing starts
    and the name stays free."""
    async with actorbox.Runtime() as rt:
        with pytest.raises(actorbox.SerializationError) as ei:
            await rt.start(Plain, *args, name="p", **kwargs)
        assert named in str(ei.value) and says in str(ei.value) and "'p'" in str(ei.value)
        assert rt.actors() == [] and rt.pending_calls() == []
        h = await rt.start(Plain, 1, name="p")  # the name was released
        assert await h.ok() == "ok"


def _sync_cases(rt: actorbox.Runtime, h: actorbox.ActorHandle) -> list[tuple[str, Callable[[], Any], type]]:
    return [
        ("Runtime(sandbox=...)", lambda: actorbox.Runtime(sandbox="maybe"), actorbox.UsageError),
        ("Runtime(object_retention=-1)", lambda: actorbox.Runtime(object_retention=-1), actorbox.UsageError),
        ("Runtime(max_decoded_items=0)", lambda: actorbox.Runtime(max_decoded_items=0), actorbox.UsageError),
        ("@actor(max_concurrency=0)", lambda: actorbox.actor(max_concurrency=0), actorbox.UsageError),
        ("@actor on an int", lambda: actorbox.actor(3), actorbox.UsageError),  # type: ignore[call-overload]
        ("SandboxPolicy(memory_limit=5)", lambda: actorbox.SandboxPolicy(memory_limit=5), actorbox.PolicyError),
        ("rt.register(methods='ok')", lambda: rt.register("n", Plain(), methods="ok"), actorbox.UsageError),
        ("rt.register(methods=['nope'])", lambda: rt.register("n", Plain(), methods=["nope"]),
         actorbox.MethodNotFoundError),
        ("rt.register('actorbox.x')", lambda: rt.register("actorbox.x", Plain()), actorbox.NameTakenError),
        ("rt.unregister('ghost')", lambda: rt.unregister("ghost"), actorbox.ActorNotFoundError),
        ("rt.get_actor('ghost')", lambda: rt.get_actor("ghost"), actorbox.ActorNotFoundError),
        ("actorbox.get_actor outside an actor", lambda: actorbox.get_actor("ghost"), actorbox.ActorNotFoundError),
        ("actorbox.info(3)", lambda: actorbox.info(3), actorbox.UsageError),  # type: ignore[arg-type]
        ("h._secret", lambda: h._secret, actorbox.PrivateMethodError),
        ("h.ok(lock)", lambda: h.ok(threading.Lock()), actorbox.SerializationError),
        ("future.result() on the loop", lambda: h.nap(0).result(), actorbox.UsageError),
        ("share('x')", lambda: actorbox.share("x"), actorbox.UsageError),
        ("shared_empty(dtype='float')", lambda: actorbox.shared_empty((2,), dtype="float"),  # type: ignore[arg-type]
         actorbox.UsageError),
    ]


def _async_cases(rt: actorbox.Runtime, h: actorbox.ActorHandle) -> list[tuple[str, Callable[[], Awaitable[Any]], type]]:
    return [
        ("rt.start(3)", lambda: rt.start(3), actorbox.UsageError),  # type: ignore[arg-type]
        ("rt.start(Cls, lock)", lambda: rt.start(Plain, threading.Lock()), actorbox.SerializationError),
        ("rt.start(name='actorbox.x')", lambda: rt.start(Plain, name="actorbox.x"), actorbox.NameTakenError),
        ("rt.stop('x')", lambda: rt.stop("x"), actorbox.UsageError),  # type: ignore[arg-type]
        ("rt.put(retention=-1)", lambda: rt.put(1, retention=-1), actorbox.UsageError),
        ("rt.load_extension(missing)", lambda: rt.load_extension("/nonexistent/ext"), actorbox.ExtensionError),
        ("rt.load_extensions(missing)", lambda: rt.load_extensions("/nonexistent"), actorbox.ExtensionError),
        ("h.nope()", lambda: h.nope(), actorbox.MethodNotFoundError),
        ("future.result(timeout) off the loop",
         lambda: anyio.to_thread.run_sync(lambda: h.nap(0.5).result(timeout=0.05)), actorbox.CallTimeoutError),
    ]


async def test_bad_input_to_the_public_api_raises_actorbox_errors() -> None:
    """Walking the public API with bad input: each error is the expected ActorboxError subclass, with a message."""
    async with actorbox.Runtime() as rt:
        h = await rt.start(Plain)
        failures = []
        for what, call, expected in _sync_cases(rt, h):
            try:
                call()
            except Exception as exc:
                if not (isinstance(exc, expected) and isinstance(exc, actorbox.ActorboxError) and str(exc)):
                    failures.append(f"{what}: {type(exc).__qualname__}: {exc}")
            else:
                failures.append(f"{what}: no error")
        for what, acall, expected in _async_cases(rt, h):
            try:
                await acall()
            except Exception as exc:
                if not (isinstance(exc, expected) and isinstance(exc, actorbox.ActorboxError) and str(exc)):
                    failures.append(f"{what}: {type(exc).__qualname__}: {exc}")
            else:
                failures.append(f"{what}: no error")
        assert failures == []
        assert await h.ok() == "ok"  # the actor went on through all of it
    with pytest.raises(actorbox.ActorboxError, match="not running"):
        await rt.start(Plain)


def test_usage_and_timeout_errors_keep_their_builtin_types() -> None:
    """UsageError is a TypeError and a ValueError, CallTimeoutError a TimeoutError: old except clauses still work."""
    assert issubclass(actorbox.UsageError, TypeError) and issubclass(actorbox.UsageError, ValueError)
    assert issubclass(actorbox.CallTimeoutError, TimeoutError)
    assert issubclass(actorbox.CallTimeoutError, actorbox.CallError)
