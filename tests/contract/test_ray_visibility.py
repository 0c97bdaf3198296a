"""Visibility on Ray: the host's call events bound to Ray's actor and node ids, a trace file,
and rt.actors() reading state, restarts and pid from Ray's actor table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import pytest

import actorbox

from .conftest import runtime
from .plugins import Counter, Phoenix, SyncOnly, square

pytestmark = [pytest.mark.anyio, pytest.mark.ray, pytest.mark.timeout(180)]


async def test_call_events_carry_ray_actor_and_node_ids(ray_cluster: Any) -> None:
    from structlog.testing import capture_logs

    with capture_logs() as logs:
        async with runtime("ray", log_calls=True) as rt:
            c = await rt.start(Counter, name="counted")
            assert await c.incr() == 1
            with pytest.raises(KeyError):
                await c.boom("k")
            f = c.slow(60)
            await anyio.sleep(0.2)
            f.cancel()
            assert await rt.submit(square, 3) == 9
            node = rt.node_of(c)
            ray_id = {e["ray_actor_id"] for e in logs if e["event"] == "actor.started"}
    calls = [e for e in logs if e["event"].startswith("call.")]
    by_method = {(e["event"], e["method"]) for e in calls}
    assert {("call.submitted", "incr"), ("call.finished", "incr"), ("call.failed", "boom"),
            ("call.cancelled", "slow"), ("call.submitted", "square"), ("call.finished", "square")} <= by_method
    for e in calls:
        if e["actor"] == "counted":
            assert e["node_id"] == node and {e["ray_actor_id"]} == ray_id and e["caller"] if \
                e["event"] == "call.submitted" else e["duration_ms"] >= 0
    ids = {e["call_id"] for e in calls if e["event"] == "call.submitted"}
    assert ids == {e["call_id"] for e in calls if e["event"] != "call.submitted"}  # each ends once


async def test_no_call_events_unless_asked(ray_cluster: Any) -> None:
    from structlog.testing import capture_logs

    with capture_logs() as logs:
        async with runtime("ray") as rt:
            c = await rt.start(Counter)
            assert await c.incr() == 1
    assert [e for e in logs if e["event"].startswith("call.")] == []
    assert any(e["event"] == "actor.started" for e in logs)


async def test_trace_file_records_call_events(ray_cluster: Any, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    trace = tmp_path / "trace.jsonl"
    monkeypatch.setenv("ACTORBOX_TRACE_FILE", str(trace))
    async with runtime("ray") as rt:
        c = await rt.start(Counter)
        assert await c.incr(2) == 2
    events = [json.loads(line) for line in trace.read_text().splitlines()]
    names = [e["event"] for e in events]
    assert "actor.started" in names and "call.submitted" in names and "call.finished" in names
    finished = next(e for e in events if e["event"] == "call.finished")
    assert finished["method"] == "incr" and finished["ray_actor_id"] and finished["node_id"]


async def test_actors_show_rays_state_restarts_and_pid(ray_cluster: Any) -> None:
    async with runtime("ray") as rt:
        p = await rt.start(Phoenix, name="phoenix")
        assert await p.count() == 1
        (row,) = [a for a in rt.actors() if a.label == "phoenix"]
        assert (row.state, row.restarts) == ("alive", 0)
        first_pid = row.pid
        with pytest.raises(actorbox.ActorDiedError):
            await p.die()
        with anyio.fail_after(60):
            while True:
                try:
                    assert await p.count() == 1
                    break
                except actorbox.ActorDiedError:
                    await anyio.sleep(0.1)
        (row,) = [a for a in rt.actors() if a.label == "phoenix"]
        assert row.state == "alive" and row.restarts == 1 and row.pid != first_pid
        with pytest.raises(actorbox.ActorDiedError):
            await p.die()
        with anyio.fail_after(30):
            while [a.state for a in rt.actors() if a.label == "phoenix"] != ["dead"]:
                await anyio.sleep(0.1)
        s = await rt.start(SyncOnly)
        await rt.stop(s)
        assert [a.state for a in rt.actors() if a.actor_id == actorbox.info(s).actor_id] == ["stopped"]


async def test_sync_only_actor_calls_others_from_its_threads(backend: str) -> None:
    # On Ray a class with sync methods only runs in the threaded shell: no event loop there.
    async with runtime(backend) as rt:
        await rt.start(Counter, 10, name="target")
        s = await rt.start(SyncOnly)
        results = await actorbox.gather(s.incr_other("target", 1), s.incr_other("target", 2))
        assert sorted(results) in ([11, 13], [12, 13])  # (either may run first)
        with pytest.raises(actorbox.ActorDiedError):
            await s.die()
