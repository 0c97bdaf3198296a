"""Per-actor budgets: the descriptors and threads an actor process may hold are bounded, and shown.

``rt.actors()`` and ``ps`` show each actor process's open descriptors (read by the host
from /proc/PID/fd) next to its threads, and the hard limits it runs under
(``SandboxPolicy.max_open_files``, ``max_processes``), which the actor cannot raise.
"""

from __future__ import annotations

import os
import resource

import psutil
import pytest

import actorbox
from actorbox._inspect import format_snapshot, snapshot

pytestmark = pytest.mark.anyio


@actorbox.actor
class Holder:
    """Opens pipes and threads on request, holding them until told to let go."""

    def __init__(self) -> None:
        self.fds: list[int] = []

    def open_pipes(self, n: int) -> dict[str, object]:
        """Open up to n pipes (2n descriptors); stop at the first error and name it."""
        error = None
        for _ in range(n):
            try:
                self.fds += os.pipe()
            except OSError as exc:
                error = exc.strerror
                break
        return {"fds": len(self.fds), "error": error}

    def close_all(self) -> int:
        for fd in self.fds:
            os.close(fd)
        self.fds.clear()
        return len(os.listdir("/proc/self/fd"))

    def raise_limits(self) -> str:
        """Try to lift the hard limits the host set; a sandboxed actor may not."""
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (1 << 16, 1 << 16))
        except (OSError, ValueError) as exc:
            return type(exc).__name__
        return "raised"

    def spawn_threads(self, n: int) -> dict[str, object]:
        """Start up to n waiting threads; stop at the first refusal and name it."""
        import threading

        self.release = threading.Event()
        started = 0
        error = None
        for _ in range(n):
            try:
                threading.Thread(target=self.release.wait, daemon=True).start()
            except RuntimeError as exc:  # "can't start new thread": the kernel said EAGAIN
                error = str(exc)
                break
            started += 1
        return {"started": started, "error": error}

    def let_threads_go(self) -> None:
        self.release.set()


def _row(rt: actorbox.Runtime, label: str) -> actorbox.ActorInfo:
    return {i.label: i for i in rt.actors()}[label]


async def test_actors_shows_open_descriptors_and_the_limits_in_force() -> None:
    """rt.actors() counts an actor's open descriptors as /proc shows them, and its hard fd and thread limits."""
    async with actorbox.Runtime() as rt:
        h = await rt.start(Holder, name="holder")
        before = _row(rt, "holder")
        assert before.fds is not None and before.fds >= 3  # stdio at least, and its socket
        assert await h.open_pipes(20) == {"fds": 40, "error": None}
        after = _row(rt, "holder")
        assert after.fds is not None and after.fds >= before.fds + 40
        assert after.fds == psutil.Process(after.pid).num_fds()
        policy = actorbox.SandboxPolicy()
        assert after.max_fds == min(policy.max_open_files, resource.getrlimit(resource.RLIMIT_NOFILE)[1])
        # As root each actor has a uid of its own and the limit is exactly the policy's; a
        # normal user's actors share its uid, so the host adds the uid's current count.
        assert after.max_threads is not None and after.max_threads >= policy.max_processes
        if os.geteuid() == 0:
            assert after.max_threads == policy.max_processes
        await h.close_all()
        assert _row(rt, "holder").fds == before.fds
        await rt.stop(h)
        stopped = _row(rt, "holder")
        assert (stopped.fds, stopped.max_fds, stopped.max_threads) == (None, None, None)


async def test_a_policy_of_64_open_files_stops_the_actor_at_64_and_the_host_goes_on() -> None:
    """Under max_open_files=64 an actor's 65th descriptor fails (EMFILE), it cannot lift the limit, and it serves on."""
    policy = actorbox.SandboxPolicy(max_open_files=64)
    async with actorbox.Runtime(sandbox_policy=policy) as rt:
        h = await rt.start(Holder, name="holder")
        got = await h.open_pipes(100)
        assert got["error"] == "Too many open files" and isinstance(got["fds"], int) and 40 <= got["fds"] <= 62
        row = _row(rt, "holder")
        assert row.max_fds == 64 and row.fds is not None and 40 < row.fds <= 64
        assert await h.raise_limits() == "ValueError"  # above the hard limit: refused without CAP_SYS_RESOURCE
        assert await h.close_all() < 24
        assert await h.open_pipes(4) == {"fds": 8, "error": None}


async def test_a_policy_of_32_threads_refuses_the_actor_more_and_ps_shows_them() -> None:
    """Under max_processes=32 an actor cannot start a 33rd thread; ps prints its THREADS and FDS; it serves on."""
    if os.geteuid() != 0:
        pytest.skip("as a normal user RLIMIT_NPROC counts every process of the user, not the actor's own")
    policy = actorbox.SandboxPolicy(max_processes=32)
    async with actorbox.Runtime(sandbox_policy=policy) as rt:
        h = await rt.start(Holder, name="holder")
        got = await h.spawn_threads(100)
        assert got["error"] is not None and isinstance(got["started"], int) and got["started"] < 32
        row = _row(rt, "holder")
        assert row.max_threads == 32 and row.threads is not None and got["started"] < row.threads <= 32
        text = format_snapshot(snapshot(rt))
        lines = text.splitlines()
        header = next(line for line in lines if "THREADS" in line).split()
        assert header[header.index("THREADS") + 1] == "FDS"
        cells = next(line for line in lines if " holder " in line).split()
        # ID NAME CLASS PID STATE RESTARTS RSS CPU THREADS FDS QUEUED RUNNING
        assert cells[8:10] == [str(row.threads), str(row.fds)]
        await h.let_threads_go()
        assert (await h.spawn_threads(4))["error"] is None
        await h.let_threads_go()


async def _start_until_refused(rt: actorbox.Runtime, n: int, threads: int) -> list[actorbox.ActorHandle]:
    """Start up to n Holders, each taking ``threads`` threads, until one cannot start a single thread."""
    handles = []
    for _ in range(n):
        h = await rt.start(Holder)
        handles.append(h)
        if (await h.spawn_threads(threads))["started"] == 0:
            break
    return handles


# Found measuring budgets (issue 17): a zygote that ran out of descriptors or processes used
# to exit, and its pid namespace took every actor it forked down with it. Now its limits are
# 1024 times the policy's (each actor gets the policy's in its own user namespace) and a
# fork it cannot make fails alone: that actor starts without the zygote.
# Processes and limits, not the host's event loop: one backend is enough for these two.
_ASYNCIO_ONLY = pytest.mark.parametrize("anyio_backend", ["asyncio"])


@_ASYNCIO_ONLY
@pytest.mark.slow
async def test_starting_actors_past_a_zygotes_descriptor_limit_leaves_the_started_ones_alive() -> None:
    """Under max_open_files=16, starting 16 actors of one policy one by one leaves all 16 alive and answering."""
    policy = actorbox.SandboxPolicy(max_open_files=16)
    async with actorbox.Runtime(sandbox_policy=policy) as rt:
        handles = [await rt.start(Holder) for _ in range(16)]
        assert [a.state for a in rt.actors() if a.kind == "actor" and a.state != "resident"] == ["alive"] * 16
        for h in handles:
            assert await h.open_pipes(1) == {"fds": 2, "error": None}


@_ASYNCIO_ONLY
@pytest.mark.slow
async def test_each_forked_actor_keeps_its_own_thread_budget_and_its_siblings() -> None:
    """Under max_processes=16, 80 actors each holding 12 threads leave every one of them its own budget,
    and one more start kills none of them."""
    policy = actorbox.SandboxPolicy(max_processes=16)
    async with actorbox.Runtime(sandbox_policy=policy) as rt:
        handles = await _start_until_refused(rt, 80, 12)
        assert len(handles) == 80, f"actor {len(handles)} could not start one thread under its own limit of 16"
        await rt.start(Holder)
        assert {a.state for a in rt.actors() if a.kind == "actor" and a.state != "resident"} == {"alive"}
        for h in handles:
            await h.let_threads_go()
