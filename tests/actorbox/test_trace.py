"""ACTORBOX_TRACE_FILE recording and ``python -m actorbox trace`` (Chrome trace format, HTML timeline)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
import structlog
from structlog.testing import capture_logs

import actorbox
from actorbox._timeline import build, read_events, to_chrome
from actorbox._timeline_html import to_html
from actorbox._trace import EventTee

ROOT = Path(__file__).resolve().parents[2]


@actorbox.actor
class Chain:
    """``outer`` calls the host-resident ``models``, which calls back into this actor (``back``)."""

    async def outer(self):
        me = actorbox.get_actor("a")
        return await actorbox.get_actor("models").bounce(me)

    async def back(self):
        await anyio.sleep(0.01)
        return "A-back"

    def fail(self):
        raise ValueError("traced failure")


class Models:
    async def bounce(self, handle):
        return ["models", await handle.back()]


# -- the Chrome trace format, as its documentation ("Trace Event Format") defines it ------------

_PHASES = {"X", "M", "s", "f", "i"}
_METADATA = {"process_name": "name", "thread_name": "name", "process_sort_index": "sort_index",
             "thread_sort_index": "sort_index"}


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def validate_chrome_trace(doc: Any) -> None:
    """Assert ``doc`` is a well-formed JSON-object-format trace whose spans nest per thread and whose flows bind."""
    json.dumps(doc, allow_nan=False)  # plain JSON
    assert isinstance(doc, dict) and isinstance(doc["traceEvents"], list)
    assert doc.get("displayTimeUnit") in ("ms", "ns")
    named: set[tuple[int, int]] = set()
    spans: dict[tuple[int, int], list[tuple[float, float]]] = {}
    flows: dict[int, dict[str, dict[str, Any]]] = {}
    for ev in doc["traceEvents"]:
        assert ev["ph"] in _PHASES, ev
        assert isinstance(ev["name"], str) and isinstance(ev["pid"], int) and isinstance(ev["tid"], int), ev
        if ev["ph"] == "M":
            key = _METADATA[ev["name"]]
            assert isinstance(ev["args"][key], str if key == "name" else int), ev
            if ev["name"] == "thread_name":
                named.add((ev["pid"], ev["tid"]))
            continue
        assert _number(ev["ts"]) and ev["ts"] >= 0, ev
        assert isinstance(ev.get("args", {}), dict)
        if ev["ph"] == "X":
            assert _number(ev["dur"]) and ev["dur"] >= 0, ev
            spans.setdefault((ev["pid"], ev["tid"]), []).append((ev["ts"], ev["ts"] + ev["dur"]))
        elif ev["ph"] in "sf":
            assert isinstance(ev["id"], int), ev
            assert ev["ph"] == "s" or ev["bp"] == "e", ev
            assert ev["ph"] not in flows.setdefault(ev["id"], {}), ev  # one start and one end per flow
            flows[ev["id"]][ev["ph"]] = ev
        else:
            assert ev["s"] in ("g", "p", "t"), ev
    for where, intervals in spans.items():
        assert where in named, f"thread {where} has spans but no thread_name"
        # Spans on one thread nest or follow each other; they never half-overlap.
        stack: list[tuple[float, float]] = []
        for start, end in sorted(intervals, key=lambda se: (se[0], -se[1])):
            while stack and stack[-1][1] <= start + 1e-6:
                stack.pop()
            assert not stack or end <= stack[-1][1] + 1e-6, f"half-overlapping spans on {where}"
            stack.append((start, end))
    for fid, ends in flows.items():
        assert set(ends) == {"s", "f"}, f"flow {fid} lacks an end"
        for ev in ends.values():  # each end lies within a span of its thread (what it binds to)
            assert any(s - 1e-6 <= ev["ts"] <= e + 1e-6 for s, e in spans[(ev["pid"], ev["tid"])]), ev


def _convert(path: Path) -> tuple[dict[str, Any], Any]:
    with open(path) as f:
        records, stats = read_events(f)
    tl = build(records, stats)
    return to_chrome(tl), tl


def _spans(doc: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    """Call spans by (cat, name): "call" on the actor's track, "await" on the host's."""
    return {(e["cat"], e["name"]): e for e in doc["traceEvents"] if e["ph"] == "X" and e["cat"] in ("call", "await")}


def _within(inner: dict[str, Any], outer: dict[str, Any]) -> bool:
    return outer["ts"] <= inner["ts"] and inner["ts"] + inner["dur"] <= outer["ts"] + outer["dur"] + 1e-3


@pytest.mark.anyio
async def test_reentrant_chain_becomes_nested_spans_linked_by_flows(tmp_path, monkeypatch):
    """host -> A -> host-resident -> A, recorded with ACTORBOX_TRACE_FILE, converts to a valid trace: each span
    within its parent's, on the right tracks, with flows from parent to child."""
    events = tmp_path / "events.jsonl"
    monkeypatch.setenv("ACTORBOX_TRACE_FILE", str(events))
    async with actorbox.Runtime() as rt:
        rt.register("models", Models())
        a = await rt.start(Chain, name="a")
        with anyio.fail_after(10):
            assert await a.outer() == ["models", "A-back"]
        a_pid = next(i.pid for i in rt.actors() if i.label == "a")
    doc, _ = _convert(events)
    validate_chrome_trace(doc)
    spans = _spans(doc)
    host, outer = spans[("await", "a.outer")], spans[("call", "outer")]
    bounce, back = spans[("call", "bounce")], spans[("call", "back")]
    assert _within(outer, host) and _within(bounce, outer) and _within(back, bounce)
    assert back["args"]["parent_call_id"] == bounce["args"]["call_id"]
    assert bounce["args"]["parent_call_id"] == outer["args"]["call_id"]
    assert back["dur"] >= 10_000  # the 10 ms sleep, in µs
    threads = {e["tid"]: e["args"]["name"] for e in doc["traceEvents"] if e["name"] == "thread_name"}
    assert threads[host["tid"]] == "host"
    assert threads[outer["tid"]] == threads[back["tid"]] == f"a (pid {a_pid})"  # re-entrant: nested on A's track
    assert threads[bounce["tid"]] == "models (host-resident)"
    assert len({host["pid"], outer["pid"], bounce["pid"]}) == 1  # one process: the Runtime
    # Flows, parent to child: (s on the parent's thread, f on the child's thread, f at the child's start).
    ends: dict[int, dict[str, dict[str, Any]]] = {}
    for e in doc["traceEvents"]:
        if e["ph"] in "sf":
            ends.setdefault(e["id"], {})[e["ph"]] = e
    links = {(f["s"]["tid"], f["f"]["tid"], f["f"]["ts"]) for f in ends.values()}
    assert links == {(host["tid"], outer["tid"], outer["ts"]), (outer["tid"], bounce["tid"], bounce["ts"]),
                     (bounce["tid"], back["tid"], back["ts"])}
    for parent, child in ((host, outer), (outer, bounce), (bounce, back)):
        (flow,) = [f for f in ends.values() if f["f"]["tid"] == child["tid"] and f["f"]["ts"] == child["ts"]]
        assert parent["ts"] <= flow["s"]["ts"] <= child["ts"]


@pytest.mark.anyio
async def test_trace_records_call_events_without_adding_them_to_the_logs(tmp_path, monkeypatch):
    """Tracing records call.* events although log_calls is off, and structlog sees exactly what it saw before.
    The zygote the actor was forked from is recorded too (zygote.* events, before the actor starts)."""
    events = tmp_path / "events.jsonl"
    monkeypatch.setenv("ACTORBOX_TRACE_FILE", str(events))
    monkeypatch.setenv("ACTORBOX_ZYGOTES", "1")
    monkeypatch.delenv("ACTORBOX_LOG_CALLS", raising=False)
    with capture_logs() as logs:
        async with actorbox.Runtime() as rt:
            a = await rt.start(Chain, name="a")
            with pytest.raises(ValueError):
                await a.fail()
    assert [e for e in logs if e["event"].startswith("call.")] == []
    assert [e["event"] for e in logs if e["event"].startswith("actor.")] == ["actor.started", "actor.stopped"]
    recorded = [json.loads(line) for line in events.read_text().splitlines()]
    # Outside call.* events, the file holds what structlog saw, in the same order.
    assert [r["event"] for r in recorded if not r["event"].startswith("call.")] == [e["event"] for e in logs]
    lifecycle = [r for r in recorded if r["event"].startswith(("actor.", "call."))]
    names = [r["event"] for r in lifecycle]
    assert names == ["actor.started", "call.submitted", "call.started", "call.failed", "actor.stopped"]
    assert all(r["logger"] == "actorbox" and r["host_pid"] == os.getpid() for r in recorded)
    assert len({r["runtime"] for r in recorded}) == 1
    assert lifecycle[3]["status"] == "error" and lifecycle[3]["duration_ms"] >= 0
    zygote = [r for r in recorded if r["event"].startswith("zygote.")]
    assert [r["event"] for r in zygote] == ["zygote.launched", "zygote.ready"]
    assert zygote[1]["pid"] > 0 and zygote[1]["duration_ms"] > 0
    assert recorded.index(zygote[1]) < recorded.index(lifecycle[0])  # ready before the actor forked from it


@pytest.mark.anyio
async def test_trace_with_log_calls_passes_call_events_on_and_records_forwarded_actor_events(tmp_path, monkeypatch):
    """With log_calls=True call events reach structlog too; events an actor logs are recorded as actorbox.actor."""
    events = tmp_path / "events.jsonl"
    monkeypatch.setenv("ACTORBOX_TRACE_FILE", str(events))
    with capture_logs() as logs:
        async with actorbox.Runtime(log_calls=True) as rt:
            a = await rt.start(_Chatty, name="chatty")
            await a.talk()
    assert [e["event"] for e in logs if e["event"].startswith("call.")] == [
        "call.submitted", "call.started", "call.finished"]
    recorded = [json.loads(line) for line in events.read_text().splitlines()]
    (said,) = [r for r in recorded if r["event"] == "plugin.said"]
    assert (said["logger"], said["actor"], said["words"]) == ("actorbox.actor", "chatty", 3)


@actorbox.actor
class _Chatty:
    def talk(self):
        structlog.get_logger().info("plugin.said", words=3)


@pytest.mark.anyio
async def test_without_trace_file_the_runtime_keeps_plain_loggers(tmp_path, monkeypatch):
    """Without ACTORBOX_TRACE_FILE nothing is recorded: the emit points hold structlog's loggers, not tees."""
    monkeypatch.delenv("ACTORBOX_TRACE_FILE", raising=False)
    async with actorbox.Runtime() as rt:
        assert not isinstance(rt.log, EventTee) and not isinstance(rt.scheduler.log, EventTee)
        assert rt.scheduler.log_calls is False
        a = await rt.start(Chain)
        with pytest.raises(ValueError):
            await a.fail()


def _rec(ts: float, event: str, **fields: Any) -> str:
    return json.dumps({"ts": ts, "event": event, **fields})


def test_cli_accepts_pytest_plugin_lines_and_skips_malformed_ones(tmp_path):
    """trace reads the pytest plugin's JSONL (no runtime key), counts malformed lines and other events, writes JSON."""
    src = tmp_path / "log.jsonl"
    lines = [
        _rec(100.0, "actor.started", logger="actorbox", actor="w", pid=42, duration_ms=50.0),
        _rec(100.1, "call.submitted", logger="actorbox", actor="w", method="run", call_id=1, parent_call_id=None),
        "not json at all",
        json.dumps({"event": "call.started", "call_id": 1}),  # no ts
        json.dumps([1, 2, 3]),
        _rec(100.1, "test.started", nodeid="t.py::x"),
        _rec(100.2, "call.started", logger="actorbox.actor", actor="w", method="forged", call_id=9),
        _rec(100.2, "call.finished", logger="actorbox", actor="w", method="run", call_id=1, parent_call_id=None,
             duration_ms=100.0, extra="kept"),
    ]
    src.write_text("\n".join(lines) + "\n")
    out = tmp_path / "trace.json"
    proc = subprocess.run([sys.executable, "-m", "actorbox", "trace", str(src), "-o", str(out)],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "skipped 3 malformed line(s) and 2 event(s) of other kinds" in proc.stderr
    assert "warning: 3 line(s)" in proc.stderr
    doc = json.loads(out.read_text())
    validate_chrome_trace(doc)
    calls = [e for e in doc["traceEvents"] if e["ph"] == "X" and e["cat"] == "call"]
    assert [(e["name"], e["args"]["status"]) for e in calls] == [("run", "ok")]  # the forged one is not a span
    assert calls[0]["dur"] == pytest.approx(100_000, abs=1)  # 100.1 -> 100.2 s, in µs
    threads = {e["args"]["name"] for e in doc["traceEvents"] if e["name"] == "thread_name"}
    assert threads == {"host", "w (pid 42)"}


def test_unfinished_call_spans_to_the_last_event():
    """A call with no end event becomes a span up to the stream's last event, marked unfinished."""
    records, stats = read_events([
        _rec(10.0, "call.submitted", actor="a", method="hang", call_id=1, parent_call_id=None, caller="host"),
        _rec(10.0, "call.started", actor="a", method="hang", call_id=1, parent_call_id=None),
        _rec(10.5, "call.submitted", actor="b", method="inner", call_id=2, parent_call_id=1, caller="a"),
        _rec(10.5, "call.started", actor="b", method="inner", call_id=2, parent_call_id=1),
        _rec(12.0, "actor.died", actor="b", pid=7, signal=9),
    ])
    doc = to_chrome(build(records, stats))
    validate_chrome_trace(doc)
    spans = _spans(doc)
    hang, inner = spans[("call", "hang")], spans[("call", "inner")]
    assert hang["args"]["unfinished"] is True and hang["args"]["status"] == "unfinished"
    assert hang["ts"] + hang["dur"] == pytest.approx(2_000_000) and inner["dur"] == pytest.approx(1_500_000)
    assert _within(inner, hang)
    (died,) = [e for e in doc["traceEvents"] if e["ph"] == "i"]
    assert died["name"] == "actor.died" and died["tid"] == inner["tid"]


def test_a_call_cancelled_before_it_ran_takes_no_time_on_the_actor():
    """A call that ended without ever running (began=False) is a wait on the host, not a run on the actor."""
    records, stats = read_events([
        _rec(20.0, "call.submitted", actor="a", method="queued", call_id=1, parent_call_id=None, caller="host"),
        _rec(22.0, "call.cancelled", actor="a", method="queued", call_id=1, parent_call_id=None,
             duration_ms=2000.0, began=False),
    ])
    doc = to_chrome(build(records, stats))
    validate_chrome_trace(doc)
    calls = {e["cat"]: e for e in doc["traceEvents"] if e["ph"] == "X" and e["name"].endswith("queued")}
    assert calls["call"]["dur"] == pytest.approx(0, abs=1)
    assert calls["await"]["dur"] == pytest.approx(2_000_000)


def test_half_overlapping_calls_of_one_actor_go_to_separate_threads():
    """Calls of one actor that overlap without nesting (max_concurrency > 1) land on two threads of its track."""
    recs = []
    for cid, (start, end) in enumerate([(1.0, 3.0), (2.0, 4.0), (2.5, 2.8)], start=1):
        recs += [_rec(start, "call.started", actor="w", method=f"m{cid}", call_id=cid),
                 _rec(end, "call.finished", actor="w", method=f"m{cid}", call_id=cid, duration_ms=(end - start) * 1e3)]
    records, _ = read_events(recs)
    doc = to_chrome(build(records))
    validate_chrome_trace(doc)
    spans = _spans(doc)
    assert spans[("call", "m1")]["tid"] != spans[("call", "m2")]["tid"]
    assert spans[("call", "m3")]["tid"] == spans[("call", "m1")]["tid"]  # nests inside m1
    names = sorted(e["args"]["name"] for e in doc["traceEvents"] if e["name"] == "thread_name")
    assert names == ["host", "host [2]", "w", "w [2]"]  # the host's awaits of them overlap alike


@pytest.mark.anyio
async def test_html_timeline_is_self_contained_and_escapes_names(tmp_path, monkeypatch):
    """The HTML timeline of a real run loads nothing from the network and cannot be broken out of by a name."""
    events = tmp_path / "events.jsonl"
    monkeypatch.setenv("ACTORBOX_TRACE_FILE", str(events))
    async with actorbox.Runtime() as rt:
        rt.register("models", Models())
        a = await rt.start(Chain, name="a")
        await a.outer()
    with open(events, "a") as f:  # a hostile method name in a hand-made line
        f.write(_rec(1e10, "call.finished", actor="a", method="</script><img src=x onerror=alert(1)>", call_id=99,
                     duration_ms=1.0) + "\n")
    _, tl = _convert(events)
    page = to_html(tl, str(events))
    assert page.count("</script>") == 2  # the page's own two script elements, nothing injected
    assert "<img" not in page and "\\u003c/script>\\u003cimg" in page
    for ref in ("src=\"http", "href=\"http", "url(http", "@import", "<link"):
        assert ref not in page
    # The only URL is SVG's namespace name, which browsers never fetch.
    assert {w for w in page.replace('"', " ").split() if w.startswith(("http://", "https://"))} == {
        "http://www.w3.org/2000/svg"}
    for name in ("outer", "bounce", "back", "a.outer"):
        assert f'"name":"{name}"' in page


def test_restarted_actor_and_second_runtime_get_their_own_names():
    """A restarted actor's track names each of its pids; a second Runtime in the same file is its own process."""
    lines = [_rec(1.0, "actor.started", actor="w", pid=11, duration_ms=5, runtime="r1", host_pid=100),
             _rec(2.0, "actor.died", actor="w", pid=11, runtime="r1", host_pid=100),
             _rec(3.0, "actor.started", actor="w", pid=12, duration_ms=5, runtime="r1", host_pid=100),
             _rec(4.0, "call.started", actor="w", method="m", call_id=1, runtime="r1", host_pid=100),
             _rec(4.1, "call.finished", actor="w", method="m", call_id=1, runtime="r1", host_pid=100),
             _rec(5.0, "call.started", actor="w", method="m", call_id=1, runtime="r2", host_pid=200),
             _rec(5.2, "call.finished", actor="w", method="m", call_id=1, runtime="r2", host_pid=200)]
    doc = to_chrome(build(read_events(lines)[0]))
    validate_chrome_trace(doc)
    processes = {e["pid"]: e["args"]["name"] for e in doc["traceEvents"] if e["name"] == "process_name"}
    assert sorted(processes.values()) == ["actorbox runtime (host pid 100)", "actorbox runtime (host pid 200)"]
    threads = {(e["pid"], e["args"]["name"]) for e in doc["traceEvents"] if e["name"] == "thread_name"}
    first = next(p for p, n in processes.items() if "100" in n)
    assert (first, "w (pid 11, then 12)") in threads
    calls = [e for e in doc["traceEvents"] if e["ph"] == "X" and e["cat"] == "call"]
    assert sorted(round(e["dur"]) for e in calls) == [100_000, 200_000]  # same call id, two Runtimes, two spans


@pytest.mark.anyio
async def test_zygote_events_go_on_a_zygotes_track_with_its_start(tmp_path, monkeypatch):
    """zygote.* events of a real run become a "zygotes" track after the actors' (its Python pid in the title): a
    start span ending at zygote.ready, instants for the others; the HTML timeline labels it and counts no actor."""
    events = tmp_path / "events.jsonl"
    monkeypatch.setenv("ACTORBOX_TRACE_FILE", str(events))
    monkeypatch.setenv("ACTORBOX_ZYGOTES", "1")
    async with actorbox.Runtime() as rt:
        a = await rt.start(Chain, name="a")
        with pytest.raises(ValueError):
            await a.fail()
        (z_pid,) = [i.pid for i in rt.actors() if i.kind == "zygote"]
    first = json.loads(events.read_text().splitlines()[0])
    with open(events, "a") as f:  # as a zygote that broke its protocol would leave it
        f.write(_rec(1e10, "zygote.misbehaved", logger="actorbox", zygote="a", pid=z_pid, reason="r",
                     runtime=first["runtime"], host_pid=first["host_pid"]) + "\n")
    doc, tl = _convert(events)
    validate_chrome_trace(doc)
    kept = [r for r in map(json.loads, events.read_text().splitlines())
            if r["event"].startswith(("actor.", "call.", "zygote."))]
    assert tl.stats.events == len(kept)  # every zygote event read, none dropped
    (runtime,) = tl.runtimes
    assert [t.kind for t in runtime.tracks] == ["host", "actor", "zygote"]
    threads = {e["tid"]: e["args"]["name"] for e in doc["traceEvents"] if e["name"] == "thread_name"}
    (start,) = [e for e in doc["traceEvents"] if e["name"] == "start zygote"]
    assert threads[start["tid"]] == f"zygotes (pid {z_pid})" and start["dur"] > 0 and start["args"]["pid"] == z_pid
    instants = [(e["name"], e["cat"]) for e in doc["traceEvents"] if e["ph"] == "i" and e["tid"] == start["tid"]]
    assert instants == [("zygote.launched", "zygote"), ("zygote.ready", "zygote"), ("zygote.misbehaved", "zygote")]
    (actor_start,) = [e for e in doc["traceEvents"] if e["name"] == "start actor"]
    assert threads[actor_start["tid"]].startswith("a (pid ")
    page = to_html(tl, str(events))
    assert '"sub":"prepared processes actors fork from"' in page and '"what":"starting zygote"' in page
    assert '"actors":1,' in page  # the actor "a"; the zygotes track is none
