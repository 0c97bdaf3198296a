"""Cancelling the scope around ``async with Runtime()``: a deadline, a task-group cancel, Ctrl-C.

Whatever cancels it, and whenever (calls in flight, a start under way, an environment
being built), the Runtime exits within its grace period plus one second and leaves
nothing behind: no actor processes or zombies, no control socket, no shared memory.
Processes are real; leftovers are checked with psutil against the test process.
"""

from __future__ import annotations

import gc
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import psutil
import pytest
import torch

import actorbox

from .cancel_plugins import Napper, NeedsSix, SlowStart

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[2]
GRACE = 0.5
BOUND = GRACE + 1.0  # what the Runtime promises: its grace period plus one second


@pytest.fixture
def runtime_dir(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A private XDG_RUNTIME_DIR, so the control socket this test's Runtime leaves (or not) is visible."""
    d = tempfile.mkdtemp(prefix="abx")
    monkeypatch.setenv("XDG_RUNTIME_DIR", d)
    yield os.path.join(d, "actorbox")
    shutil.rmtree(d, ignore_errors=True)


def _children() -> list[psutil.Process]:
    return psutil.Process().children(recursive=True)  # zombies included: they are still our children


def _running(pid: int) -> bool:
    """Whether ``pid`` still runs (an exited sandbox helper orphaned to init may linger as a zombie of init)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _segments() -> int:
    """Shared-memory segments this process holds: memfds open or mapped."""
    fds = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            fds += os.readlink(f"/proc/self/fd/{fd}").startswith("/memfd:")
        except OSError:
            pass
    with open("/proc/self/maps") as f:
        return fds + sum("/memfd:" in line for line in f)


def _assert_nothing_left(sockets: str, segments_before: int) -> None:
    assert _children() == [], [(p.pid, p.status()) for p in _children()]
    assert not os.path.isdir(sockets) or os.listdir(sockets) == []
    gc.collect()
    assert _segments() <= segments_before


class _Canceller:
    """Runs a body under a scope that ``how`` cancels ``delay`` s after the body calls ``ready()``."""

    def __init__(self, how: str, delay: float = 0.2) -> None:
        self.how = how
        self.delay = delay
        self.cancel_at: float | None = None  # anyio.current_time() of the cancel
        self._scope: anyio.CancelScope | None = None
        self._ready = anyio.Event()

    def ready(self) -> None:
        self.cancel_at = anyio.current_time() + self.delay
        if self._scope is not None:
            self._scope.deadline = self.cancel_at
        self._ready.set()

    async def run(self, body: Any) -> tuple[float, BaseException | None]:
        """(seconds from the cancel to the end of the scope, the exception that left it)."""
        err: BaseException | None = None
        try:
            if self.how == "fail_after":
                with anyio.fail_after(60) as self._scope:
                    await body()
            elif self.how == "move_on_after":
                with anyio.move_on_after(60) as self._scope:
                    await body()
                assert self._scope.cancelled_caught
            else:  # a task group a sibling task cancels
                async with anyio.create_task_group() as tg:
                    async def cancel() -> None:
                        await self._ready.wait()
                        await anyio.sleep_until(self.cancel_at)  # type: ignore[arg-type]
                        tg.cancel_scope.cancel()

                    tg.start_soon(cancel)
                    await body()
        except BaseException as exc:  # the tests say which one they expect
            err = exc
        assert self.cancel_at is not None, f"the body never got ready: {err!r}"
        return anyio.current_time() - self.cancel_at, err


def _check_error(how: str, err: BaseException | None) -> None:
    """fail_after's deadline surfaces as TimeoutError; move_on_after and a task-group cancel just exit."""
    if how == "fail_after":
        assert isinstance(err, TimeoutError), repr(err)
    else:
        assert err is None, repr(err)


@pytest.mark.slow
@pytest.mark.parametrize("how", ["fail_after", "move_on_after", "tg_cancel"])
@pytest.mark.parametrize("in_flight", [True, False], ids=["calls_in_flight", "idle"])
async def test_cancelling_the_runtimes_scope_stops_its_actors_within_the_bound(
        how: str, in_flight: bool, runtime_dir: str) -> None:
    """A cancelled scope around the Runtime: it exits within grace + 1 s, the cancellation surfaces as usual,
    calls in flight fail with ActorStoppedError, and no process, zombie, socket or segment is left."""
    segments_before = _segments()
    left: list[actorbox.Future[Any]] = []
    c = _Canceller(how)

    async def body() -> None:
        async with actorbox.Runtime(grace_period=GRACE) as rt:
            a, b = await rt.start(Napper), await rt.start(Napper)
            assert os.listdir(runtime_dir) != []  # the control socket
            await rt.put(torch.ones(1 << 16))  # a segment the object store holds
            c.ready()
            if not in_flight:
                await anyio.sleep_forever()
            left.extend([a.nap(60), b.block(60)])  # b's loop is blocked: it is killed
            await a.nap(60)

    took, err = await c.run(body)
    assert took < BOUND, f"the Runtime took {took:.2f} s to exit after the cancel"
    _check_error(how, err)
    for fut in left:
        with pytest.raises(actorbox.ActorStoppedError):
            await fut
    _assert_nothing_left(runtime_dir, segments_before)


@pytest.mark.slow
@pytest.mark.parametrize("how", ["fail_after", "tg_cancel"])
async def test_a_cancel_while_the_constructor_runs_ends_the_start_within_the_bound(
        how: str, runtime_dir: str) -> None:
    """Cancelled while rt.start() waits for a slow constructor: the process is killed and reaped within the bound."""
    segments_before = _segments()
    c = _Canceller(how)

    async def body() -> None:
        async with actorbox.Runtime(grace_period=GRACE) as rt:
            await rt.start(Napper)  # an actor already running stops too
            c.ready()
            await rt.start(SlowStart, 60)

    took, err = await c.run(body)
    assert took < BOUND, f"the Runtime took {took:.2f} s to exit after the cancel"
    _check_error(how, err)
    _assert_nothing_left(runtime_dir, segments_before)


@pytest.mark.slow
async def test_cancels_at_any_point_of_a_start_leave_nothing_behind(runtime_dir: str) -> None:
    """A deadline landing anywhere in rt.start() (launching, forking, importing, constructing) leaves
    neither a process nor a zombie, and each exit is prompt."""
    for delay in (0.0, 0.002, 0.005, 0.01, 0.02, 0.04, 0.08, 0.15, 0.3, 0.45):
        t0 = anyio.current_time()
        with pytest.raises(TimeoutError):
            async with actorbox.Runtime(grace_period=GRACE) as rt:
                with anyio.fail_after(delay):
                    await rt.start(Napper)
                    await anyio.sleep_forever()
        assert anyio.current_time() - t0 < delay + BOUND, delay
        assert _children() == [], (delay, [(p.pid, p.status()) for p in _children()])
    assert not os.path.isdir(runtime_dir) or os.listdir(runtime_dir) == []


_SLOW_UV = """#!/bin/sh
echo $$ > "{pidfile}"
exec sleep 60
"""


@pytest.fixture
def slow_uv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, Path]:
    """A uv that never finishes (so an environment is building when the cancel comes), and the file it
    writes its pid to. Nothing reaches the network: this uv does nothing, and UV_OFFLINE is set anyway."""
    pidfile = tmp_path / "uv.pid"
    uv = tmp_path / "uv"
    uv.write_text(_SLOW_UV.format(pidfile=pidfile))
    uv.chmod(0o755)
    monkeypatch.setenv("UV_OFFLINE", "1")
    return str(uv), pidfile


async def _building(rt: actorbox.Runtime, uv: str, pidfile: Path) -> None:
    rt.environments._uv = uv
    with anyio.fail_after(20):
        while not pidfile.exists() or not pidfile.read_text().strip():
            await anyio.sleep(0.01)


@pytest.mark.slow
@pytest.mark.parametrize("how", ["fail_after", "tg_cancel"])
async def test_a_cancel_while_an_environment_builds_kills_uv_and_removes_the_build(
        how: str, slow_uv: tuple[str, Path], tmp_path: Path, runtime_dir: str) -> None:
    """Cancelled while uv builds an actor's environment: uv is killed, the partial environment removed,
    and the Runtime exits within the bound."""
    uv, pidfile = slow_uv
    c = _Canceller(how)
    envs = tmp_path / "envs"

    async def body() -> None:
        async with actorbox.Runtime(grace_period=GRACE, env_root=envs) as rt:
            async with anyio.create_task_group() as tg:
                tg.start_soon(rt.start, NeedsSix)
                await _building(rt, uv, pidfile)
                c.ready()

    took, err = await c.run(body)
    assert took < BOUND, f"the Runtime took {took:.2f} s to exit after the cancel"
    _check_error(how, err)
    assert not _running(int(pidfile.read_text()))  # uv
    assert [p for p in os.listdir(envs) if ".tmp-" in p] == []
    _assert_nothing_left(runtime_dir, 1 << 30)


@pytest.mark.slow
async def test_a_start_building_its_environment_when_the_runtime_exits_fails_with_actor_stopped(
        slow_uv: tuple[str, Path], tmp_path: Path, runtime_dir: str) -> None:
    """A start running outside the Runtime's block (its environment still building) when the block ends
    fails with ActorStoppedError at once; the Runtime does not wait for the build."""
    uv, pidfile = slow_uv
    errors: list[Exception] = []

    async def start(rt: actorbox.Runtime) -> None:
        try:
            await rt.start(NeedsSix)
        except Exception as exc:
            errors.append(exc)

    async with anyio.create_task_group() as outside:
        async with actorbox.Runtime(grace_period=GRACE, env_root=tmp_path / "envs") as rt:
            outside.start_soon(start, rt)
            await _building(rt, uv, pidfile)
            t0 = time.monotonic()
        took = time.monotonic() - t0
    assert took < BOUND
    (err,) = errors
    assert isinstance(err, actorbox.ActorStoppedError) and "while it was starting" in str(err)
    assert not _running(int(pidfile.read_text()))  # uv
    _assert_nothing_left(runtime_dir, 1 << 30)


async def test_a_runtime_entered_in_a_cancelled_scope_raises_the_cancellation(runtime_dir: str) -> None:
    """Entering a Runtime inside an already-cancelled scope starts nothing and just exits the scope."""
    with anyio.move_on_after(0) as scope:
        async with actorbox.Runtime() as rt:
            await rt.start(Napper)
            pytest.fail("not reached: the scope is cancelled")
    assert scope.cancelled_caught
    assert _children() == []
    assert not os.path.isdir(runtime_dir) or os.listdir(runtime_dir) == []


# A host program with a call in flight; Ctrl-C (SIGINT) is what ends it.
_CTRL_C_HOST = textwrap.dedent("""
    import sys
    import anyio
    import structlog
    import actorbox
    from tests.actorbox.cancel_plugins import Napper

    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))  # stdout says "ready" only

    async def main():
        async with actorbox.Runtime(grace_period={grace}) as rt:
            a, b = await rt.start(Napper), await rt.start(Napper)
            left = b.block(60)  # its loop blocked: killed after the grace period
            while len(rt.pending_calls()) < 1:
                await anyio.sleep(0.01)
            print("ready", flush=True)
            await a.nap(60)

    anyio.run(main, backend=sys.argv[1])
""")


@pytest.mark.slow
async def test_ctrl_c_stops_a_host_with_a_call_in_flight(anyio_backend: str, runtime_dir: str) -> None:
    """SIGINT to a host program awaiting a call: it exits with KeyboardInterrupt within grace + 1 s,
    leaving no actor process and no control socket."""
    proc = subprocess.Popen([sys.executable, "-c", _CTRL_C_HOST.format(grace=GRACE), anyio_backend],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert proc.stdout is not None
        line = await anyio.to_thread.run_sync(proc.stdout.readline)
        assert line == "ready\n", proc.communicate(timeout=10)
        actors = [p.pid for p in psutil.Process(proc.pid).children(recursive=True)]
        assert len(actors) >= 2
        assert os.listdir(runtime_dir) == [f"{proc.pid}.sock"]
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        _, err = await anyio.to_thread.run_sync(lambda: proc.communicate(timeout=30))
        took = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert took < BOUND + 0.5, f"took {took:.2f} s"  # + the interpreter's own exit
    assert proc.returncode == -signal.SIGINT and "KeyboardInterrupt" in err, err[-3000:]
    assert [pid for pid in actors if _running(pid)] == []
    assert os.listdir(runtime_dir) == []


@pytest.mark.parametrize("anyio_backend", ["trio"])  # asyncio delivers Ctrl-C to the main task only
async def test_ctrl_c_inside_one_of_the_runtimes_tasks_surfaces_as_keyboard_interrupt(anyio_backend: str) -> None:
    """trio delivers Ctrl-C wherever code runs, so it can land in one of the Runtime's own tasks (a task
    worker starting, say): leaving the Runtime then raises KeyboardInterrupt itself, as Ctrl-C anywhere else
    does, not an exception group holding it (which ended a host program with status 1, not by SIGINT)."""

    async def interrupted() -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt) as caught:
        with anyio.fail_after(30):
            async with actorbox.Runtime() as rt:
                rt._live.tg.start_soon(interrupted)
                await anyio.sleep_forever()
    assert caught.type is KeyboardInterrupt
    assert isinstance(caught.value.__cause__, BaseExceptionGroup)  # what happened stays in the traceback
