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
max_pending_calls = 50
sandbox = { network = true, max_processes = 64 }
""")
    ext = read_extension(str(d))
    assert (ext.name, ext.module, ext.cls) == ("demo", "node", "Node")
    assert ext.requirements == ("six==1.16.0",) and ext.ignored == ("torch>=2",)
    assert ext.options.max_concurrency == 3 and ext.options.max_restarts == 2
    assert ext.options.max_pending_calls == 50
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
    ('[project]\nname = "x"\n[tool.actorbox]\nentry = "node:Node"\nmax_pending_calls = 0\n', "max_pending_calls"),
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


# -- hostile pyproject files (issue 14, finding 10) ------------------------------------------

GOOD = '[project]\nname = "x"\n[tool.actorbox]\nentry = "node:Node"\n'


@pytest.mark.parametrize("body, match", [
    ('a = ' + "[" * 5000 + "]" * 5000 + "\n", "nest too deeply"),
    ("a = " + "1" * 5000 + "\n", "ValueError"),
])
def test_parser_failures_are_extension_errors(tmp_path: Path, body: str, match: str) -> None:
    """Arrays nested thousands deep or an over-long integer give ExtensionError naming the file, not a bare error."""
    with pytest.raises(actorbox.ExtensionError, match=match) as info:
        read_extension(str(write(tmp_path, GOOD + body)))
    assert "pyproject.toml" in str(info.value) and info.value.path == str(tmp_path)  # type: ignore[attr-defined]


def test_an_oversized_or_undecodable_pyproject_is_refused_before_parsing(tmp_path: Path) -> None:
    """A pyproject over 1 MiB is refused naming the limit; one that is not UTF-8 or not a file says so."""
    import os
    import time

    from actorbox._extensions import MAX_PYPROJECT_BYTES

    folder = write(tmp_path, GOOD)
    with open(folder / "pyproject.toml", "a") as f:
        f.write("# padding\n" * ((50 << 20) // 10))  # 50 MiB: parsed, this would take over a minute
    t0 = time.monotonic()
    with pytest.raises(actorbox.ExtensionError, match="larger than 1 MiB"):
        read_extension(str(folder))
    assert time.monotonic() - t0 < 1.0
    (folder / "pyproject.toml").write_bytes(GOOD.encode() + b'a = "\xff"\n')
    with pytest.raises(actorbox.ExtensionError, match="not UTF-8"):
        read_extension(str(folder))
    (folder / "pyproject.toml").unlink()
    os.mkfifo(folder / "pyproject.toml")  # would block a plain open() for ever
    with pytest.raises(actorbox.ExtensionError, match="not a regular file"):
        read_extension(str(folder))
    assert MAX_PYPROJECT_BYTES == 1 << 20


@pytest.mark.parametrize("name", ["evil\x1b[2J", "tab\tbed", "bidi\u202egnp"])
def test_names_with_control_characters_are_refused(tmp_path: Path, name: str) -> None:
    """An extension name with control or invisible characters (it labels the actor everywhere) is refused."""
    import json

    toml = f'[project]\nname = "x"\n[tool.actorbox]\nentry = "node:Node"\nname = {json.dumps(name)}\n'
    with pytest.raises(actorbox.ExtensionError, match="control or invisible"):
        read_extension(str(write(tmp_path, toml)))


@pytest.mark.anyio
async def test_load_extension_parses_off_the_event_loop(tmp_path: Path) -> None:
    """rt.load_extension reads a large pyproject in a worker thread: the event loop keeps running meanwhile."""
    import anyio

    big = GOOD + "[tool.padding]\n" + "".join(f"k{i} = [1, 2, 3, 'abc']\n" for i in range(30000))
    folder = write(tmp_path, big[: (1 << 20) - 200].rsplit("\n", 1)[0] + "\n")
    (folder / "node.py").unlink()  # refused once parsed (no module to run): only the parse is timed
    longest = 0.0
    done = anyio.Event()

    async def tick() -> None:
        nonlocal longest
        while not done.is_set():
            t = anyio.current_time()
            await anyio.sleep(0.01)
            longest = max(longest, anyio.current_time() - t)

    async with actorbox.Runtime() as rt, anyio.create_task_group() as tg:
        tg.start_soon(tick)
        await anyio.sleep(0.05)  # the ticker is running
        with pytest.raises(actorbox.ExtensionError, match=r"no node\.py"):
            await rt.load_extension(str(folder), name="big")
        done.set()
    assert longest < 0.3, longest  # parsed on the loop, it stalls ~0.5-2 s; in a thread, GIL switches
