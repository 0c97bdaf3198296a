"""The README's demo runs end to end, as a user runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_plugin_host_demo_runs_and_leaves_nothing(backend: str) -> None:
    """examples/plugin_host.py exits 0 on both backends, shows typed errors and leaves no child process."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "plugin_host.py"), "--backend", backend],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "ACTORBOX_CHILD=1" in out
    assert "typed error from the actor: ValueError" in out
    assert "MethodNotFoundError" in out
    assert "ActorStoppedError" in out
    assert "child processes left: 0" in out


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_extension_host_demo_runs_two_numpy_versions_side_by_side(backend: str, tmp_path: Path) -> None:
    """examples/extension_host.py (the README's first command) builds both environments and reports success."""
    env = {**os.environ, "ACTORBOX_ENV_ROOT": str(tmp_path / "envs")}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "extension_host.py"), "--backend", backend],
        capture_output=True, text=True, timeout=300, cwd=ROOT, env=env,
    )
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert "loaded 2 of 2" in out
    assert "legacy-stats: numpy 1." in out and "modern-stats: numpy 2." in out
    assert "two numpy versions side by side: yes; every actor on the host's torch: yes; host's numpy hidden: yes" in out
    assert "the host now sees [0.0, 1.0]" in out
    assert "16 tile_range tasks on" in out and "tasks saw the image the host sees: yes" in out
    assert "child processes left: 0" in out
