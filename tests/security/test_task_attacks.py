"""Hostile actors and tasks against the task pool (``actorbox.tasks``), and a careless host.

A real sandboxed actor calls the pool with methods it crafted, submits tasks that wait for
tasks, and floods it; the host must answer each with a typed error, never disconnect a
well-behaved caller for what it named, and never leave a Future waiting for good.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import anyio
import psutil
import pytest

import actorbox
import actorbox._actors

from ._support import CALL_TIMEOUT
from .plugins.task_attacks import Submitter, call_back_later, double, nap, nested

pytestmark = pytest.mark.anyio

_REF = "tests.security.plugins.task_attacks:double"


def _state(rt: actorbox.Runtime, handle: actorbox.ActorHandle) -> str:
    return next(a.state for a in rt.actors() if a.label == actorbox.info(handle).label)


async def test_task_options_nested_past_the_parsers_depth_are_refused_not_fatal() -> None:
    """Options JSON nested ~1,500 deep (inside the 2 KiB bound) is refused with UsageError like any malformed
    options: the parser's RecursionError neither escapes the pool nor disconnects the actor that sent it."""
    async with actorbox.Runtime() as rt:
        h = await rt.start(Submitter)
        with anyio.fail_after(CALL_TIMEOUT):
            for options in ("[" * 1500, '{"resources":' + "[" * 1500):
                got = await h.forge(f"{_REF}?{options}")
                assert got.startswith("UsageError: task tests.security.plugins.task_attacks:double(): its options "
                                      "are malformed"), got
            assert _state(rt, h) == "alive"
            assert await h.ping() == "pong"
            assert await rt.submit(double, 21) == 42
        assert [c for c in rt.pending_calls() if c.actor == "actorbox.tasks"] == []


async def test_a_task_waiting_for_a_task_it_leaves_no_room_for_fails_with_deadlock_error() -> None:
    """With one CPU, a task (from the host, or from an actor) that submits a task and waits for it holds the only
    CPU and worker the inner task needs: the inner task fails with DeadlockError (within the pool's check interval)
    instead of both waiting for good,
    and everything is given back. With two CPUs the same task runs."""
    async with actorbox.Runtime(num_cpus=1) as rt:
        h = await rt.start(Submitter)
        with anyio.fail_after(CALL_TIMEOUT):
            # The outer task gets the DeadlockError and raises it on, as its own (untrusted) exception.
            with pytest.raises(actorbox.RemoteError, match=r"DeadlockError.*task double\(\) can never start: 1 "):
                await rt.submit(nested, 3)
            with pytest.raises(actorbox.RemoteError, match=r"DeadlockError.*submit them from the host"):
                await h.nested(4)
            while rt.resources().free["CPU"] != 1.0:
                await anyio.sleep(0.02)
            assert await rt.submit(double, 5) == 10  # the pool goes on
            # Tasks merely queued behind busy workers (no task waits for them) are left alone.
            assert await actorbox.gather(rt.submit(nap, 1.0), *[rt.submit(double, i) for i in range(5)]) == \
                ["napped", 0, 2, 4, 6, 8]
        assert [c for c in rt.pending_calls() if c.actor == "actorbox.tasks"] == []
    async with actorbox.Runtime(num_cpus=2) as rt:
        with anyio.fail_after(CALL_TIMEOUT):
            assert await rt.submit(nested, 3) == 6


async def test_a_task_calling_back_into_the_actor_that_waits_for_it_is_served() -> None:
    """An actor (max_concurrency=1) whose method waits for a task that calls that same actor: the call back is
    re-entrant through the pool (its ancestor runs on the actor), so it is served, not queued behind its caller."""
    async with actorbox.Runtime(num_cpus=1) as rt:
        h = await rt.start(Submitter)
        with anyio.fail_after(CALL_TIMEOUT):
            assert await h.loop_back(h) == "pong"


async def test_a_worker_that_cannot_start_while_others_of_its_kind_run_fails_no_task(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A further worker failing to start (the host out of descriptors: EMFILE) while one of its kind runs leaves
    the queued tasks to that one, instead of failing every one of them with the start's error; the next start is
    tried a while later, not on every reply. With no worker of its kind alive the tasks still fail with why."""
    starts: list[str] = []
    failing = False
    real_start = actorbox._actors.ActorTable.start

    async def start(self: actorbox._actors.ActorTable, req: actorbox._actors.StartRequest) -> object:
        if failing and req.cls_name == "TaskWorker":
            starts.append("failed")
            raise actorbox.ActorStartError("could not launch the process for actor 'task-worker': [Errno 24] "
                                           "Too many open files")
        return await real_start(self, req)

    monkeypatch.setattr(actorbox._actors.ActorTable, "start", start)
    async with actorbox.Runtime(num_cpus=2) as rt:
        with anyio.fail_after(CALL_TIMEOUT):
            assert await rt.submit(double, 1) == 2  # one worker of the host's kind runs
            failing = True
            assert await actorbox.gather(*[rt.submit(nap, 0.01) for _ in range(40)]) == ["napped"] * 40
            assert 1 <= len(starts) <= 2  # ~0.4 s of tasks: a second try at most
            # The only worker of the kind dies while its start is held back: a worker is started once the
            # wait is over, with no reply to set it off.
            futs = [rt.submit(nap, 0.3) for _ in range(4)]
            while not any(w.running for w in rt.actors() if w.kind == "task worker"):
                await anyio.sleep(0.02)
            await anyio.sleep(0.1)  # the further start failed meanwhile
            failing = False
            (victim,) = [w for w in rt.actors() if w.kind == "task worker" and w.state == "alive"]
            assert victim.pid is not None
            os.kill(victim.pid, signal.SIGKILL)
            assert await actorbox.gather(*futs) == ["napped"] * 4
    failing = True
    async with actorbox.Runtime(num_cpus=2) as rt:
        with anyio.fail_after(CALL_TIMEOUT), pytest.raises(actorbox.ActorStartError, match="Too many open files"):
            await rt.submit(double, 1)


async def test_a_lying_task_worker_answers_for_no_task_but_its_own() -> None:
    """A task (an actor's) that writes replies, twice, for every call id within 300 of its own: only its own
    call takes one (the worker may answer for its task as it likes); the host's tasks and another actor's,
    in flight meanwhile and after, get their true results, and the CPUs come back."""
    async with actorbox.Runtime(num_cpus=2) as rt:
        a, b = await rt.start(Submitter), await rt.start(Submitter)
        with anyio.fail_after(CALL_TIMEOUT * 2):
            assert await a.doubles(2) == [0, 2] and await b.doubles(2) == [0, 2]  # their workers are up
            host = [rt.submit(double, i) for i in range(60)]
            lie = a.spray(300)
            other = b.doubles(40)
            assert await actorbox.gather(*host) == [2 * i for i in range(60)]
            assert await other == [2 * i for i in range(40)]
            assert await lie in ("forged", "real")
            # (a's own later tasks may take its worker's lies: the tasks of one submitter share its processes)
            assert await b.doubles(3) == [0, 2, 4] and await rt.submit(double, 7) == 14
            while rt.resources().free["CPU"] != 2.0:
                await anyio.sleep(0.02)


async def test_an_actors_submit_flood_is_bounded_and_leaves_nothing_behind() -> None:
    """3,000 tasks submitted at once by an actor, each with a tensor (a descriptor the pool holds while the task
    waits), with one CPU: past the per-actor bound of held descriptors the rest are refused with a typed error,
    the others run; with max_pending_tasks=50 the ones past it are refused likewise. No descriptor is left open
    in the host and the CPU comes back."""
    async with actorbox.Runtime(num_cpus=1) as rt:
        a = await rt.start(Submitter)
        assert await a.tensor_flood(2) == {"ok": 2}
        fds = len(os.listdir("/proc/self/fd"))
        with anyio.fail_after(CALL_TIMEOUT * 4):
            got = await a.tensor_flood(3000)
        assert set(got) <= {"ok", "CallRefusedError"} and got.get("ok", 0) >= 1000 and sum(got.values()) == 3000
        with anyio.fail_after(CALL_TIMEOUT):
            while len(os.listdir("/proc/self/fd")) > fds or rt.resources().free["CPU"] != 1.0:
                await anyio.sleep(0.05)
    async with actorbox.Runtime(num_cpus=1, max_pending_tasks=50) as rt:
        a = await rt.start(Submitter)
        with anyio.fail_after(CALL_TIMEOUT * 2):
            got = await a.tensor_flood(300)
        assert got.get("PendingCallsLimitError", 0) >= 200 and got["ok"] + got["PendingCallsLimitError"] == 300


async def test_a_runtime_exited_with_tasks_queued_ends_every_future_and_leaves_no_process() -> None:
    """A careless host leaves 'async with Runtime()' with tasks running, queued in the pool, pipelined in
    workers and waited for by an actor's method: every Future ends at once (a result, or a typed error saying the
    Runtime exited), and no process of the Runtime is left."""
    from tests.actorbox.processes import wait_for_no_leftovers

    async with actorbox.Runtime(num_cpus=1) as rt:
        a = await rt.start(Submitter)
        assert await rt.submit(double, 1) == 2
        futs = [rt.submit(nap, 0.3) for _ in range(10)] + [rt.submit(double, i) for i in range(50)]
        inner = a.doubles(30)
        await anyio.sleep(0.4)
    with anyio.fail_after(CALL_TIMEOUT):
        for f in [*futs, inner]:
            try:
                await f
            except (actorbox.ActorStoppedError, actorbox.ActorDiedError) as exc:
                assert "Runtime exited" in str(exc) or "stopped" in str(exc), exc
    assert all(f.done() for f in [*futs, inner])
    assert await wait_for_no_leftovers() == []


_FAN_OUT_HOST = textwrap.dedent("""
    import sys
    import anyio
    import structlog
    import actorbox
    from tests.security.plugins.task_attacks import Submitter, double, nap

    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))  # stdout says "ready" only

    async def main():
        async with actorbox.Runtime(num_cpus=2, grace_period=0.5) as rt:
            a = await rt.start(Submitter)
            futs = [rt.submit(nap, 0.05) for _ in range(300)] + [rt.submit(double, i) for i in range(300)]
            inner = a.doubles(200)
            while not any(w.running for w in rt.actors() if w.kind == "task worker"):
                await anyio.sleep(0.01)
            print("ready", flush=True)
            await actorbox.gather(inner, *futs)

    anyio.run(main, backend=sys.argv[1])
""")


@pytest.mark.slow
async def test_ctrl_c_during_a_task_fan_out_ends_the_host_and_every_worker(anyio_backend: str) -> None:
    """SIGINT to a host gathering 800 tasks (its own and an actor's) while workers run them: the host exits
    with KeyboardInterrupt within the grace period and a little more, and no worker, actor or zygote lives on."""
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen([sys.executable, "-c", _FAN_OUT_HOST, anyio_backend], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=root)
    try:
        assert proc.stdout is not None
        line = await anyio.to_thread.run_sync(proc.stdout.readline)
        assert line == "ready\n", proc.communicate(timeout=10)
        spawned = [p.pid for p in psutil.Process(proc.pid).children(recursive=True)]
        assert len(spawned) >= 3  # the actor, a worker, their zygote (and the sandboxes around them)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        _, err = await anyio.to_thread.run_sync(lambda: proc.communicate(timeout=30))
        took = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert took < 5.0, f"took {took:.2f} s"
    assert proc.returncode == -signal.SIGINT and "KeyboardInterrupt" in err, err[-3000:]
    with anyio.fail_after(CALL_TIMEOUT):
        while [pid for pid in spawned if _running(pid)]:
            await anyio.sleep(0.05)


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


async def test_a_cycle_through_a_tasks_cpu_and_an_actors_slot_fails_with_deadlock_error() -> None:
    """One CPU: task T1 holds it and calls actor A (max_concurrency=1), whose running method waits for task T2,
    queued for T1's CPU, so T1's call waits for A's slot: T2 fails with DeadlockError (the actor's method raises it
    on), which frees A's slot, and T1 ends."""
    async with actorbox.Runtime(num_cpus=1) as rt:
        h = await rt.start(Submitter)
        t1 = rt.submit(call_back_later, h, 0.5)
        while not any(w.running for w in rt.actors() if w.kind == "task worker"):
            await anyio.sleep(0.01)
        m0 = h.nested_double(3)
        with anyio.fail_after(CALL_TIMEOUT):
            with pytest.raises(actorbox.RemoteError, match=r"DeadlockError.*task double\(\) can never start"):
                await m0
            assert await t1 == "pong"


async def test_a_task_naming_host_functions_runs_in_the_actors_sandbox_and_asks_only_what_it_may(
        host_marker: str) -> None:
    """An actor's task call naming os:system, builtins:eval or a host class runs (or fails) in that actor's own
    sandboxed worker, never in the host: a file it creates in /tmp is not the host's, and a host object can't
    come back. Options it may not set (a negative CPU count, CPU as a custom resource, a float max_retries,
    GPUs the Runtime lacks) are refused with typed errors."""
    async with actorbox.Runtime(num_cpus=1, num_gpus=0) as rt:
        a = await rt.start(Submitter)
        with anyio.fail_after(CALL_TIMEOUT * 2):
            assert await a.forge_call("os:system?{}", f"touch {host_marker}") == "0"
            assert await a.forge_call("builtins:eval?{}", "6*7") == "42"
            assert (await a.forge_call("actorbox._runtime:Runtime?{}")).startswith("SerializationError: cannot send")
            for options, error in (('{"num_cpus":-1}', "UsageError: num_cpus must be a number >= 0"),
                                   ('{"resources":{"CPU":1}}', "UsageError: resources: 'CPU' is not a custom"),
                                   ('{"max_retries":1e9}', "UsageError: max_retries must be an int"),
                                   ('{"num_gpus":1}', "InfeasibleResourcesError: task getpid() asks for 1 GPU")):
                assert (await a.forge_call(f"os:getpid?{options}")).startswith(error)
    assert not os.path.exists(host_marker)
