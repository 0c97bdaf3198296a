"""examples/ray_cluster.py runs (a small image) on a local Ray it starts and stops, leaving no process behind."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import psutil
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def _left_behind(driver: int) -> list[str]:
    """Processes of the Ray the example started: its session folder is named after the driver's
    pid, and each of its processes names that folder or has a log open in it (other Rays on
    this machine are not counted)."""
    mark = f"_{driver}/"
    out = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            cmd = " ".join(p.info["cmdline"] or [])
            if "ray" in cmd and (mark in cmd or any(mark in f.path for f in p.open_files())):
                out.append(f"{p.pid} {cmd[:80]}")
        except psutil.Error:
            pass
    return out


@pytest.mark.timeout(400)
def test_ray_cluster_example_runs_and_leaves_nothing() -> None:
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "examples", "ray_cluster.py"), "--small"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        stdout, stderr = proc.communicate(timeout=380)
    finally:
        proc.kill()
    run = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "two numpy versions side by side: yes" in run.stdout
    assert "registry callbacks: ['legacy-stats', 'modern-stats']" in run.stdout
    deadline = time.monotonic() + 15  # Ray's agents exit a few seconds after their raylet
    while _left_behind(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _left_behind(proc.pid) == []


_IDLE_SCRIPT = """
import anyio, actorbox

@actorbox.actor
class Counter:  # (defined in __main__: it travels by value)
    def __init__(self, n=0):
        self.n = n

    def incr(self):
        self.n += 1
        return self.n

async def main():
    async with actorbox.Runtime(backend="ray") as rt:
        c = await rt.start(Counter)
        await anyio.sleep(14)  # trio's thread cache ends a thread idle for 10 s
        d = await rt.start(Counter, 5)  # needs the raylet
        print("calls:", await c.incr(), await d.incr(), flush=True)

anyio.run(main, backend="trio")
"""


@pytest.mark.timeout(200)
def test_a_local_ray_outlives_the_threads_that_served_its_start() -> None:
    """Ray's processes die with the thread that started them (PR_SET_PDEATHSIG): the Runtime's
    local Ray is started on a thread of its own, so the raylet survives the pool's idle threads."""
    proc = subprocess.Popen([sys.executable, "-c", _IDLE_SCRIPT], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=ROOT)
    try:
        stdout, stderr = proc.communicate(timeout=180)
    finally:
        proc.kill()
    assert proc.returncode == 0 and "calls: 1 6" in stdout, stdout[-3000:] + stderr[-3000:]
    deadline = time.monotonic() + 15
    while _left_behind(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _left_behind(proc.pid) == []
