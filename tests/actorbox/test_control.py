"""The control socket and ``python -m actorbox ps``, against Runtimes in this and another process."""

from __future__ import annotations

import errno
import json
import os
import resource
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import anyio
import psutil
import pytest
from structlog.testing import capture_logs

import actorbox
from actorbox import _control

ROOT = Path(__file__).resolve().parents[2]

# A host program with one actor busy in a long call; it exits when its stdin closes.
HOST_SCRIPT = textwrap.dedent("""
    import os, sys
    import anyio
    import structlog
    import actorbox

    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))  # stdout says "ready" only

    @actorbox.actor
    class Sleeper:
        async def nap(self, seconds):
            await anyio.sleep(seconds)

    async def main():
        async with actorbox.Runtime() as rt:
            s = await rt.start(Sleeper, name="sleeper")
            fut = s.nap(120)
            while not rt.pending_calls() or rt.pending_calls()[0].state != "running":
                await anyio.sleep(0.01)
            print("ready", os.getpid(), flush=True)
            await anyio.to_thread.run_sync(sys.stdin.read)
            fut.cancel()

    anyio.run(main)
""")


@pytest.fixture
def runtime_dir(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A private XDG_RUNTIME_DIR, short enough for Unix socket paths, so no other Runtime shows up."""
    d = tempfile.mkdtemp(prefix="abx")
    monkeypatch.setenv("XDG_RUNTIME_DIR", d)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def other_host(runtime_dir: str) -> Iterator[int]:
    """A Runtime in another process with actor "sleeper" serving a long call; yields that process's pid."""
    proc = subprocess.Popen([sys.executable, "-c", HOST_SCRIPT], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("ready"):
            proc.kill()
            _, err = proc.communicate(timeout=10)
            pytest.fail(f"host script did not start: {line!r}\n{err}")
        yield int(line.split()[1])
    finally:
        if proc.poll() is None:
            proc.communicate(input="", timeout=30)
    assert proc.returncode == 0


def _ps(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "actorbox", "ps", *args], capture_output=True, text=True,
                          timeout=30, cwd=ROOT)


def test_ps_json_shows_actor_and_in_flight_call_of_another_process(other_host: int) -> None:
    """ps --json, run as its own process, lists the other Runtime's actor (pid, RSS, running) and its call in flight."""
    out = _ps("--json")
    assert out.returncode == 0, out.stderr
    (snap,) = json.loads(out.stdout)["runtimes"]
    assert snap["runtime"]["pid"] == other_host
    (actor,) = [a for a in snap["actors"] if a["label"] == "sleeper"]
    assert (actor["cls"], actor["state"], actor["running"]) == ("Sleeper", "alive", 1)
    assert actor["pid"] > 0 and actor["rss"] > 0 and actor["cpu_percent"] >= 0 and actor["threads"] >= 1
    (call,) = snap["calls"]
    assert (call["actor"], call["method"], call["caller"], call["state"]) == ("sleeper", "nap", "host", "running")
    assert call["parent_call_id"] is None and call["age_s"] > 0
    assert actor["running_calls"] == [call["call_id"]]
    assert snap["names"] == {"sleeper": actor["actor_id"]}


def test_ps_prints_tables_and_filters_by_pid(other_host: int) -> None:
    """ps prints the actors and calls tables; --pid selects that Runtime, and an unknown pid exits 1."""
    out = _ps("--pid", str(other_host))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith(f"Runtime pid {other_host}:")
    actor_row = next(line.split() for line in lines if " sleeper " in f" {line} " and "Sleeper" in line)
    assert actor_row[1:3] == ["sleeper", "Sleeper"] and actor_row[4] == "alive"
    call_row = next(line.split() for line in lines if " nap " in line)
    assert call_row[1:6] == ["sleeper", "nap", "host", "-", "running"]
    missing = _ps("--pid", "1")
    assert missing.returncode == 1 and "no running actorbox Runtime with pid 1" in missing.stderr


@pytest.fixture
def zygotes_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """Zygotes on for the host script (it inherits this environment), whatever the test run chose."""
    monkeypatch.setenv("ACTORBOX_ZYGOTES", "1")


@pytest.mark.usefixtures("zygotes_on")
def test_ps_shows_the_zygote_as_a_zygote(other_host: int) -> None:
    """ps --json and ps list the zygote "sleeper" was forked from as a zygote, after the actors; it is gone
    with its Runtime."""
    out = _ps("--json")
    assert out.returncode == 0, out.stderr
    (snap,) = json.loads(out.stdout)["runtimes"]
    assert [a["kind"] for a in snap["actors"]] == ["actor", "zygote"]
    actor, zygote = snap["actors"]
    assert (zygote["label"], zygote["cls"], zygote["state"], zygote["forked"]) == (
        "zygote (host env)", "zygote", "ready", 1)
    assert zygote["actor_id"] < 0 and zygote["pid"] > 0 and zygote["rss"] > 0 and zygote["name"] is None
    assert zygote["pid"] in [p.pid for p in psutil.Process(actor["pid"]).parents()]
    assert snap["names"] == {"sleeper": actor["actor_id"]}  # no name: nothing can look it up
    text = _ps("--pid", str(other_host))
    assert text.returncode == 0, text.stderr
    assert "zygotes: 1 (prepared processes actors fork from), 1 actor(s) forked from them alive" in text.stdout
    (row,) = [line.split() for line in text.stdout.splitlines() if "zygote (host env)" in line]
    assert row[:7] == [str(zygote["actor_id"]), "zygote", "(host", "env)", "zygote", str(zygote["pid"]), "ready"]


def test_ps_without_runtimes_says_so(runtime_dir: str) -> None:
    """With no Runtime running, ps exits 0 and says there is none; --json gives an empty list."""
    out = _ps()
    assert out.returncode == 0 and out.stdout == "" and "no running actorbox Runtime" in out.stderr
    assert json.loads(_ps("--json").stdout) == {"runtimes": []}


@pytest.mark.anyio
async def test_socket_is_private_and_removed_on_exit(runtime_dir: str) -> None:
    """The socket (0600) is named by pid in a 0700 directory, answers ping, and is gone after the Runtime exits."""
    d = os.path.join(runtime_dir, "actorbox")
    async with actorbox.Runtime():
        path = os.path.join(d, f"{os.getpid()}.sock")
        assert _control.list_sockets() == [(os.getpid(), path)]
        assert stat.S_ISSOCK(os.stat(path).st_mode)
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(d).st_mode) == 0o700
        reply = await anyio.to_thread.run_sync(_control.query, path, "ping")
        assert reply == {"ok": True, "pid": os.getpid()}
    assert os.listdir(d) == []


@pytest.mark.anyio
async def test_two_runtimes_in_one_process_get_their_own_sockets(runtime_dir: str) -> None:
    """A second Runtime in the same process takes <pid>-2.sock; each socket leaves with its Runtime."""
    pid = os.getpid()
    async with actorbox.Runtime() as rt1:
        await rt1.start(_Named, name="first")
        async with actorbox.Runtime() as rt2:
            await rt2.start(_Named, name="second")
            socks = dict((os.path.basename(p), p) for _, p in _control.list_sockets())
            assert set(socks) == {f"{pid}.sock", f"{pid}-2.sock"}
            first = await anyio.to_thread.run_sync(_control.query, socks[f"{pid}.sock"])
            second = await anyio.to_thread.run_sync(_control.query, socks[f"{pid}-2.sock"])
            assert [a["label"] for a in first["snapshot"]["actors"] if a["kind"] == "actor"] == ["first"]
            assert [a["label"] for a in second["snapshot"]["actors"] if a["kind"] == "actor"] == ["second"]
            # Each has its own zygote (when zygotes are on), none listed in the other's.
            zygotes = [{a["pid"] for a in r["snapshot"]["actors"] if a["kind"] == "zygote"} for r in (first, second)]
            assert zygotes[0].isdisjoint(zygotes[1])
        assert [os.path.basename(p) for _, p in _control.list_sockets()] == [f"{pid}.sock"]
    assert _control.list_sockets() == []


@actorbox.actor
class _Named:
    def ping(self):
        return "pong"


@pytest.mark.anyio
async def test_only_a_known_command_name_is_used(runtime_dir: str) -> None:
    """A request that is not {"command": <known name>} gets an error answer; nothing else in it is used."""
    async with actorbox.Runtime():
        path = _control.list_sockets()[0][1]

        def raw(data: bytes) -> dict[str, object]:
            received = b""
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(10)
                s.connect(path)
                try:
                    s.sendall(data)
                    s.shutdown(socket.SHUT_WR)
                    while chunk := s.recv(65536):
                        received += chunk
                except (BrokenPipeError, ConnectionResetError):
                    pass  # an oversized request: the server answered and closed without reading it all
            return json.loads(received)  # type: ignore[no-any-return]

        for data in (b'{"command": "shutdown"}\n', b"not json\n", b"[1, 2]\n", b"x" * 10_000, b""):
            reply = await anyio.to_thread.run_sync(raw, data)
            assert reply["ok"] is False and "command" in str(reply["error"])
        ok = await anyio.to_thread.run_sync(raw, b'{"command": "ping", "exec": "rm -rf /"}\n')
        assert ok == {"ok": True, "pid": os.getpid()}


@pytest.mark.anyio
async def test_stale_socket_of_a_dead_process_with_our_pid_is_replaced(runtime_dir: str) -> None:
    """A <pid>.sock nobody listens on (left by an earlier process with this pid) is taken over, not skipped."""
    d = os.path.join(runtime_dir, "actorbox")
    os.mkdir(d, 0o700)
    stale = os.path.join(d, f"{os.getpid()}.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(stale)  # bound, never listening, then closed: the file stays
    async with actorbox.Runtime():
        assert _control.list_sockets() == [(os.getpid(), stale)]
        assert (await anyio.to_thread.run_sync(_control.query, stale, "ping"))["ok"] is True
    assert not os.path.exists(stale)


@pytest.mark.anyio
async def test_directory_open_to_others_is_refused_with_a_warning(runtime_dir: str) -> None:
    """If the socket directory is writable by others the Runtime serves no socket, warns, and still runs actors."""
    d = os.path.join(runtime_dir, "actorbox")
    os.mkdir(d)
    os.chmod(d, 0o777)
    with capture_logs() as logs:
        async with actorbox.Runtime() as rt:
            h = await rt.start(_Named)
            assert await h.ping() == "pong"
            assert os.listdir(d) == []
    (warning,) = [e for e in logs if e["event"] == "control.unavailable"]
    assert "not a private directory" in warning["reason"]
    with pytest.raises(actorbox.ActorboxError, match="not a private directory"):
        _control.list_sockets()


@pytest.mark.anyio
@pytest.mark.skipif(os.getuid() != 0, reason="needs root to connect as another user")
async def test_connection_from_another_uid_is_closed_unanswered(runtime_dir: str) -> None:
    """Even when the permissions let another user reach the socket, SO_PEERCRED makes the Runtime refuse it."""
    with capture_logs() as logs:
        async with actorbox.Runtime():
            d = os.path.join(runtime_dir, "actorbox")
            path = _control.list_sockets()[0][1]
            os.chmod(runtime_dir, 0o711)
            os.chmod(d, 0o711)
            os.chmod(path, 0o666)
            client = textwrap.dedent(f"""
                import socket, sys
                s = socket.socket(socket.AF_UNIX)
                s.settimeout(10)
                s.connect({path!r})
                try:
                    s.sendall(b'{{"command": "ps"}}\\n')
                    data = s.recv(65536)
                except (BrokenPipeError, ConnectionResetError):
                    data = b""  # closed on us before we even asked
                sys.stdout.write(repr(data))
            """)
            proc = await anyio.run_process(["/usr/bin/python3", "-I", "-c", client], user=65534, check=False)
            os.chmod(d, 0o700)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.decode() == "b''"
    assert [e["peer_uid"] for e in logs if e["event"] == "control.refused"] == [65534]


@pytest.mark.anyio
async def test_a_deeply_nested_request_gets_an_error_answer_and_the_runtime_goes_on(runtime_dir: str) -> None:
    """4,000 '[' (JSON nested past the decoder's recursion limit) is answered with an error; the Runtime,
    its actors and its control socket go on."""
    async with actorbox.Runtime() as rt:
        h = await rt.start(_Named)
        path = _control.list_sockets()[0][1]

        def raw(data: bytes) -> dict[str, object]:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(10)
                s.connect(path)
                s.sendall(data)
                return json.loads(s.makefile("rb").readline())  # type: ignore[no-any-return]

        reply = await anyio.to_thread.run_sync(raw, b"[" * 4000 + b"\n")
        assert reply["ok"] is False and "command" in str(reply["error"])
        assert await h.ping() == "pong"
        assert (await anyio.to_thread.run_sync(_control.query, path, "ping"))["ok"] is True


def _fill_descriptors() -> list[int]:
    """Open descriptors until none is left (under a soft limit the caller lowered); returns them."""
    held = []
    try:
        while True:
            held.append(os.dup(0))
    except OSError as exc:
        assert exc.errno == errno.EMFILE
    return held


@pytest.mark.anyio
async def test_accept_without_free_descriptors_is_retried_and_logged_once(runtime_dir: str) -> None:
    """accept() failing with EMFILE neither ends nor hangs the Runtime: one control.accept_failed warning,
    and the queued client is answered once descriptors are free again."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with capture_logs() as logs:
        async with actorbox.Runtime() as rt:
            h = await rt.start(_Named)
            path = _control.list_sockets()[0][1]
            client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            held: list[int] = []
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 64, hard))
                held = _fill_descriptors()
                client.connect(path)  # queued: the Runtime cannot accept it without a descriptor
                await anyio.sleep(1.0)  # several tries at accept(), all failing
            finally:
                for fd in held:
                    os.close(fd)
                resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

            def ask() -> dict[str, object]:
                with client:
                    client.settimeout(10)
                    client.sendall(b'{"command": "ping"}\n')
                    return json.loads(client.makefile("rb").readline())  # type: ignore[no-any-return]

            assert await anyio.to_thread.run_sync(ask) == {"ok": True, "pid": os.getpid()}
            assert await h.ping() == "pong"
            out = await anyio.to_thread.run_sync(_ps, "--json")
            assert out.returncode == 0 and len(json.loads(out.stdout)["runtimes"]) == 1
    assert [e["event"] for e in logs if e["event"].startswith("control.accept")] == \
        ["control.accept_failed", "control.accept_resumed"]
    assert _control.list_sockets() == []


@pytest.mark.anyio
async def test_sockets_left_by_dead_processes_are_removed_when_a_runtime_starts(runtime_dir: str) -> None:
    """A Runtime starting removes <pid>.sock files whose process is gone and nobody listens on;
    a live process's socket is kept."""
    d = os.path.join(runtime_dir, "actorbox")
    os.mkdir(d, 0o700)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    dead_pid, live_pid = int(gone.stdout), os.getppid()
    paths = [os.path.join(d, f"{dead_pid}.sock"), os.path.join(d, f"{dead_pid}-2.sock"),
             os.path.join(d, f"{live_pid}.sock")]
    for path in paths:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.bind(path)  # bound, never listening, then closed: what a SIGKILLed host leaves
    async with actorbox.Runtime():
        assert sorted(os.listdir(d)) == sorted([f"{os.getpid()}.sock", f"{live_pid}.sock"])
    assert os.listdir(d) == [f"{live_pid}.sock"]


@pytest.mark.anyio
@pytest.mark.slow
async def test_the_socket_of_a_sigkilled_host_is_removed_when_a_runtime_starts(runtime_dir: str) -> None:
    """A host killed by SIGKILL (its Runtime serving an actor) leaves <pid>.sock; the next Runtime removes it."""
    proc = subprocess.Popen([sys.executable, "-c", HOST_SCRIPT], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert proc.stdout is not None
        line = await anyio.to_thread.run_sync(proc.stdout.readline)
        assert line.startswith("ready"), line
        left = os.path.join(runtime_dir, "actorbox", f"{proc.pid}.sock")
        assert os.path.exists(left)
        proc.kill()
        await anyio.to_thread.run_sync(proc.communicate)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert os.path.exists(left)  # nothing of the killed host removed it
    assert [p for p, _ in _control.list_sockets()] == [proc.pid]
    async with actorbox.Runtime():
        assert not os.path.exists(left)
        assert [p for p, _ in _control.list_sockets()] == [os.getpid()]


def test_ps_removes_the_socket_of_a_killed_host(runtime_dir: str) -> None:
    """ps removes a <pid>.sock whose process was SIGKILLed (nobody listens) instead of only skipping it."""
    d = os.path.join(runtime_dir, "actorbox")
    os.mkdir(d, 0o700)
    victim = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    victim.kill()
    victim.wait()
    left = os.path.join(d, f"{victim.pid}.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(left)  # bound, then its process gone: what a killed host leaves
    out = _ps()
    assert out.returncode == 0 and "no running actorbox Runtime" in out.stderr, out.stderr
    assert not os.path.exists(left)
