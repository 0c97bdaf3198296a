"""rt.prepare (issue 17): the zygote an actor class or extension folder forks from, ready before its first start;
and Runtime(zygotes=False). Real processes, sandboxes and torch."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, cast

import anyio
import psutil
import pytest
import torch  # noqa: F401  (a host that uses torch: its zygotes preload it)
from structlog.testing import capture_logs

import actorbox

from .test_zygote import pid_of, zygote_of
from .zygote_plugins import Drawer, Restarting

pytestmark = pytest.mark.anyio

TIMEOUT = 60


def _events(logs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == name]


def _extension(parent: Path, folder: str) -> Path:
    d = parent / folder
    d.mkdir()
    (d / "pyproject.toml").write_text(f'[project]\nname = "{folder}"\nversion = "0.1"\n\n'
                                      '[tool.actorbox]\nentry = "node:Node"\n')
    (d / "node.py").write_text("import os\n\nclass Node:\n    def pid(self):\n        return os.getpid()\n")
    return d


async def test_after_prepare_the_first_start_forks():
    """rt.prepare(Cls) launches the zygote and returns once it is ready; the first start then forks from it
    (no zygote.launched during the start), faster than the zygote took to start; a second prepare reuses it."""
    with capture_logs() as logs:
        async with actorbox.Runtime() as rt:
            with anyio.fail_after(TIMEOUT):
                info = await rt.prepare(Drawer)
            assert isinstance(info, actorbox.ZygoteInfo)
            assert info.launched and info.pid is not None and "torch" in info.preload and info.sandboxed
            assert info.environment is None  # the host's
            assert psutil.Process(info.pid).is_running() and "actorbox._zygote" in psutil.Process(info.pid).cmdline()
            [ready] = _events(logs, "zygote.ready")
            seen = len(logs)
            with anyio.fail_after(TIMEOUT):
                again = await rt.prepare(Drawer)
                a = await rt.start(Drawer)
                assert len(await a.draws()) == 3
            assert again is not None and not again.launched and again.pid == info.pid
            assert not _events(logs[seen:], "zygote.launched")
            z = zygote_of(pid_of(rt, a))
            assert z is not None and z.pid == info.pid
            [started] = [e for e in _events(logs[seen:], "actor.started") if e["cls"] == "Drawer"]
            # A fork: a fraction of the zygote's own start, which imported torch (no absolute bound: loaded CI).
            assert started["duration_ms"] < ready["duration_ms"], (started, ready)


async def test_prepare_of_an_extension_folder_and_two_folders_get_two_zygotes(tmp_path: Path):
    """rt.prepare(path) readies the zygote load_extension(path) forks from; another folder gets its own
    (a zygote is per environment, sandbox, preload and the module's binds)."""
    one, two = _extension(tmp_path, "one"), _extension(tmp_path, "two")
    with capture_logs() as logs:
        async with actorbox.Runtime() as rt:
            with anyio.fail_after(TIMEOUT):
                first = await rt.prepare(one)
                second = await rt.prepare(os.fspath(two))
            assert first is not None and second is not None and first.pid != second.pid
            seen = len(logs)
            with anyio.fail_after(TIMEOUT):
                h1, h2 = await rt.load_extension(one), await rt.load_extension(two)
                await h1.pid()
            assert not _events(logs[seen:], "zygote.launched")
            assert zygote_of(pid_of(rt, h1)).pid == first.pid
            assert zygote_of(pid_of(rt, h2)).pid == second.pid


async def test_prepare_raises_what_start_and_load_extension_raise(tmp_path: Path):
    """Not a class: UsageError, as rt.start; a folder that is no extension: ExtensionError, as load_extension;
    sandbox= with a class: UsageError (the class's own option decides)."""
    async with actorbox.Runtime() as rt:
        with pytest.raises(actorbox.UsageError, match="takes a class"):
            await rt.prepare(cast(Any, Drawer()))  # an instance: the mistake under test
        with pytest.raises(actorbox.ExtensionError):
            await rt.prepare(tmp_path / "missing")
        with pytest.raises(actorbox.UsageError, match="sandbox"):
            await rt.prepare(Drawer, sandbox="disabled")
    with pytest.raises(actorbox.ActorboxError, match="not running"):
        await rt.prepare(Drawer)


async def test_a_cancelled_prepare_leaves_nothing_behind_and_the_zygote_serves_later():
    """prepare cancelled while its zygote imports torch: nothing hangs, the next start forks from that zygote
    once it is ready, and the Runtime's exit leaves no process."""
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    with capture_logs() as logs:
        async with actorbox.Runtime() as rt:
            with anyio.move_on_after(0.2) as scope:
                await rt.prepare(Restarting)
            assert scope.cancelled_caught
            with anyio.fail_after(TIMEOUT):
                r = await rt.start(Restarting)
                assert await r.ping() == "pong"
            assert zygote_of(pid_of(rt, r)) is not None
    assert len(_events(logs, "zygote.launched")) == 1
    left = [p for p in psutil.Process().children(recursive=True)
            if p.pid not in before and p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not left, [p.cmdline() for p in left]


async def test_runtime_zygotes_false_turns_them_off_and_prepare_says_why(monkeypatch):
    """Runtime(zygotes=False): prepare returns None with a zygote.unavailable event naming the argument, and an
    actor starts its own interpreter, whatever ACTORBOX_ZYGOTES says."""
    monkeypatch.setenv("ACTORBOX_ZYGOTES", "1")
    with capture_logs() as logs:
        async with actorbox.Runtime(zygotes=False) as rt:
            with anyio.fail_after(TIMEOUT):
                assert await rt.prepare(Drawer) is None
                assert await rt.prepare(Drawer) is None  # said each time
                a = await rt.start(Drawer)
            pid = pid_of(rt, a)
            assert zygote_of(pid) is None and "actorbox._child" in psutil.Process(pid).cmdline()
    off = _events(logs, "zygote.unavailable")
    assert len(off) == 2 and all("Runtime(zygotes=False)" in e["reason"] for e in off), off
    assert not _events(logs, "zygote.launched")


async def test_runtime_zygotes_true_wins_over_the_variable(monkeypatch):
    """ACTORBOX_ZYGOTES=0 with Runtime(zygotes=True): the argument wins, the actor is forked."""
    monkeypatch.setenv("ACTORBOX_ZYGOTES", "0")
    async with actorbox.Runtime(zygotes=True) as rt:
        with anyio.fail_after(TIMEOUT):
            a = await rt.start(Drawer)
        assert zygote_of(pid_of(rt, a)) is not None


async def test_prepare_builds_the_environment(tmp_path: Path, monkeypatch):
    """rt.prepare of a class with dependencies builds its environment (uv, from its cache) and readies a zygote
    running that environment's interpreter; the start then finds both (env.cached, no zygote.launched)."""
    from .env_plugins.six_user import SixUser

    monkeypatch.setenv("UV_OFFLINE", "1")
    with capture_logs() as logs:
        async with actorbox.Runtime(env_root=tmp_path) as rt:
            with anyio.fail_after(240):
                info = await rt.prepare(SixUser)
            assert info is not None and info.environment is not None
            assert info.environment.startswith(str(tmp_path))
            assert psutil.Process(info.pid).cmdline()[0].startswith(info.environment)
            seen = len(logs)
            with anyio.fail_after(TIMEOUT):
                h = await rt.start(SixUser)
                assert (await h.six())[0] == "1.16.0"
            assert zygote_of(pid_of(rt, h)).pid == info.pid
    assert _events(logs[:seen], "env.built")
    assert not _events(logs[seen:], "zygote.launched") and not _events(logs[seen:], "env.built")
