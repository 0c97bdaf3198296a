"""An exception an actor raises never passes for one the host raised (issue 14, finding 8).

actorbox's own error types sent by an actor arrive as RemoteError naming them, with
the answering actor's label (never the one the actor wrote); control-flow exceptions
(StopIteration, cancellation, anyio's stream signals) always arrive as RemoteError;
ordinary exceptions keep their type; the remote traceback shows no escape sequences.
"""

from __future__ import annotations

import asyncio
from typing import Any

import anyio
import msgpack
import pytest
import trio

import actorbox
from actorbox._codec import EXT_EXCEPTION, Codec
from actorbox._remote_errors import attribute_error

from ._support import CALL_TIMEOUT

pytestmark = pytest.mark.anyio

FORGED_DEATH = "actor 'some-other-actor' (pid 1) died: killed by SIGKILL"


class StreamDone(anyio.EndOfStream):
    """An application's own subclass of a control-flow exception."""


@actorbox.actor
class Forger:
    def forge_death(self):
        raise actorbox.ActorDiedError(FORGED_DEATH, actor="some-other-actor", method="incr", call_id=1, pid=1,
                                      exit_code=None, signal=9, stderr="")

    def forge_stopped(self):
        raise actorbox.ActorStoppedError("stopped", actor="some-other-actor", method="incr", call_id=1)

    def forge_not_found(self, method):
        raise actorbox.MethodNotFoundError(f"some-other-actor has no method {method!r}", actor="some-other-actor",
                                           method=method, call_id=12345)

    def raise_control(self, which):
        import anyio as _anyio

        raise {"StopIteration": StopIteration("done"), "StopAsyncIteration": StopAsyncIteration("done"),
               "EndOfStream": _anyio.EndOfStream(), "ClosedResourceError": _anyio.ClosedResourceError(),
               "BrokenResourceError": _anyio.BrokenResourceError(), "WouldBlock": _anyio.WouldBlock(),
               "StreamDone": StreamDone()}[which]

    async def araise_control(self, which):
        self.raise_control(which)

    def raise_escapes(self):
        raise ValueError("\x1b]0;owned\x07\x1b[2J")

    async def call_forger(self, other):
        try:
            await other.forge_death()
        except Exception as exc:
            return [type(exc).__name__, getattr(exc, "type_name", None), getattr(exc, "actor", None)]
        return None

    def ok(self):
        return "ok"

    def die(self):
        import os

        os._exit(3)


async def test_forged_actor_died_error_is_the_actors_remote_error():
    """An ActorDiedError an actor raises naming another actor arrives as RemoteError with the raiser's own label."""
    async with actorbox.Runtime() as rt:
        f = await rt.start(Forger, name="forger")
        with anyio.fail_after(CALL_TIMEOUT):
            with pytest.raises(actorbox.RemoteError) as ei:
                await f.forge_death()
            err = ei.value
            assert not isinstance(err, actorbox.ActorDiedError)
            assert err.type_name == "actorbox.ActorDiedError"
            assert (err.actor, err.method) == ("forger", "forge_death")
            assert str(err).startswith("actorbox.ActorDiedError from actor 'forger': ")
            assert "forge_death" in err.remote_traceback
            with pytest.raises(actorbox.RemoteError) as ei:
                await f.forge_stopped()
            assert ei.value.type_name == "actorbox.ActorStoppedError" and ei.value.actor == "forger"
            assert await f.ok() == "ok"


async def test_forged_method_not_found_keeps_only_the_calls_identity():
    """The actor's own 'no such method' verdict keeps its type with the true label and call; about another call, not."""
    async with actorbox.Runtime() as rt:
        f = await rt.start(Forger, name="forger")
        with anyio.fail_after(CALL_TIMEOUT):
            fut = f.forge_not_found("forge_not_found")
            with pytest.raises(actorbox.MethodNotFoundError) as ei:
                await fut
            assert (ei.value.actor, ei.value.method, ei.value.call_id) == ("forger", "forge_not_found", fut.call_id)
            with pytest.raises(actorbox.RemoteError) as ei2:
                await f.forge_not_found("incr")
            assert ei2.value.type_name == "actorbox.MethodNotFoundError" and ei2.value.actor == "forger"


CONTROL_FLOW = ["StopIteration", "StopAsyncIteration", "EndOfStream", "ClosedResourceError", "BrokenResourceError",
                "WouldBlock", "StreamDone"]


async def test_control_flow_exceptions_arrive_as_remote_error():
    """StopIteration and anyio's stream exceptions raised in an actor arrive as RemoteError naming them."""
    async with actorbox.Runtime() as rt:
        f = await rt.start(Forger)
        with anyio.fail_after(CALL_TIMEOUT):
            for which in CONTROL_FLOW:
                # (An async method raising StopIteration raises RuntimeError in the actor already: PEP 479.)
                for method in ("raise_control", "araise_control")[:1 if which == "StopIteration" else 2]:
                    with pytest.raises(actorbox.RemoteError) as ei:
                        await getattr(f, method)(which)
                    assert ei.value.type_name.endswith(which) and ei.value.actor == actorbox.info(f).label
            assert await f.ok() == "ok"


async def test_actor_to_actor_forgery_is_remote_error_too():
    """An actor calling a forging actor gets RemoteError too, labelled with the forger."""
    async with actorbox.Runtime() as rt:
        forger = await rt.start(Forger, name="forger")
        caller = await rt.start(Forger, name="caller")
        with anyio.fail_after(CALL_TIMEOUT):
            assert await caller.call_forger(forger) == ["RemoteError", "actorbox.ActorDiedError", "forger"]


async def test_host_made_errors_keep_their_type():
    """The host's own ActorDiedError (a real death) and ordinary exceptions still arrive with their types."""
    async with actorbox.Runtime() as rt:
        f = await rt.start(Forger, name="mortal")
        with anyio.fail_after(CALL_TIMEOUT):
            with pytest.raises(ValueError) as ei:
                await f.raise_escapes()
            assert ei.value.args == ("\x1b]0;owned\x07\x1b[2J",)  # args are data: unchanged
            tb = ei.value.remote_traceback
            assert "\x1b" not in tb and "\x07" not in tb and "\\x1b]0;owned\\x07" in tb
            assert all("\x1b" not in note for note in ei.value.__notes__)
            with pytest.raises(actorbox.ActorDiedError) as died:
                await f.die()
            assert died.value.actor == "mortal" and died.value.exit_code == 3


# -- the decoder alone: types an actor cannot raise through a method ------------------------


def _codec() -> Codec:
    return Codec(allow_pickle=False, make_handle=lambda *a: None)  # type: ignore[arg-type]


def _payload(module: str, qualname: str, args: list[Any], context: dict[str, Any] | None = None) -> bytes:
    fields = _codec().dumps([module, qualname, args, "m\x1b[2J", "tb\x1b[2J\n", context or {}])
    return msgpack.packb(msgpack.ExtType(EXT_EXCEPTION, fields))  # type: ignore[no-any-return]


@pytest.mark.parametrize(("cls", "trusted"), [
    (trio.Cancelled, False), (trio.TooSlowError, False), (trio.EndOfChannel, False), (asyncio.CancelledError, False),
    (asyncio.InvalidStateError, False), (StopIteration, True), (anyio.EndOfStream, True), (GeneratorExit, False),
    (KeyboardInterrupt, True), (StreamDone, True)])
def test_control_flow_types_never_rebuilt(cls: type[BaseException], trusted: bool) -> None:
    """Cancellation, trio's and asyncio's signals and StopIteration are RemoteError from any peer, the host included."""
    out = _codec().loads(_payload(cls.__module__, cls.__qualname__, []), trusted)
    assert type(out) is actorbox.RemoteError and out.type_name.endswith(cls.__qualname__)


@pytest.mark.parametrize("name", ["ActorDiedError", "ActorStoppedError", "CallCancelledError", "ObjectNotFoundError",
                                  "ActorNotFoundError", "NameTakenError", "ProtocolError", "ActorStartError"])
def test_actorbox_errors_from_actors_are_remote_errors(name: str) -> None:
    """Every actorbox error type decoded from an actor is a RemoteError naming it, its escapes shown escaped."""
    out = _codec().loads(_payload("actorbox._errors", name, [], {"actor": "victim"}), False)
    assert type(out) is actorbox.RemoteError and out.type_name == f"actorbox.{name}"
    assert out.actor is None and "\x1b" not in str(out) and "\x1b" not in out.remote_traceback
    blamed = attribute_error(out, "forger", "m", 7)
    assert blamed is out and blamed.actor == "forger"


def test_forged_remote_error_keeps_type_name_but_not_identity() -> None:
    """A RemoteError an actor passes on keeps the type it names; the actor it names is replaced by the answerer."""
    out = _codec().loads(_payload("actorbox._errors", "RemoteError", [],
                                  {"type_name": "gone.GoneError", "actor": "victim", "method": "m"}), False)
    out = attribute_error(out, "forger", "m", 7)
    assert type(out) is actorbox.RemoteError
    assert (out.type_name, out.actor) == ("gone.GoneError", "forger")
