"""Actors in their own environments, and extension folders, with real uv builds and sandboxes."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import numpy as np
import pytest
import structlog
import torch

import actorbox
from sandbox._env import is_valid

from .env_plugins.six_user import SixUser

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "extensions"
HOST_NUMPY = os.path.dirname(np.__file__)
HOST_TORCH = os.path.realpath(torch.__file__)

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


@pytest.fixture(scope="module")
def env_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache for the module: the first test to need an environment builds it."""
    return tmp_path_factory.mktemp("envs")


def extension(parent: Path, folder: str, *, deps: list[str] | None = None, entry: str | None = "node:Node",
              body: str = "class Node:\n    def ping(self):\n        return 'pong'\n",
              table: str = "", name: str | None = None) -> Path:
    """Write an extension folder: pyproject.toml plus node.py."""
    d = parent / folder
    d.mkdir(parents=True)
    lines = ["[project]", f'name = "{name or folder}"', 'version = "0.1.0"']
    if deps is not None:
        lines.append("dependencies = [" + ", ".join(f'"{r}"' for r in deps) + "]")
    if entry is not None:
        lines += ["", "[tool.actorbox]", f'entry = "{entry}"', table]
    (d / "pyproject.toml").write_text("\n".join(lines) + "\n")
    (d / "node.py").write_text(body)
    return d


async def test_conflicting_numpy_versions_run_side_by_side(env_root: Path) -> None:
    """numpy<2 and numpy>=2 extensions are alive at once, each on its own numpy and the host's torch."""
    async with actorbox.Runtime(env_root=env_root) as rt:
        reports: list[tuple[str, str, int]] = []

        class Registry:
            def report(self, ext: str, version: str, n: int) -> None:
                reports.append((ext, version, n))

        rt.register("registry", Registry())
        loaded = await rt.load_extensions(EXAMPLES)
        assert [x.error for x in loaded] == [None, None]
        legacy, modern = rt.get_actor("legacy-stats"), rt.get_actor("modern-stats")
        v1, v2 = await legacy.versions(HOST_NUMPY), await modern.versions(HOST_NUMPY)
        assert v1["numpy"].startswith("1.") and v2["numpy"].startswith("2.")
        assert v1["numpy_from"].startswith(str(env_root)) and v2["numpy_from"].startswith(str(env_root))
        assert v1["torch"] == v2["torch"] == torch.__version__
        assert not v1["sees_host_numpy"] and not v2["sees_host_numpy"]
        actors = {a.label: a.state for a in rt.actors() if a.pid and a.kind == "actor"}
        assert actors == {"legacy-stats": "alive", "modern-stats": "alive"}

        image = actorbox.shared_empty(64, 64)
        image.copy_(torch.arange(64 * 64, dtype=torch.float32).reshape(64, 64))
        await legacy.normalize(image)  # in place, through numpy 1.x
        assert float(image.min()) == 0.0 and float(image.max()) == 1.0
        await modern.gamma(image, 2.0)  # in place, through numpy 2.x
        assert float(image[0, 1]) == pytest.approx((1 / 4095) ** 2)
        assert sorted(r[0] for r in reports) == ["legacy-stats", "modern-stats"]


async def test_a_second_start_installs_nothing(env_root: Path) -> None:
    """Starting an extension whose environment exists emits no env.building, only env.cached."""
    async with actorbox.Runtime(env_root=env_root) as rt:
        await rt.load_extension(EXAMPLES / "legacy_stats", name="first")  # built here or by an earlier test
        with structlog.testing.capture_logs() as logs:
            h = await rt.load_extension(EXAMPLES / "legacy_stats", name="second")
        events = [e["event"] for e in logs]
        assert "env.building" not in events and "env.built" not in events
        assert "env.cached" in events
        assert (await h.versions(HOST_NUMPY))["numpy"].startswith("1.")


async def test_host_packages_are_not_importable_in_an_actor(env_root: Path, tmp_path: Path) -> None:
    """An environment sees its own packages, actorbox and torch; the host's numpy, pytest and trio are absent."""
    body = textwrap.dedent("""
        import importlib, os

        class Node:
            def importable(self, name):
                try:
                    importlib.import_module(name)
                except ImportError:
                    return False
                return True

            def exists(self, path):
                return os.path.exists(path)
    """)
    d = extension(tmp_path, "bare", deps=[], body=body)
    async with actorbox.Runtime(env_root=env_root) as rt:
        h = await rt.load_extension(d)
        for name in ("numpy", "pytest", "trio", "hypothesis"):
            assert not await h.importable(name), name
        for name in ("torch", "actorbox", "anyio"):
            assert await h.importable(name), name
        assert not await h.exists(HOST_NUMPY)  # not even visible in its sandbox


async def test_actor_class_dependencies_get_their_own_environment(env_root: Path) -> None:
    """@actor(dependencies=[...]) runs the class in an environment holding them, with the host's torch."""
    async with actorbox.Runtime(env_root=env_root) as rt:
        h = await rt.start(SixUser)
        version, where = await h.six()
        assert version == "1.16.0"
        prefix = await h.prefix()
        assert where.startswith(prefix) and prefix.startswith(str(env_root))
        assert not await h.importable("numpy")
        t = await h.torch()
        assert t["version"] == torch.__version__ and t["file"] == HOST_TORCH
        # Its environment and its module are read-only: nothing can be planted for the next start.
        assert await h.write_into(os.path.join(prefix, "lib")) == "OSError"
        assert await h.write_into(str(Path(__file__).parent / "env_plugins")) == "OSError"
        shared = actorbox.shared_empty(1024)
        await h.fill(shared, 7.0)  # zero-copy into an environment's actor
        assert float(shared.sum()) == 7.0 * 1024


async def test_an_unsandboxed_environment_still_hides_host_packages(env_root: Path, tmp_path: Path) -> None:
    """Without the sandbox an environment actor still imports only its own packages (no host site-packages)."""
    body = "import importlib\nclass Node:\n    def numpy(self):\n        return importlib.util.find_spec('numpy')\n"
    d = extension(tmp_path, "plain", deps=[], body=body)
    async with actorbox.Runtime(env_root=env_root) as rt:
        assert await (await rt.load_extension(d, sandbox="disabled")).numpy() is None


async def test_an_extension_cannot_switch_off_its_sandbox_or_take_the_network(env_root: Path, tmp_path: Path) -> None:
    """sandbox = "disabled" or network = true in an extension's own table is refused; the host can grant both."""
    off = extension(tmp_path, "wants-out", deps=[], table='sandbox = "disabled"')
    net = extension(tmp_path, "wants-net", deps=[], table="sandbox = { network = true }")
    async with actorbox.Runtime(env_root=env_root) as rt:
        with pytest.raises(actorbox.ExtensionError, match="cannot turn its own sandbox off"):
            await rt.load_extension(off)
        with pytest.raises(actorbox.ExtensionError, match="only tighten"):
            await rt.load_extension(net)
        assert not [a for a in rt.actors() if a.pid]
        h = await rt.load_extension(net, sandbox=actorbox.SandboxPolicy(network=True))
        assert await h.ping() == "pong"


async def test_a_requirement_with_a_dollar_sign_is_refused(env_root: Path, tmp_path: Path) -> None:
    """uv would expand ${VAR} from the host's environment: such a requirement never reaches it."""
    d = extension(tmp_path, "leaky", deps=["demo @ https://example.invalid/${HOME}/demo-1.0-py3-none-any.whl"])
    async with actorbox.Runtime(env_root=env_root) as rt:
        with pytest.raises(actorbox.InvalidRequirementError, match="environment variable"):
            await rt.load_extension(d)


async def test_a_torch_requirement_is_ignored_with_a_warning(env_root: Path, tmp_path: Path) -> None:
    """dependencies=["torch==1.0"] installs nothing: the warning says why, and torch is the host's."""
    body = "import torch\nclass Node:\n    def version(self):\n        return torch.__version__\n"
    d = extension(tmp_path, "wants-old-torch", deps=["torch==1.0.0"], body=body)
    async with actorbox.Runtime(env_root=env_root) as rt:
        with structlog.testing.capture_logs() as logs:
            h = await rt.load_extension(d)
        warning = next(e for e in logs if e["event"] == "env.requirement_ignored")
        assert warning["requirement"] == "torch==1.0.0" and "from the host" in warning["reason"]
        assert await h.version() == torch.__version__


async def test_bad_requirement_strings_are_refused_before_anything_runs(env_root: Path, tmp_path: Path) -> None:
    """A pip option in dependencies fails the load (and the decoration) with InvalidRequirementError."""
    d = extension(tmp_path, "sneaky", deps=["--index-url=https://evil.example/simple"])
    async with actorbox.Runtime(env_root=env_root) as rt:
        with pytest.raises(actorbox.InvalidRequirementError, match="pip option"):
            await rt.load_extension(d)
        assert not [a for a in rt.actors() if a.pid]
    with pytest.raises(actorbox.InvalidRequirementError, match="pip option"):
        actorbox.actor(dependencies=["-e ."])(type("Editable", (), {}))
    assert not os.path.exists(env_root / "sneaky")


async def test_a_failing_requirement_reports_uv_output_and_leaves_no_environment(tmp_path: Path) -> None:
    """A requirement uv can't resolve: EnvironmentBuildError carrying uv's output; nothing valid is left."""
    root = tmp_path / "envs"
    d = extension(tmp_path, "missing-dep", deps=["actorbox-no-such-package-zzz>=1"])
    async with actorbox.Runtime(env_root=root) as rt:
        with pytest.raises(actorbox.EnvironmentBuildError) as info:
            await rt.load_extension(d)
        assert isinstance(info.value, actorbox.ActorStartError)
        assert "actorbox-no-such-package-zzz" in info.value.output  # type: ignore[attr-defined]
        assert "missing-dep" in str(info.value) and "Fix or remove" in str(info.value)
        assert rt.actors() == []
    envs = [p for p in os.listdir(root) if not p.startswith("host-") and not p.endswith(".lock")]
    assert envs == []
    assert not any(is_valid(str(root / p), p) for p in os.listdir(root))


async def test_load_extensions_reports_broken_folders_and_loads_the_rest(env_root: Path, tmp_path: Path) -> None:
    """One good extension among broken ones: it loads and works; each broken one carries its own error."""
    extension(tmp_path, "a-good", deps=[])
    extension(tmp_path, "b-no-table", entry=None)
    extension(tmp_path, "c-bad-entry", entry="node:Missing")
    extension(tmp_path, "d-bad-req", deps=["-e ."])
    extension(tmp_path, "e-raises", body="class Node:\n    def __init__(self):\n        raise RuntimeError('no')\n")
    (tmp_path / "f-not-an-extension").mkdir()
    (tmp_path / "g-bad-toml").mkdir()
    (tmp_path / "g-bad-toml" / "pyproject.toml").write_text("[project\n")
    async with actorbox.Runtime(env_root=env_root) as rt:
        results = await rt.load_extensions(tmp_path)
        by = {os.path.basename(r.path): r for r in results}
        assert sorted(by) == ["a-good", "b-no-table", "c-bad-entry", "d-bad-req", "e-raises", "g-bad-toml"]
        assert by["a-good"].ok and by["a-good"].handle is not None
        assert await by["a-good"].handle.ping() == "pong"
        assert isinstance(by["b-no-table"].error, actorbox.ExtensionError)
        assert "[tool.actorbox]" in str(by["b-no-table"].error)
        assert isinstance(by["c-bad-entry"].error, actorbox.ActorStartError)
        assert "Missing" in str(by["c-bad-entry"].error)
        assert isinstance(by["d-bad-req"].error, actorbox.InvalidRequirementError)
        assert isinstance(by["e-raises"].error, actorbox.ActorStartError)
        assert isinstance(by["g-bad-toml"].error, actorbox.ExtensionError)
        assert [a.label for a in rt.actors() if a.pid and a.kind == "actor"] == ["a-good"]


def _source_only_package(ext: Path) -> str:
    """A local source tree (no wheel) inside the extension; returns its file: requirement."""
    src = ext / "vendor" / "localpkg"
    (src / "localpkg").mkdir(parents=True)
    (src / "localpkg" / "__init__.py").write_text("VALUE = 42\n")
    (src / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools>=61"]\nbuild-backend = "setuptools.build_meta"\n\n'
        '[project]\nname = "localpkg"\nversion = "1.0"\n')
    return f"localpkg @ {src.as_uri()}"


async def test_source_builds_are_refused_unless_allowed(tmp_path: Path) -> None:
    """A requirement with no wheel is not built on the host by default; allow_source_builds=True builds it."""
    body = "import localpkg\nclass Node:\n    def value(self):\n        return localpkg.VALUE\n"
    d = extension(tmp_path / "exts", "needs-build", deps=[], body=body)
    req = _source_only_package(d)
    (d / "pyproject.toml").write_text((d / "pyproject.toml").read_text().replace(
        "dependencies = []", f'dependencies = ["{req}"]'))
    async with actorbox.Runtime(env_root=tmp_path / "envs") as rt:
        with pytest.raises(actorbox.EnvironmentBuildError, match="allow_source_builds=True"):
            await rt.load_extension(d)
    async with actorbox.Runtime(env_root=tmp_path / "envs", allow_source_builds=True) as rt:
        assert await (await rt.load_extension(d)).value() == 42


async def test_a_local_packages_uv_sources_cannot_redirect_its_dependencies(tmp_path: Path) -> None:
    """Even with source builds allowed, [tool.uv.sources] in an extension's package is ignored."""
    fake = tmp_path / "fake_six"  # outside the extension: what a hostile sources table points at
    (fake / "six").mkdir(parents=True)
    (fake / "six" / "__init__.py").write_text("__version__ = '99.0'\n")
    (fake / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools>=61"]\nbuild-backend = "setuptools.build_meta"\n\n'
        '[project]\nname = "six"\nversion = "99.0"\n')
    body = "import six\nclass Node:\n    def six(self):\n        return six.__version__\n"
    d = extension(tmp_path / "exts", "sourced", deps=[], body=body)
    req = _source_only_package(d)
    pkg = d / "vendor" / "localpkg" / "pyproject.toml"
    pkg.write_text(pkg.read_text().replace('version = "1.0"', 'version = "1.0"\ndependencies = ["six"]')
                   + f'\n[tool.uv.sources]\nsix = {{ path = "{fake}" }}\n')
    (d / "pyproject.toml").write_text((d / "pyproject.toml").read_text().replace(
        "dependencies = []", f'dependencies = ["{req}"]'))
    async with actorbox.Runtime(env_root=tmp_path / "envs", allow_source_builds=True) as rt:
        assert await (await rt.load_extension(d)).six() != "99.0"


async def test_a_symlink_cannot_smuggle_a_path_from_outside_the_extension(tmp_path: Path) -> None:
    """A file: requirement through a symlink that leads outside the extension is refused."""
    outside = tmp_path / "outside"
    outside.mkdir()
    req = _source_only_package(outside)
    d = extension(tmp_path / "exts", "smuggler", deps=[])
    (d / "vendor").symlink_to(outside / "vendor")
    inside_looking = req.replace(str(outside), str(d))
    (d / "pyproject.toml").write_text((d / "pyproject.toml").read_text().replace(
        "dependencies = []", f'dependencies = ["{inside_looking}"]'))
    async with actorbox.Runtime(env_root=tmp_path / "envs") as rt:
        with pytest.raises(actorbox.InvalidRequirementError, match="outside the extension"):
            await rt.load_extension(d)
