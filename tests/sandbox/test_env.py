"""Per-actor environments (sandbox/_env.py): requirement checks, fingerprints, real uv builds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import anyio
import pytest
import structlog
from hypothesis import given
from hypothesis import strategies as st

from sandbox import EnvBuildError, EnvironmentManager, RequirementError, validate_requirements
from sandbox._env import MARKER, check_pins, fingerprint, is_valid, pins_hint

ROOT = Path(__file__).resolve().parents[2]
CODE_DIRS = tuple(str(ROOT / p) for p in ("actorbox", "scheduler", "sandbox"))
# A small pure-Python wheel, so builds stay quick.
SMALL = "six==1.16.0"


def manager(root: Path) -> EnvironmentManager:
    return EnvironmentManager(str(root), code_dirs=CODE_DIRS, progress=None)


# -- requirement strings ------------------------------------------------------------------


def test_valid_requirements_are_canonical_sorted_and_deduplicated() -> None:
    """PEP 508 strings come back in canonical form, sorted, each once."""
    reqs, ignored = validate_requirements(
        ["numpy <2", "six==1.16.0", "numpy<2", "attrs[tests]>=23 ; python_version>'3'"])
    assert reqs == ('attrs[tests]>=23; python_version > "3"', "numpy<2", "six==1.16.0")
    assert ignored == ()


@pytest.mark.parametrize("bad, why", [
    ("--index-url https://evil.example/simple", "pip option"),
    ("-e .", "pip option"),
    ("-r other.txt", "pip option"),
    ("numpy\n--extra-index-url https://evil.example", "several lines"),
    ("", "empty"),
    ("numpy >>> 2", "not a valid PEP 508"),
    ("./local_dir", "not a valid PEP 508"),
    ("pkg @ file:///etc/passwd", "outside the extension"),
    ("pkg @ git+ssh://git@example.com/x.git", "only https"),
    ("pkg @ http://example.com/pkg.whl", "only https"),
    ("pkg @ file:relative/pkg.whl", "must be absolute"),
    ("pkg @ https://example.com/${AWS_SECRET_ACCESS_KEY}/pkg.whl", "environment variable"),
])
def test_bad_requirements_are_refused_with_the_reason(bad: str, why: str) -> None:
    """Pip options, multi-line strings, non-PEP 508 text and unsafe URLs are refused, saying why."""
    with pytest.raises(RequirementError, match=why):
        validate_requirements([bad])


def test_a_file_url_inside_the_extension_is_allowed(tmp_path: Path) -> None:
    """A file: URL is accepted only when it points inside the extension's own folder."""
    wheel = tmp_path / "vendor" / "pkg-1.0-py3-none-any.whl"
    wheel.parent.mkdir()
    wheel.touch()
    reqs, _ = validate_requirements([f"pkg @ {wheel.as_uri()}"], base_dir=str(tmp_path))
    assert reqs == (f"pkg @ {wheel.as_uri()}",)
    with pytest.raises(RequirementError, match="outside the extension"):
        validate_requirements([f"pkg @ {wheel.as_uri()}"], base_dir=str(tmp_path / "vendor" / "elsewhere"))


def test_torch_requirements_are_ignored_not_installed() -> None:
    """torch always comes from the host: a torch requirement is returned as ignored."""
    reqs, ignored = validate_requirements(["torch>=2", "Torch==1.0", "six"])
    assert reqs == ("six",)
    assert ignored == ("torch>=2", "Torch==1.0")


def test_a_single_string_is_not_taken_as_a_list_of_characters() -> None:
    """dependencies="numpy" is a TypeError, not eleven one-letter requirements."""
    with pytest.raises(TypeError, match="not one string"):
        validate_requirements("numpy")  # type: ignore[arg-type]


@given(st.text(min_size=1).map(lambda s: "-" + s))
def test_anything_that_starts_like_an_option_is_refused(text: str) -> None:
    """No string beginning with '-' ever reaches uv as a requirement."""
    with pytest.raises(RequirementError):
        validate_requirements([text])


# -- the host's pins --------------------------------------------------------------------

PINS = ("anyio==4.16.0", "msgpack==1.1.0", "typing-extensions==4.12.2")


@pytest.mark.parametrize("reqs", [("anyio<4",), ("six", "msgpack>=2"), ("typing_extensions<4",)])
def test_a_requirement_excluding_a_pin_fails_naming_the_pin_and_why(reqs: tuple[str, ...]) -> None:
    """A requirement the host's pinned version does not satisfy fails before uv, naming that pin and why."""
    with pytest.raises(EnvBuildError, match=r"excludes the host's [\w-]+==[\d.]+\. That version is pinned because "
                       "the actor process runs actorbox's own code") as info:
        check_pins(reqs, PINS)
    assert info.value.output == ""


@pytest.mark.parametrize("reqs", [("anyio>=4",), ("anyio==4.16.*",), ('anyio<4; python_version < "3"',),
                                  ("anyio @ https://example.invalid/anyio-3.0-py3-none-any.whl",), ("numpy<2",)])
def test_requirements_the_pins_satisfy_pass(reqs: tuple[str, ...]) -> None:
    """Requirements that allow the pinned version, whose marker is false, that name a URL, or unpinned ones pass."""
    check_pins(reqs, PINS)


def test_uv_output_naming_a_pin_gets_the_reason_and_other_output_none() -> None:
    """A conflict through a requirement's own dependency (uv's words only) is followed by where the pin comes from."""
    output = ("Because old-lib==1.0 depends on anyio<4 and you require anyio==4.16.0, we can conclude that "
              "old-lib==1.0 cannot be used.")
    assert pins_hint(output, PINS).startswith("\nanyio==4.16.0 is the host's pinned version: the actor process")
    assert pins_hint("anyio==4.16.01 and anyio==4.16.0.post1 are unrelated", PINS) == ""
    assert pins_hint("No solution found when resolving dependencies", PINS) == ""


# -- fingerprints and the overlay ------------------------------------------------------


def test_fingerprint_depends_on_requirements_not_their_order(tmp_path: Path) -> None:
    """Same requirements in any order: one fingerprint; different requirements: another."""
    host = manager(tmp_path).host
    a = fingerprint(("numpy<2", "six"), sys.executable, host)
    assert a == fingerprint(("six", "numpy<2"), sys.executable, host)
    assert a != fingerprint(("numpy>=2", "six"), sys.executable, host)
    assert a != fingerprint(("numpy<2", "six"), "/usr/bin/python3", host)


def test_overlay_exposes_torch_and_actorbox_runtime_but_not_other_host_packages(tmp_path: Path) -> None:
    """The overlay links the host's torch and actorbox's runtime, never numpy or pytest."""
    code, packages = manager(tmp_path).overlay()
    code_names, package_names = set(os.listdir(code)), set(os.listdir(packages))
    assert {"actorbox", "scheduler", "sandbox", "anyio", "msgpack", "structlog", "cloudpickle"} <= code_names
    assert "torch" in package_names
    for name in ("numpy", "pytest", "hypothesis", "trio"):
        assert name not in code_names | package_names
    torch_link = os.path.join(packages, "torch")
    import torch

    assert os.path.realpath(torch_link) == os.path.realpath(os.path.dirname(torch.__file__))


# -- real builds -----------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.slow
async def test_build_then_reuse_without_installing(tmp_path: Path) -> None:
    """The first ensure() builds (env.building/env.built); the second finds it and builds nothing."""
    mgr = manager(tmp_path)
    with structlog.testing.capture_logs() as first:
        env = await mgr.ensure((SMALL,), label="six-user")
    assert env.built
    assert [e["event"] for e in first if e["event"].startswith("env.")] == ["env.building", "env.built"]
    assert is_valid(env.path, env.fingerprint)
    assert os.path.realpath(env.python) == os.path.realpath(sys._base_executable)  # the host's interpreter
    out = subprocess.run([env.python, "-c", "import six; print(six.__version__)"], capture_output=True, text=True)
    assert out.stdout.strip() == "1.16.0", out.stderr
    with structlog.testing.capture_logs() as second:
        again = await manager(tmp_path).ensure((SMALL,), label="six-user")
    assert not again.built and again.path == env.path
    assert not [e for e in second if e["event"] in ("env.building", "env.built")]


def _wheel_with_a_pth(where: Path, marker: Path) -> Path:
    """A wheel whose .pth file, if any Python ever started with site on its environment, writes ``marker``."""
    import base64
    import hashlib
    import zipfile

    files = {
        "demo/__init__.py": "VALUE = 1\n",
        "zz_demo.pth": f"import pathlib; pathlib.Path({str(marker)!r}).write_text('ran')\n",
        "demo-1.0.dist-info/METADATA": "Metadata-Version: 2.1\nName: demo\nVersion: 1.0\n",
        "demo-1.0.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for name, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(text.encode())}")
    record.append("demo-1.0.dist-info/RECORD,,")
    files["demo-1.0.dist-info/RECORD"] = "\n".join(record) + "\n"
    wheel = where / "demo-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        for name, text in files.items():
            z.writestr(name, text)
    return wheel


@pytest.mark.anyio
@pytest.mark.slow
async def test_building_never_runs_a_wheels_pth_file_on_the_host(tmp_path: Path) -> None:
    """Installing and compiling an environment starts no Python with site: a wheel's .pth runs only in the actor."""
    marker = tmp_path / "pth-ran"
    ext = tmp_path / "ext"
    ext.mkdir()
    wheel = _wheel_with_a_pth(ext, marker)
    reqs, _ = validate_requirements([f"demo @ {wheel.as_uri()}"], base_dir=str(ext))
    env = await manager(tmp_path / "envs").ensure(reqs, label="pth")
    assert not marker.exists(), "a .pth file of an installed wheel ran on the host during the build"
    site = Path(env.path) / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages"
    assert list((site / "demo" / "__pycache__").glob("__init__.*.pyc")), "the environment was not compiled"


@pytest.mark.anyio
@pytest.mark.slow
async def test_failed_build_reports_uv_output_and_leaves_nothing_valid(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A requirement uv can't satisfy fails with uv's own words, and no environment is left behind."""
    monkeypatch.setenv("UV_OFFLINE", "1")  # the failure needs no package index: nothing leaves this machine
    mgr = manager(tmp_path)
    with pytest.raises(EnvBuildError) as info:
        await mgr.ensure(("actorbox-no-such-package-zzz==0.0.1",), label="broken")
    assert "actorbox-no-such-package-zzz" in info.value.output
    assert "actorbox-no-such-package-zzz" in str(info.value)
    leftovers = [p for p in os.listdir(tmp_path) if not p.startswith("host-") and not p.endswith(".lock")]
    assert leftovers == []


@pytest.mark.anyio
@pytest.mark.slow
async def test_a_half_built_environment_is_never_reused(tmp_path: Path) -> None:
    """A directory at the environment's path without a complete marker is rebuilt, not used."""
    mgr = manager(tmp_path)
    env = await mgr.ensure((), label="empty")
    os.remove(os.path.join(env.path, MARKER))  # as if a build had died before its last step
    assert not is_valid(env.path, env.fingerprint)
    with structlog.testing.capture_logs() as logs:
        again = await mgr.ensure((), label="empty")
    assert again.built and "env.built" in [e["event"] for e in logs]
    with open(os.path.join(again.path, MARKER)) as f:
        assert json.load(f)["fingerprint"] == env.fingerprint


@pytest.mark.anyio
@pytest.mark.slow
async def test_concurrent_builds_in_one_process_build_once(tmp_path: Path) -> None:
    """Two actors needing the same environment at once: one build, both get it."""
    mgr = manager(tmp_path)
    envs = []

    async def one() -> None:
        envs.append(await mgr.ensure((SMALL,), label="twin"))

    with structlog.testing.capture_logs() as logs:
        async with anyio.create_task_group() as tg:
            tg.start_soon(one)
            tg.start_soon(one)
    assert [e["event"] for e in logs].count("env.building") == 1
    assert sorted(e.built for e in envs) == [False, True]
    assert envs[0].path == envs[1].path


@pytest.mark.slow
def test_concurrent_builds_in_two_processes_produce_one_environment(tmp_path: Path) -> None:
    """Two runtimes (processes) building the same fingerprint at once are serialised by the file lock."""
    script = textwrap.dedent(f"""
        import anyio, sys
        from sandbox import EnvironmentManager
        async def main():
            env = await EnvironmentManager(sys.argv[1], code_dirs={CODE_DIRS!r}, progress=None).ensure(
                ({SMALL!r},), label="p")
            print("BUILT" if env.built else "CACHED", env.path)
        anyio.run(main)
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, cwd=ROOT) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    lines = sorted(o[0].split("\n")[-2] for o in outs)
    assert [line.split()[0] for line in lines] == ["BUILT", "CACHED"]
    assert len({line.split()[1] for line in lines}) == 1
    envs = [p for p in os.listdir(tmp_path) if not p.startswith("host-") and not p.endswith(".lock")]
    assert len(envs) == 1


@pytest.mark.anyio
async def test_cancelling_a_build_kills_uv_and_removes_the_partial_environment(tmp_path: Path) -> None:
    """A build cancelled mid-way leaves neither a uv process nor a directory that looks valid."""
    import psutil

    mgr = manager(tmp_path)
    with anyio.move_on_after(0.3):
        await mgr.ensure(("numpy<2", "scipy"), label="cancelled")
    await anyio.sleep(0.1)
    assert not [c for c in psutil.Process().children(recursive=True) if "uv" in c.name()]
    leftovers = [p for p in os.listdir(tmp_path) if not p.startswith("host-") and not p.endswith(".lock")]
    assert leftovers == []


@pytest.mark.anyio
@pytest.mark.slow
async def test_a_build_draws_a_progress_line_and_clears_it(tmp_path: Path) -> None:
    """On a terminal the build shows one rewritten line (what uv does, elapsed time), erased when done."""
    import io

    stream = io.StringIO()
    mgr = EnvironmentManager(str(tmp_path), code_dirs=CODE_DIRS, progress=stream)
    await mgr.ensure((SMALL,), label="shown")
    text = stream.getvalue()
    assert "actorbox: building the environment of shown (" in text
    assert text.count("\r\x1b[2K") >= 2 and text.endswith("\r\x1b[2K")
    assert "\n" not in text  # never scrolls the terminal


def test_an_environment_root_others_can_write_is_refused(tmp_path: Path) -> None:
    """What lies in the root becomes actors' code and mounts: a root writable by others is an error."""
    root = tmp_path / "shared"
    root.mkdir(mode=0o777)
    root.chmod(0o777)
    with pytest.raises(EnvBuildError, match="writable by others"):
        manager(root).overlay()
    fresh = tmp_path / "mine"
    manager(fresh).overlay()
    assert fresh.stat().st_mode & 0o777 == 0o700


def test_host_packages_are_cached_on_disk_and_a_broken_cache_is_ignored(tmp_path: Path) -> None:
    """A second manager reads what the first computed; a corrupt cache file is recomputed, not trusted."""
    from sandbox._env import host_packages

    first = manager(tmp_path).host
    (cache,) = [p for p in tmp_path.iterdir() if p.suffix == ".json"]
    assert manager(tmp_path).host == first == host_packages(CODE_DIRS)
    cache.write_text('{"key": 1, "host": "garbage"}')
    assert manager(tmp_path).host == first
