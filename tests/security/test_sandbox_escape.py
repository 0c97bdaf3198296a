"""A real sandboxed actor tries to get out of bubblewrap; every attempt must fail.

Each test starts a hostile actor (tests/security/plugins/hostile.py) beside a
well-behaved one, lets the hostile one try something the trust model forbids
(docs/architecture.md, "Trust model"), asserts the exact way it failed inside the
sandbox, and then shows that the host still serves the well-behaved actor.
"""

from __future__ import annotations

import errno
import os
import re
import socket
import uuid

import anyio
import pytest

import actorbox

from ._support import (
    BLOCKED_READ,
    BLOCKED_WRITE,
    CALL_TIMEOUT,
    assert_blocked,
    assert_host_serves,
    start_actors,
)
from .plugins.healthy import Healthy
from .plugins.hostile import ForkBomb, MemoryBomb, Prober

pytestmark = pytest.mark.anyio

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def anyio_backend() -> str:
    """What the sandbox lets an actor do does not depend on the host's event loop (the
    host-side protocol tests in test_hostile_actor.py run on both backends): asyncio
    only, to keep the suite fast."""
    return "asyncio"


# -- reading what is not the actor's -------------------------------------------------


async def test_cannot_read_etc_shadow():
    """/etc/shadow is not readable from inside an actor (not bound, or not readable by its uid)."""
    async with actorbox.Runtime() as rt:
        healthy, prober = await start_actors(rt, Healthy, Prober)
        with anyio.fail_after(CALL_TIMEOUT):
            assert_blocked(await prober.read("/etc/shadow"), BLOCKED_READ, what="read /etc/shadow")
            assert_blocked(await prober.read("/etc/gshadow"), BLOCKED_READ, what="read /etc/gshadow")
        await assert_host_serves(rt, healthy)


async def test_cannot_read_host_home(host_home_secret):
    """Files in the host user's home (a planted secret, ~/.ssh, dotfiles) are not there for the actor."""
    home = os.path.dirname(host_home_secret)
    async with actorbox.Runtime() as rt:
        healthy, prober = await start_actors(rt, Healthy, Prober)
        with anyio.fail_after(CALL_TIMEOUT):
            assert_blocked(await prober.read(host_home_secret), {errno.ENOENT, errno.EACCES},
                           what="read the planted home secret")
            for path in (os.path.join(home, ".ssh", "id_rsa"), os.path.join(home, ".ssh", "authorized_keys"),
                         os.path.join(home, ".bashrc"), os.path.join(home, ".bash_history")):
                assert_blocked(await prober.read(path), BLOCKED_READ, what=f"read {path}")
            listing = await prober.listdir(home)
        # The home may exist as an empty mount point (holding the interpreter's directory),
        # but nothing of the user's own files is listed.
        if listing["ok"]:
            assert os.path.basename(host_home_secret) not in listing["value"]
            assert ".ssh" not in listing["value"] and ".bashrc" not in listing["value"], listing
        else:
            assert_blocked(listing, BLOCKED_READ, what=f"list {home}")
        await assert_host_serves(rt, healthy)


async def test_cannot_read_project_files_outside_its_module():
    """Only the actor's own package is bound: the rest of the host project is absent."""
    here = os.path.abspath(__file__)
    outside = [os.path.join(REPO_ROOT, "pyproject.toml"), os.path.join(REPO_ROOT, "tests", "conftest.py"),
               here, os.path.join(os.path.dirname(here), "conftest.py"),
               os.path.join(REPO_ROOT, ".git", "config")]
    outside = [p for p in outside if os.path.exists(p)]  # each really exists on the host
    assert outside
    async with actorbox.Runtime() as rt:
        healthy, prober = await start_actors(rt, Healthy, Prober)
        with anyio.fail_after(CALL_TIMEOUT):
            for path in outside:
                assert_blocked(await prober.read(path), {errno.ENOENT}, what=f"read {path}")
            root = await prober.listdir(REPO_ROOT)
            tests_dir = await prober.listdir(os.path.dirname(here))
        assert root["ok"], root
        assert "pyproject.toml" not in root["value"] and ".git" not in root["value"], root
        assert tests_dir["ok"], tests_dir
        # A project under /tmp sits in the actor's own writable /tmp, where Python may cache the package's
        # __init__ (its own __pycache__); nothing of the host's directory shows through.
        assert set(tests_dir["value"]) <= {"__init__.py", "plugins", "__pycache__"}, tests_dir
        if "__pycache__" in tests_dir["value"]:
            with anyio.fail_after(CALL_TIMEOUT):
                cached = await prober.listdir(os.path.join(os.path.dirname(here), "__pycache__"))
            assert cached["ok"] and all(c.startswith("__init__.") for c in cached["value"]), cached
        await assert_host_serves(rt, healthy)


async def test_cannot_reach_devices_or_kernel_memory():
    """Host block devices, /dev/mem, /dev/kmsg, /proc/kcore and /sys are absent from the sandbox."""
    host_disks = sorted(os.path.join("/dev", d) for d in os.listdir("/dev")
                        if re.fullmatch(r"(sd|vd|xvd|nvme|hd)[a-z0-9]+", d))
    async with actorbox.Runtime() as rt:
        healthy, prober = await start_actors(rt, Healthy, Prober)
        with anyio.fail_after(CALL_TIMEOUT):
            for path in ("/dev/mem", "/dev/kmem", "/dev/port", "/dev/kmsg", "/proc/kcore", "/sys/kernel/notes",
                         *host_disks):
                assert_blocked(await prober.read(path), BLOCKED_READ, what=f"read {path}")
            assert_blocked(await prober.listdir("/sys"), {errno.ENOENT}, what="list /sys")
        await assert_host_serves(rt, healthy)


async def test_holds_only_its_own_connection():
    """The actor inherits no host descriptor but its own socket: exactly one socket leads outside its process."""
    async with actorbox.Runtime() as rt:
        healthy, prober, other = await start_actors(rt, Healthy, Prober, Healthy)
        with anyio.fail_after(CALL_TIMEOUT):
            fds = await prober.open_fds()
        outside = [fd for fd in fds if fd[1].startswith("socket:") and fd[2] != "self"]
        assert len(outside) == 1, fds  # not the other actors' connections, not the host's listeners
        for _, target, _ in fds:
            assert target == "/dev/null" or target.split(":")[0] in ("socket", "pipe", "anon_inode"), fds
        await assert_host_serves(rt, healthy)
        await assert_host_serves(rt, other)


# -- writing ---------------------------------------------------------------------


async def test_cannot_write_system_paths():
    """/usr, /etc, /bin and / are read-only (or not writable by the actor's uid); nothing lands on the host."""
    tag = uuid.uuid4().hex
    targets = [f"/usr/actorbox-{tag}", f"/usr/lib/actorbox-{tag}.so", f"/etc/actorbox-{tag}",
               f"/bin/actorbox-{tag}", f"/actorbox-{tag}"]
    async with actorbox.Runtime() as rt:
        healthy, prober = await start_actors(rt, Healthy, Prober)
        with anyio.fail_after(CALL_TIMEOUT):
            for path in targets:
                assert_blocked(await prober.write(path), BLOCKED_WRITE, what=f"create {path}")
            for path in ("/etc/passwd", "/etc/hosts", "/usr/bin/env"):
                assert_blocked(await prober.append(path), BLOCKED_WRITE, what=f"append to {path}")
        for path in targets:
            assert not os.path.exists(path), f"the actor created {path} on the host"
        await assert_host_serves(rt, healthy)


async def test_cannot_write_its_own_module():
    """The actor's own module file and package directory are read-only: it cannot rewrite its code."""
    async with actorbox.Runtime() as rt:
        healthy, prober = await start_actors(rt, Healthy, Prober)
        with anyio.fail_after(CALL_TIMEOUT):
            own = await prober.own_paths()
            module, package = own["module"], own["package"]
            with open(module, "rb") as f:
                before = f.read()
            assert_blocked(await prober.append(module), BLOCKED_WRITE, what="append to its own module")
            assert_blocked(await prober.write(module), BLOCKED_WRITE, what="overwrite its own module")
            new = os.path.join(package, f"evil_{uuid.uuid4().hex}.py")
            assert_blocked(await prober.write(new), BLOCKED_WRITE, what="add a module to its package")
        with open(module, "rb") as f:
            assert f.read() == before
        assert not os.path.exists(new)
        await assert_host_serves(rt, healthy)


async def test_cannot_write_its_environment():
    """sys.prefix, site-packages (a .pth would run at every start) and actorbox's code are read-only."""
    tag = uuid.uuid4().hex
    async with actorbox.Runtime() as rt:
        healthy, prober = await start_actors(rt, Healthy, Prober)
        with anyio.fail_after(CALL_TIMEOUT):
            own = await prober.own_paths()
            targets = [os.path.join(own["prefix"], f"evil-{tag}"), os.path.join(own["purelib"], f"evil-{tag}.pth"),
                       os.path.join(own["actorbox"], f"evil_{tag}.py")]
            for path in targets:
                assert_blocked(await prober.write(path), BLOCKED_WRITE, what=f"create {path}")
            init = os.path.join(own["actorbox"], "__init__.py")
            assert_blocked(await prober.append(init), BLOCKED_WRITE, what="append to actorbox/__init__.py")
            assert_blocked(await prober.mkdir(os.path.join(own["purelib"], f"evil-{tag}")), BLOCKED_WRITE,
                           what="mkdir in site-packages")
        for path in targets:
            assert not os.path.exists(path), f"the actor created {path} on the host"
        await assert_host_serves(rt, healthy)


# -- private /tmp and /dev/shm ------------------------------------------------------


@pytest.mark.parametrize("directory", ["/tmp", "/dev/shm"])
async def test_host_tmp_and_shm_are_invisible(directory):
    """The actor's /tmp and /dev/shm are its own: host files there are invisible, its writes stay inside."""
    host_file = os.path.join(directory, f"actorbox-host-{uuid.uuid4().hex}")
    actor_file = os.path.join(directory, f"actorbox-actor-{uuid.uuid4().hex}")
    with open(host_file, "w") as f:
        f.write("host-only\n")
    try:
        async with actorbox.Runtime() as rt:
            healthy, prober = await start_actors(rt, Healthy, Prober)
            with anyio.fail_after(CALL_TIMEOUT):
                listing = await prober.listdir(directory)
                assert listing["ok"], listing
                assert os.path.basename(host_file) not in listing["value"], listing
                assert_blocked(await prober.read(host_file), {errno.ENOENT}, what=f"read the host's {host_file}")
                await prober.write(actor_file)  # may or may not be allowed inside; it must stay inside
            assert not os.path.exists(actor_file), f"{actor_file} written by the actor appeared on the host"
            await assert_host_serves(rt, healthy)
    finally:
        os.unlink(host_file)


# -- network ---------------------------------------------------------------------


async def test_no_udp_datagram_reaches_the_host():
    """UDP sent to a socket on the host's 127.0.0.1 never arrives: the actor's loopback is its own. (The
    host's other addresses are shown unroutable by reading the namespace: nothing is sent to them.)"""
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.setblocking(False)
    port = receiver.getsockname()[1]
    try:
        async with actorbox.Runtime() as rt:
            healthy, prober = await start_actors(rt, Healthy, Prober)
            with anyio.fail_after(CALL_TIMEOUT):
                # sendto may "succeed" on the actor's own loopback; it never reaches the host's.
                await prober.udp_send("127.0.0.1", port)
            await anyio.sleep(0.1)
            with pytest.raises(BlockingIOError):
                receiver.recvfrom(64)  # nothing arrived
            await assert_host_serves(rt, healthy)
    finally:
        receiver.close()


async def test_no_route_leaves_the_namespace():
    """The actor's namespace has only `lo`, no IPv4 route and IPv6 routes on `lo` only: no packet it
    sends (a DNS query included) can leave. Read from the kernel's tables, so nothing is ever sent."""
    async with actorbox.Runtime() as rt:
        healthy, prober = await start_actors(rt, Healthy, Prober)
        with anyio.fail_after(CALL_TIMEOUT):
            net = await prober.network()
        assert net["interfaces"] == ["lo"], net
        assert net["dev"] == ["lo"], net
        assert net["routes4"] == [], net  # not even a default route
        assert net["routes6"] is None or all(r[3] == "lo" for r in net["routes6"]), net
        await assert_host_serves(rt, healthy)


async def test_host_loopback_listener_is_unreachable():
    """A listener on the host's 127.0.0.1 is not reached: the actor's loopback is its own (refused there)."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    listener.setblocking(False)
    port = listener.getsockname()[1]
    try:
        async with actorbox.Runtime() as rt:
            healthy, prober = await start_actors(rt, Healthy, Prober)
            with anyio.fail_after(CALL_TIMEOUT):
                # Refused, not unreachable: its own loopback is up, and nothing listens on it.
                assert_blocked(await prober.tcp_connect("127.0.0.1", port), {errno.ECONNREFUSED},
                               what=f"TCP connect to the host's 127.0.0.1:{port}")
            with pytest.raises(BlockingIOError):
                listener.accept()
            await assert_host_serves(rt, healthy)
    finally:
        listener.close()


async def test_network_namespace_is_empty():
    """The actor has only a loopback interface and cannot reach the host's abstract Unix sockets."""
    name = f"actorbox-test-{uuid.uuid4().hex}"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind("\0" + name)
    server.listen(4)
    server.setblocking(False)
    try:
        async with actorbox.Runtime() as rt:
            healthy, prober = await start_actors(rt, Healthy, Prober)
            with anyio.fail_after(CALL_TIMEOUT):
                assert await prober.interfaces() == ["lo"]
                assert_blocked(await prober.unix_connect(name), {errno.ECONNREFUSED, errno.ENOENT},
                               what="connect to the host's abstract Unix socket")
            with pytest.raises(BlockingIOError):
                server.accept()
            await assert_host_serves(rt, healthy)
    finally:
        server.close()


# -- processes -------------------------------------------------------------------


async def test_cannot_see_host_processes():
    """/proc inside the actor lists only the sandbox's own processes: not the host test, not other actors."""
    host_pid = os.getpid()
    async with actorbox.Runtime() as rt:
        healthy, prober = await start_actors(rt, Healthy, Prober)
        with anyio.fail_after(CALL_TIMEOUT):
            procs = await prober.processes()
        pids = [pid for pid, _ in procs]
        cmdlines = [cmd for _, cmd in procs]
        assert host_pid not in pids, procs
        assert not any("pytest" in cmd for cmd in cmdlines), procs
        assert all("actorbox._child" in cmd for cmd in cmdlines), procs  # bwrap's init and the actor only
        assert len(procs) <= 3, procs
        await assert_host_serves(rt, healthy)


async def test_cannot_signal_host_or_other_actors():
    """os.kill on the host test's pid or another actor's pid fails; both keep running."""
    host_pid = os.getpid()
    async with actorbox.Runtime() as rt:
        healthy, prober = await start_actors(rt, Healthy, Prober)
        healthy_pid = next(a.pid for a in rt.actors() if a.label == actorbox.info(healthy).label)
        assert healthy_pid is not None and healthy_pid != host_pid
        with anyio.fail_after(CALL_TIMEOUT):
            assert_blocked(await prober.signal(host_pid, 0), {errno.ESRCH, errno.EPERM}, what="probe the host pid")
            assert_blocked(await prober.signal(host_pid, 15), {errno.ESRCH, errno.EPERM}, what="SIGTERM the host")
            assert_blocked(await prober.signal(healthy_pid, 9), {errno.ESRCH, errno.EPERM},
                           what="SIGKILL another actor")
        await assert_host_serves(rt, healthy)


# -- environment and privileges ----------------------------------------------------


async def test_host_environment_secrets_are_scrubbed(monkeypatch):
    """Host environment variables (a planted secret among them) do not reach the actor; ACTORBOX_CHILD=1 does."""
    secret = f"s3cr3t-{uuid.uuid4().hex}"
    monkeypatch.setenv("ACTORBOX_TEST_SECRET", secret)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret + "-aws")
    monkeypatch.setenv("PYTHONSTARTUP", "/tmp/evil-startup.py")
    async with actorbox.Runtime() as rt:
        healthy, prober = await start_actors(rt, Healthy, Prober)
        with anyio.fail_after(CALL_TIMEOUT):
            env = await prober.environ()
        assert "ACTORBOX_TEST_SECRET" not in env and "AWS_SECRET_ACCESS_KEY" not in env, env
        assert "PYTHONSTARTUP" not in env, env
        assert not any(secret in v for v in env.values()), env
        assert env.get("ACTORBOX_CHILD") == "1", env
        await assert_host_serves(rt, healthy)


async def test_no_capabilities_and_not_root():
    """The actor runs as an unprivileged uid with every capability set empty and no way back to root."""
    async with actorbox.Runtime() as rt:
        healthy, prober = await start_actors(rt, Healthy, Prober)
        with anyio.fail_after(CALL_TIMEOUT):
            ident = await prober.identity()
            setuid = await prober.become_root()
        assert ident["uid"] != 0 and ident["euid"] != 0, ident
        assert ident["gid"] != 0 and ident["egid"] != 0 and 0 not in ident["groups"], ident
        assert ident["caps"] == {"CapInh": 0, "CapPrm": 0, "CapEff": 0, "CapBnd": 0, "CapAmb": 0}, ident
        assert ident["no_new_privs"] == 1, ident
        assert_blocked(setuid, {errno.EPERM}, what="setuid(0)")
        await assert_host_serves(rt, healthy)


# -- resource limits ---------------------------------------------------------------


async def test_fork_bomb_is_stopped_at_the_process_limit():
    """A fork bomb under max_processes=64 is stopped by EAGAIN near the limit; the actor and host carry on."""
    async with actorbox.Runtime() as rt:
        healthy, bomb = await start_actors(rt, Healthy, ForkBomb)
        with anyio.fail_after(CALL_TIMEOUT):
            result = await bomb.bomb(max_forks=1000, deadline_s=10.0)
        assert result["stopped_by"] == {"error": "BlockingIOError", "errno": errno.EAGAIN}, result
        assert 0 < result["forked"] < 64, result  # its own threads count against the same limit
        with anyio.fail_after(CALL_TIMEOUT):
            assert await bomb.after() == 7  # the slots came back once the children exited
        await assert_host_serves(rt, healthy)


async def test_memory_bomb_is_stopped_at_the_memory_limit():
    """Allocating without bound under memory_limit=256 MiB fails (MemoryError, or the actor dies); the host is fine."""
    async with actorbox.Runtime() as rt:
        healthy, bomb = await start_actors(rt, Healthy, MemoryBomb)
        with anyio.fail_after(CALL_TIMEOUT), pytest.raises((MemoryError, actorbox.ActorDiedError)) as info:
            await bomb.bomb(max_mib=4096)
        if isinstance(info.value, MemoryError):
            got = int(re.search(r"after (\d+) MiB", str(info.value)).group(1))
            assert got <= 256, str(info.value)
            with anyio.fail_after(CALL_TIMEOUT):
                assert await bomb.small() == 1 << 20  # the actor survived its own bomb
        await assert_host_serves(rt, healthy)


@pytest.mark.parametrize("directory", ["/tmp", "/dev/shm"])
async def test_filling_private_tmpfs_is_bounded(directory):
    """Writing into the private /tmp or /dev/shm (RAM-backed) cannot get past the actor's memory limit."""
    async with actorbox.Runtime() as rt:
        healthy, bomb = await start_actors(rt, Healthy, MemoryBomb)
        with anyio.fail_after(CALL_TIMEOUT):
            result = await bomb.fill_tmp(directory, max_mib=512)
        assert result["stopped_by"] is not None, f"wrote {result['written_mib']} MiB into {directory}: {result!r}"
        assert result["written_mib"] <= 256, result
        await assert_host_serves(rt, healthy)
