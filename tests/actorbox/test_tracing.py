"""Integration tests of actorbox's structlog events, with real actor processes.

Events are captured with ``structlog.testing.capture_logs``; the library never
configures structlog itself in the host.
"""

from __future__ import annotations

import os
import signal

import anyio
import pytest
import structlog
from structlog.testing import capture_logs

import actorbox

pytestmark = pytest.mark.anyio


@actorbox.actor(max_restarts=1)
class Traced:
    def ok(self, x):
        return x

    def fail(self):
        raise ValueError("traced failure")

    async def wait(self, s):
        await anyio.sleep(s)

    def die(self):
        os.kill(os.getpid(), signal.SIGKILL)

    async def outer(self):
        return await actorbox.get_actor("models").lookup("k")

    async def outer_to_actor(self, other):
        return await other.ok("via-actor")

    def load_plugin(self):
        structlog.get_logger().info("plugin.loaded", x=1, plugin="demo")
        structlog.get_logger("plugin").warning("plugin.slow", seconds=2.5)
        return "loaded"


class Models:
    async def lookup(self, key):
        return f"model:{key}"


def _events(logs, name, **match):
    return [e for e in logs if e["event"] == name and all(e.get(k) == v for k, v in match.items())]


def _one(logs, name, **match):
    found = _events(logs, name, **match)
    assert len(found) == 1, (name, match, [e for e in logs if e["event"] == name])
    return found[0]


async def test_successful_call_logs_submitted_started_finished():
    """A successful call logs call.submitted, call.started and call.finished with the same call_id."""
    with capture_logs() as logs:
        async with actorbox.Runtime(log_calls=True) as rt:
            t = await rt.start(Traced, name="tr")
            assert await t.ok(5) == 5
    sub = _one(logs, "call.submitted", method="ok")
    start = _one(logs, "call.started", method="ok")
    fin = _one(logs, "call.finished", method="ok")
    cid = sub["call_id"]
    assert isinstance(cid, int)
    for e in (sub, start, fin):
        assert e["actor"] == "tr"
        assert e["call_id"] == cid
        assert "parent_call_id" in e and e["parent_call_id"] is None
    assert isinstance(fin["duration_ms"], (int, float)) and fin["duration_ms"] >= 0
    assert logs.index(sub) < logs.index(start) < logs.index(fin)


async def test_actor_started_event_has_pid_and_duration():
    """actor.started is logged with the actor's label, class, host pid and start duration."""
    with capture_logs() as logs:
        async with actorbox.Runtime() as rt:
            await rt.start(Traced, name="tr")
            pid = next(i.pid for i in rt.actors() if i.label == "tr")
    ev = _one(logs, "actor.started", actor="tr")
    assert ev["pid"] == pid
    assert ev["cls"] == "Traced"
    assert ev["duration_ms"] > 0


async def test_failed_call_logs_call_failed():
    """A call whose method raises logs call.failed with its ids and duration."""
    with capture_logs() as logs:
        async with actorbox.Runtime(log_calls=True) as rt:
            t = await rt.start(Traced, name="tr")
            with pytest.raises(ValueError):
                await t.fail()
    sub = _one(logs, "call.submitted", method="fail")
    ev = _one(logs, "call.failed", method="fail")
    assert (ev["actor"], ev["call_id"], ev["parent_call_id"]) == ("tr", sub["call_id"], None)
    assert ev["duration_ms"] >= 0
    assert _events(logs, "call.finished", method="fail") == []


async def test_cancelled_call_logs_call_cancelled():
    """A call cancelled by its caller logs call.cancelled (not finished or failed)."""
    with capture_logs() as logs:
        async with actorbox.Runtime(log_calls=True) as rt:
            t = await rt.start(Traced, name="tr")
            with anyio.move_on_after(0.2):
                await t.wait(10)
            with anyio.fail_after(2):
                while rt.pending_calls():
                    await anyio.sleep(0.02)
    sub = _one(logs, "call.submitted", method="wait")
    ev = _one(logs, "call.cancelled", method="wait")
    assert (ev["actor"], ev["call_id"]) == ("tr", sub["call_id"])
    assert ev["duration_ms"] >= 150
    assert _events(logs, "call.finished", method="wait") == []
    assert _events(logs, "call.failed", method="wait") == []


async def test_death_and_restart_log_actor_died_and_restarted():
    """A death logs actor.died with the old pid and signal; the restart logs actor.restarted with the new pid."""
    with capture_logs() as logs:
        async with actorbox.Runtime(log_calls=True) as rt:
            t = await rt.start(Traced, name="tr")
            old_pid = next(i.pid for i in rt.actors() if i.label == "tr")
            with pytest.raises(actorbox.ActorDiedError):
                await t.die()
            assert await t.ok(1) == 1
            new_pid = next(i.pid for i in rt.actors() if i.label == "tr")
    died = _one(logs, "actor.died", actor="tr")
    assert died["pid"] == old_pid
    assert died["signal"] == signal.SIGKILL
    restarted = _one(logs, "actor.restarted", actor="tr")
    assert restarted["pid"] == new_pid != old_pid
    assert logs.index(died) < logs.index(restarted)
    assert [e["pid"] for e in _events(logs, "actor.started", actor="tr")] == [old_pid, new_pid]
    assert _one(logs, "call.failed", method="die")["call_id"] == _one(logs, "call.submitted", method="die")["call_id"]


@pytest.mark.parametrize("target", ["host_resident", "actor"])
async def test_nested_call_carries_parent_call_id(target):
    """A call made inside an actor's method is logged with parent_call_id = the outer call's id."""
    with capture_logs() as logs:
        async with actorbox.Runtime(log_calls=True) as rt:
            rt.register("models", Models())
            t = await rt.start(Traced, name="tr")
            if target == "host_resident":
                assert await t.outer() == "model:k"
                outer, inner = "outer", "lookup"
            else:
                other = await rt.start(Traced, name="other")
                assert await t.outer_to_actor(other) == "via-actor"
                outer, inner = "outer_to_actor", "ok"
    outer_id = _one(logs, "call.submitted", method=outer)["call_id"]
    assert _one(logs, "call.submitted", method=outer)["parent_call_id"] is None
    for name in ("call.submitted", "call.started", "call.finished"):
        ev = _one(logs, name, method=inner)
        assert ev["parent_call_id"] == outer_id
        assert ev["call_id"] != outer_id


async def test_log_calls_off_logs_no_call_events():
    """With log_calls=False no call.* events are logged (actor.* events still are)."""
    with capture_logs() as logs:
        async with actorbox.Runtime(log_calls=False) as rt:
            t = await rt.start(Traced, name="tr")
            assert await t.ok(1) == 1
    assert [e for e in logs if e["event"].startswith("call.")] == []
    assert _events(logs, "actor.started", actor="tr")


async def test_structlog_event_inside_actor_is_forwarded_to_host():
    """A structlog event logged in an actor method comes out of the host's logger with the actor bound."""
    with capture_logs() as logs:
        async with actorbox.Runtime(log_calls=True) as rt:
            t = await rt.start(Traced, name="plugin-host")
            assert await t.load_plugin() == "loaded"
            pid = next(i.pid for i in rt.actors() if i.label == "plugin-host")
    ev = _one(logs, "plugin.loaded")
    assert ev["actor"] == "plugin-host"
    assert ev["x"] == 1 and ev["plugin"] == "demo"
    assert ev["log_level"] == "info"
    assert ev["pid"] == pid
    assert ev["call_id"] == _one(logs, "call.started", method="load_plugin")["call_id"]
    warn = _one(logs, "plugin.slow")
    assert (warn["actor"], warn["seconds"], warn["log_level"]) == ("plugin-host", 2.5, "warning")


async def test_debug_rpc_logs_every_frame(monkeypatch):
    """With ACTORBOX_DEBUG_RPC=1 every frame is logged as rpc.frame with kind, call ids and size."""
    monkeypatch.setenv("ACTORBOX_DEBUG_RPC", "1")
    payload = "x" * 5000
    with capture_logs() as logs:
        async with actorbox.Runtime(log_calls=True) as rt:
            t = await rt.start(Traced, name="tr")
            assert await t.ok(payload) == payload
    frames = _events(logs, "rpc.frame")
    kinds = {e["kind"] for e in frames}
    assert {"init", "ready", "call", "reply"} <= kinds
    cid = _one(logs, "call.submitted", method="ok")["call_id"]
    call = _one(frames, "rpc.frame", kind="call", method="ok")
    reply = _one(frames, "rpc.frame", kind="reply", call_id=cid)
    assert call["call_id"] == cid
    assert call["bytes"] >= 5000 and reply["bytes"] >= 5000
    assert {call["direction"], reply["direction"]} == {"out", "in"}
    assert all(isinstance(e["bytes"], int) and e["bytes"] > 0 for e in frames)


async def test_no_rpc_frames_without_debug_flag(monkeypatch):
    """Without ACTORBOX_DEBUG_RPC no rpc.frame events are logged."""
    monkeypatch.delenv("ACTORBOX_DEBUG_RPC", raising=False)
    with capture_logs() as logs:
        async with actorbox.Runtime() as rt:
            t = await rt.start(Traced)
            assert await t.ok(1) == 1
    assert _events(logs, "rpc.frame") == []
