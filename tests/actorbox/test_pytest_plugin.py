"""Tests of actorbox's pytest plugin: its options, the Runtime fixture and the leak check.

Inner test sessions run in this process through pytester; each writes its actor
classes into its own test file (the sandbox exposes the file's directory).
"""

from __future__ import annotations

import json
import os
import re
import time
from typing import Any

import anyio
import numpy as np
import psutil
import pytest
import structlog

import actorbox
from actorbox._pytest_plugin import LeakCheck

pytest_plugins = ["pytester"]


class Echo:
    def echo(self, x: Any) -> Any:
        return x

    async def nap(self, s: float) -> float:
        await anyio.sleep(s)
        return s

    def array(self, n: int) -> Any:
        return np.ones(n, dtype=np.uint8)


def _descendants() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


def _structlog_state() -> tuple[Any, Any, str | None]:
    cfg = structlog.get_config()
    return cfg["wrapper_class"], cfg["logger_factory"], os.environ.get("ACTORBOX_LOG_CALLS")


# -- the fixtures, used directly --------------------------------------------------------------


@pytest.mark.anyio
async def test_runtime_fixture_runs_sandboxed_actors(actorbox_runtime: actorbox.Runtime) -> None:
    """actorbox_runtime yields a running Runtime (sandbox required by default) whose actors answer calls."""
    rt = actorbox_runtime
    assert rt.sandbox == "required"
    h = await rt.start(Echo)
    assert await h.echo([1, "two"]) == [1, "two"]
    (info,) = [a for a in rt.actors() if a.kind == "actor"]  # (and its zygote, kind "zygote")
    assert info.state == "alive"
    assert info.pid in _descendants()


@pytest.mark.anyio
@pytest.mark.actorbox(sandbox="disabled", grace_period=1.5)
async def test_marker_passes_runtime_options(actorbox_runtime: actorbox.Runtime) -> None:
    """@pytest.mark.actorbox(...) keyword arguments reach the fixture's Runtime."""
    assert actorbox_runtime.sandbox == "disabled"
    assert actorbox_runtime.grace_period == 1.5
    h = await actorbox_runtime.start(Echo)
    assert await h.nap(0) == 0


@pytest.mark.anyio
async def test_leak_check_fixture_accepts_an_exited_runtime(actorbox_leak_check: LeakCheck) -> None:
    """A test whose own Runtime exited leaves nothing for actorbox_leak_check to report."""
    async with actorbox.Runtime(sandbox="disabled") as rt:
        actorbox_leak_check.watch(rt)
        h = await rt.start(Echo)
        assert await h.echo(1) == 1
        # The actor runs now: a leak if the test ended here.
        actors = [a.pid for a in rt.actors() if a.kind == "actor"]  # the zygote is no leak: it goes with rt
        assert [p.pid for p in actorbox_leak_check.leaked_processes()] == actors
    assert actorbox_leak_check.leaked_processes() == []
    # The sockets and segments are compared at teardown, once this test's event loop (whose own
    # sockets the snapshot, taken before the loop started, does not hold) is closed.


@pytest.mark.anyio
async def test_leak_check_names_unexited_runtime_its_process_sockets_and_pending_calls() -> None:
    """While a watched Runtime is not exited, the check names it, its actor process, sockets and pending calls."""
    check = LeakCheck()
    rt = check.watch(actorbox.Runtime(sandbox="disabled", grace_period=1.0))
    await rt.__aenter__()
    try:
        h = await rt.start(Echo)
        fut = h.nap(30)
        (pid,) = [a.pid for a in rt.actors() if a.kind == "actor"]
        leaks = check.leaks()
        text = "\n".join(leaks)
        assert len(leaks) == 4, text
        assert "a Runtime is still running" in text
        assert f"1 pending call(s): {actorbox.info(h).label}.nap()" in text
        assert f"1 actor process(es) still running: pid {pid} (" in text and "actorbox._child" in text
        assert "Unix socket(s) still open" in text
    finally:
        await rt.__aexit__(None, None, None)
    with pytest.raises(actorbox.ActorStoppedError):
        await fut
    assert check.leaks() == []


@pytest.mark.anyio
async def test_leak_check_names_shared_memory_still_referenced() -> None:
    """An array received from an actor and kept past the Runtime is reported as a shared-memory segment."""
    check = LeakCheck()
    async with actorbox.Runtime(sandbox="disabled") as rt:
        h = await rt.start(Echo)
        arr = await h.array(1 << 16)
    assert int(arr.sum()) == 1 << 16
    leaks = check.leaks()
    assert len(leaks) == 1 and "1 shared-memory segment(s) still open (memfd fd " in leaks[0], leaks
    del arr
    assert check.leaks() == []


def test_leak_check_kills_leaked_actor_processes() -> None:
    """kill_leaked_processes() kills actor processes started after the snapshot, and only those."""
    import subprocess
    import sys

    check = LeakCheck()
    # Looks like an actor process to the check (its command line names actorbox._child).
    actorlike = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "actorbox._child"])
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert [p.pid for p in check.leaked_processes()] == [actorlike.pid]
        assert check.kill_leaked_processes() == [actorlike.pid]
        assert actorlike.wait(timeout=10) == -9
        assert other.poll() is None
    finally:
        for p in (actorlike, other):
            p.kill()
            p.wait()
    assert check.leaks() == []


# -- whole sessions, through pytester ---------------------------------------------------------

_INNER_INI = """
[pytest]
addopts = --strict-markers -p no:cacheprovider
filterwarnings = error
actorbox_sandbox = {sandbox}
"""

_LEAKY = '''
import anyio
import pytest

import actorbox

pytestmark = pytest.mark.anyio


class Sleeper:
    async def nap(self, s):
        await anyio.sleep(s)
        return s


@pytest.fixture
async def wide_rt(anyio_backend):
    # Stands for a Runtime of wider scope that outlives the test (set up before the leak check).
    async with actorbox.Runtime(grace_period=1.0) as rt:
        yield rt


async def test_clean(actorbox_runtime):
    h = await actorbox_runtime.start(Sleeper)
    assert await h.nap(0) == 0


async def test_clean_own_runtime(actorbox_leak_check):
    async with actorbox.Runtime() as rt:
        actorbox_leak_check.watch(rt)
        assert await (await rt.start(Sleeper)).nap(0) == 0


async def test_leaves_actor_running(wide_rt, actorbox_leak_check):
    await wide_rt.start(Sleeper)


@pytest.mark.actorbox(grace_period=1.0)
async def test_leaves_call_pending(actorbox_runtime):
    (await actorbox_runtime.start(Sleeper)).nap(30)
'''


@pytest.mark.slow
@pytest.mark.parametrize("sandbox", ["required", "disabled"])
def test_leaky_tests_fail_at_teardown_and_clean_ones_pass(pytester: pytest.Pytester, sandbox: str,
                                                          actorbox_leak_check: LeakCheck) -> None:
    """Through a real session (asyncio and trio): leaky tests error at teardown naming the leak; clean ones pass."""
    pytester.makeini(_INNER_INI.format(sandbox=sandbox))
    pytester.makepyfile(test_inner=_LEAKY)
    before = _structlog_state()
    result = pytester.runpytest("-p", "anyio")
    out = result.stdout.str()
    # A test whose teardown errs still counts as passed too: 4 clean + 4 leaky, 4 errors.
    result.assert_outcomes(passed=8, errors=4)
    for backend in ("asyncio", "trio"):
        for name in ("test_leaves_actor_running", "test_leaves_call_pending"):
            assert f"ERROR at teardown of {name}[{backend}]" in out
            assert f"test_inner.py::{name}[{backend}] left resources behind:" in out
    # Count in the ERRORS section only: on CI (CI=true) pytest repeats each message untruncated
    # in the short summary.
    out = out.split("short test summary info")[0]
    assert out.count("1 actor process(es) still running: pid ") == 2, out
    assert out.count("actorbox._child") == 2, out  # only the actor itself is described, not its sandbox
    if sandbox == "required":
        assert out.count("with 2 process(es) of their sandboxes or started by them") == 2, out
    assert out.count("actorbox killed the leaked processes") == 2, out
    assert len(re.findall(r"1 pending call\(s\): Sleeper#\d+\.nap\(\) call_id=", out)) == 2, out
    assert "Await each call's Future" in out and "Exit every Runtime" in out
    assert _structlog_state() == before
    assert actorbox_leak_check.leaks() == []  # the inner session cleaned up after itself


_TRACED = '''
import os

import pytest
import structlog
from structlog.testing import capture_logs

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return "asyncio"


class Chatty:
    def hello(self, who):
        structlog.get_logger("plugin").info("plugin.hello", who=who)
        return f"hello {who}"


async def test_traced(actorbox_runtime):
    assert os.environ["ACTORBOX_LOG_CALLS"] == "1"
    h = await actorbox_runtime.start(Chatty, name="chatty")
    assert await h.hello("a") == "hello a"
    with capture_logs() as logs:
        assert await h.hello("b") == "hello b"
    assert "call.finished" in [e["event"] for e in logs]
'''


def test_log_file_writes_the_event_stream_as_json_lines(pytester: pytest.Pytester) -> None:
    """--actorbox-log-file writes each event as a JSON object with ts, event, logger and level, then restores."""
    pytester.makeini(_INNER_INI.format(sandbox="disabled"))
    pytester.makepyfile(test_traced=_TRACED)
    path = pytester.path / "logs" / "events.jsonl"
    before = _structlog_state()
    t0 = time.time()
    result = pytester.runpytest(f"--actorbox-log-file={path}")
    t1 = time.time()
    result.assert_outcomes(passed=1)
    assert _structlog_state() == before
    recs = [json.loads(line) for line in path.read_text().splitlines()]
    assert recs and all(isinstance(r, dict) for r in recs)
    for r in recs:
        assert isinstance(r["ts"], float) and t0 <= r["ts"] <= t1, r
        assert isinstance(r["event"], str) and r["level"] in ("debug", "info", "warning", "error", "critical"), r
    by_event: dict[str, list[dict[str, Any]]] = {}
    for r in recs:
        by_event.setdefault(r["event"], []).append(r)
    (started,) = by_event["actor.started"]
    assert started["logger"] == "actorbox" and started["actor"] == "chatty" and isinstance(started["pid"], int)
    # Both calls, the one made inside capture_logs included (the file is written before the processors).
    for name in ("call.submitted", "call.started", "call.finished"):
        calls = [r for r in by_event[name] if r["method"] == "hello"]
        assert len(calls) == 2, (name, calls)
        assert all(r["logger"] == "actorbox" and r["actor"] == "chatty" and "parent_call_id" in r for r in calls)
    assert {r["call_id"] for r in by_event["call.submitted"]} == {r["call_id"] for r in by_event["call.finished"]}
    assert all(r["duration_ms"] >= 0 for r in by_event["call.finished"])
    # An event an actor logged itself arrives under actorbox.actor, not actorbox.
    hellos = by_event["plugin.hello"]
    assert [(r["logger"], r["who"], r["actor"]) for r in hellos] == [("actorbox.actor", "a", "chatty"),
                                                                     ("actorbox.actor", "b", "chatty")]
    assert by_event["actor.stopped"][0]["ts"] >= started["ts"]


_DEBUG_CONFTEST = '''
import logging

import structlog


def pytest_configure(config):
    # An application's own setting: info and above.
    config._saved_wrapper = structlog.get_config()["wrapper_class"]
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.INFO))


def pytest_unconfigure(config):
    structlog.configure(wrapper_class=config._saved_wrapper)
'''

_DEBUG_TEST = '''
import os

import structlog
from structlog.testing import capture_logs


def test_debug_events_reach_the_processors():
    with capture_logs() as logs:
        structlog.get_logger("actorbox").debug("probe.debug", n=1)
        structlog.get_logger("actorbox").info("probe.info")
    assert [e["event"] for e in logs] == ["probe.debug", "probe.info"]
    assert os.environ.get("ACTORBOX_LOG_CALLS") == "1"
'''


@pytest.mark.parametrize("debug", [True, False])
def test_debug_option_lets_debug_events_through(pytester: pytest.Pytester, debug: bool) -> None:
    """--debug-actorbox shows debug events past an info-level config and turns call events on, for the session."""
    pytester.makeini(_INNER_INI.format(sandbox="disabled"))
    pytester.makeconftest(_DEBUG_CONFTEST)
    pytester.makepyfile(test_debug=_DEBUG_TEST)
    before = _structlog_state()
    result = pytester.runpytest(*(["--debug-actorbox"] if debug else []))
    result.assert_outcomes(**({"passed": 1} if debug else {"failed": 1}))
    if not debug:
        assert "assert ['probe.info'] == ['probe.debug', 'probe.info']" in result.stdout.str()
    assert _structlog_state() == before


def test_unwritable_log_file_is_a_usage_error(pytester: pytest.Pytester) -> None:
    """An --actorbox-log-file that cannot be created stops the session with a usage error naming it."""
    pytester.makepyfile(test_nothing="def test_nothing():\n    pass\n")
    blocker = pytester.path / "not-a-dir"
    blocker.write_text("")
    result = pytester.runpytest(f"--actorbox-log-file={blocker}/events.jsonl")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*--actorbox-log-file: cannot write {blocker}/events.jsonl*"])


def test_plugin_is_registered_by_its_entry_point(pytester: pytest.Pytester) -> None:
    """A session that names no plugin still gets actorbox's options and fixtures (entry point pytest11)."""
    result = pytester.runpytest("--fixtures", "-p", "no:cacheprovider")
    result.stdout.fnmatch_lines(["plugins: *actorbox-*", "*fixtures defined from actorbox._pytest_plugin*",
                                 "actorbox_leak_check -- *", "actorbox_runtime -- *"])
    help_result = pytester.runpytest("--help")
    help_result.stdout.fnmatch_lines(["actorbox:", "*--debug-actorbox*", "*--actorbox-log-file=PATH*"])
