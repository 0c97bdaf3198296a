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


def _orphaned_ray(since: float) -> list[str]:
    out = []
    for p in psutil.process_iter(["name", "cmdline", "create_time", "ppid"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if p.info["create_time"] >= since and p.info["ppid"] == 1 and (
                "ray::" in cmd or "raylet" in cmd or "gcs_server" in cmd):
            out.append(f"{p.pid} {cmd[:80]}")
    return out


@pytest.mark.timeout(400)
def test_ray_cluster_example_runs_and_leaves_nothing() -> None:
    since = time.time()
    run = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "ray_cluster.py"), "--small"],
                         capture_output=True, text=True, timeout=380, cwd=ROOT)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "two numpy versions side by side: yes" in run.stdout
    assert "registry callbacks: ['legacy-stats', 'modern-stats']" in run.stdout
    deadline = time.monotonic() + 15  # Ray's agents exit a few seconds after their raylet
    while _orphaned_ray(since) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _orphaned_ray(since) == []
