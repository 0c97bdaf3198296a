"""Tasks (issue 18): @actorbox.task functions run on pooled, sandboxed worker actors."""

from __future__ import annotations

import itertools
import os
import signal
from pathlib import Path

import anyio
import pytest
import structlog

import actorbox
import actorbox._task_workers
from actorbox._inspect import format_snapshot, snapshot

from . import task_plugins
from .task_env_plugins import six_version
from .task_plugins import (
    FanOut,
    count,
    die,
    double,
    half_cpu,
    hold,
    hold_two,
    huge,
    make_tensor,
    once,
    raises,
    raises_retried,
    sleep_async,
    slow,
    stamp,
    tensor_sum,
    uses_db,
    whoami,
)

pytestmark = pytest.mark.anyio


def _workers(rt: actorbox.Runtime) -> list[actorbox.ActorInfo]:
    return [a for a in rt.actors() if a.label.startswith("task-worker#") and a.state == "alive"]


def _task_calls(rt: actorbox.Runtime) -> list[actorbox.CallInfo]:
    return [c for c in rt.pending_calls() if c.actor == "actorbox.tasks"]


async def _until(cond: object, timeout: float = 20.0) -> None:
    with anyio.fail_after(timeout):
        while not cond():  # type: ignore[operator]
            await anyio.sleep(0.02)


async def test_two_hundred_tasks_return_their_results_in_order() -> None:
    """200 tasks submitted at once all run, each result matching its arguments, on at most num_cpus workers."""
    async with actorbox.Runtime(num_cpus=2) as rt:
        futs = [rt.submit(double, i) for i in range(200)]
        assert [await f for f in futs] == [2 * i for i in range(200)]
        assert 1 <= len(_workers(rt)) <= 2
        assert rt.resources().free["CPU"] == 2.0


async def test_actorbox_submit_in_the_host_is_rt_submit() -> None:
    """actorbox.submit() inside a Runtime submits to it; outside any Runtime it says what is missing."""
    with pytest.raises(actorbox.ActorboxError, match="needs a running actorbox Runtime"):
        actorbox.submit(double, 1)
    async with actorbox.Runtime() as rt:
        assert await actorbox.submit(double, 4) == 8
        assert await rt.submit(whoami) != task_plugins.WORKER  # a worker process, not the host


@pytest.mark.slow
async def test_peak_concurrency_stays_within_num_cpus() -> None:
    """With num_cpus=2, six one-CPU tasks never run more than two at a time, and the CPUs come back."""
    async with actorbox.Runtime(num_cpus=2) as rt:
        runs = [await f for f in [rt.submit(hold, 0.3) for _ in range(6)]]
        events = sorted([(t0, 1) for t0, _, _ in runs] + [(t1, -1) for _, t1, _ in runs],
                        key=lambda e: (e[0], e[1]))
        peak = level = 0
        for _, step in events:
            level += step
            peak = max(peak, level)
        assert peak <= 2
        assert len({p for _, _, p in runs}) <= 2  # workers are reused
        assert rt.resources().free == {"CPU": 2.0, "GPU": rt.resources().total["GPU"]}


async def test_an_infeasible_task_is_refused_at_once() -> None:
    """A task asking for more than the Runtime has fails on submit, naming resource, ask and total; nothing starts."""
    async with actorbox.Runtime(num_cpus=2) as rt:
        with pytest.raises(actorbox.InfeasibleResourcesError) as info:
            rt.submit(huge)
        assert (info.value.resource, info.value.requested, info.value.available) == ("CPU", 64.0, 2.0)
        assert "64 CPU" in str(info.value) and "has 2 in all" in str(info.value)
        with pytest.raises(actorbox.InfeasibleResourcesError, match="'db'"):
            rt.submit(uses_db)
        assert _workers(rt) == [] and _task_calls(rt) == []
    async with actorbox.Runtime(resources={"db": 1}) as rt:
        assert await rt.submit(uses_db) == "db"


@pytest.mark.slow
async def test_small_tasks_are_not_stuck_behind_a_big_one() -> None:
    """A two-CPU task waiting for a busy CPU does not hold back one-CPU and half-CPU tasks behind it."""
    async with actorbox.Runtime(num_cpus=2) as rt:
        long = rt.submit(hold, 30.0)
        await _until(lambda: rt.resources().free["CPU"] == 1.0)
        big = rt.submit(hold_two, 0.01)
        assert await rt.submit(double, 3) == 6
        assert await rt.submit(half_cpu)
        assert not big.done()
        long.cancel()  # a sync task can't be interrupted: its worker is killed, and its CPU comes back
        with anyio.fail_after(20):
            assert await big == "big"


async def test_a_tensor_result_feeds_the_next_task_as_a_future() -> None:
    """A task's tensor result, passed on as a pending Future, reaches the next task through shared memory."""
    async with actorbox.Runtime() as rt:
        t = rt.submit(make_tensor, 1000)
        total = rt.submit(tensor_sum, t)
        assert await total == float(sum(range(1000)))
        assert float((await t).sum()) == float(sum(range(1000)))


@pytest.mark.slow
async def test_a_worker_killed_mid_task_is_retried_on_another() -> None:
    """Killing the worker running a task runs the task again on a new worker, and its result arrives."""
    async with actorbox.Runtime(num_cpus=1) as rt:
        fut = rt.submit(slow, 1.0)
        await _until(lambda: any(w.running for w in _workers(rt)))
        (victim,) = _workers(rt)
        assert victim.pid is not None
        os.kill(victim.pid, signal.SIGKILL)
        assert await fut
        assert [w.pid for w in _workers(rt)] != [victim.pid]


async def test_a_task_that_kills_every_worker_fails_with_every_cause() -> None:
    """A task whose worker dies on all max_retries+1 attempts fails with TaskFailedError listing each death."""
    async with actorbox.Runtime(num_cpus=1) as rt:
        with pytest.raises(actorbox.TaskFailedError) as info:
            await rt.submit(die)
        err = info.value
        assert isinstance(err, actorbox.ActorDiedError)
        assert len(err.causes) == 3 and all("exited with code 13" in c for c in err.causes)
        assert err.exit_code == 13 and "attempt 3" in str(err) and "max_retries=2" in str(err)
        assert await rt.submit(double, 1) == 2  # the pool goes on


async def test_an_exception_is_not_retried_unless_the_task_says_so() -> None:
    """A task that raises fails with its exception after one try; retry_exceptions=True tries max_retries more."""
    async with actorbox.Runtime(log_calls=True) as rt:
        with structlog.testing.capture_logs() as logs:
            with pytest.raises(ValueError, match="boom"):
                await rt.submit(raises, "boom")
            with pytest.raises(ValueError, match="again"):
                await rt.submit(raises_retried, "again")
        retried = [e for e in logs if e["event"] == "task.retried"]
        assert [e["task"] for e in retried] == ["raises_retried", "raises_retried"]
        assert [e["event"] for e in logs if e["event"].startswith("task.")].count("task.failed") == 2


async def test_cancelling_a_queued_task_removes_it() -> None:
    """A task cancelled while queued (its CPU busy) leaves the table at once and never runs."""
    async with actorbox.Runtime(num_cpus=1) as rt:
        first = rt.submit(hold, 0.5)
        queued = rt.submit(whoami)
        with anyio.move_on_after(0.1):
            await queued
        assert queued.done() and not any(c.method.startswith("whoami#") for c in _task_calls(rt))
        with pytest.raises(actorbox.CallCancelledError):
            await queued
        await first
        assert rt.resources().free["CPU"] == 1.0


async def test_cancelling_a_running_task_cancels_it_in_its_worker() -> None:
    """Cancelling the scope awaiting a running async task ends it in its worker, which then runs the next task."""
    async with actorbox.Runtime(num_cpus=1) as rt:
        fut = rt.submit(sleep_async, 30)
        await _until(lambda: any(w.running for w in _workers(rt)))
        with anyio.fail_after(10):
            with anyio.move_on_after(0.05):
                await fut
        assert await rt.submit(double, 21) == 42  # the same single CPU: it was given back
        assert len(_workers(rt)) == 1


async def test_max_pending_tasks_refuses_one_too_many_at_once() -> None:
    """Over Runtime(max_pending_tasks=N) unfinished tasks, submit raises PendingCallsLimitError naming N."""
    async with actorbox.Runtime(num_cpus=1, max_pending_tasks=3) as rt:
        futs = [rt.submit(hold, 0.05) for _ in range(3)]
        with pytest.raises(actorbox.PendingCallsLimitError) as info:
            rt.submit(double, 1)
        assert info.value.limit == 3 and "max_pending_tasks=3" in str(info.value)
        for f in futs:
            await f
        assert await rt.submit(double, 1) == 2


async def test_a_task_fans_out_from_inside_an_actor() -> None:
    """An actor's actorbox.submit runs tasks on workers of its own, refused at once when infeasible."""
    async with actorbox.Runtime(num_cpus=2) as rt:
        h = await rt.start(FanOut)
        assert await h.squares_doubled(20) == [2 * i * i for i in range(20)]
        host_workers = {await rt.submit(whoami) for _ in range(3)}
        assert not host_workers & set(await h.workers())  # never the host's workers
        assert (await h.infeasible()).startswith("InfeasibleResourcesError: task huge() asks for 64 CPU")


async def test_idle_workers_exit_after_the_idle_time() -> None:
    """A worker idle for longer than task_worker_idle_s is stopped; the next task starts a new one."""
    async with actorbox.Runtime(task_worker_idle_s=0.2) as rt:
        first = await rt.submit(whoami)
        await _until(lambda: _workers(rt) == [])
        assert await rt.submit(whoami) != first


async def test_tasks_show_in_pending_calls_and_resources() -> None:
    """A running task is a call to actorbox.tasks in rt.pending_calls() and holds its CPU in rt.resources()."""
    async with actorbox.Runtime(num_cpus=2) as rt:
        fut = rt.submit(hold, 0.5)
        await _until(lambda: rt.resources().free["CPU"] == 1.0)
        (call,) = _task_calls(rt)
        assert call.method.startswith("hold#") and call.caller == "host"
        await fut
        assert rt.resources().free["CPU"] == 2.0


def test_task_options_are_checked_when_decorated() -> None:
    """@task with a bad option, or on a class, fails at once with UsageError naming it."""
    with pytest.raises(actorbox.UsageError, match="num_cpus"):
        actorbox.task(num_cpus=-1)
    with pytest.raises(actorbox.UsageError, match="whole number"):
        actorbox.task(num_gpus=0.5)
    with pytest.raises(actorbox.UsageError, match="max_retries"):
        actorbox.task(max_retries=-1)
    with pytest.raises(actorbox.UsageError, match="resource name"):
        actorbox.task(resources={"CPU": 1})
    with pytest.raises(actorbox.InvalidRequirementError):
        actorbox.task(dependencies=["not a requirement!!"])
    with pytest.raises(actorbox.UsageError, match="class"):
        actorbox.task(FanOut)
    with pytest.raises(actorbox.UsageError, match="max_pending_tasks"):
        actorbox.Runtime(max_pending_tasks=0)
    with pytest.raises(actorbox.UsageError, match="num_cpus"):
        actorbox.Runtime(num_cpus=-2)


@pytest.mark.slow
async def test_a_task_with_dependencies_runs_in_that_environment(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """@task(dependencies=[...]) runs on workers in an environment holding them (built offline from uv's cache)."""
    monkeypatch.setenv("UV_OFFLINE", "1")  # no test traffic leaves the machine
    async with actorbox.Runtime(env_root=tmp_path) as rt:
        version, prefix = await rt.submit(six_version)
        assert version == "1.16.0" and prefix.startswith(str(tmp_path))


async def test_ps_and_the_leak_check_show_tasks() -> None:
    """ps shows the resources and the unfinished tasks and workers; the leak check names a task left running."""
    check = actorbox.LeakCheck()
    async with check.watch(actorbox.Runtime(num_cpus=2, resources={"db": 1})) as rt:
        fut = rt.submit(hold, 0.5)
        await _until(lambda: rt.resources().free["CPU"] == 1.0)
        text = format_snapshot(snapshot(rt))
        assert "resources (free/total): CPU 1/2, GPU 0/0, db 1/1" in text.replace(f"GPU {_gpus(rt)}", "GPU 0/0")
        assert "tasks: 1 unfinished, 1 worker(s)" in text
        check.note_pending(rt)
        await fut
    (pending,) = [line for line in check.leaks() if "pending call" in line]
    assert "task hold#" in pending and "called by host" in pending


def _gpus(rt: actorbox.Runtime) -> str:
    info = rt.resources()
    return f"{info.free['GPU']:g}/{info.total['GPU']:g}"


async def test_an_actor_cannot_run_the_hosts_tasks_or_forge_options() -> None:
    """An actor naming a host task's key, a malformed task or an option it may not set is refused; nothing runs."""
    async with actorbox.Runtime() as rt:
        assert await rt.submit(double, 1) == 2  # the host's key "double#1" exists now
        h = await rt.start(FanOut)
        assert (await h.forge("double#1")).startswith("UsageError: 'double#1' is no task call")
        forged = await h.forge('tests.actorbox.task_plugins:double?{"dependencies":["evil"]}')
        assert forged.startswith("UsageError: task tests.actorbox.task_plugins:double(): its options are malformed")
        assert [c for c in _task_calls(rt)] == []


# -- pipelining: a busy worker is passed the next short tasks ahead (actorbox._task_workers.PIPELINE_DEPTH) ---------


def _delivered(rt: actorbox.Runtime, prefix: str) -> list[actorbox.CallInfo]:
    """Calls of tasks ``prefix``* passed on to a worker and waiting in its own queue (pipelined)."""
    return [c for c in rt.pending_calls()
            if c.actor.startswith("task-worker#") and c.method.startswith(prefix) and c.state == "delivered"]


@pytest.fixture
def pipeline_any_task(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pipeline tasks whatever their runs took (the pool's rule: under 2 ms), so a test can hold the running
    one as long as it needs to."""
    monkeypatch.setattr(actorbox._task_workers, "PIPELINE_MAX_S", 3600.0)


async def test_a_task_queued_in_a_worker_is_cancelled_without_running(pipeline_any_task: None) -> None:
    """A short task passed on to a busy worker ahead of its turn, then cancelled, is dropped there unrun: the
    worker's next run of that function counts one run fewer, and its CPU was never taken twice."""
    async with actorbox.Runtime(num_cpus=1) as rt:
        assert (await rt.submit(count))[0] == 1
        _, _, first = await rt.submit(hold, 0.0)
        head = rt.submit(hold, 1.0)
        queued = rt.submit(count)
        assert len(_delivered(rt, "count#")) == 1 and rt.resources().free["CPU"] == 0.0
        with anyio.move_on_after(0.1):
            await queued
        assert queued.done() and _delivered(rt, "count#") == []
        with pytest.raises(actorbox.CallCancelledError):
            await queued
        assert (await head)[2] == first
        assert await rt.submit(count) == (2, first)  # the same worker: the cancelled run never happened
        assert rt.resources().free["CPU"] == 1.0 and _task_calls(rt) == []


@pytest.mark.slow
async def test_a_worker_dying_with_tasks_queued_in_it_runs_them_all_elsewhere(pipeline_any_task: None) -> None:
    """Tasks passed on to a worker ahead of their turn never ran when it dies: they run on the next worker
    without using an attempt (max_retries=0 tasks succeed), and the one that was running is retried."""
    async with actorbox.Runtime(num_cpus=1) as rt:
        await rt.submit(once)
        await rt.submit(slow, 0.0)
        head = rt.submit(slow, 30.0)
        queued = [rt.submit(once) for _ in range(3)]
        assert len(_delivered(rt, "once#")) == 3
        await _until(lambda: any(w.running for w in _workers(rt)))
        (victim,) = _workers(rt)
        assert victim.pid is not None
        os.kill(victim.pid, signal.SIGKILL)
        with anyio.fail_after(60):
            results = [await f for f in queued]
        assert len(set(results)) == 1 and results[0] != task_plugins.WORKER
        head.cancel()
        with pytest.raises(actorbox.CallCancelledError):
            await head
        await _until(lambda: rt.resources().free["CPU"] == 1.0)


async def test_pipelined_tasks_still_run_within_num_cpus(pipeline_any_task: None) -> None:
    """Short tasks submitted at once are passed on to busy workers ahead (up to PIPELINE_DEPTH each), yet never
    more run at a time than num_cpus, one at a time per worker, and no CPU is taken twice; the CPUs come back."""
    async with actorbox.Runtime(num_cpus=2) as rt:
        for _ in range(3):
            await actorbox.gather(*[rt.submit(stamp) for _ in range(10)])  # stamp measured
        await _until(lambda: len(_workers(rt)) == 2)
        futs = [rt.submit(stamp) for _ in range(300)]
        ahead = len(_delivered(rt, "stamp#"))
        assert rt.resources().free["CPU"] == 0.0
        runs = await actorbox.gather(*futs)
        events = sorted([(t0, 1) for t0, _, _ in runs] + [(t1, -1) for _, t1, _ in runs], key=lambda e: (e[0], e[1]))
        peak = level = 0
        for _, step in events:
            level += step
            peak = max(peak, level)
        assert peak <= 2
        for worker in {w for _, _, w in runs}:  # one at a time on each worker, in the order passed on
            mine = sorted((t0, t1) for t0, t1, w in runs if w == worker)
            assert all(a[1] <= b[0] for a, b in itertools.pairwise(mine))
        assert 0 < ahead <= 2 * (actorbox._task_workers.PIPELINE_DEPTH - 1)
        assert rt.resources().free["CPU"] == 2.0 and _task_calls(rt) == []


async def test_a_short_task_is_not_queued_behind_a_long_one() -> None:
    """A worker whose task has run for longer than a short task takes is passed nothing ahead: short tasks
    submitted meanwhile run elsewhere, not after it."""
    async with actorbox.Runtime(num_cpus=2) as rt:
        for _ in range(3):
            await actorbox.gather(*[rt.submit(sleep_async, 0) for _ in range(4)], *[rt.submit(double, i)
                                                                                    for i in range(4)])
        long = rt.submit(sleep_async, 60)
        await _until(lambda: any(w.running for w in _workers(rt)))
        await anyio.sleep(0.05)
        with anyio.fail_after(30):
            assert await actorbox.gather(*[rt.submit(double, i) for i in range(20)]) == [2 * i for i in range(20)]
        assert not long.done()
        long.cancel()
