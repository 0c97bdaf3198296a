"""Tests of ``detect_restriction_model``: the real probe on this machine, and each failure it names.

Failure cases call ``detect_restriction_model.__wrapped__()`` so the per-process
cache (which other tests rely on) is neither used nor polluted.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

import sandbox._detect as detect_mod
from sandbox import Restriction, RestrictionModel, detect_restriction_model

needs_bwrap = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed here")


def _fake_bwrap(directory: Path, stderr: str = "bwrap: setting up uid map: Permission denied") -> Path:
    """A 'bwrap' that answers --version and fails every sandbox with ``stderr``."""
    path = directory / "bwrap"
    path.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = "--version" ]; then echo "bubblewrap 9.9.9"; exit 0; fi\n'
        f"echo '{stderr}' >&2\n"
        "exit 1\n")
    path.chmod(0o755)
    return path


@needs_bwrap
def test_available_on_this_machine() -> None:
    """With bubblewrap installed here, the real probe reports a working sandbox."""
    model = detect_restriction_model()
    assert model.available, model.explain()
    assert model.restriction is Restriction.NONE
    assert model.bwrap is not None and os.path.basename(model.bwrap) == "bwrap"
    assert model.bwrap_version
    assert model.remedy == ""


@needs_bwrap
def test_privilege_mode_matches_euid() -> None:
    """As root the model is privileged and names setpriv; otherwise it is not privileged."""
    model = detect_restriction_model()
    assert model.privileged is (os.geteuid() == 0)
    assert (model.setpriv is not None) is model.privileged


def test_result_is_cached() -> None:
    """Two calls return the very same object (the probe runs once per process)."""
    assert detect_restriction_model() is detect_restriction_model()


def test_bwrap_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without bwrap on PATH the model says BWRAP_MISSING, with an apt-get remedy in explain()."""
    monkeypatch.setenv("PATH", str(tmp_path))
    model = detect_restriction_model.__wrapped__()
    assert model.restriction is Restriction.BWRAP_MISSING
    assert not model.available
    assert "apt-get" in model.remedy
    assert model.remedy in model.explain()
    assert "bwrap-missing" in model.explain()


def test_cache_unaffected_by_uncached_probe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Probing uncached with a bad PATH leaves the cached answer as it was."""
    before = detect_restriction_model()
    monkeypatch.setenv("PATH", str(tmp_path))
    assert detect_restriction_model.__wrapped__().restriction is Restriction.BWRAP_MISSING
    assert detect_restriction_model() is before


@pytest.mark.skipif(os.geteuid() != 0, reason="setpriv is only needed when the host runs as root")
@needs_bwrap
def test_setpriv_missing_as_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """As root with bwrap but no setpriv on PATH, the model says SETPRIV_MISSING."""
    (tmp_path / "bwrap").symlink_to(shutil.which("bwrap"))  # type: ignore[arg-type]
    monkeypatch.setenv("PATH", str(tmp_path))
    model = detect_restriction_model.__wrapped__()
    assert model.restriction is Restriction.SETPRIV_MISSING
    assert "setpriv" in model.remedy


def test_failed_probe_reports_bwrap_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bwrap that cannot build a sandbox gives PROBE_FAILED, with bwrap's own error as the detail."""
    _fake_bwrap(tmp_path, "bwrap: weird failure 42")
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    monkeypatch.setattr(detect_mod, "read_kernel_setting", lambda path: None)  # no sysctl or LSM explains it
    model = detect_restriction_model.__wrapped__()
    assert model.restriction is Restriction.PROBE_FAILED
    assert model.bwrap == str(tmp_path / "bwrap")
    assert model.bwrap_version == "9.9.9"
    assert "weird failure 42" in model.detail


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"/proc/sys/kernel/unprivileged_userns_clone": "0"}, Restriction.USERNS_DISABLED),
        ({"/proc/sys/user/max_user_namespaces": "0"}, Restriction.USERNS_DISABLED),
        ({"/proc/sys/kernel/apparmor_restrict_unprivileged_userns": "1"}, Restriction.APPARMOR),
        ({"/sys/fs/selinux/enforce": "1"}, Restriction.SELINUX),
        ({}, Restriction.PROBE_FAILED),
    ],
)
def test_failure_is_explained_by_kernel_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, settings: dict[str, str], expected: Restriction
) -> None:
    """As a normal user, a failed probe is attributed to the sysctl or LSM setting that causes it."""
    _fake_bwrap(tmp_path)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    monkeypatch.setattr(detect_mod, "read_kernel_setting", settings.get)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    model = detect_restriction_model.__wrapped__()
    assert model.restriction is expected
    assert not model.privileged


def test_root_failure_ignores_userns_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """As root, user-namespace sysctls don't apply, so they are not blamed for a failed probe."""
    _fake_bwrap(tmp_path)
    (tmp_path / "setpriv").write_text("#!/bin/sh\nexit 0\n")
    (tmp_path / "setpriv").chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(detect_mod, "read_kernel_setting", {"/proc/sys/kernel/unprivileged_userns_clone": "0"}.get)
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    model = detect_restriction_model.__wrapped__()
    assert model.privileged
    assert model.restriction is Restriction.PROBE_FAILED


def test_unsupported_platform(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a non-Linux platform the model says UNSUPPORTED_PLATFORM without probing."""
    monkeypatch.setattr(detect_mod.sys, "platform", "darwin")
    model = detect_restriction_model.__wrapped__()
    assert model.restriction is Restriction.UNSUPPORTED_PLATFORM
    assert "darwin" in model.explain()


@pytest.mark.parametrize("restriction", list(Restriction))
def test_every_restriction_but_none_has_a_remedy(restriction: Restriction) -> None:
    """Every failure kind carries a non-empty remedy; NONE (it works) carries none."""
    remedy = RestrictionModel(restriction).remedy
    if restriction is Restriction.NONE:
        assert remedy == ""
    else:
        assert remedy.strip()


def test_explain_of_unavailable_model_has_detail_and_remedy() -> None:
    """explain() of a failure names the restriction, the detail and the remedy."""
    model = RestrictionModel(Restriction.APPARMOR, "/usr/bin/bwrap", "0.9.0", detail="Operation not permitted")
    text = model.explain()
    assert "apparmor-userns-restricted" in text
    assert "Operation not permitted" in text
    assert text.endswith(model.remedy)


def test_explain_of_available_model_names_bwrap_and_mode() -> None:
    """explain() of a working model names bwrap's version, its path and the privilege mode."""
    root = RestrictionModel(Restriction.NONE, "/usr/bin/bwrap", "0.8.0", privileged=True, setpriv="/usr/bin/setpriv")
    user = RestrictionModel(Restriction.NONE, "/usr/bin/bwrap", "0.8.0", privileged=False)
    assert "0.8.0" in root.explain() and "/usr/bin/bwrap" in root.explain()
    assert "as root" in root.explain()
    assert "user namespaces" in user.explain()
