"""Tests for sandbox/_late_reap.py: a process closed before the kernel let it go is reaped, and its
uid released, once it is gone (200 actors stopped together left 13 uid leases open in the host)."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import anyio
import pytest

import sandbox
from sandbox._uids import UID_BASE, lease_uid

pytestmark = pytest.mark.anyio


def _open_links() -> set[str]:
    out = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            out.add(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            pass
    return out


async def _until_reaped(pid: int) -> None:
    with anyio.fail_after(10):
        while pid in sandbox.late_reaps():
            await anyio.sleep(0.01)


async def test_a_process_closed_before_it_is_gone_is_reaped_and_its_uid_released_once_it_is(tmp_path: Path) -> None:
    d = str(tmp_path / "uids")
    fds = len(os.listdir("/proc/self/fd"))
    lease = lease_uid(d)
    lock = os.path.join(d, str(lease.uid))
    popen = subprocess.Popen(["sleep", "60"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc = sandbox.ActorProcess(popen, lease)
    del lease
    await proc.aclose()  # not gone yet (as when the kernel is still tearing a killed process down)
    assert popen.pid in sandbox.late_reaps()
    assert lock in _open_links()  # its uid stays taken while it lives
    assert lease_uid(d).uid == UID_BASE + 2
    os.kill(popen.pid, signal.SIGKILL)
    await _until_reaped(popen.pid)
    assert popen.returncode == -signal.SIGKILL  # reaped: no zombie left
    assert lock not in _open_links()
    assert len(os.listdir("/proc/self/fd")) == fds  # its pidfd, pipes and lease are all closed
    assert lease_uid(d).uid == UID_BASE + 1  # released


async def test_a_process_already_gone_is_closed_at_once(tmp_path: Path) -> None:
    d = str(tmp_path / "uids")
    lease = lease_uid(d)
    popen = subprocess.Popen(["true"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc = sandbox.ActorProcess(popen, lease)
    del lease
    with anyio.fail_after(10):
        assert await proc.wait() == 0
    await proc.aclose()
    assert popen.pid not in sandbox.late_reaps()
    assert lease_uid(d).uid == UID_BASE + 1


async def test_many_processes_closed_before_they_are_gone_are_all_reaped(tmp_path: Path) -> None:
    """One reaper thread watches them all; each is reaped as it goes, whatever the order."""
    d = str(tmp_path / "uids")
    procs = []
    for _ in range(20):
        popen = subprocess.Popen(["sleep", "60"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        procs.append((popen, sandbox.ActorProcess(popen, lease_uid(d))))
    for _, proc in procs:
        await proc.aclose()
    assert {p.pid for p, _ in procs} <= set(sandbox.late_reaps())
    for popen, _ in reversed(procs):
        os.kill(popen.pid, signal.SIGKILL)
    for popen, _ in procs:
        await _until_reaped(popen.pid)
        assert popen.returncode == -signal.SIGKILL
    assert lease_uid(d).uid == UID_BASE + 1


async def test_a_forked_copy_of_the_host_leaves_them_to_the_parent(tmp_path: Path) -> None:
    """A host that forks (multiprocessing's fork, say) while processes wait to be reaped: the copy drops its
    copies of their pidfds and never reaps them (they are not its children), and the parent still does."""
    popen = subprocess.Popen(["sleep", "60"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    await sandbox.ActorProcess(popen, lease_uid(str(tmp_path / "uids"))).aclose()
    r, w = os.pipe()
    child = os.fork()
    if child == 0:
        os.write(w, str(len(sandbox.late_reaps())).encode())
        os._exit(0)
    os.close(w)
    assert os.read(r, 16) == b"0"
    os.close(r)
    os.waitpid(child, 0)
    assert popen.pid in sandbox.late_reaps()
    os.kill(popen.pid, signal.SIGKILL)
    await _until_reaped(popen.pid)
    assert popen.returncode == -signal.SIGKILL
