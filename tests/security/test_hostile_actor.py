"""A real sandboxed actor attacks the host through its own connection.

The hostile actor (tests/security/plugins/saboteur.py) writes hand-made bytes on
its socket: pickles meant to run a command in the host, forged flags, replies and
parent ids, garbage. The trust model (docs/architecture.md) says nothing it sends is
unpickled, a bad frame fails that actor and never the host, only public methods
are callable, and a message is attributed to the connection it came in on.
After every attack a well-behaved actor must still get its answers.
"""

from __future__ import annotations

import json
import os
import pickletools
import subprocess
import sys
import textwrap

import anyio
import pytest

import actorbox

from ._support import CALL_TIMEOUT, assert_host_serves, start_actors
from .plugins.healthy import Healthy, Models, Victim
from .plugins.saboteur import PickleAtStart, Saboteur

pytestmark = pytest.mark.anyio

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _state(rt: actorbox.Runtime, handle: actorbox.ActorHandle) -> str:
    return next(a.state for a in rt.actors() if a.label == actorbox.info(handle).label)


# -- pickles and other objects that would run code in the host -------------------------


@pytest.mark.parametrize("where", ["value", "nested", "exception"])
async def test_forged_pickle_reply_is_never_unpickled(where, host_marker):
    """A reply holding a pickle (value, nested, or in an exception) fails with SerializationError; it never runs."""
    async with actorbox.Runtime() as rt:
        healthy, saboteur = await start_actors(rt, Healthy, Saboteur)
        with anyio.fail_after(CALL_TIMEOUT):
            # The payload is live: loading it would call os.system("touch <marker>").
            ops = [(op.name, arg) for op, arg, _ in pickletools.genops(await saboteur.pickle_bytes(host_marker))]
            assert ("GLOBAL", "os system") in ops and ("REDUCE", None) in ops
            assert ("UNICODE", f"touch {host_marker}") in ops
            with pytest.raises(actorbox.SerializationError, match="refused extension type 9"):
                await saboteur.forged_pickle_reply(host_marker, where)
        await anyio.sleep(0.2)  # os.system would have finished by now
        assert not os.path.exists(host_marker), "the host unpickled what the actor sent"
        with anyio.fail_after(CALL_TIMEOUT):
            assert await saboteur.ping() == "pong"  # its real second reply was dropped; it still serves
        await assert_host_serves(rt, healthy)


async def test_returning_a_custom_object_is_refused():
    """An actor returning an instance of a non-allow-listed class gets a SerializationError, not a pickle."""
    async with actorbox.Runtime() as rt:
        healthy, saboteur = await start_actors(rt, Healthy, Saboteur)
        with anyio.fail_after(CALL_TIMEOUT), pytest.raises(actorbox.SerializationError, match="cannot send"):
            await saboteur.return_custom()
        assert not os.path.exists("/tmp/actorbox-never")
        await assert_host_serves(rt, healthy)


async def test_pickled_constructor_error_is_never_unpickled(host_marker):
    """A constructor error sent as a pickle fails the start with ActorStartError; the pickle never runs."""
    async with actorbox.Runtime() as rt:
        (healthy,) = await start_actors(rt, Healthy)
        with anyio.fail_after(CALL_TIMEOUT), pytest.raises(actorbox.ActorStartError) as info:
            await rt.start(PickleAtStart, host_marker)
        assert isinstance(info.value.__cause__, actorbox.SerializationError), repr(info.value.__cause__)
        await anyio.sleep(0.2)
        assert not os.path.exists(host_marker), "the host unpickled a constructor error from an actor"
        await assert_host_serves(rt, healthy)


async def test_pickled_argument_to_host_resident_is_refused(host_marker):
    """A pickled argument with a forged 'trusted' flag, sent to a host-resident actor, is refused unrun."""
    async with actorbox.Runtime() as rt:
        models = Models(rt)
        rt.register("models", models)
        healthy, saboteur = await start_actors(rt, Healthy, Saboteur)
        with anyio.fail_after(CALL_TIMEOUT):
            outcome = await saboteur.call_with_pickle("models", "lookup", host_marker, "system")
        assert outcome["error"] == "SerializationError", outcome
        assert "refused extension type 9" in outcome["message"], outcome
        await anyio.sleep(0.2)
        assert not os.path.exists(host_marker), "the host unpickled a call argument from an actor"
        assert models.public_calls == 0
        await assert_host_serves(rt, healthy)


async def test_pickled_argument_to_another_actor_is_refused():
    """An actor cannot make another actor unpickle (here: os._exit(42)) by forging the 'trusted' flag on a call."""
    async with actorbox.Runtime() as rt:
        healthy, saboteur, victim = await start_actors(rt, Healthy, Saboteur, Victim)
        with anyio.fail_after(CALL_TIMEOUT):
            outcome = await saboteur.call_with_pickle(victim, "take", 42, "exit")
            assert outcome["error"] == "SerializationError", outcome
            assert await victim.take(1) == "int"
        assert _state(rt, victim) == "alive"
        await assert_host_serves(rt, healthy)


# A host that runs a Runtime in a child process, so that a host crash (a segfault
# in a decoder) fails one test instead of killing the test run.
_HOST_SCRIPT = textwrap.dedent("""
    import json, sys
    import anyio, actorbox
    from tests.security.plugins.healthy import Healthy, Models
    from tests.security.plugins.saboteur import Saboteur

    async def main(mode, depth):
        out = {}
        async with actorbox.Runtime() as rt:
            models = Models(rt)
            rt.register("models", models)
            healthy = await rt.start(Healthy)
            saboteur = await rt.start(Saboteur)
            with anyio.fail_after(20):
                try:
                    if mode == "resident_argument":
                        out["outcome"] = await saboteur.call_nested("models", "lookup", depth)
                    else:
                        value = await saboteur.forged_nested_reply(depth, mode)
                        out["outcome"] = {"value": repr(value)[:100]}
                except Exception as exc:
                    out["outcome"] = {"error": type(exc).__name__, "message": str(exc)[:300]}
                out["healthy"] = await healthy.add(2, 3)
                out["resident_calls"] = models.public_calls
        print("RESULT " + json.dumps(out), flush=True)

    anyio.run(main, sys.argv[1], int(sys.argv[2]), backend=sys.argv[3])
""")


@pytest.mark.parametrize("mode", ["value", "exception", "resident_argument"])
def test_deeply_nested_payload_does_not_crash_the_host(mode, anyio_backend):
    """Tuples nested 1,000 deep (6 KB) from an actor fail that call with SerializationError; the host survives."""
    proc = subprocess.run(
        [sys.executable, "-c", _HOST_SCRIPT, mode, "1000", anyio_backend],
        cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": REPO_ROOT}, capture_output=True, text=True, timeout=45)
    results = [line[len("RESULT "):] for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and results, (
        f"the host process died (exit {proc.returncode}) decoding a nested payload sent by an actor "
        f"({mode}):\n{proc.stderr[-2000:]}")
    out = json.loads(results[0])
    assert out["outcome"].get("error") == "SerializationError", out
    assert out["healthy"] == 5 and out["resident_calls"] == 0, out


async def test_deeply_nested_argument_does_not_crash_another_actor():
    """Tuples nested 1,000 deep sent to another actor fail with SerializationError; that actor lives on."""
    async with actorbox.Runtime() as rt:
        healthy, saboteur, victim = await start_actors(rt, Healthy, Saboteur, Victim)
        with anyio.fail_after(CALL_TIMEOUT):
            outcome = await saboteur.call_nested(victim, "take", 1000)
        assert outcome.get("error") == "SerializationError", outcome
        assert _state(rt, victim) == "alive"
        with anyio.fail_after(CALL_TIMEOUT):
            assert await victim.take(1) == "int"
        await assert_host_serves(rt, healthy)


# -- garbage on the socket ---------------------------------------------------------

GARBAGE = [
    "random_stream",  # 64 KiB of random bytes: the first 'header' claims ~2 GB
    "oversize_header",  # a header claiming 2**31 bytes
    "undecodable_body",  # a valid header, a body that is not msgpack
    "random_body",  # a valid header, 512 random bytes
    "truncated_envelope",  # a REPLY with 2 of its 7 fields
    "unknown_kind",  # envelope kind 99
    "bad_status",  # a REPLY with status 77
    "scheduler_status",  # a REPLY claiming DIED, which only the scheduler may say
    "fds_claimed",  # a header claiming 3 fds that were never sent
    "too_many_fds",  # a header claiming 100,000 fds
    "control_init",  # INIT, a host-only message
    "control_ready",  # READY again, after the actor started
    "log_bad_fields",  # LOG whose fields map has a non-string key
]


@pytest.mark.parametrize("kind", GARBAGE)
async def test_garbage_on_the_socket_disconnects_only_that_actor(kind):
    """Garbage on its socket disconnects an actor, failing its call with ActorDiedError; others are served."""
    async with actorbox.Runtime() as rt:
        healthy, saboteur = await start_actors(rt, Healthy, Saboteur)
        with anyio.fail_after(CALL_TIMEOUT), pytest.raises(actorbox.ActorDiedError) as info:
            await saboteur.garbage(kind)
        assert "disconnected" in str(info.value), str(info.value)
        assert info.value.method == "garbage"
        assert _state(rt, saboteur) == "dead"
        with anyio.fail_after(CALL_TIMEOUT), pytest.raises(actorbox.ActorDiedError):
            await saboteur.ping()  # later calls fail too, at once
        await assert_host_serves(rt, healthy)


@pytest.mark.parametrize(("kind", "reason"), [("oversize_header", "exceeds the limit"),
                                              ("undecodable_body", "undecodable envelope")])
async def test_disconnect_error_names_the_violation(kind, reason):
    """The ActorDiedError of a disconnected actor says which rule its bytes broke."""
    async with actorbox.Runtime() as rt:
        healthy, saboteur = await start_actors(rt, Healthy, Saboteur)
        with anyio.fail_after(CALL_TIMEOUT), pytest.raises(actorbox.ActorDiedError) as info:
            await saboteur.garbage(kind)
        assert reason in str(info.value), str(info.value)
        await assert_host_serves(rt, healthy)


# -- private methods of host-resident actors -----------------------------------------


async def test_private_methods_of_host_resident_are_refused():
    """Private and dunder methods of a host-resident actor are refused (PrivateMethodError), even by raw frame."""
    async with actorbox.Runtime() as rt:
        models = Models(rt)
        rt.register("models", models)
        healthy, saboteur = await start_actors(rt, Healthy, Saboteur)
        for method in ("_secret", "__secret__", "__init__", "__class__", "__reduce_ex__", "__getattribute__"):
            # raw: a hand-made CALL frame, skipping the handle's own check. Through the handle, a dunder
            # the handle has (__init__...) is the handle's own, never a call: only the others are tried.
            for how in ("raw",) if hasattr(actorbox.ActorHandle, method) else ("handle", "raw"):
                with anyio.fail_after(CALL_TIMEOUT):
                    outcome = await saboteur.call_private("models", method, how)
                assert outcome.get("error") == "PrivateMethodError", (method, how, outcome)
        assert models.private_ran == []
        assert models.rt is rt  # __init__ did not run again
        await assert_host_serves(rt, healthy)


async def test_non_method_attributes_of_host_resident_are_refused():
    """Instance attributes and dotted paths of a host-resident actor are not callable (MethodNotFoundError)."""
    async with actorbox.Runtime() as rt:
        models = Models(rt)
        rt.register("models", models)
        healthy, saboteur = await start_actors(rt, Healthy, Saboteur)
        for method in ("rt", "private_ran", "lookup.__globals__"):
            with anyio.fail_after(CALL_TIMEOUT):
                outcome = await saboteur.call_private("models", method, "raw")
            assert outcome.get("error") == "MethodNotFoundError", (method, outcome)
        assert models.public_calls == 0
        await assert_host_serves(rt, healthy)


# -- forged ids ----------------------------------------------------------------------


async def _held_call(rt: actorbox.Runtime, victim: actorbox.ActorHandle, tg: anyio.abc.TaskGroup,
                     box: dict[str, object]) -> int:
    """Start victim.hold() in ``tg`` and return its id in the host's call table."""

    async def hold() -> None:
        box["result"] = await victim.hold()

    tg.start_soon(hold)
    with anyio.fail_after(CALL_TIMEOUT):
        while True:
            held = [c for c in rt.pending_calls() if c.method == "hold" and c.state == "running"]
            if held:
                return held[0].call_id
            await anyio.sleep(0.01)


def _table(rt: actorbox.Runtime) -> set[tuple[object, ...]]:
    return {(c.call_id, c.actor, c.method, c.caller, c.parent_call_id, c.state) for c in rt.pending_calls()}


async def test_forged_replies_are_dropped():
    """Replies and cancels for call ids an actor was never given (another actor's call among them) change nothing."""
    async with actorbox.Runtime() as rt:
        healthy, saboteur, victim = await start_actors(rt, Healthy, Saboteur, Victim)
        box: dict[str, object] = {}
        async with anyio.create_task_group() as tg:
            gid = await _held_call(rt, victim, tg, box)
            before = _table(rt)
            with anyio.fail_after(CALL_TIMEOUT):
                sent = await saboteur.spray_replies(1, gid + 500, extra=[0, -1, 2**62])
            assert sent >= 500
            assert _table(rt) == before  # the victim's call is still in flight, untouched
            with anyio.fail_after(CALL_TIMEOUT):
                await victim.release()
        assert box["result"] == "held and released"  # the genuine answer, not "forged"
        assert rt.pending_calls() == []
        with anyio.fail_after(CALL_TIMEOUT):
            assert await saboteur.ping() == "pong"
        await assert_host_serves(rt, healthy)


async def test_forged_parent_call_id_is_ignored():
    """A call naming as parent a call its sender is not serving is recorded with no parent (its own chain)."""
    async with actorbox.Runtime() as rt:
        models = Models(rt)
        rt.register("models", models)
        healthy, saboteur, victim = await start_actors(rt, Healthy, Saboteur, Victim)
        box: dict[str, object] = {}
        async with anyio.create_task_group() as tg:
            gid = await _held_call(rt, victim, tg, box)
            with anyio.fail_after(CALL_TIMEOUT):
                assert await saboteur.forged_parent("models", gid) == [None]
                # The same call made honestly is recorded under the call that made it.
                parents, own = await saboteur.genuine_parent("models")
                assert parents == [own] and own != gid
                await victim.release()
        assert box["result"] == "held and released"
        await assert_host_serves(rt, healthy)


def _host_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def _settled_fds(before: int) -> int:
    # The host closes what it is sent as it reads it; give it a moment to read.
    for _ in range(50):
        if _host_fds() <= before:
            break
        await anyio.sleep(0.02)
    return _host_fds()


async def test_fds_attached_to_replies_and_calls_are_not_hoarded():
    """Descriptors an actor attaches to replies or to calls to host-resident actors are closed by the host."""
    async with actorbox.Runtime() as rt:
        rt.register("resident", Models())
        healthy, saboteur = await start_actors(rt, Healthy, Saboteur)
        before = _host_fds()
        with anyio.fail_after(CALL_TIMEOUT):
            await saboteur.fds_in_replies(40)
            await saboteur.fds_in_resident_calls("resident", 40)
        assert await _settled_fds(before) <= before + 2  # 320 + 320 fds were sent
        await assert_host_serves(rt, healthy)


async def test_fds_outside_any_frame_disconnect_the_actor():
    """Descriptors attached to frames that claim none pile up nowhere: the actor is disconnected."""
    async with actorbox.Runtime() as rt:
        healthy, saboteur = await start_actors(rt, Healthy, Saboteur)
        before = _host_fds()
        with anyio.fail_after(CALL_TIMEOUT), pytest.raises(actorbox.ActorDiedError, match="no frame claims"):
            await saboteur.unclaimed_fds(200)
        assert await _settled_fds(before) <= before
        await assert_host_serves(rt, healthy)
