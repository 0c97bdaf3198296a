"""Tests of ``python -m actorbox doctor``: the pass path, the bwrap-missing path, --json, and single checks."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections import namedtuple
from pathlib import Path

import pytest

from actorbox import _doctor
from actorbox._doctor import Check, Status

needs_bwrap = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed here")


def run_doctor(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "actorbox", "doctor", *args], capture_output=True, text=True,
                          timeout=120, env=env)


def line_of(output: str, prefix: str) -> int:
    lines = output.splitlines()
    for i, line in enumerate(lines):
        if line.startswith(prefix):
            return i
    raise AssertionError(f"no line starting with {prefix!r} in:\n{output}")


@pytest.fixture(scope="module")
def passing_run() -> subprocess.CompletedProcess[str]:
    return run_doctor()


@pytest.fixture
def path_without_bwrap(tmp_path: Path) -> dict[str, str]:
    """The environment with PATH holding only python, prlimit and setpriv (no bwrap)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").symlink_to(sys.executable)
    for tool in ("prlimit", "setpriv"):
        found = shutil.which(tool)
        if found is not None:
            (bin_dir / tool).symlink_to(found)
    return {**os.environ, "PATH": str(bin_dir)}


# -- the command, end to end ------------------------------------------------------------------


@pytest.mark.slow
@needs_bwrap
def test_pass_path(passing_run: subprocess.CompletedProcess[str]) -> None:
    """On this machine (bwrap installed) the doctor exits 0 with PASS for bwrap and the real round trip."""
    out = passing_run.stdout
    assert passing_run.returncode == 0, out + passing_run.stderr
    assert re.search(r"^\[PASS\] bwrap: bubblewrap \S+ at /", out, re.M)
    assert re.search(r"^\[PASS\] restriction model: ", out, re.M)
    assert re.search(r"^\[PASS\] round trip: sandboxed actor started in \d+ ms", out, re.M)
    assert "[FAIL]" not in out


@pytest.mark.slow
@needs_bwrap
def test_every_check_prints_one_header_line(passing_run: subprocess.CompletedProcess[str]) -> None:
    """Each check named in the brief prints a '[STATUS] name: detail' header line."""
    out = passing_run.stdout
    for name in ("bwrap", "user namespaces", "setpriv/prlimit", "apparmor", "restriction model", "/dev/shm",
                 "torch", "cuda", "cuda ipc", "round trip"):
        assert re.search(rf"^\[(PASS|WARN|FAIL)\] {re.escape(name)}: \S", out, re.M), name


@pytest.mark.slow
def test_bwrap_hidden_from_path_fails(path_without_bwrap: dict[str, str]) -> None:
    """Without bwrap on PATH the doctor exits non-zero, with a FAIL line for bwrap and the apt-get remedy."""
    proc = run_doctor(env=path_without_bwrap)
    out = proc.stdout
    assert proc.returncode == 1, out + proc.stderr
    i = line_of(out, "[FAIL] bwrap:")
    assert out.splitlines()[i + 1].startswith("    remedy: ")
    assert "apt-get install -y bubblewrap" in out.splitlines()[i + 1]
    assert re.search(r"^\[FAIL\] restriction model: .*bwrap-missing", out, re.M)
    assert re.search(r"^\[FAIL\] round trip: SandboxUnavailableError", out, re.M)


@pytest.mark.slow
@needs_bwrap
def test_json_parses(tmp_path: Path) -> None:
    """--json prints one JSON document on stdout: ok, and every check with status, detail and remedy."""
    proc = run_doctor("--json")
    report = json.loads(proc.stdout)
    assert proc.returncode == 0, proc.stderr
    assert report["ok"] is True
    checks = {c["name"]: c for c in report["checks"]}
    assert checks["bwrap"]["status"] == "pass" and checks["bwrap"]["required"] is True
    rt = checks["round trip"]
    assert rt["status"] == "pass"
    assert rt["data"]["uid"] != 0 and rt["data"]["cap_eff"] == 0
    assert rt["data"]["actorbox_child"] == "1"
    assert all(c["status"] in ("pass", "warn", "fail") for c in report["checks"])


@pytest.mark.slow
def test_json_reports_failure(path_without_bwrap: dict[str, str]) -> None:
    """--json without bwrap: still valid JSON, ok is false, bwrap failed with its remedy, exit code 1."""
    proc = run_doctor("--json", env=path_without_bwrap)
    report = json.loads(proc.stdout)
    assert proc.returncode == 1
    assert report["ok"] is False
    bwrap = next(c for c in report["checks"] if c["name"] == "bwrap")
    assert bwrap["status"] == "fail" and "apt-get" in bwrap["remedy"]


def test_no_subcommand_is_a_usage_error() -> None:
    """'python -m actorbox' without a command prints usage and exits 2."""
    proc = subprocess.run([sys.executable, "-m", "actorbox"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "doctor" in proc.stderr


# -- single checks, in process ---------------------------------------------------------------


def test_format_shows_remedy_only_when_not_passing() -> None:
    """A FAIL (or WARN) prints an indented remedy line; a PASS never does."""
    bad = Check("bwrap", Status.FAIL, "missing", "install it", required=True)
    good = Check("bwrap", Status.PASS, "0.8.0", "install it")
    assert bad.format() == "[FAIL] bwrap: missing\n    remedy: install it"
    assert good.format() == "[PASS] bwrap: 0.8.0"


def test_exit_code_counts_required_failures_only() -> None:
    """Only a FAIL of a required check makes the exit code non-zero; warnings never do."""
    warn = Check("torch", Status.WARN, "not installed", "pip install")
    optional_fail = Check("user namespaces", Status.FAIL, "disabled", "sysctl")
    required_fail = Check("round trip", Status.FAIL, "boom", "fix", required=True)
    assert _doctor.exit_code([warn, optional_fail]) == 0
    assert _doctor.exit_code([warn, required_fail]) == 1


def test_shm_warns_under_one_gib(monkeypatch: pytest.MonkeyPatch) -> None:
    """/dev/shm with less than 1 GiB free is a warning with a remedy; more is a pass."""
    Stat = namedtuple("Stat", "f_bavail f_frsize f_blocks")
    monkeypatch.setattr(_doctor.os, "statvfs", lambda p: Stat(1000, 4096, 2000))
    small = _doctor.check_shm()
    assert small.status is Status.WARN and "--shm-size" in small.remedy
    monkeypatch.setattr(_doctor.os, "statvfs", lambda p: Stat(2 << 20, 4096, 4 << 20))
    assert _doctor.check_shm().status is Status.PASS


def test_torch_not_installed_is_a_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without torch the torch check warns 'not installed' and the CUDA check is skipped, not failed."""
    monkeypatch.setitem(sys.modules, "torch", None)  # makes 'import torch' raise ImportError
    check, torch = _doctor.check_torch()
    assert torch is None
    assert check.status is Status.WARN and "not installed" in check.detail
    cuda = _doctor.check_cuda(None)
    assert [c.status for c in cuda] == [Status.WARN]


def test_no_cuda_says_cpu_shared_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without CUDA, the cuda check passes and says tensors will use CPU shared memory; IPC env is shown."""
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("ACTORBOX_ENABLE_CUDA_IPC", "1")
    cuda, ipc = _doctor.check_cuda(torch)
    assert cuda.status is Status.PASS and "CPU shared memory" in cuda.detail
    assert "ACTORBOX_ENABLE_CUDA_IPC='1'" in ipc.detail


def test_user_namespaces_disabled_fails_for_non_root(monkeypatch: pytest.MonkeyPatch) -> None:
    """As a normal user with max_user_namespaces=0 the check fails with the sysctl remedy."""
    monkeypatch.setattr(_doctor.os, "geteuid", lambda: 1000)
    monkeypatch.setattr(_doctor, "_read", {"/proc/sys/user/max_user_namespaces": "0"}.get)
    check = _doctor.check_user_namespaces()
    assert check.status is Status.FAIL
    assert "sysctl" in check.remedy


def test_user_namespaces_not_needed_as_root(monkeypatch: pytest.MonkeyPatch) -> None:
    """As root, disabled user namespaces don't matter: the check passes and mentions setpriv."""
    monkeypatch.setattr(_doctor.os, "geteuid", lambda: 0)
    monkeypatch.setattr(_doctor, "_read", {"/proc/sys/user/max_user_namespaces": "0"}.get)
    check = _doctor.check_user_namespaces()
    assert check.status is Status.PASS and "setpriv" in check.detail


def test_apparmor_restriction_warns_for_non_root(monkeypatch: pytest.MonkeyPatch) -> None:
    """apparmor_restrict_unprivileged_userns=1 is a warning for a normal user, with the AppArmor remedy."""
    monkeypatch.setattr(_doctor.os, "geteuid", lambda: 1000)
    monkeypatch.setattr(_doctor, "_read", {"/proc/sys/kernel/apparmor_restrict_unprivileged_userns": "1"}.get)
    check = _doctor.check_apparmor()
    assert check.status is Status.WARN and "apparmor" in check.remedy.lower()


def test_tools_missing_fails_with_util_linux_remedy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With prlimit/setpriv missing from PATH the tools check fails and names util-linux."""
    monkeypatch.setenv("PATH", str(tmp_path))
    check = _doctor.check_tools()
    assert check.status is Status.FAIL
    assert "prlimit" in check.detail and "util-linux" in check.remedy
