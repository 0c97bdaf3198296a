"""Text an actor chose reaches the host's terminal with control characters escaped (issue 14, finding 9).

Event names and fields it logs, its stderr lines (echoed and quoted in ActorDiedError),
the ``ps`` tables and the trace command's output never carry a raw escape sequence.
"""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest
from structlog.testing import capture_logs

import actorbox
from actorbox.__main__ import main
from actorbox._inspect import format_snapshot

from ._support import CALL_TIMEOUT

pytestmark = pytest.mark.anyio

EVIL = "\x1b]0;owned\x07\x1b[2J\x9b31m"  # retitle the window, clear the screen, a C1 CSI


@actorbox.actor
class Scribbler:
    def log(self):
        import structlog

        structlog.get_logger().warning(f"evil{EVIL}", **{f"key{EVIL}": f"value{EVIL}", "nested": [EVIL]})
        return True

    def scribble_and_die(self):
        import os
        import sys

        sys.stderr.write(f"line{EVIL}\ttabbed ünïcode\n")
        sys.stderr.flush()
        os._exit(1)


def _has_raw_controls(text: str) -> bool:
    return any(c in text for c in "\x1b\x07\x9b")


async def test_forwarded_events_are_escaped():
    """An actor's event name and field names and values arrive with their escape sequences escaped."""
    with capture_logs() as logs:
        async with actorbox.Runtime() as rt:
            s = await rt.start(Scribbler)
            with anyio.fail_after(CALL_TIMEOUT):
                assert await s.log() is True
    [ev] = [e for e in logs if e["event"].startswith("evil")]
    assert ev["event"] == "evil\\x1b]0;owned\\x07\\x1b[2J\\x9b31m"
    assert ev["key\\x1b]0;owned\\x07\\x1b[2J\\x9b31m"].startswith("value\\x1b]0;owned")
    for k, v in ev.items():
        assert not _has_raw_controls(k) and not _has_raw_controls(str(v) if type(v) is str else repr(v)), (k, v)


async def test_stderr_lines_are_escaped_in_echo_and_death_report(capsys: pytest.CaptureFixture[str]):
    """A stderr line is echoed and quoted by ActorDiedError escaped; tabs and ordinary Unicode are kept."""
    async with actorbox.Runtime() as rt:
        s = await rt.start(Scribbler)
        with anyio.fail_after(CALL_TIMEOUT):
            with pytest.raises(actorbox.ActorDiedError) as ei:
                await s.scribble_and_die()
    assert "line\\x1b]0;owned\\x07\\x1b[2J\\x9b31m\ttabbed ünïcode" in ei.value.stderr
    assert not _has_raw_controls(str(ei.value))
    err = capsys.readouterr().err
    assert "line\\x1b]0;owned" in err and not _has_raw_controls(err)


def test_ps_tables_escape_every_cell():
    """`ps` shows labels, class names, methods and names from a snapshot with control characters escaped."""
    snap = {"runtime": {"pid": 1, "program": f"prog{EVIL}"}, "names": {f"name{EVIL}": 1},
            "object_store": {"objects": 0, "bytes": 0},
            "actors": [{"actor_id": 1, "label": f"label{EVIL}", "cls": f"Cls{EVIL}", "pid": 5, "state": "alive",
                        "restarts": 0, "rss": None, "cpu_percent": None, "queued": 0, "running": []}],
            "calls": [{"call_id": 1, "actor": f"label{EVIL}", "method": f"m{EVIL}", "caller": "host",
                       "parent_call_id": None, "state": "running", "age_s": 0.5}]}
    text = format_snapshot(snap)
    assert not _has_raw_controls(text)
    assert "label\\x1b]0;owned" in text and "Cls\\x1b" in text and "m\\x1b" in text and "name\\x1b" in text


def test_trace_output_carries_no_raw_controls(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    """`python -m actorbox trace` writes a recorded actor name and method escaped, to stdout and in HTML."""
    events = tmp_path / "events.jsonl"
    recs = [{"ts": 1.0, "event": "call.started", "logger": "actorbox", "call_id": 1, "actor": f"a{EVIL}",
             "method": f"m{EVIL}", "caller": "host", "pid": 2},
            {"ts": 1.5, "event": "call.finished", "logger": "actorbox", "call_id": 1, "actor": f"a{EVIL}",
             "method": f"m{EVIL}", "caller": "host", "pid": 2, "duration_ms": 500.0}]
    events.write_text("".join(json.dumps(r) + "\n" for r in recs))
    for fmt in ("chrome", "html"):
        assert main(["trace", str(events), "--format", fmt]) == 0
        out = capsys.readouterr()
        assert "owned" in out.out and not _has_raw_controls(out.out + out.err)
