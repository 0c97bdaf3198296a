"""Tests of the three packages' public surface and of the import layering between them."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path
from types import ModuleType

import pytest

PACKAGES = ["actorbox", "scheduler", "sandbox"]
ROOT = Path(__file__).resolve().parent.parent


def _sort_key(name: str) -> tuple[int, str]:
    """isort-style order (what ruff's RUF022 checks): CONSTANTS, then Classes, then everything else."""
    if name.isupper() and len(name) > 1:
        return (0, name)
    if name[:1].isupper():
        return (1, name)
    return (2, name)


@pytest.mark.parametrize("pkg", PACKAGES)
def test_all_is_sorted(pkg: str) -> None:
    """The package's __all__ is sorted (isort style: constants, classes, then functions) without duplicates."""
    names = importlib.import_module(pkg).__all__
    assert list(names) == sorted(names, key=_sort_key)
    assert len(set(names)) == len(names)


@pytest.mark.parametrize("pkg", PACKAGES)
def test_all_names_exist(pkg: str) -> None:
    """Every name in the package's __all__ is an attribute of the package."""
    mod = importlib.import_module(pkg)
    missing = [n for n in mod.__all__ if not hasattr(mod, n)]
    assert missing == []


@pytest.mark.parametrize("pkg", PACKAGES)
def test_all_lists_every_public_name(pkg: str) -> None:
    """Every public (non-underscore) name the package defines is in __all__, and nothing else is exported."""
    mod = importlib.import_module(pkg)
    public = {n for n, v in vars(mod).items() if not n.startswith("_") and not _is_foreign_module(pkg, v)}
    assert public == set(mod.__all__)


def _is_foreign_module(pkg: str, value: object) -> bool:
    # A module from elsewhere bound by the __init__ (``import os``) is not an export;
    # the package's own submodules under a public alias (scheduler.envelope) are.
    return isinstance(value, ModuleType) and not value.__name__.startswith(pkg + ".")


def test_contract_names_are_exported() -> None:
    """The names docs/architecture.md's public contract relies on are exported by actorbox."""
    import actorbox

    for name in ["actor", "Runtime", "ActorHandle", "Future", "ActorboxError", "ActorDiedError", "RemoteError",
                 "get_actor"]:
        assert name in actorbox.__all__, name


def test_issue_18_waiting_and_scheduling_names_are_exported() -> None:
    """wait, gather, as_completed, DeadlockError and PendingCallsLimitError are part of the public API."""
    import actorbox

    for name in ["wait", "gather", "as_completed", "DeadlockError", "PendingCallsLimitError"]:
        assert name in actorbox.__all__, name
    assert issubclass(actorbox.PendingCallsLimitError, actorbox.CallRefusedError)
    assert issubclass(actorbox.DeadlockError, actorbox.CallError)


def test_errors_form_one_tree() -> None:
    """Every exception class actorbox exports derives from ActorboxError."""
    import actorbox

    errors = [getattr(actorbox, n) for n in actorbox.__all__ if n.endswith("Error")]
    assert errors
    for cls in errors:
        assert issubclass(cls, actorbox.ActorboxError), cls


def _imported_top_levels(path: Path) -> set[str]:
    """Top-level package names a source file imports (absolute imports, anywhere in the file)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
        elif (isinstance(node, ast.Call) and isinstance(node.func, (ast.Name, ast.Attribute))
              and getattr(node.func, "id", getattr(node.func, "attr", None)) in ("import_module", "__import__")
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            found.add(node.args[0].value.split(".")[0])
    return found


@pytest.mark.parametrize(
    ("pkg", "forbidden"),
    [("scheduler", {"actorbox", "sandbox"}), ("sandbox", {"actorbox", "scheduler"})],
)
def test_lower_layers_do_not_import_upward_or_sideways(pkg: str, forbidden: set[str]) -> None:
    """scheduler and sandbox import neither actorbox nor each other (checked on their source with ast)."""
    files = sorted((ROOT / pkg).rglob("*.py"))
    assert files, f"no sources found for {pkg}"
    offending = {str(f.relative_to(ROOT)): sorted(_imported_top_levels(f) & forbidden) for f in files}
    assert {f: m for f, m in offending.items() if m} == {}


def test_layering_check_sees_imports(tmp_path: Path) -> None:
    """The ast scan finds plain, from-, nested and import_module imports (so the layering test can fail)."""
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import os.path\nfrom actorbox import x\nfrom . import y\n"
        "def f():\n    import sandbox._launcher\n    importlib.import_module('scheduler.z')\n"
    )
    assert _imported_top_levels(probe) == {"os", "actorbox", "sandbox", "scheduler"}
