"""The README's demo runs end to end, as a user runs it."""

from __future__ import annotations

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
