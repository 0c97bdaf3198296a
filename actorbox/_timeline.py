"""From a recorded event stream (JSONL) to a timeline of calls, and to the Chrome trace format.

Reads what ``ACTORBOX_TRACE_FILE`` records (and the similar JSONL of the pytest
plugin's ``--actorbox-log-file``): one JSON object per line with at least ``ts``
(epoch seconds) and ``event``. ``call.*`` events become one span per call on its
actor's track, linked to the call it was made from (``parent_call_id``); calls the
host program made also get a span on a "host" track, from submission to result;
``actor.*`` events become instants; ``zygote.*`` events (the prepared processes
actors are forked from) become instants on one "zygotes" track per Runtime, and a
zygote's start (``zygote.ready`` and its ``duration_ms``) a start bar there. Lines that are not JSON objects with a
numeric ``ts`` and a string ``event`` are counted and skipped, and so are events
of other kinds.

Only events of the ``actorbox`` logger are believed: events an actor logged itself
(forwarded under ``actorbox.actor``) could claim any name, so they never become spans.

The Chrome trace (``to_chrome``) is the JSON object format that Perfetto and
chrome://tracing open: one process per Runtime, one thread per actor (more when
an actor's calls overlap without nesting), ``X`` events for spans, ``s``/``f``
flow events from a call to the calls made inside it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

CALL_EVENTS = frozenset({"call.submitted", "call.started", "call.finished", "call.failed", "call.cancelled"})
ACTOR_EVENTS = frozenset({"actor.started", "actor.died", "actor.restarted", "actor.restart_failed",
                          "actor.stopped", "actor.killed", "actor.registered"})
ZYGOTE_EVENTS = frozenset({"zygote.launched", "zygote.ready", "zygote.unavailable", "zygote.fork_failed",
                           "zygote.misbehaved"})
ZYGOTE_TRACK = "zygotes"
_END_STATUS = {"call.finished": "ok", "call.failed": "failed", "call.cancelled": "cancelled"}
# Loggers whose events are the Runtime's own; a record without "logger" (another tool's JSONL) is believed.
_TRUSTED_LOGGERS = frozenset({"actorbox"})
HOST_TRACK = "host"


@dataclass(slots=True)
class ReadStats:
    """What ``read_events`` kept and skipped."""

    lines: int = 0
    events: int = 0
    malformed: int = 0
    skipped: int = 0  # well-formed events of other kinds (or from untrusted loggers)

    def describe(self) -> str:
        return (f"{self.events} events read from {self.lines} lines; skipped {self.malformed} malformed "
                f"line(s) and {self.skipped} event(s) of other kinds")


def read_events(lines: Iterable[str]) -> tuple[list[dict[str, Any]], ReadStats]:
    """Parse JSONL; returns the call, actor and zygote events, sorted by time, and what was skipped."""
    stats = ReadStats()
    out: list[dict[str, Any]] = []
    for line in lines:
        stats.lines += 1
        line = line.strip()
        if not line:
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            stats.malformed += 1
            continue
        ts = rec.get("ts") if isinstance(rec, dict) else None
        if (not isinstance(rec, dict) or not isinstance(rec.get("event"), str) or isinstance(ts, bool)
                or not isinstance(ts, (int, float)) or not math.isfinite(ts)):
            stats.malformed += 1
            continue
        logger = rec.get("logger")
        if (rec["event"] not in CALL_EVENTS | ACTOR_EVENTS | ZYGOTE_EVENTS
                or (logger is not None and logger not in _TRUSTED_LOGGERS)):
            stats.skipped += 1
            continue
        if rec["event"] in CALL_EVENTS and not _is_id(rec.get("call_id")):
            stats.malformed += 1
            continue
        out.append(rec)
    out.sort(key=lambda r: r["ts"])  # stable: equal times keep the file's (causal) order
    stats.events = len(out)
    return out, stats


def _is_id(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _str(v: Any, default: str) -> str:
    return v if isinstance(v, str) and v else default


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


@dataclass(slots=True, eq=False)
class TracedCall:
    """One call as the events describe it (times in epoch seconds)."""

    runtime: str
    call_id: int
    actor: str
    method: str
    parent_call_id: int | None = None
    caller: str | None = None
    submitted: float | None = None
    started: float | None = None
    ended: float | None = None
    status: str = "unfinished"  # ok | failed | cancelled | unfinished
    failure: str | None = None  # the failure's status (error, died, ...) for failed calls
    duration_ms: float | None = None
    parent: TracedCall | None = None


@dataclass(slots=True, eq=False)
class Track:
    """A row of the timeline: the host program, or one actor of one Runtime."""

    runtime: str
    name: str
    kind: str  # host | actor | resident | zygote (all of a Runtime's zygotes)
    pid: int | None = None  # the latest process's
    pids: list[int] = field(default_factory=list)  # every process it had (restarts), in order
    lanes: int = 1


@dataclass(slots=True, eq=False)
class Bar:
    """A drawn span: a call on its actor's track, or (``caller_side``) the host awaiting it."""

    call: TracedCall
    track: Track
    start: float
    end: float
    caller_side: bool = False
    lane: int = 0
    depth: int = 0  # how many bars of its lane enclose it

    @property
    def name(self) -> str:
        return f"{self.call.actor}.{self.call.method}" if self.caller_side else self.call.method


@dataclass(slots=True, eq=False)
class Flow:
    """An arrow from the span a call was made in (at ``ts_src``) to the call's own span."""

    src: Bar
    dst: Bar
    ts_src: float


@dataclass(slots=True, eq=False)
class Instant:
    track: Track
    ts: float
    event: str
    fields: dict[str, Any]


@dataclass(slots=True, eq=False)
class Startup:
    """An actor process starting (from ``actor.started`` and its ``duration_ms``), or a zygote (``zygote.ready``)."""

    track: Track
    start: float
    end: float
    pid: int | None


@dataclass(slots=True, eq=False)
class TracedRuntime:
    """One Runtime as the events describe it: its key, its host's pid and its tracks."""

    key: str
    host_pid: int | None
    tracks: list[Track] = field(default_factory=list)


@dataclass(slots=True, eq=False)
class Timeline:
    """Everything a renderer needs; times in epoch seconds, ``t0`` the earliest event."""

    runtimes: list[TracedRuntime]
    bars: list[Bar]
    flows: list[Flow]
    instants: list[Instant]
    startups: list[Startup]
    t0: float
    t1: float
    stats: ReadStats


def _runtime_key(rec: dict[str, Any]) -> str:
    rt = rec.get("runtime")
    if isinstance(rt, str):
        return rt
    hp = rec.get("host_pid")
    return f"pid {hp}" if _is_id(hp) else ""


def build(records: list[dict[str, Any]], stats: ReadStats | None = None) -> Timeline:
    """Turn events (as ``read_events`` returns them) into spans on tracks, flows and instants."""
    runtimes: dict[str, TracedRuntime] = {}
    tracks: dict[tuple[str, str], Track] = {}
    calls: list[TracedCall] = []
    open_calls: dict[tuple[str, int], TracedCall] = {}
    instants: list[tuple[Track, float, str, dict[str, Any]]] = []
    startups: list[Startup] = []
    last_ts: dict[str, float] = {}

    def track(rt: str, name: str, kind: str = "actor") -> Track:
        t = tracks.get((rt, name))
        if t is None:
            t = tracks[(rt, name)] = Track(rt, name, kind)
            runtimes[rt].tracks.append(t)
        return t

    for rec in records:
        rt, ts, ev = _runtime_key(rec), float(rec["ts"]), rec["event"]
        if rt not in runtimes:
            hp = rec.get("host_pid")
            runtimes[rt] = TracedRuntime(rt, hp if _is_id(hp) else None)
        last_ts[rt] = max(ts, last_ts.get(rt, ts))
        actor = _str(rec.get("actor"), "?")
        if ev in ACTOR_EVENTS or ev in ZYGOTE_EVENTS:
            t = track(rt, actor) if ev in ACTOR_EVENTS else track(rt, ZYGOTE_TRACK, "zygote")
            if ev == "actor.registered":
                t.kind = "resident"
                continue
            if _is_id(rec.get("pid")) and ev != "zygote.launched":  # (a zygote's launcher's pid)
                t.pid = rec["pid"]
                if t.pid not in t.pids:
                    t.pids.append(t.pid)
            took = _num(rec.get("duration_ms"))
            if ev in ("actor.started", "zygote.ready") and took is not None and took > 0:
                startups.append(Startup(t, ts - took / 1000, ts, t.pid))
            instants.append((t, ts, ev, {k: v for k, v in rec.items() if k not in ("ts", "event")}))
            continue
        key = (rt, rec["call_id"])
        c = open_calls.get(key)
        if c is None:
            c = TracedCall(rt, rec["call_id"], actor, _str(rec.get("method"), "?"))
            parent = rec.get("parent_call_id")
            c.parent_call_id = parent if _is_id(parent) else None
            open_calls[key] = c
            calls.append(c)
            track(rt, actor)
        if c.actor == "?":
            c.actor = actor
        if c.method == "?":
            c.method = _str(rec.get("method"), "?")
        if ev == "call.submitted":
            c.submitted = ts
            c.caller = rec.get("caller") if isinstance(rec.get("caller"), str) else None
        elif ev == "call.started":
            c.started = ts
        else:
            c.ended, c.status = ts, _END_STATUS[ev]
            c.duration_ms = _num(rec.get("duration_ms"))
            if rec.get("began") is False:  # it never ran: no time on the actor, only the caller's wait
                c.started = ts
            if ev == "call.failed":
                c.failure = _str(rec.get("status"), "error")
            del open_calls[key]
        if c.actor != "?" and _is_id(rec.get("pid")) and tracks[(rt, c.actor)].pid is None:
            tracks[(rt, c.actor)].pid = rec["pid"]
            tracks[(rt, c.actor)].pids.append(rec["pid"])

    _link_parents(calls)
    bars: list[Bar] = []
    flows: list[Flow] = []
    by_call: dict[int, Bar] = {}
    for c in calls:
        end = c.ended if c.ended is not None else last_ts[c.runtime]
        start = c.started
        if start is None:
            start = end - c.duration_ms / 1000 if c.duration_ms is not None and c.ended is not None else c.submitted
        start = min(start if start is not None else end, end)
        bar = Bar(c, tracks[(c.runtime, c.actor)], start, end)
        bars.append(bar)
        by_call[id(c)] = bar
    for bar in list(bars):
        c = bar.call
        if c.parent is not None:
            src = by_call[id(c.parent)]
            when = c.submitted if c.submitted is not None else bar.start
            flows.append(Flow(src, bar, min(max(when, src.start), src.end)))
        elif c.parent_call_id is None and c.caller in (None, HOST_TRACK):
            host = track(c.runtime, HOST_TRACK, "host")
            begin = min(c.submitted if c.submitted is not None else bar.start, bar.start)
            caller_bar = Bar(c, host, begin, max(bar.end, begin), caller_side=True)
            bars.append(caller_bar)
            flows.append(Flow(caller_bar, bar, begin))
    for r in runtimes.values():  # the host's track first, then the actors as they appeared, then the zygotes
        r.tracks.sort(key=lambda t: (t.kind != "host", t.kind == "zygote"))
    _assign_lanes(bars)
    all_ts = [b.start for b in bars] + [b.end for b in bars] + [i[1] for i in instants] + [
        s.start for s in startups]
    t0 = min(all_ts, default=0.0)
    t1 = max(all_ts, default=t0)
    return Timeline(list(runtimes.values()), bars, flows, [Instant(*i) for i in instants], startups, t0, t1,
                    stats or ReadStats())


def _link_parents(calls: list[TracedCall]) -> None:
    """Each call's parent: the call of that id in its Runtime running when this one began."""
    by_id: dict[tuple[str, int], list[TracedCall]] = {}
    for c in calls:
        by_id.setdefault((c.runtime, c.call_id), []).append(c)
    for c in calls:
        if c.parent_call_id is None:
            continue
        begin = next((t for t in (c.submitted, c.started, c.ended) if t is not None), None)
        best = None
        for p in by_id.get((c.runtime, c.parent_call_id), ()):
            p_begin = next((t for t in (p.submitted, p.started) if t is not None), None)
            if p_begin is None and p.ended is not None:
                p_begin = p.ended - (p.duration_ms or 0.0) / 1000
            if p is c or p_begin is None or begin is None or p_begin > begin:
                continue
            if best is None or p_begin >= best[0]:
                best = (p_begin, p)  # the latest call of that id begun before this one
        c.parent = best[1] if best is not None else None


def _assign_lanes(bars: list[Bar]) -> None:
    """Spread each track's bars over lanes in which bars nest or follow each other, never half-overlap."""
    by_track: dict[int, list[Bar]] = {}
    for b in bars:
        by_track.setdefault(id(b.track), []).append(b)
    for track_bars in by_track.values():
        track_bars.sort(key=lambda b: (b.start, -b.end))
        lanes: list[list[Bar]] = []  # per lane, the stack of bars still open
        for b in track_bars:
            for i, stack in enumerate(lanes):
                while stack and stack[-1].end <= b.start:
                    stack.pop()
                if not stack or stack[-1].end >= b.end:
                    b.lane, b.depth = i, len(stack)
                    stack.append(b)
                    break
            else:
                b.lane = len(lanes)
                lanes.append([b])
        track_bars[0].track.lanes = max(1, len(lanes))


def track_title(t: Track) -> str:
    """A track's name as people read it: ``classifier (pid 123)``, ``models (host-resident)``, ``host``.

    An actor that was restarted shows each of its processes: ``worker (pid 123, then 456)``.
    """
    if t.kind == "host":
        return "host"
    if t.kind == "resident":
        return f"{t.name} (host-resident)"
    if t.kind == "zygote":
        return t.name + (f" (pid {', '.join(map(str, t.pids))})" if t.pids else "")
    if len(t.pids) > 1:
        return f"{t.name} (pid {', then '.join(map(str, t.pids))})"
    return f"{t.name} (pid {t.pid})" if t.pid is not None else t.name


def call_args(bar: Bar) -> dict[str, Any]:
    c = bar.call
    args: dict[str, Any] = {"call_id": c.call_id, "actor": c.actor, "method": c.method, "status": c.status,
                            "parent_call_id": c.parent_call_id}
    if c.caller is not None:
        args["caller"] = c.caller
    if c.failure is not None:
        args["failure"] = c.failure
    if c.submitted is not None and c.started is not None:
        args["queued_ms"] = round((c.started - c.submitted) * 1000, 3)
    args["duration_ms"] = round((bar.end - bar.start) * 1000, 3)
    if c.status == "unfinished":
        args["unfinished"] = True
    if bar.caller_side:
        args["side"] = "caller"
    return args


def to_chrome(tl: Timeline) -> dict[str, Any]:
    """The timeline in the Chrome trace JSON object format (times in µs from the first event)."""

    def us(t: float) -> float:
        return round((t - tl.t0) * 1e6, 3)

    events: list[dict[str, Any]] = []
    tids: dict[tuple[int, int], int] = {}
    pids: dict[str, int] = {}
    for pi, r in enumerate(tl.runtimes, start=1):
        pids[r.key] = pi
        name = "actorbox runtime" + (f" (host pid {r.host_pid})" if r.host_pid is not None else "")
        events.append({"name": "process_name", "ph": "M", "pid": pi, "tid": 0, "args": {"name": name}})
        events.append({"name": "process_sort_index", "ph": "M", "pid": pi, "tid": 0, "args": {"sort_index": pi}})
        tid = 0
        for t in r.tracks:
            for lane in range(t.lanes):
                tid += 1
                tids[(id(t), lane)] = tid
                title = track_title(t) + (f" [{lane + 1}]" if lane else "")
                events.append({"name": "thread_name", "ph": "M", "pid": pi, "tid": tid, "args": {"name": title}})
                events.append({"name": "thread_sort_index", "ph": "M", "pid": pi, "tid": tid,
                               "args": {"sort_index": tid}})

    def where(b: Bar) -> dict[str, int]:
        return {"pid": pids[b.track.runtime], "tid": tids[(id(b.track), b.lane)]}

    for b in tl.bars:
        start = us(b.start)
        ev: dict[str, Any] = {"name": b.name, "cat": "await" if b.caller_side else "call", "ph": "X", "ts": start,
                              "dur": round(us(b.end) - start, 3), **where(b), "args": call_args(b)}
        if b.call.status in ("failed", "cancelled"):
            ev["cname"] = "terrible" if b.call.status == "failed" else "grey"
        events.append(ev)
    for n, f in enumerate(tl.flows, start=1):
        events.append({"name": "call", "cat": "call", "ph": "s", "id": n, "ts": us(f.ts_src), **where(f.src)})
        events.append({"name": "call", "cat": "call", "ph": "f", "bp": "e", "id": n, "ts": us(f.dst.start),
                       **where(f.dst)})
    for s in tl.startups:
        events.append({"name": "start zygote" if s.track.kind == "zygote" else "start actor", "cat": "lifecycle",
                       "ph": "X", "ts": us(s.start),
                       "dur": round(us(s.end) - us(s.start), 3), "pid": pids[s.track.runtime],
                       "tid": tids[(id(s.track), 0)], "args": {"actor": s.track.name, "pid": s.pid}})
    for i in tl.instants:
        events.append({"name": i.event, "cat": i.track.kind if i.track.kind == "zygote" else "actor", "ph": "i",
                       "s": "t", "ts": us(i.ts),
                       "pid": pids[i.track.runtime], "tid": tids[(id(i.track), 0)],
                       "args": {k: v for k, v in i.fields.items() if k not in ("logger", "runtime")}})
    return {"traceEvents": events, "displayTimeUnit": "ms",
            "otherData": {"generator": "python -m actorbox trace", "start_epoch_s": tl.t0,
                          **{k: getattr(tl.stats, k) for k in ("lines", "events", "malformed", "skipped")}}}
