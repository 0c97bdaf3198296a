"""What a new user meets at the edges (issue 16): host resources refused as arguments, a dependency
that clashes with the host's pins, Ctrl-C without noise, an exited Runtime, a taken extension name."""

from __future__ import annotations

import importlib.metadata
import io
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

import actorbox

ROOT = Path(__file__).resolve().parents[2]


@actorbox.actor
class Echo:
    def kind(self, value: object) -> str:
        return type(value).__name__


class Box:
    """A plain object carrying a host resource in an attribute (it travels cloudpickled)."""

    def __init__(self, inner: object) -> None:
        self.inner = inner


@actorbox.actor(dependencies=["anyio<4"])
class OldAnyio:
    def ping(self) -> str:
        return "pong"


@pytest.mark.anyio
async def test_host_resources_as_arguments_are_refused_before_any_call_is_made() -> None:
    """An open file, a socket or a lock (also inside an object) fails with SerializationError saying what to
    send instead; no call is left pending and the actor goes on (an in-memory StringIO still travels)."""
    async with actorbox.Runtime() as rt:
        echo = await rt.start(Echo)
        with open(__file__) as f, socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            cases = [(f, "an open file of the host", "f.read()"), (Box(f), "an open file of the host", "f.read()"),
                     (s, "a socket of the host", "network=True"),
                     ([1, {"lock": threading.Lock()}], "a lock or event", "guards memory of the host process")]
            for value, what, advice in cases:
                with pytest.raises(actorbox.SerializationError) as info:
                    await echo.kind(value)
                assert what in str(info.value) and advice in str(info.value)
                assert rt.pending_calls() == []
        assert await echo.kind(io.StringIO("in memory")) == "StringIO"


@pytest.mark.anyio
async def test_a_dependency_excluding_a_host_pin_names_the_pin_and_why(tmp_path: Path) -> None:
    """dependencies=["anyio<4"] fails before uv runs with EnvironmentBuildError naming the host's anyio==X and
    why the runtime packages are pinned; nothing is built."""
    async with actorbox.Runtime(env_root=tmp_path) as rt:
        with pytest.raises(actorbox.EnvironmentBuildError) as info:
            await rt.start(OldAnyio)
    message = str(info.value)
    assert f"'anyio<4' excludes the host's anyio=={importlib.metadata.version('anyio')}" in message
    assert "pinned because the actor process runs actorbox's own code" in message
    assert [p for p in os.listdir(tmp_path) if not p.startswith("host-")] == []  # only the host's overlay


@pytest.mark.anyio
async def test_entering_an_exited_runtime_says_it_exited() -> None:
    """A second 'async with' on a Runtime that ran says it has exited (not that it is running)."""
    rt = actorbox.Runtime()
    async with rt:
        pass
    with pytest.raises(actorbox.ActorboxError, match="already exited"):
        async with rt:
            pass


@pytest.mark.anyio
async def test_load_extensions_names_the_extension_whose_name_is_taken(tmp_path: Path) -> None:
    """A folder whose actor name is taken is reported with that name (and NameTakenError), not name=None."""
    folder = tmp_path / "taken"
    folder.mkdir()
    (folder / "pyproject.toml").write_text('[project]\nname = "taken"\n[tool.actorbox]\nentry = "node:Node"\n')
    (folder / "node.py").write_text("class Node:\n    pass\n")
    async with actorbox.Runtime() as rt:
        rt.register("taken", Box(1))
        (result,) = await rt.load_extensions(tmp_path)
    assert isinstance(result.error, actorbox.NameTakenError)
    assert result.name == "taken"


# A host that waits in a long call until Ctrl-C; argv[1] is the anyio backend. It also holds, in a
# global, the Future of a result that came with shared memory and was never read: the Futures the
# interpreter collects last, at shutdown, after imports stopped working.
CTRL_C_HOST = textwrap.dedent("""
    import sys
    import anyio
    import numpy as np
    import structlog
    import actorbox

    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))  # stdout says "ready" only

    @actorbox.actor
    class Sleeper:
        def make(self):
            return np.zeros(16)

        async def nap(self, seconds):
            await anyio.sleep(seconds)

    unread = []

    async def main():
        async with actorbox.Runtime() as rt:
            s = await rt.start(Sleeper)
            unread.append(s.make())
            while not unread[0].done():
                await anyio.sleep(0.01)
            fut = s.nap(120)
            while not rt.pending_calls() or rt.pending_calls()[0].state != "running":
                await anyio.sleep(0.01)
            print("ready", flush=True)
            await fut

    anyio.run(main, backend=sys.argv[1])
""")


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_ctrl_c_during_a_call_exits_without_exception_ignored_noise(backend: str) -> None:
    """SIGINT to a host awaiting a call ends it with KeyboardInterrupt and no 'Exception ignored' on stderr."""
    proc = subprocess.Popen([sys.executable, "-c", CTRL_C_HOST, backend], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("ready"), proc.communicate(timeout=30)[1]
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode != 0 and "KeyboardInterrupt" in err, err
    assert "Exception ignored" not in err, err


def test_debug_actorbox_help_says_its_output_needs_s_or_ra() -> None:
    """pytest --help tells that --debug-actorbox's events are captured: they show with -s or -rA."""
    out = subprocess.run([sys.executable, "-m", "pytest", "--help", "-p", "no:cacheprovider"], capture_output=True,
                         text=True, timeout=60, cwd=ROOT)
    text = " ".join(out.stdout.split())  # argparse wraps the help
    start = text.index("--debug-actorbox")
    assert "-s (as they happen) or -rA" in text[start:start + 400], text[start:start + 400]


def test_every_kind_of_host_handle_is_refused_wherever_it_sits() -> None:
    """Each refused kind (file, socket, mmap, selector, epoll, event loop, lock, process) fails with
    SerializationError also deep inside a pickled object, while in-memory streams and functions pickle."""
    import asyncio
    import mmap
    import pickle
    import select
    import selectors

    from actorbox import _host_pickle

    loop = asyncio.new_event_loop()
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    handles = [open(__file__, "rb"), socket.socket(), mmap.mmap(-1, 4096), selectors.DefaultSelector(),
               select.epoll(), loop, threading.RLock(), proc]
    try:
        for handle in handles:
            for value in (handle, Box([Box(1), {"deep": (handle,)}])):
                with pytest.raises(actorbox.SerializationError, match="to an actor: it is "):
                    _host_pickle.dumps(value)
    finally:
        for handle in handles:
            close = getattr(handle, "close", None)
            if close is not None:
                close()
    assert pickle.loads(_host_pickle.dumps(Box(io.BytesIO(b"kept")))).inner.getvalue() == b"kept"
    assert pickle.loads(_host_pickle.dumps(lambda x: x + 1))(1) == 2


def test_a_segment_finalizer_cannot_swallow_ctrl_c_under_trio() -> None:
    """A shared-memory segment's finalizer runs KeyboardInterrupt-protected under trio, so Ctrl-C landing in it
    reaches the main task instead of being swallowed by the garbage collector (the program then went on)."""
    import gc

    import trio

    from actorbox._shm import SegmentTable

    table = SegmentTable()
    seen: list[bool] = []
    forget = table._forget

    def spy(*args: object, **kwargs: object) -> None:
        seen.append(trio.lowlevel.currently_ki_protected())
        forget(*args, **kwargs)  # type: ignore[arg-type]

    table._forget = spy  # type: ignore[method-assign]

    async def main() -> None:
        mm, _ = table.allocate(4096)
        del mm
        gc.collect()

    trio.run(main)
    assert seen == [True]
    table.drain_pool()


def test_an_unread_results_weakref_callback_cannot_swallow_ctrl_c_under_trio() -> None:
    """The object store forgets a dropped unread result in a callback trio does not interrupt with
    KeyboardInterrupt (one raised there would be swallowed by the garbage collector)."""
    import trio

    from actorbox._codec import Codec
    from actorbox._objects import ObjectStore

    seen: list[bool] = []

    class Spy(dict):  # type: ignore[type-arg]
        def pop(self, *args: object) -> object:
            seen.append(trio.lowlevel.currently_ki_protected())
            return super().pop(*args)

    class Result:
        """Stands for a Future whose result holds shared memory."""

    store = ObjectStore(Codec(allow_pickle=True, make_handle=lambda *a: None), retention=30.0,  # type: ignore[arg-type]
                        capacity=1 << 20)
    store._unread = Spy()

    async def main() -> None:
        fut = Result()
        store.hold_result(fut)
        del fut

    trio.run(main)
    assert seen == [True]


def test_the_connection_reader_is_ctrl_c_protected_under_trio(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under trio, a reply is read and delivered where trio raises no KeyboardInterrupt: Ctrl-C goes to the
    main task (a plain KeyboardInterrupt), not into actorbox's reader task (an exception group, rc 1)."""
    import anyio
    import trio

    from actorbox import _host

    seen: list[bool] = []
    deliver = _host.HostEndpoint.deliver_reply

    def spy(self: _host.HostEndpoint, reply: object) -> None:
        seen.append(trio.lowlevel.currently_ki_protected())
        deliver(self, reply)  # type: ignore[arg-type]

    monkeypatch.setattr(_host.HostEndpoint, "deliver_reply", spy)

    async def main() -> None:
        async with actorbox.Runtime() as rt:
            echo = await rt.start(Echo)
            assert await echo.kind(1) == "int"

    anyio.run(main, backend="trio")
    assert seen and all(seen), seen
