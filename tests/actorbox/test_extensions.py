"""Reading extension folders (actorbox/_extensions.py): what is accepted and what each refusal says."""

from __future__ import annotations

from pathlib import Path

import pytest

import actorbox
from actorbox._extensions import extension_folders, read_extension
from sandbox import SandboxPolicy


def write(tmp_path: Path, toml: str, module: str = "node.py") -> Path:
    (tmp_path / "pyproject.toml").write_text(toml)
    (tmp_path / module).write_text("class Node:\n    pass\n")
    return tmp_path


def test_a_complete_table_becomes_validated_actor_options(tmp_path: Path) -> None:
    """entry, name, concurrency and restarts are read into ActorOptions; a sandbox table is kept as a request."""
    d = write(tmp_path, """
[project]
name = "demo-node"
dependencies = ["six==1.16.0", "torch>=2"]

[tool.actorbox]
entry = "node:Node"
name = "demo"
max_concurrency = 3
max_restarts = 2
sandbox = { network = true, max_processes = 64 }
""")
    ext = read_extension(str(d))
    assert (ext.name, ext.module, ext.cls) == ("demo", "node", "Node")
    assert ext.requirements == ("six==1.16.0",) and ext.ignored == ("torch>=2",)
    assert ext.options.max_concurrency == 3 and ext.options.max_restarts == 2
    assert ext.sandbox_request == {"network": True, "max_processes": 64}
    assert ext.options.sandbox is None  # the host decides (see sandbox_for)


def test_the_project_name_names_the_actor_by_default(tmp_path: Path) -> None:
    """Without a name in [tool.actorbox], the actor is named after the project."""
    d = write(tmp_path, '[project]\nname = "my-node"\n[tool.actorbox]\nentry = "node:Node"\n')
    assert read_extension(str(d)).name == "my-node"


@pytest.mark.parametrize("toml, match", [
    ('[project]\nname = "x"\n', r"no \[tool.actorbox\] table"),
    ('[tool.actorbox]\nentry = "node:Node"\n', r"no \[project\] name"),
    ('[project]\nname = "x"\n[tool.actorbox]\nentry = "node.Node"\n', "module:Class"),
    ('[project]\nname = "x"\n[tool.actorbox]\nentry = "other:Node"\n', "no other.py"),
    ('[project]\nname = "x"\n[tool.actorbox]\nentry = "node:Node"\nmodule = "y"\n', "unknown keys.*module"),
    ('[project]\nname = "x"\n[tool.actorbox]\nentry = "node:Node"\nsandbox = { readable_paths = ["/"] }\n',
     "paths are granted by the host only"),
    ('[project]\nname = "x"\n[tool.actorbox]\nentry = "node:Node"\nmax_concurrency = 0\n', "max_concurrency"),
    ('[project]\nname = "x"\n[tool.actorbox]\nentry = "node:Node"\nsandbox = "disabled"\n',
     "cannot turn its own sandbox off"),
    ('[project]\nname = "x"\n[tool.actorbox]\nentry = "node:Node"\nsandbox = { max_processes = 2 }\n',
     "max_processes must be an int >= 16"),
    ('[project]\nname = "x"\ndependencies = "numpy"\n[tool.actorbox]\nentry = "node:Node"\n', "list of strings"),
    ('[project\n', "cannot read"),
])
def test_invalid_extension_folders_say_what_to_fix(tmp_path: Path, toml: str, match: str) -> None:
    """Each mistake in pyproject.toml is an ExtensionError naming the file and the fix."""
    with pytest.raises(actorbox.ExtensionError, match=match) as info:
        read_extension(str(write(tmp_path, toml)))
    assert info.value.path == str(tmp_path)  # type: ignore[attr-defined]


def test_a_missing_folder_or_pyproject_is_an_extension_error(tmp_path: Path) -> None:
    """A folder that doesn't exist, or has no pyproject.toml, is refused clearly."""
    with pytest.raises(actorbox.ExtensionError, match="does not exist"):
        read_extension(str(tmp_path / "nope"))
    with pytest.raises(actorbox.ExtensionError, match=r"no pyproject\.toml"):
        read_extension(str(tmp_path))


@pytest.mark.parametrize("request_, host, looser", [
    ({"network": True}, SandboxPolicy(), "network=True"),
    ({"allow_gpu": True}, SandboxPolicy(), "allow_gpu=True"),
    ({"max_processes": 1024}, SandboxPolicy(), "max_processes=1024"),
    ({"memory_limit": 8 << 30}, SandboxPolicy(memory_limit=1 << 30), "memory_limit=8589934592"),
])
def test_an_extension_can_not_loosen_the_hosts_sandbox(tmp_path: Path, request_: dict[str, object],
                                                         host: SandboxPolicy, looser: str) -> None:
    """Network, GPU or higher limits asked for by an extension are refused, naming how the host grants them."""
    from actorbox._extensions import sandbox_for

    table = ", ".join(f"{k} = {str(v).lower() if isinstance(v, bool) else v}" for k, v in request_.items())
    d = write(tmp_path, f'[project]\nname = "x"\n[tool.actorbox]\nentry = "node:Node"\nsandbox = {{ {table} }}\n')
    with pytest.raises(actorbox.ExtensionError, match=f"only tighten it.*{looser}"):
        sandbox_for(read_extension(str(d)), host)


def test_an_extension_can_tighten_the_hosts_sandbox(tmp_path: Path) -> None:
    """Lower limits asked for by an extension apply on top of the host's policy, which keeps the rest."""
    from actorbox._extensions import sandbox_for

    d = write(tmp_path, '[project]\nname = "x"\n[tool.actorbox]\nentry = "node:Node"\n'
                        'sandbox = { max_processes = 32, memory_limit = 268435456 }\n')
    host = SandboxPolicy(network=True, max_open_files=256)
    got = sandbox_for(read_extension(str(d)), host)
    assert (got.max_processes, got.memory_limit, got.network, got.max_open_files) == (32, 256 << 20, True, 256)


def test_extension_folders_lists_only_folders_with_a_pyproject(tmp_path: Path) -> None:
    """Subfolders with a pyproject.toml, sorted; files, hidden and empty folders are skipped."""
    for name in ("b", "a", ".hidden", "empty"):
        (tmp_path / name).mkdir()
    for name in ("b", "a", ".hidden"):
        (tmp_path / name / "pyproject.toml").write_text("")
    (tmp_path / "file.txt").write_text("")
    assert [Path(p).name for p in extension_folders(str(tmp_path))] == ["a", "b"]
