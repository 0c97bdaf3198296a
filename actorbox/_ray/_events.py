"""Visibility on Ray: the host's ``call.*`` events, and actor rows from Ray's actor table.

``CallEvents`` logs ``call.submitted`` when the host sends a call or task and
``call.finished`` / ``call.failed`` / ``call.cancelled`` (with ``duration_ms``, as seen by
the host: submission to result) when its ObjectRef completes, each bound to the actor's
Ray actor id and node id. It is made only when ``log_calls`` is on or a trace file is
recorded (``ACTORBOX_TRACE_FILE``): without it a call costs nothing more. There is no
``call.started``: Ray does not tell the host when a call begins on its actor (the
timeline draws a call from its duration).

``actor_table`` reads the state, restarts, pid and node of this Runtime's actors from Ray's
GCS actor table (one request, about a millisecond). Ray's state API
(``ray.util.state.list_actors``) needs Ray's dashboard, which a local Ray that actorbox
starts does not run, so the GCS table is read directly; where it can't be read, ``actors()``
falls back on what the Runtime saw at each actor's start.
"""

from __future__ import annotations

import os
import time
from typing import Any

import structlog

from .._inspect import ActorInfo
from .._trace import EventTee, TraceRecorder

_LOG = structlog.get_logger("actorbox")
# Ray's actor states as actorbox's ActorInfo.state names them.
_STATES = {"ALIVE": "alive", "RESTARTING": "restarting", "DEAD": "dead", "PENDING_CREATION": "starting",
           "DEPENDENCIES_UNREADY": "starting"}


def event_log(log_calls: bool) -> tuple[Any, TraceRecorder | None, bool]:
    """``(logger, recorder, call events on)``: the Runtime's logger, teeing into a trace file when
    ``ACTORBOX_TRACE_FILE`` names one (call events recorded there even when ``log_calls`` is off)."""
    path = os.environ.get("ACTORBOX_TRACE_FILE") or None
    if path is None:
        return _LOG, None, log_calls
    from .._errors import ActorboxError

    try:
        rec = TraceRecorder(path)
    except OSError as exc:
        raise ActorboxError(f"ACTORBOX_TRACE_FILE={path}: cannot record events there: {exc}") from exc
    return EventTee(_LOG, "actorbox", rec, quiet=() if log_calls else ("call.",)), rec, True


class CallEvents:
    """The host's call events of one RayRuntime (see the module's docstring)."""

    __slots__ = ("log",)

    def __init__(self, log: Any) -> None:
        self.log = log

    def submitted(self, call_id: int, target: Any, label: str, method: str) -> None:
        self.log.debug("call.submitted", actor=label, method=method, call_id=call_id, parent_call_id=None,
                       caller="host", **_ids(target))

    def ended(self, call_id: int, target: Any, label: str, method: str, started: float, outcome: str,
              status: str = "error") -> None:
        """``outcome``: finished, failed or cancelled."""
        fields: dict[str, Any] = dict(actor=label, method=method, call_id=call_id, parent_call_id=None,
                                      duration_ms=round((time.monotonic() - started) * 1000, 3), **_ids(target))
        if outcome == "failed":
            fields["status"] = status
        self.log.debug(f"call.{outcome}", **fields)


def _ids(target: Any) -> dict[str, Any]:
    if target is None:
        return {}  # a task: Ray picks its worker when it runs
    return {"ray_actor_id": target.ray_actor_id, "node_id": target.node_id}


def actor_table(ray_ids: list[str]) -> dict[str, dict[str, Any]]:
    """Ray's record of each actor in ``ray_ids`` (hex ids): state, restarts, pid, node; {} when unreadable."""
    if not ray_ids:
        return {}
    try:
        from ray._private import state

        gcs: Any = state  # (Ray's functions are untyped)
        table: dict[str, dict[str, Any]] = gcs.actors()
    except Exception:
        return {}
    out = {}
    for rid in ray_ids:
        row = table.get(rid)
        if row is not None:
            out[rid] = {"state": _STATES.get(str(row.get("State")), str(row.get("State", "?")).lower()),
                        "restarts": int(row.get("NumRestarts") or 0), "pid": row.get("Pid") or None,
                        "node_id": (row.get("Address") or {}).get("NodeID")}
    return out


def actor_rows(targets: dict[int, Any], meta: dict[int, dict[str, Any]], pending: list[Any]) -> list[ActorInfo]:
    """``rt.actors()`` of a RayRuntime: each actor it started or reached, with Ray's state, restarts,
    pid where Ray's actor table has them (a restarted actor's new pid), else what its start saw."""
    running: dict[int, int] = {}
    for call in pending:
        if call.target is not None:
            running[call.target.actor_id] = running.get(call.target.actor_id, 0) + 1
    ray = actor_table([t.ray_actor_id for t in targets.values() if t.ray_actor_id is not None])
    out = []
    for aid, t in sorted(targets.items()):
        m = meta.get(aid, {})
        row = ray.get(t.ray_actor_id or "", {})
        pid = row.get("pid") or m.get("pid")
        if t.stopped:
            state = "stopped"
        elif row:
            state = row["state"]
        else:
            state = "resident" if m.get("pid") is None else "alive"
        out.append(ActorInfo(aid, t.name, t.label, m.get("cls", "?"), pid, state, row.get("restarts", 0),
                             m.get("max_concurrency", 0), 0, running.get(aid, 0)))
    return out
