"""Zygotes (issue 17): actors forked from a prepared process, each in its own sandbox, with real processes."""

from __future__ import annotations

import os
import signal

import anyio
import psutil
import pytest
import torch  # noqa: F401  (a host that uses torch: its zygotes preload it)
from structlog.testing import capture_logs

import actorbox

from .zygote_plugins import Drawer, Looker, Restarting

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
