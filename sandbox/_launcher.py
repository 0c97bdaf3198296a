"""Starting and supervising an actor process.

``LaunchSpec`` says what to run; ``build_command`` turns it into an argv (pure,
so it can be printed and unit-tested); ``launch`` starts it in a new session so
the whole process group can be killed, with stdout/stderr captured by
``OutputTail``.
"""

from __future__ import annotations

import glob
import os
import signal
import subprocess
import sys
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TextIO

import anyio
import anyio.abc
import psutil

from ._bwrap import build_bwrap_command
from ._detect import RestrictionModel, detect_restriction_model
from ._policy import SandboxPolicy

# Environment variables an actor process inherits from the host; everything
# else is dropped so host secrets never reach plugin code.
ENV_ALLOWLIST = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TERM", "HOME", "TMPDIR",
                 "ACTORBOX_DEBUG_RPC", "ACTORBOX_ENABLE_CUDA_IPC", "CUDA_VISIBLE_DEVICES",
                 "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


class SandboxUnavailable(RuntimeError):
    """The sandbox was required but this machine cannot provide it; ``model`` says why."""

    def __init__(self, model: RestrictionModel) -> None:
        super().__init__(model.explain())
        self.model = model


@dataclass(frozen=True, slots=True)
class LaunchSpec:
    """What an actor process runs: ``python -m module *args``, sandboxed unless ``sandboxed`` is False."""

    python: str
    module: str
    args: tuple[str, ...]
    env: Mapping[str, str]
    pass_fds: tuple[int, ...] = ()
    import_paths: tuple[str, ...] = ()  # PYTHONPATH entries
    code_paths: tuple[str, ...] = ()  # actorbox's own code, bound read-only
    module_paths: tuple[str, ...] = ()  # the actor's module, bound read-only
    venv_path: str | None = None
    cwd: str | None = None
    label: str = "actor"
    extra_env: Mapping[str, str] = field(default_factory=dict)
    sandboxed: bool = True
    policy: SandboxPolicy = field(default_factory=SandboxPolicy)
    uid: int = 65534  # the actor's uid when the host runs as root


def child_environment(spec: LaunchSpec) -> dict[str, str]:
    """The environment of the actor process: an allow-list of the host's plus ours."""
    env = {k: v for k, v in spec.env.items() if k in ENV_ALLOWLIST}
    if spec.sandboxed:
        env.update({"HOME": "/tmp", "TMPDIR": "/tmp", "PATH": "/usr/local/bin:/usr/bin:/bin"})
    env.update({
        "ACTORBOX_CHILD": "1",
        "PYTHONUNBUFFERED": "1",
        "PYTHONFAULTHANDLER": "1",
        # On few cores, spinning OpenMP threads in one actor starve the others.
        "OMP_WAIT_POLICY": "PASSIVE",
        "OMP_NUM_THREADS": "1",
    })
    if spec.import_paths:
        env["PYTHONPATH"] = os.pathsep.join(spec.import_paths)
    env.update(spec.extra_env)
    return env


def build_command(spec: LaunchSpec, model: RestrictionModel | None = None) -> list[str]:
    """The argv that starts the actor process; raises SandboxUnavailable when it can't be sandboxed."""
    # -P: never put the working directory on sys.path (it is the host's, unsandboxed).
    argv = ["-P", "-m", spec.module, *spec.args]
    if not spec.sandboxed:
        return [spec.python, *argv]
    model = model or detect_restriction_model()
    if not model.available:
        raise SandboxUnavailable(model)
    nproc = None if model.privileged else spec.policy.max_processes + _own_process_count()
    gpus = tuple(sorted(glob.glob("/dev/nvidia[0-9]*"))) if spec.policy.allow_gpu else ()
    return build_bwrap_command(
        spec.python, spec.module_paths, spec.venv_path, spec.pass_fds[0] if spec.pass_fds else None,
        spec.policy.allow_gpu, model, spec.policy, argv=argv, readonly_paths=spec.code_paths,
        env=child_environment(spec), uid=spec.uid, nproc_limit=nproc, gpu_devices=gpus)


def _own_process_count() -> int:
    """Processes and threads of this uid: RLIMIT_NPROC counts them all in user-namespace mode."""
    uid = os.getuid()
    n = 0
    for p in psutil.process_iter(["uids", "num_threads"]):
        try:
            if p.info["uids"] and p.info["uids"].real == uid:
                n += p.info["num_threads"] or 1
        except (psutil.Error, TypeError):
            pass
    return n


class OutputTail:
    """Keeps the last lines a process wrote and echoes each with a prefix."""

    def __init__(self, prefix: str, echo: TextIO | None, maxlen: int = 40) -> None:
        self.prefix = prefix
        self.echo = echo
        self.lines: deque[str] = deque(maxlen=maxlen)
        self.closed = anyio.Event()

    async def pump(self, stream: anyio.abc.ByteReceiveStream | None) -> None:
        if stream is None:
            self.closed.set()
            return
        buf = b""
        try:
            async for chunk in stream:
                buf += chunk
                *lines, buf = buf.split(b"\n")
                for raw in lines:
                    self._line(raw)
                if len(buf) > 65536:
                    self._line(buf)
                    buf = b""
        except (anyio.ClosedResourceError, anyio.BrokenResourceError, OSError):
            pass
        finally:
            if buf:
                self._line(buf)
            self.closed.set()

    def _line(self, raw: bytes) -> None:
        text = raw.decode("utf-8", "replace").rstrip("\r")
        self.lines.append(text)
        if self.echo is not None:
            try:
                print(f"{self.prefix} {text}", file=self.echo, flush=True)
            except (ValueError, OSError):
                pass

    def text(self, n: int = 20) -> str:
        """The last ``n`` lines; from a fatal-error report on, when there is one (its head matters most)."""
        lines = list(self.lines)
        for i, line in enumerate(lines):
            if line.startswith("Fatal Python error"):
                return "\n".join(lines[i : i + n])
        return "\n".join(lines[-n:])


async def launch(spec: LaunchSpec) -> anyio.abc.Process:
    """Start the actor process in its own session (so its group can be killed)."""
    cmd = build_command(spec)
    return await anyio.open_process(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=child_environment(spec) if not spec.sandboxed else {"PATH": "/usr/local/bin:/usr/bin:/bin"},
        pass_fds=spec.pass_fds,
        cwd=spec.cwd,
        start_new_session=True,
    )


def kill_group(pid: int, sig: int = signal.SIGKILL) -> None:
    """Signal the actor's whole process group (it leads its own session)."""
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def default_echo() -> TextIO:
    return sys.stderr


def find_actor_pid(launcher_pid: int, marker: str = "actorbox._child") -> int | None:
    """The host pid of the Python process inside the sandbox (bwrap forks it below ``launcher_pid``)."""
    try:
        parent = psutil.Process(launcher_pid)
        procs = [parent, *parent.children(recursive=True)]
    except psutil.Error:
        return None
    for p in procs:
        try:
            if marker in " ".join(p.cmdline()) and "bwrap" not in p.name():
                return p.pid
        except psutil.Error:
            continue
    return None


def decode_exit(returncode: int | None, sandboxed: bool) -> tuple[int | None, int | None]:
    """(exit code, signal) of an actor process; bwrap reports a child killed by signal N as 128+N."""
    if returncode is None:
        return None, None
    if returncode < 0:
        return None, -returncode
    if sandboxed and 128 < returncode <= 128 + 64:
        return None, returncode - 128
    return returncode, None
