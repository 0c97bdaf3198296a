"""Zygotes (issue 17): actors forked from a prepared process, each in its own sandbox, with real processes."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import types
from typing import Any, cast

import anyio
import psutil
import pytest
import torch  # noqa: F401  (a host that uses torch: its zygotes preload it)
from structlog.testing import capture_logs

import actorbox
import actorbox._zygotes

from .env_plugins.six_user import SixUser
from .zygote_plugins import Drawer, Looker, Restarting, Spawner

pytestmark = pytest.mark.anyio

TIMEOUT = 30


def zygote_of(actor_pid: int) -> psutil.Process | None:
    """The zygote an actor was forked from (it nests: zygote -> reaper -> init -> actor), or None."""
    try:  # the reaper and the init are forks of the zygote too: the outermost of them
        found = [p for p in psutil.Process(actor_pid).parents()[:3] if "actorbox._zygote" in p.cmdline()]
    except psutil.Error:
        return None
    return found[-1] if found else None


def pid_of(rt: actorbox.Runtime, handle: actorbox.ActorHandle) -> int:
    pid = next(a.pid for a in rt.actors() if a.label == actorbox.info(handle).label)
    assert pid is not None
    return pid


async def test_two_actors_of_one_environment_come_from_one_zygote():
    """Two actors of one class and environment are forked by the same zygote, which preloaded torch."""
    async with actorbox.Runtime() as rt:
        with anyio.fail_after(TIMEOUT):
            a, b = await rt.start(Drawer), await rt.start(Drawer)
        za, zb = zygote_of(pid_of(rt, a)), zygote_of(pid_of(rt, b))
        assert za is not None and zb is not None and za.pid == zb.pid
        assert "torch" in za.cmdline()  # preloaded: the host uses torch
        assert pid_of(rt, a) != pid_of(rt, b)


async def test_reseeded_generators_draw_differently():
    """random, numpy and torch draw different numbers in two actors forked from one zygote."""
    async with actorbox.Runtime() as rt:
        with anyio.fail_after(TIMEOUT):
            a, b = await rt.start(Drawer), await rt.start(Drawer)
            da, db = await a.draws(), await b.draws()
        assert zygote_of(pid_of(rt, a)) is not None
        assert all(x != y for x, y in zip(da, db, strict=True)), (da, db)


async def test_a_multithreaded_torch_op_works_after_the_fork():
    """torch.set_num_threads(2) and a matmul work in a forked actor (the zygote ran no torch op)."""
    async with actorbox.Runtime() as rt:
        with anyio.fail_after(TIMEOUT):
            a = await rt.start(Drawer)
            assert await a.matmul(2) == [2, 384.0]
        assert zygote_of(pid_of(rt, a)) is not None


async def test_nothing_of_an_actor_reaches_the_zygote_or_a_sibling():
    """A forked actor's /proc lists only itself; it can neither signal nor open the memory of the zygote or a
    sibling, and it shares no socket or pipe with the zygote."""
    async with actorbox.Runtime() as rt:
        with anyio.fail_after(TIMEOUT):
            looker, sibling = await rt.start(Looker), await rt.start(Looker)
            me = pid_of(rt, looker)
            zygote = zygote_of(me)
            assert zygote is not None and zygote_of(pid_of(rt, sibling)).pid == zygote.pid
            assert await looker.proc_entries() == ["2"]  # itself, pid 2 of its own namespace (after its init)
            assert await looker.reads_own_proc()
            assert await looker.signal(zygote.pid) == "ESRCH"
            assert await looker.signal(pid_of(rt, sibling)) == "ESRCH"
            assert await looker.open_mem([1, *range(3, 64)]) == []

        def links(pid: int) -> set[str]:
            out = set()
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    out.add(os.readlink(f"/proc/{pid}/fd/{fd}"))
                except OSError:
                    pass
            return {x for x in out if x.startswith(("socket:", "pipe:"))}

        assert not links(me) & links(zygote.pid)


@pytest.mark.slow
async def test_a_killed_zygote_is_replaced_and_restarts_come_from_the_new_one():
    """Killing a zygote kills its actors; a restart and the next start fork from a new zygote, and both serve."""
    async with actorbox.Runtime() as rt:
        with anyio.fail_after(TIMEOUT):
            r = await rt.start(Restarting)
            first = zygote_of(pid_of(rt, r))
            assert first is not None
            os.kill(first.pid, signal.SIGKILL)
            while next(a for a in rt.actors() if a.label == actorbox.info(r).label).restarts == 0:
                await anyio.sleep(0.05)
            assert await r.ping() == "pong"
            restarted = zygote_of(pid_of(rt, r))
            assert restarted is not None and restarted.pid != first.pid
            other = await rt.start(Restarting)
            assert await other.ping() == "pong"
            assert zygote_of(pid_of(rt, other)).pid == restarted.pid


async def test_zygotes_turned_off_start_actors_as_before(monkeypatch):
    """With ACTORBOX_ZYGOTES=0 an actor starts its own interpreter, and an event says zygotes are off."""
    monkeypatch.setenv("ACTORBOX_ZYGOTES", "0")
    with capture_logs() as logs:
        async with actorbox.Runtime() as rt:
            with anyio.fail_after(TIMEOUT):
                a = await rt.start(Drawer)
                assert len(await a.draws()) == 3
            pid = pid_of(rt, a)
            assert zygote_of(pid) is None
            assert "actorbox._child" in psutil.Process(pid).cmdline()
    (off,) = [e for e in logs if e["event"] == "zygote.unavailable"]
    assert "ACTORBOX_ZYGOTES=0" in off["reason"]
    assert not [e for e in logs if e["event"] == "zygote.launched"]


async def test_the_zygote_exits_with_the_runtime():
    """When the Runtime exits, its zygote process is gone too."""
    async with actorbox.Runtime() as rt:
        with anyio.fail_after(TIMEOUT):
            a = await rt.start(Drawer)
        zygote = zygote_of(pid_of(rt, a))
        assert zygote is not None
    assert not zygote.is_running() or zygote.status() == psutil.STATUS_ZOMBIE


async def test_a_cancelled_runtime_leaves_no_zygote():
    """A Runtime cancelled by a cancel scope while its first actor's zygote starts leaves no process behind."""
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    with anyio.move_on_after(0.3):
        async with actorbox.Runtime() as rt:
            await rt.start(Drawer)
    left = [p for p in psutil.Process().children(recursive=True)
            if p.pid not in before and p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not left, [p.cmdline() for p in left]


@pytest.mark.slow
async def test_actors_of_two_environments_come_from_their_own_zygotes():
    """The demo's numpy<2 and numpy>=2 extensions are forked by two zygotes, each running its environment's
    interpreter, and each actor sees its own numpy."""
    examples = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                            "examples", "extensions")
    async with actorbox.Runtime() as rt:  # the default env root: built once, then cached
        rt.register("registry", _Registry())
        with anyio.fail_after(300):  # a first build on a fresh machine
            loaded = await rt.load_extensions(examples)
        assert [x.error for x in loaded] == [None, None]
        legacy, modern = rt.get_actor("legacy-stats"), rt.get_actor("modern-stats")
        with anyio.fail_after(TIMEOUT):
            v1, v2 = await legacy.versions(""), await modern.versions("")
        assert v1["numpy"].startswith("1.") and v2["numpy"].startswith("2.")
        z1, z2 = zygote_of(pid_of(rt, legacy)), zygote_of(pid_of(rt, modern))
        assert z1 is not None and z2 is not None and z1.pid != z2.pid
        assert z1.cmdline()[0] != z2.cmdline()[0]  # each its environment's interpreter


class _Registry:
    def report(self, ext: str, version: str, n: int) -> None:
        pass


ENV_TIMEOUT = 240  # an environment built with uv (from its cache: UV_OFFLINE=1)


async def test_an_environment_rebuilt_at_its_path_gets_a_fresh_zygote(tmp_path, monkeypatch):
    """An environment deleted and built again at the same path while the Runtime runs: its zygote (whose sandbox
    binds the deleted directory) is retired, a fresh one forks the next actor, and an actor of the old one runs
    on until it stops, when the old zygote exits."""
    monkeypatch.setenv("UV_OFFLINE", "1")  # six comes from uv's cache: nothing leaves this machine
    with capture_logs() as logs:
        async with actorbox.Runtime(env_root=tmp_path) as rt:
            with anyio.fail_after(ENV_TIMEOUT):
                keeper, first = await rt.start(SixUser), await rt.start(SixUser)
                assert (await keeper.six())[0] == "1.16.0"  # (six imported before its files go)
            old = zygote_of(pid_of(rt, first))
            assert old is not None and zygote_of(pid_of(rt, keeper)).pid == old.pid
            [built] = [e["path"] for e in logs if e["event"] == "env.built"]
            with anyio.fail_after(TIMEOUT):
                await rt.stop(first)
            shutil.rmtree(built)  # as docs/debugging.md says is safe: the next start builds it again
            with anyio.fail_after(ENV_TIMEOUT):
                again = await rt.start(SixUser)
                assert (await again.six())[0] == "1.16.0"
            new = zygote_of(pid_of(rt, again))
            assert new is not None and new.pid != old.pid
            assert old.is_running() and old.status() != psutil.STATUS_ZOMBIE  # it still holds the keeper
            rows = {a.pid: a for a in rt.actors() if a.kind == "zygote"}
            assert rows[old.pid].state == "retired" and rows[old.pid].forked == 1
            assert rows[new.pid].state == "ready" and rows[new.pid].forked == 1
            with anyio.fail_after(TIMEOUT):
                assert (await keeper.six())[0] == "1.16.0"
                await rt.stop(keeper)
                while old.is_running() and old.status() != psutil.STATUS_ZOMBIE:
                    await anyio.sleep(0.05)  # its last actor gone, the retired zygote exits
            assert new.is_running()
    [retired] = [e for e in logs if e["event"] == "zygote.retired"]
    assert built in retired["reason"] and retired["actors"] == 1, retired
    assert not [e for e in logs if e["event"] in ("zygote.fork_failed", "actor.died")]


async def test_a_child_that_cannot_build_its_sandbox_retires_its_zygote_and_the_actor_starts_plainly(
        tmp_path, monkeypatch):
    """Where a zygote's child fails to build its nested sandbox (NestError: here a bind of the deleted
    environment, with the check for a rebuilt environment switched off), the start does not fail: the actor
    starts its own interpreter, the zygote is retired with the reason, and the next start forks from a fresh one."""
    monkeypatch.setenv("UV_OFFLINE", "1")
    monkeypatch.setattr(actorbox._zygotes, "bound_identity", lambda spec: ())  # (a) off: only (b) is left
    with capture_logs() as logs:
        async with actorbox.Runtime(env_root=tmp_path) as rt:
            with anyio.fail_after(ENV_TIMEOUT):
                first = await rt.start(SixUser)
            old = zygote_of(pid_of(rt, first))
            assert old is not None
            [built] = [e["path"] for e in logs if e["event"] == "env.built"]
            with anyio.fail_after(TIMEOUT):
                await rt.stop(first)
            shutil.rmtree(built)
            with anyio.fail_after(ENV_TIMEOUT):
                plain = await rt.start(SixUser)
                assert (await plain.six())[0] == "1.16.0"
            pid = pid_of(rt, plain)
            assert zygote_of(pid) is None and "actorbox._child" in psutil.Process(pid).cmdline()
            with anyio.fail_after(ENV_TIMEOUT):
                forked = await rt.start(SixUser)
                assert (await forked.six())[0] == "1.16.0"
            fresh = zygote_of(pid_of(rt, forked))
            assert fresh is not None and fresh.pid != old.pid
    [failed] = [e for e in logs if e["event"] == "zygote.fork_failed"]
    [retired] = [e for e in logs if e["event"] == "zygote.retired"]
    for e in (failed, retired):
        assert "could not build its sandbox" in e["reason"] and "NestError" in e["reason"], e
    assert not [e for e in logs if e["event"] == "actor.died"]


async def test_an_unsandboxed_forked_actor_that_exits_takes_its_session_along():
    """An unsandboxed actor forked from its zygote that dies by itself leaves no process of its session behind
    (its zygote kills the session before it reaps the actor: the host no longer signals a group by a pid that
    may have been reused)."""
    async with actorbox.Runtime(sandbox="disabled") as rt:
        with anyio.fail_after(TIMEOUT):
            h = await rt.start(Spawner)
            actor = pid_of(rt, h)
            assert zygote_of(actor) is not None
            sleeper = psutil.Process(await h.spawn_sleeper())
            assert os.getsid(sleeper.pid) == os.getsid(actor)
            with pytest.raises(actorbox.ActorDiedError):
                await h.die()
            while sleeper.is_running() and sleeper.status() != psutil.STATUS_ZOMBIE:
                await anyio.sleep(0.05)


async def test_killing_a_forked_unsandboxed_actor_never_signals_a_reused_pid():
    """ForkedProcess.kill of an unsandboxed actor that already exited (its pid free for reuse: here held by an
    unrelated session leader) signals only through its pidfd, never that pid's process group."""
    from actorbox._zygotes import ForkedProcess

    gone = subprocess.Popen(["true"])
    pidfd = os.pidfd_open(gone.pid)
    gone.wait()  # exited and reaped: the pidfd is readable
    bystander = subprocess.Popen(["sleep", "60"], start_new_session=True)  # the pid's new owner, as it were
    zygote = types.SimpleNamespace(nested=False, state="ready")
    r, w = os.pipe()
    os.close(w)
    proc = ForkedProcess(cast(Any, zygote), 1, pidfd, bystander.pid, r, os.dup(r), None)
    try:
        proc.kill()
        await anyio.sleep(0.2)
        assert bystander.poll() is None, "the bystander's group was signalled"
    finally:
        bystander.kill()
        bystander.wait()
        await proc.aclose()
