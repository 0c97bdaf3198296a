"""Extension folders: a ``pyproject.toml`` that names an actor class and its requirements.

::

    [project]
    name = "numpy-legacy-node"
    dependencies = ["numpy<2"]

    [tool.actorbox]
    entry = "legacy_node:Node"      # module:Class, imported inside the actor only
    name = "legacy"                 # optional: the actor's name (default: the project's)
    max_concurrency = 2             # optional, as @actor
    max_restarts = 1                # optional, as @actor
    max_pending_calls = 100         # optional, as @actor
    preload = ["skimage"]           # optional, as @actor: imported before the class is constructed
    sandbox = { max_processes = 64 } # optional: limits tighter than the host's policy

The host never imports an extension's code: its class is named by import path and
imported in the actor's process, inside the actor's own environment. An extension
can only tighten its sandbox: turning it off, the network, the GPU, paths or higher
limits are the host's to grant (``rt.load_extension(path, sandbox=...)``).
"""

from __future__ import annotations

import dataclasses
import os
import re
import stat
import tomllib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio
import structlog

import sandbox
from sandbox import SandboxPolicy

from ._errors import ActorboxError, ExtensionError, InvalidPreloadError, InvalidRequirementError, NameTakenError
from ._handle import ActorHandle
from ._options import ActorOptions, check_name

log = structlog.get_logger("actorbox")

_ENTRY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$")
_TABLE_KEYS = {"entry", "name", "max_concurrency", "max_restarts", "max_pending_calls", "preload", "sandbox"}
# The most of an extension's pyproject.toml that is read: metadata fits in a few KiB.
MAX_PYPROJECT_BYTES = 1 << 20
_POLICY_KEYS = {"network", "allow_gpu", "memory_limit", "max_processes", "max_open_files", "tmpfs_size"}


@dataclass(frozen=True, slots=True)
class Extension:
    """An extension folder, read and validated (``read_extension``)."""

    path: str
    name: str
    module: str
    cls: str
    requirements: tuple[str, ...]
    ignored: tuple[str, ...]  # requirements dropped because the host provides them (torch)
    options: ActorOptions
    sandbox_request: dict[str, Any]  # SandboxPolicy fields the extension asks for (only tightening)


@dataclass(frozen=True, slots=True)
class LoadedExtension:
    """One folder's outcome in ``Runtime.load_extensions``: a handle, or the error that stopped it."""

    path: str
    name: str | None
    handle: ActorHandle | None
    error: BaseException | None

    @property
    def ok(self) -> bool:
        return self.error is None


def read_extension(path: str) -> Extension:
    """Read ``path/pyproject.toml``; raises ExtensionError (or InvalidRequirementError) saying what to fix."""
    folder = os.path.realpath(path)
    where = os.path.join(folder, "pyproject.toml")
    if not os.path.isdir(folder):
        raise ExtensionError(f"extension folder {path!r} does not exist (or is not a directory)", path=path)
    data = _read_pyproject(where, path)
    project = data.get("project")
    if not isinstance(project, dict) or not isinstance(project.get("name"), str) or not project["name"]:
        raise ExtensionError(f"{where} has no [project] name; add name = \"my-extension\"", path=path)
    table = data.get("tool", {}).get("actorbox") if isinstance(data.get("tool"), dict) else None
    if not isinstance(table, dict):
        raise ExtensionError(f"{where} has no [tool.actorbox] table; add one with entry = \"module:Class\"",
                             path=path)
    unknown = sorted(set(table) - _TABLE_KEYS)
    if unknown:
        raise ExtensionError(f"{where}: unknown keys in [tool.actorbox]: {', '.join(unknown)} "
                             f"(known: {', '.join(sorted(_TABLE_KEYS))})", path=path)
    entry = table.get("entry")
    if not isinstance(entry, str) or not _ENTRY.match(entry):
        raise ExtensionError(f"{where}: [tool.actorbox] entry must be \"module:Class\" (e.g. \"my_node:Node\"), "
                             f"got {entry!r}", path=path)
    module, cls = entry.split(":")
    top = module.split(".")[0]
    if not (os.path.isdir(os.path.join(folder, top)) or os.path.isfile(os.path.join(folder, f"{top}.py"))):
        raise ExtensionError(f"{where}: entry {entry!r} names module {module!r}, but the folder has no "
                             f"{top}.py or {top}/ package", path=path)
    deps = project.get("dependencies", [])
    if not isinstance(deps, list):
        raise ExtensionError(f"{where}: [project] dependencies must be a list of strings", path=path)
    name = table.get("name", project["name"])
    if not isinstance(name, str) or not name:
        raise ExtensionError(f"{where}: [tool.actorbox] name must be a non-empty string, got {name!r}", path=path)
    for key, value in (("[project] name", project["name"]), ("[tool.actorbox] name", name)):
        if not value.isprintable():  # it labels the actor in logs, errors and ps: no control characters
            raise ExtensionError(f"{where}: {key} {value!r} holds control or invisible characters; use a plain "
                                 "name", path=path)
    for key, value in (("[project] name", project["name"]), ("[tool.actorbox] name", name)):
        try:
            check_name(value, f"{where}: {key}")
        except ValueError as exc:  # an extension taking a service's name would answer for the service
            raise ExtensionError(str(exc), path=path) from None
    try:
        reqs, ignored = sandbox.validate_requirements(deps, base_dir=folder)
        request = _sandbox_request(table.get("sandbox"))
        # The requirements travel beside the options: they were checked against this folder.
        options = ActorOptions(name=name, max_concurrency=table.get("max_concurrency", 1),
                               max_restarts=table.get("max_restarts", 0), preload=table.get("preload", ()),
                               max_pending_calls=table.get("max_pending_calls"))
    except sandbox.RequirementError as exc:
        raise InvalidRequirementError(f"{where}: {exc}", actor=name) from None
    except InvalidPreloadError as exc:
        raise InvalidPreloadError(f"{where}: [tool.actorbox] {exc}", actor=name, module=exc.module) from None
    except (TypeError, ValueError) as exc:
        raise ExtensionError(f"{where}: {exc}", path=path) from None
    return Extension(folder, name, module, cls, reqs, ignored, options, request)


def _read_pyproject(where: str, path: str) -> dict[str, Any]:
    """The parsed ``where``; ExtensionError for a missing, special, oversized, undecodable or invalid file.

    An extension's pyproject is the extension author's text: its size is bounded
    before it is read (tomllib parses ~1 MB in a fraction of a second; a 300 MiB one
    took 23 s) and any failure of the parser (a RecursionError from arrays nested
    thousands deep, an over-long integer) is a typed error naming the file.
    """
    try:
        # O_NONBLOCK: a FIFO planted as pyproject.toml must not block the open.
        fd = os.open(where, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ExtensionError(f"{path!r} is not an extension: it has no pyproject.toml", path=path) from None
    except OSError as exc:
        raise ExtensionError(f"cannot read {where}: {exc}", path=path) from None
    with os.fdopen(fd, "rb") as f:
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise ExtensionError(f"{where} is not a regular file; make it one", path=path)
            raw = f.read(MAX_PYPROJECT_BYTES + 1)
        except OSError as exc:
            raise ExtensionError(f"cannot read {where}: {exc}", path=path) from None
    if len(raw) > MAX_PYPROJECT_BYTES:
        raise ExtensionError(
            f"{where} is larger than {MAX_PYPROJECT_BYTES // (1 << 20)} MiB, the most actorbox reads of an "
            "extension's pyproject.toml; keep data out of it (an extension's metadata fits in a few KiB)", path=path)
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ExtensionError(f"{where} is not UTF-8 text ({exc}); save it as UTF-8", path=path) from None
    except tomllib.TOMLDecodeError as exc:
        raise ExtensionError(f"cannot read {where}: {exc}", path=path) from None
    except RecursionError:
        raise ExtensionError(f"cannot read {where}: its arrays or tables nest too deeply to parse; flatten them",
                             path=path) from None
    except (ValueError, MemoryError) as exc:  # e.g. an integer past CPython's 4300-digit limit
        raise ExtensionError(f"cannot read {where}: {type(exc).__name__}: {exc}; fix that value",
                             path=path) from None


def _sandbox_request(value: Any) -> dict[str, Any]:
    if value is None or value == "required":
        return {}
    if value == "disabled":
        raise ValueError("an extension cannot turn its own sandbox off; only the host can, for an extension "
                         "it trusts: rt.load_extension(path, sandbox=\"disabled\")")
    if isinstance(value, dict):
        unknown = sorted(set(value) - _POLICY_KEYS)
        if unknown:
            raise ValueError(f"unknown sandbox settings {', '.join(unknown)} (an extension may set: "
                             f"{', '.join(sorted(_POLICY_KEYS))}; paths are granted by the host only)")
        SandboxPolicy(**value)  # checks the values' types and ranges
        return dict(value)
    raise ValueError(f"sandbox must be \"required\" or a table of limits, got {value!r}")


def sandbox_for(ext: Extension, base: SandboxPolicy) -> SandboxPolicy:
    """The host's policy ``base``, tightened as the extension asks; ExtensionError if it asks for more."""
    looser = []
    for key, want in ext.sandbox_request.items():
        have = getattr(base, key)
        if key in ("network", "allow_gpu"):
            looser += [key] if want and not have else []
        elif key == "memory_limit":
            looser += [key] if have is not None and (want is None or want > have) else []
        elif want > have:
            looser.append(key)
    if looser:
        asked = ", ".join(f"{k}={ext.sandbox_request[k]!r}" for k in looser)
        raise ExtensionError(
            f"extension {ext.name!r} asks for a looser sandbox than the host allows ({asked}); an extension may "
            f"only tighten it. If you trust it with that, grant it when loading: "
            f"rt.load_extension({ext.path!r}, sandbox=SandboxPolicy({asked}))", path=ext.path)
    return dataclasses.replace(base, **ext.sandbox_request)


def extension_folders(directory: str) -> list[str]:
    """The subfolders of ``directory`` that hold a pyproject.toml, sorted by name."""
    try:
        entries = sorted(os.scandir(directory), key=lambda e: e.name)
    except OSError as exc:
        raise ExtensionError(f"cannot list extensions in {directory!r}: {exc}", path=directory) from None
    return [e.path for e in entries
            if e.is_dir() and not e.name.startswith(".") and os.path.isfile(os.path.join(e.path, "pyproject.toml"))]


def _name_of(exc: BaseException, folder: str) -> str | None:
    """The actor name a failed load was for: the error's (``actor``, a taken ``name``), else the
    folder's pyproject's; None when not even that can be read (the error says why)."""
    name = getattr(exc, "actor", None) or (exc.name if isinstance(exc, NameTakenError) else None)
    if isinstance(name, str):
        return name
    try:
        return read_extension(folder).name
    except ActorboxError:
        return None


async def load_all(folders: list[str], load: Callable[[str], Awaitable[ActorHandle]]) -> list[LoadedExtension]:
    """Run ``load`` on every folder at once; one LoadedExtension per folder, in order, failures included."""
    results: dict[str, LoadedExtension] = {}

    async def one(folder: str) -> None:
        try:
            handle = await load(folder)
            results[folder] = LoadedExtension(folder, handle._name, handle, None)
        except Exception as exc:
            log.error("extension.failed", path=folder, error=f"{type(exc).__name__}: {exc}")
            results[folder] = LoadedExtension(folder, _name_of(exc, folder), None, exc)

    async with anyio.create_task_group() as tg:
        for folder in folders:
            tg.start_soon(one, folder)
    return [results[f] for f in folders]
