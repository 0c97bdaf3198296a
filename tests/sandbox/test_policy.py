"""Tests of ``validate_path`` and ``SandboxPolicy`` validation: what may never be shared with an actor."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from sandbox import PolicyError, SandboxPolicy, validate_path


@pytest.mark.parametrize("path", ["/etc", "/usr", "/proc", "/sys", "/etc/ssl", "/usr/lib", "/proc/1", "/sys/kernel"])
def test_refuses_system_trees(path: str) -> None:
    """System paths, and anything below them, are refused."""
    with pytest.raises(PolicyError, match="system path"):
        validate_path(path)


@pytest.mark.parametrize("path", ["/", "/tmp", "/tmp/", "//tmp", "/var/tmp/.."])
def test_refuses_too_broad_paths(path: str) -> None:
    """/ and /tmp itself (however spelled) are refused as too broad."""
    with pytest.raises(PolicyError, match="too broad"):
        validate_path(path)


@pytest.mark.skipif(not os.path.isdir("/home"), reason="no /home on this machine")
def test_refuses_home_root() -> None:
    """/home itself is refused (a directory below a user's home is the thing to share)."""
    with pytest.raises(PolicyError, match="too broad"):
        validate_path("/home")


def test_refuses_real_home_dir() -> None:
    """The host user's real home directory is refused."""
    with pytest.raises(PolicyError):
        validate_path(os.path.expanduser("~"))


def test_refuses_home_dir_from_home_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever $HOME points to is refused as a home directory, while a directory inside it is allowed."""
    home = tmp_path / "alice"
    (home / "project").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    with pytest.raises(PolicyError, match="home directory"):
        validate_path(str(home))
    assert validate_path(str(home / "project")) == str(home / "project")


@pytest.mark.parametrize("path", ["relative/dir", "data", "./x", ""])
def test_refuses_relative_paths(path: str) -> None:
    """Relative (or empty) paths are refused."""
    with pytest.raises(PolicyError, match="absolute"):
        validate_path(path)


def test_refuses_non_string() -> None:
    """A path that is not a str (bytes, Path) is refused rather than guessed at."""
    with pytest.raises(PolicyError):
        validate_path(b"/srv/data")  # type: ignore[arg-type]


def test_refuses_nonexistent_path(tmp_path: Path) -> None:
    """A path that does not exist is refused with a hint to create it first."""
    with pytest.raises(PolicyError, match="does not exist"):
        validate_path(str(tmp_path / "missing"))


def test_refuses_symlink_into_etc(tmp_path: Path) -> None:
    """A symlink is judged by where it resolves: a link to /etc is refused."""
    link = tmp_path / "innocent"
    link.symlink_to("/etc")
    with pytest.raises(PolicyError, match="system path /etc"):
        validate_path(str(link))


def test_refuses_symlink_below_etc(tmp_path: Path) -> None:
    """A link into a directory below /etc is refused too."""
    link = tmp_path / "certs"
    link.symlink_to("/etc/ssl")
    with pytest.raises(PolicyError, match="/etc"):
        validate_path(str(link))


def test_refuses_dotdot_escape(tmp_path: Path) -> None:
    """'..' components are resolved before judging: tmp/../../etc is /etc."""
    with pytest.raises(PolicyError, match="system path"):
        validate_path(str(tmp_path) + "/../../../../../../etc")


def test_accepts_tmp_subdir(tmp_path: Path) -> None:
    """A directory of one's own below /tmp is accepted and returned as a real path."""
    d = tmp_path / "shared"
    d.mkdir()
    assert validate_path(str(d)) == os.path.realpath(d)


def test_symlink_to_own_dir_returns_target(tmp_path: Path) -> None:
    """A symlink to an allowed directory is accepted and replaced by its target (what bwrap binds)."""
    target = tmp_path / "real"
    target.mkdir()
    link = tmp_path / "link"
    link.symlink_to(target)
    assert validate_path(str(link)) == os.path.realpath(target)


def test_error_names_the_field(tmp_path: Path) -> None:
    """The message names the policy field that was wrong."""
    with pytest.raises(PolicyError, match=r"^writable_paths:"):
        validate_path("/etc", "writable_paths")


def test_policy_error_is_value_error() -> None:
    """PolicyError subclasses ValueError, so callers catching ValueError see it."""
    assert issubclass(PolicyError, ValueError)


# -- SandboxPolicy -------------------------------------------------------------------------


def test_default_policy() -> None:
    """The default policy: no network, no GPU, no extra paths, no memory limit, finite process/file limits."""
    p = SandboxPolicy()
    assert (p.network, p.allow_gpu, p.writable_paths, p.readable_paths, p.memory_limit) == (
        False, False, (), (), None)
    assert p.max_processes >= 16 and p.max_open_files >= 16


def test_policy_validates_and_normalises_paths(tmp_path: Path) -> None:
    """Paths are validated on construction and stored as a tuple of real paths."""
    target = tmp_path / "data"
    target.mkdir()
    link = tmp_path / "link"
    link.symlink_to(target)
    p = SandboxPolicy(readable_paths=[str(link)], writable_paths=[str(target)])  # type: ignore[arg-type]
    assert p.readable_paths == (str(target),)
    assert p.writable_paths == (str(target),)


@pytest.mark.parametrize("attr", ["writable_paths", "readable_paths"])
def test_policy_refuses_forbidden_paths(attr: str) -> None:
    """A forbidden path in either path list fails the construction, naming the field."""
    with pytest.raises(PolicyError, match=attr):
        SandboxPolicy(**{attr: ("/etc",)})  # type: ignore[arg-type]


@pytest.mark.parametrize("attr", ["writable_paths", "readable_paths"])
def test_policy_refuses_single_string(attr: str, tmp_path: Path) -> None:
    """One string instead of a sequence is refused (it would otherwise be split into characters)."""
    with pytest.raises(PolicyError, match="sequence"):
        SandboxPolicy(**{attr: str(tmp_path)})  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [0, 1 << 20, (64 << 20) - 1, 1.5e9, "1G", True, -1])
def test_memory_limit_rejects_bad_values(value: object) -> None:
    """memory_limit must be an int of at least 64 MiB (no floats, strings or bools)."""
    with pytest.raises(PolicyError, match="memory_limit"):
        SandboxPolicy(memory_limit=value)  # type: ignore[arg-type]


def test_memory_limit_accepts_64_mib() -> None:
    """Exactly 64 MiB is the smallest accepted memory_limit."""
    assert SandboxPolicy(memory_limit=64 << 20).memory_limit == 64 << 20


@pytest.mark.parametrize("attr", ["max_processes", "max_open_files"])
@pytest.mark.parametrize("value", [15, 0, -5, 100.0, "512", None, False])
def test_process_and_file_limits_reject_bad_values(attr: str, value: object) -> None:
    """max_processes and max_open_files must be ints of at least 16."""
    with pytest.raises(PolicyError, match=attr):
        SandboxPolicy(**{attr: value})  # type: ignore[arg-type]


@pytest.mark.parametrize("attr", ["max_processes", "max_open_files"])
def test_process_and_file_limits_accept_16(attr: str) -> None:
    """16 is the smallest accepted process / open-file limit."""
    assert getattr(SandboxPolicy(**{attr: 16}), attr) == 16  # type: ignore[arg-type]


def test_policy_is_frozen() -> None:
    """A policy cannot be changed after validation."""
    p = SandboxPolicy()
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.network = True  # type: ignore[misc]


def test_describe_limits() -> None:
    """describe_limits names the memory, process and open-file limits in force."""
    text = SandboxPolicy(memory_limit=256 << 20, max_processes=32, max_open_files=128).describe_limits()
    assert "256 MiB" in text and "32 processes" in text and "128 open files" in text
    assert "no memory limit" in SandboxPolicy().describe_limits()
