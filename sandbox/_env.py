"""Per-actor Python environments: virtual environments built with uv, cached by fingerprint.

An environment holds the actor's own requirements and nothing of the host's
site-packages. Two things come from the host instead of being installed, through
an *overlay* of symlinks kept next to the environments:

- ``code/``: actorbox's own packages and their runtime dependencies (first on
  ``sys.path``, through PYTHONPATH, so a plugin can't shadow what the actor process
  itself runs on); the environment's resolution is constrained to the same versions;
- ``packages/``: the host's torch and its dependencies (appended after the
  environment's site-packages by a ``.pth`` file reading ``ACTORBOX_HOST_PACKAGES``),
  so torch is never installed twice and always matches the host's for shared memory
  and CUDA IPC, while the actor's own packages win over torch's helpers.

An environment is valid only once its marker file is written, and it is built in
a temporary directory renamed into place, so a failed or interrupted build never
leaves anything a later start would take as valid. Builds of one fingerprint are
serialised by a file lock, across actors and across processes.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.metadata as md
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TextIO
from urllib.parse import unquote, urlparse

import anyio
import structlog

log = structlog.get_logger("actorbox")

LAYOUT = 1  # bump when the layout of an environment changes: old ones are rebuilt
MARKER = "actorbox-env.json"
HOST_PACKAGES_VAR = "ACTORBOX_HOST_PACKAGES"
_PTH_NAME = "_actorbox_host_packages.pth"
# Runs at interpreter start (site.py executes .pth lines that begin with "import").
_PTH_LINE = ("import os, sys; sys.path.extend(p for p in os.environ.get("
             f"{HOST_PACKAGES_VAR!r}, '').split(os.pathsep) if p and p not in sys.path)\n")
# Packages the actor process itself imports (actorbox's runtime): shared with the host.
RUNTIME_ROOTS = ("anyio", "cloudpickle", "msgpack", "packaging", "psutil", "sniffio", "structlog")
# Provided by the host, never installed into an environment.
HOST_ONLY = ("torch",)


class RequirementError(ValueError):
    """A requirement string an environment refuses to install."""


class EnvBuildError(RuntimeError):
    """uv failed to build an environment; ``output`` is the tail of what uv printed."""

    def __init__(self, message: str, output: str) -> None:
        super().__init__(message)
        self.output = output


def default_root() -> str:
    """``ACTORBOX_ENV_ROOT``, else ``$XDG_CACHE_HOME/actorbox/envs`` (``~/.cache/actorbox/envs``)."""
    if root := os.environ.get("ACTORBOX_ENV_ROOT"):
        return os.path.abspath(root)
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "actorbox", "envs")


# -- requirements ---------------------------------------------------------------------


def validate_requirements(requirements: Iterable[str], base_dir: str | None = None,
                          host_only: Sequence[str] = HOST_ONLY) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Check PEP 508 requirement strings; returns (canonical requirements, ignored ones).

    Refused (RequirementError): pip options (``--index-url``, ``-e``, ``-r``),
    anything that is not one PEP 508 requirement, URLs other than https, and
    ``file:`` URLs outside ``base_dir`` (an extension's own folder). Requirements on
    host-provided packages (torch) are returned as ignored: the host's copy is used.
    """
    if isinstance(requirements, str):
        raise TypeError("dependencies must be a list of requirement strings, e.g. ['numpy<2'], not one string")
    from packaging.requirements import InvalidRequirement, Requirement  # the host side only: kept off actor start
    from packaging.utils import canonicalize_name

    kept: dict[str, None] = {}
    ignored: list[str] = []
    base = os.path.realpath(base_dir) if base_dir else None
    for raw in requirements:
        if not isinstance(raw, str):
            raise TypeError(f"a requirement must be a string, got {type(raw).__name__}: {raw!r}")
        text = raw.strip()
        if not text:
            raise RequirementError("empty requirement string in dependencies")
        if any(c in text for c in "\r\n\0"):
            raise RequirementError(f"requirement {raw!r} spans several lines; give one requirement per string")
        if "$" in text:
            raise RequirementError(
                f"requirement {text!r} contains '$': uv would expand it as an environment variable of the host")
        if text.startswith("-"):
            raise RequirementError(
                f"requirement {text!r} is a pip option; options such as --index-url, -e or -r are not allowed "
                "in dependencies (configure package indexes for uv with UV_INDEX_URL / UV_EXTRA_INDEX_URL)")
        try:
            req = Requirement(text)
        except InvalidRequirement as exc:
            raise RequirementError(f"requirement {text!r} is not a valid PEP 508 requirement: {exc}") from None
        if req.url is not None:
            _check_url(text, req.url, base)
        if canonicalize_name(req.name) in {canonicalize_name(n) for n in host_only}:
            ignored.append(text)
            continue
        kept[str(req)] = None
    return tuple(sorted(kept)), tuple(ignored)


def _check_url(text: str, url: str, base: str | None) -> None:
    parsed = urlparse(url)
    if parsed.scheme == "https":
        return
    if parsed.scheme == "file":
        if not parsed.path.startswith("/") or parsed.netloc not in ("", "localhost"):
            raise RequirementError(f"requirement {text!r}: a file: URL must be absolute (file:///path/...)")
        path = os.path.realpath(unquote(parsed.path))
        if base is not None and (path == base or path.startswith(base + os.sep)):
            return
        where = f"inside the extension's folder {base}" if base else "inside an extension's folder"
        raise RequirementError(f"requirement {text!r} points at {path}, outside the extension; local paths "
                               f"must be {where}")
    raise RequirementError(f"requirement {text!r} uses a {parsed.scheme or 'relative'} URL; only https:// URLs "
                           "and file: URLs inside the extension's folder are allowed")


# -- what the host provides -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HostPackages:
    """Distributions of the host exposed to environments, by overlay directory."""

    code: tuple[tuple[str, str], ...]  # (name in overlay, real path): actorbox's code and runtime
    packages: tuple[tuple[str, str], ...]  # (name in overlay, real path): torch and its dependencies
    runtime_pins: tuple[str, ...]  # name==version of the runtime distributions (uv constraints)
    versions: tuple[tuple[str, str], ...]  # every exposed distribution and its version

    def version_of(self, name: str) -> str | None:
        from packaging.utils import canonicalize_name

        key = canonicalize_name(name)
        return next((v for n, v in self.versions if canonicalize_name(n) == key), None)

    @property
    def targets(self) -> tuple[str, ...]:
        """The real paths the overlay's symlinks point at (bound read-only into a sandbox)."""
        return tuple(dict.fromkeys(p for _, p in (*self.code, *self.packages)))


def _closure(roots: Iterable[str]) -> dict[str, md.Distribution]:
    """The host's installed distributions ``roots`` and everything they require (extras off)."""
    from packaging.markers import default_environment
    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.utils import canonicalize_name

    environment: dict[str, str] = {k: str(v) for k, v in default_environment().items()}
    environment["extra"] = ""
    found: dict[str, md.Distribution] = {}
    todo = list(roots)
    while todo:
        name = canonicalize_name(todo.pop())
        if name in found:
            continue
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            continue
        found[name] = dist
        for spec in dist.requires or ():
            try:
                req = Requirement(spec)
            except InvalidRequirement:
                continue
            if req.marker is None or req.marker.evaluate(environment):
                todo.append(req.name)
    return found


def _top_level(dist: md.Distribution) -> list[tuple[str, str]]:
    """(entry name, real path) of what ``dist`` put at the top of its site-packages."""
    names: set[str] = set()
    for f in dist.files or ():
        parts = f.parts
        if not parts or parts[0] in ("..", "__pycache__") or parts[0].endswith(".pth"):
            continue
        if len(parts) == 1 and not parts[0].endswith((".py", ".so", ".pyd")):
            continue
        names.add(parts[0])
    out = []
    for name in sorted(names):
        path = os.path.realpath(str(dist.locate_file(name)))
        if os.path.exists(path):
            out.append((name, path))
    return out


def host_packages(code_dirs: Sequence[str], runtime_roots: Sequence[str] = RUNTIME_ROOTS,
                  host_only: Sequence[str] = HOST_ONLY) -> HostPackages:
    """What environments get from this host: ``code_dirs`` (actorbox's packages) plus the
    runtime distributions in ``code/``, the ``host_only`` ones (torch) and theirs in ``packages/``."""

    runtime = _closure(runtime_roots)
    torch_side = {k: d for k, d in _closure(host_only).items() if k not in runtime}
    code = [(os.path.basename(p.rstrip(os.sep)), os.path.realpath(p)) for p in code_dirs]
    for dist in runtime.values():
        code += _top_level(dist)
    packages = [e for dist in torch_side.values() for e in _top_level(dist)]
    pins = tuple(sorted(f"{k}=={d.version}" for k, d in runtime.items()))
    versions = tuple(sorted((k, d.version) for k, d in {**runtime, **torch_side}.items()))
    return HostPackages(tuple(code), tuple(packages), pins, versions)


# Why an environment cannot choose its own versions of actorbox's runtime packages.
_WHY_PINNED = (
    "the actor process runs actorbox's own code (its loop, wire format and logging) on the host's copies of "
    f"actorbox's runtime packages ({', '.join(RUNTIME_ROOTS)} and what they require), first on its sys.path, so "
    "that the actor and the host speak one protocol with the same code; an environment is resolved with those "
    "pinned to the host's versions")


def check_pins(requirements: Sequence[str], pins: Sequence[str]) -> None:
    """EnvBuildError when a requirement excludes the host's pinned version of a runtime package.

    Checked before uv runs: uv would only say ``you require anyio<4 and anyio==4.16.0``,
    without saying where the second came from or why.
    """
    from packaging.markers import default_environment
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pinned = {name: version for name, _, version in (p.partition("==") for p in pins)}
    environment: dict[str, str] = {k: str(v) for k, v in default_environment().items()}
    environment["extra"] = ""
    clashes = []
    for text in requirements:
        req = Requirement(text)
        version = pinned.get(canonicalize_name(req.name))
        if version is None or req.url is not None or (req.marker is not None and not req.marker.evaluate(environment)):
            continue
        if not req.specifier.contains(version, prereleases=True):
            clashes.append(f"{text!r} excludes the host's {canonicalize_name(req.name)}=={version}")
    if clashes:
        raise EnvBuildError(
            f"requirement {'; '.join(clashes)}. That version is pinned because {_WHY_PINNED}. Allow the host's "
            "version in the requirement (or drop it: the package is importable in every actor already), or "
            "change the version installed on the host", "")


def pins_hint(output: str, pins: Sequence[str]) -> str:
    """For uv's failure ``output`` that names a pinned runtime package's host version: where that pin
    comes from and why (a requirement of a requirement can clash with it too); else ''."""
    named = [p for p in pins if re.search(rf"(?<![\w.-]){re.escape(p)}(?![\w.-])", output, re.IGNORECASE)
             or re.search(rf"(?<![\w.-]){re.escape(p.replace('-', '_'))}(?![\w.-])", output, re.IGNORECASE)]
    if not named:
        return ""
    return (f"\n{', '.join(named)} {'is' if len(named) == 1 else 'are'} the host's pinned version"
            f"{'' if len(named) == 1 else 's'}: {_WHY_PINNED}. Choose versions of your requirements that work "
            "with it, or change the version installed on the host.")


# -- environments ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Environment:
    """A ready environment: ``python`` runs the host's interpreter with its packages."""

    path: str
    python: str
    fingerprint: str
    requirements: tuple[str, ...]
    code_dir: str  # overlay put first on sys.path (PYTHONPATH)
    packages_dir: str  # overlay appended after site-packages (HOST_PACKAGES_VAR)
    bind_paths: tuple[str, ...]  # what a sandbox must bind read-only besides the environment
    built: bool  # False when it came from the cache


def fingerprint(requirements: Sequence[str], python: str, host: HostPackages) -> str:
    """Identifies an environment: its requirements, the interpreter, torch and the runtime pins."""
    key = {
        "layout": LAYOUT,
        "requirements": sorted(requirements),
        "local_files": [_stamp(r) for r in sorted(requirements) if "@ file:" in r],
        "python": os.path.realpath(python),
        "version": sys.version,
        "torch": host.version_of("torch"),
        "pins": list(host.runtime_pins),
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]


def _stamp(requirement: str) -> list[Any]:
    """Size and modification time of a file: requirement's target, so a changed wheel or
    source tree at the same path gets a new environment."""
    path = unquote(urlparse(requirement.split("@", 1)[1].strip().split(";")[0].strip()).path)
    try:
        st = os.stat(path)
    except OSError:
        return [requirement, None]
    newest = st.st_mtime_ns
    if os.path.isdir(path):
        for d, _, files in os.walk(path):
            for f in files:
                try:
                    newest = max(newest, os.stat(os.path.join(d, f)).st_mtime_ns)
                except OSError:
                    pass
    return [requirement, st.st_size, newest]


def _site_packages(env_path: str) -> str:
    return os.path.join(env_path, "lib", f"python{sys.version_info[0]}.{sys.version_info[1]}", "site-packages")


def is_valid(env_path: str, fp: str) -> bool:
    """True when ``env_path`` holds a completed build of fingerprint ``fp``."""
    try:
        with open(os.path.join(env_path, MARKER)) as f:
            marker = json.load(f)
    except (OSError, ValueError):
        return False
    return (isinstance(marker, dict) and marker.get("fingerprint") == fp
            and os.path.exists(os.path.join(env_path, "bin", "python")))


class EnvironmentManager:
    """Builds and caches environments under ``root`` with uv.

    ``python``: the interpreter every environment runs (the host's). ``code_dirs``:
    actorbox's own package directories, exposed to every environment. ``progress``:
    where to draw a progress line while building (default: stderr when it is a terminal).
    ``allow_source_builds``: let uv build packages that ship no wheel. Off by default:
    a build runs the package's own code on the host, outside any sandbox.
    """

    def __init__(self, root: str | None = None, *, python: str = sys.executable,
                 code_dirs: Sequence[str] = (), uv: str | None = None,
                 progress: TextIO | bool | None = True, allow_source_builds: bool = False) -> None:
        self.root = os.path.abspath(root) if root else default_root()
        self.python = python
        self.code_dirs = tuple(code_dirs)
        self.allow_source_builds = allow_source_builds
        self._uv = uv
        if progress is True:
            progress = sys.stderr if sys.stderr is not None and sys.stderr.isatty() else None
        self.progress: TextIO | None = progress or None
        self._host: HostPackages | None = None
        self._overlay: tuple[str, str] | None = None
        self._root_checked = False

    @property
    def host(self) -> HostPackages:
        """What this host exposes; cached on disk until a directory on sys.path changes."""
        if self._host is None:
            self._host = self._cached_host()
        return self._host

    def _own_root(self) -> None:
        """Create the root (0700) or check it: what lies in it becomes code and sandbox binds,
        so nobody else may be able to write there."""
        if self._root_checked:
            return
        os.makedirs(self.root, mode=0o700, exist_ok=True)
        st = os.stat(self.root)
        if st.st_uid != os.getuid() or st.st_mode & 0o022:
            raise EnvBuildError(
                f"the environment root {self.root} is owned by another user or writable by others; what is "
                "in it becomes actors' code and sandbox mounts. Use a directory of your own "
                "(Runtime(env_root=...) or ACTORBOX_ENV_ROOT), or fix its owner and mode (chmod go-w).", "")
        self._root_checked = True

    def _cached_host(self) -> HostPackages:
        # Installing or removing a distribution changes its site-packages directory's mtime.
        dirs = [p for p in (*sys.path, *self.code_dirs) if os.path.isdir(p)]
        key = json.dumps([self.python, sys.version, [(d, os.stat(d).st_mtime_ns) for d in dirs]])
        where = os.path.join(self.root, f"host-{hashlib.sha256(key.encode()).hexdigest()[:16]}.json")
        try:
            self._own_root()
            with open(where) as f:
                data = json.load(f)
            if data["key"] == key:
                code, packages, pins, versions = data["host"]
                return HostPackages(tuple((str(a), str(b)) for a, b in code),
                                    tuple((str(a), str(b)) for a, b in packages), tuple(map(str, pins)),
                                    tuple((str(a), str(b)) for a, b in versions))
        except (OSError, ValueError, KeyError, TypeError):
            pass
        host = host_packages(self.code_dirs)
        try:
            self._own_root()
            tmp = f"{where}.tmp-{secrets.token_hex(4)}"
            with open(tmp, "w") as f:
                json.dump({"key": key, "host": [host.code, host.packages, host.runtime_pins, host.versions]}, f)
            os.replace(tmp, where)
        except OSError:
            pass  # only a cache
        return host

    def uv(self) -> str:
        if self._uv is None:
            try:
                from uv import find_uv_bin
                self._uv = find_uv_bin()
            except (ImportError, FileNotFoundError):
                found = shutil.which("uv")
                if found is None:
                    raise EnvBuildError("uv is not installed; install it with: pip install uv", "") from None
                self._uv = found
        return self._uv

    # -- the overlay ---------------------------------------------------------------

    def overlay(self) -> tuple[str, str]:
        """(code dir, packages dir) of symlinks to the host's packages, created once per host."""
        if self._overlay is not None and os.path.isdir(self._overlay[0]):
            return self._overlay
        host = self.host
        digest = hashlib.sha256(json.dumps([host.code, host.packages]).encode()).hexdigest()[:16]
        final = os.path.join(self.root, f"host-{digest}")
        if not os.path.isdir(final):
            self._own_root()
            tmp = f"{final}.tmp-{secrets.token_hex(4)}"
            try:
                for sub, entries in (("code", host.code), ("packages", host.packages)):
                    os.makedirs(os.path.join(tmp, sub))
                    for name, target in entries:
                        os.symlink(target, os.path.join(tmp, sub, name))
                os.rename(tmp, final)
            except OSError:
                shutil.rmtree(tmp, ignore_errors=True)
                if not os.path.isdir(final):  # another process won the race, or a real failure
                    raise
        self._overlay = (os.path.join(final, "code"), os.path.join(final, "packages"))
        return self._overlay

    # -- environments --------------------------------------------------------------

    async def ensure(self, requirements: Sequence[str], *, label: str = "actor") -> Environment:
        """The environment for ``requirements`` (already validated), built if not cached.

        Raises EnvBuildError (with uv's output) when uv fails. Cancellation kills uv and
        removes the partial build.
        """
        reqs = tuple(sorted(requirements))
        code_dir, packages_dir = await anyio.to_thread.run_sync(self.overlay)
        check_pins(reqs, self.host.runtime_pins)  # before uv: its words would not say why
        fp = fingerprint(reqs, self.python, self.host)
        path = os.path.join(self.root, fp)
        binds = (os.path.dirname(code_dir), *self.host.targets)

        def ready(built: bool) -> Environment:
            return Environment(path, os.path.join(path, "bin", "python"), fp, reqs, code_dir, packages_dir,
                               binds, built)

        if is_valid(path, fp):
            log.debug("env.cached", actor=label, fingerprint=fp, path=path)
            return ready(False)
        async with _FileLock(os.path.join(self.root, f"{fp}.lock")):
            if is_valid(path, fp):  # built by someone else while we waited
                log.debug("env.cached", actor=label, fingerprint=fp, path=path)
                return ready(False)
            await self._build(path, fp, reqs, label)
        return ready(True)

    async def _build(self, path: str, fp: str, reqs: tuple[str, ...], label: str) -> None:
        t0 = time.monotonic()
        log.info("env.building", actor=label, fingerprint=fp, requirements=list(reqs), path=path)
        for stale in os.listdir(self.root):  # interrupted builds of this fingerprint (we hold its lock)
            if stale.startswith(f"{fp}.tmp-"):
                shutil.rmtree(os.path.join(self.root, stale), ignore_errors=True)
        if os.path.lexists(path):  # present but not valid: never reused
            await anyio.to_thread.run_sync(shutil.rmtree, path)
        tmp = f"{path}.tmp-{secrets.token_hex(4)}"
        progress = _Progress(self.progress, label)
        try:
            uv = self.uv()
            common = ["--no-config", "--color", "never"]
            await self._run([uv, "venv", *common, "--quiet", "--relocatable", "--no-python-downloads",
                             "--python", self.python, tmp], progress, "create the virtual environment")
            files = {"requirements.txt": reqs, "constraints.txt": self.host.runtime_pins, "excludes.txt": HOST_ONLY}
            for name, lines in files.items():
                with open(os.path.join(tmp, name), "w") as f:
                    f.write("".join(f"{line}\n" for line in lines))
            if reqs:
                # No --compile-bytecode: uv would run the environment's python for it, and site
                # would execute the .pth files the wheels just installed, on the host.
                await self._run([uv, "pip", "install", *common, "--python", os.path.join(tmp, "bin", "python"),
                                 "--no-python-downloads",
                                 # An extension's own [tool.uv.sources] must not redirect what gets installed.
                                 "--no-sources",
                                 "-r", os.path.join(tmp, "requirements.txt"),
                                 "--constraints", os.path.join(tmp, "constraints.txt"),
                                 "--excludes", os.path.join(tmp, "excludes.txt"),
                                 *(() if self.allow_source_builds else ("--no-build",))],
                                progress, f"install {', '.join(reqs)}")
                # Bytecode now (the environment is read-only in the sandbox): -I -S, so no
                # site and no .pth file runs; compiling never executes the code it compiles.
                await self._run([self.python, "-I", "-S", "-m", "compileall", "-q", "-j", "0",
                                 _site_packages(tmp)], progress, "compile the environment's bytecode",
                                check=False)
            with open(os.path.join(_site_packages(tmp), _PTH_NAME), "w") as f:
                f.write(_PTH_LINE)
            with open(os.path.join(tmp, MARKER), "w") as f:
                json.dump({"fingerprint": fp, "requirements": list(reqs), "python": os.path.realpath(self.python),
                           "torch": self.host.version_of("torch"), "created": time.time()}, f, indent=1)
            os.rename(tmp, path)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(lambda: shutil.rmtree(tmp, ignore_errors=True))
            log.warning("env.failed", actor=label, fingerprint=fp, duration_ms=_ms(t0))
            raise
        finally:
            progress.close()
        log.info("env.built", actor=label, fingerprint=fp, path=path, duration_ms=_ms(t0))

    async def _run(self, cmd: list[str], progress: _Progress, what: str, *, check: bool = True) -> None:
        """Run uv, feeding its output to the progress line; EnvBuildError with its output on failure."""
        tail: deque[str] = deque(maxlen=60)
        env = {**os.environ, "UV_PYTHON_DOWNLOADS": "never", "NO_COLOR": "1"}
        env.pop("VIRTUAL_ENV", None)  # --python decides, never the caller's activated venv
        async with await anyio.open_process(cmd, stdin=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                                            env=env, start_new_session=True) as proc:
            try:
                assert proc.stdout is not None
                buf = b""
                async for chunk in proc.stdout:
                    buf += chunk
                    *lines, buf = re.split(rb"[\r\n]", buf)
                    for raw in lines:
                        if line := raw.decode("utf-8", "replace").strip():
                            tail.append(line)
                            progress.update(line)
                if buf.strip():
                    tail.append(buf.decode("utf-8", "replace").strip())
                rc = await proc.wait()
            except BaseException:
                with anyio.CancelScope(shield=True):
                    try:
                        os.killpg(proc.pid, signal.SIGKILL)  # uv and its workers (their own session)
                    except ProcessLookupError:
                        pass
                    await proc.wait()
                raise
        if rc != 0 and check:
            output = "\n".join(tail)
            hint = ""
            if not self.allow_source_builds and "--no-build" in cmd and "build" in output.lower():
                hint = ("\nA requirement has no wheel for this platform, and building it from source would run "
                        "its own build code on the host, outside any sandbox. Pin a version that ships a wheel, "
                        "or, if you trust it, allow builds: Runtime(allow_source_builds=True).")
            hint += pins_hint(output, self.host.runtime_pins)
            raise EnvBuildError(f"uv could not {what} (exit status {rc}):\n{output}{hint}", output)


def _ms(t0: float) -> float:
    return round((time.monotonic() - t0) * 1000, 1)


class _FileLock:
    """An exclusive flock on ``path``, awaited without blocking the event loop (polled)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = -1

    async def __aenter__(self) -> None:
        os.makedirs(os.path.dirname(self.path), mode=0o700, exist_ok=True)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        delay = 0.01
        try:
            while True:
                try:
                    fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    return
                except BlockingIOError:
                    await anyio.sleep(delay)
                    delay = min(delay * 2, 0.2)
        except BaseException:
            os.close(self.fd)
            raise

    async def __aexit__(self, *exc: Any) -> None:
        os.close(self.fd)  # releases the lock


class _Progress:
    """One self-rewriting line on a terminal: what uv is doing and for how long."""

    def __init__(self, stream: TextIO | None, label: str) -> None:
        self.stream = stream
        self.label = label
        self.t0 = time.monotonic()
        self.width = shutil.get_terminal_size((100, 20)).columns - 1
        self.update("resolving")

    def update(self, line: str) -> None:
        if self.stream is None:
            return
        text = f"actorbox: building the environment of {self.label} ({time.monotonic() - self.t0:.1f} s): {line}"
        try:
            self.stream.write("\r\x1b[2K" + text[: self.width])
            self.stream.flush()
        except (OSError, ValueError):
            self.stream = None

    def close(self) -> None:
        if self.stream is not None:
            try:
                self.stream.write("\r\x1b[2K")
                self.stream.flush()
            except (OSError, ValueError):
                pass

