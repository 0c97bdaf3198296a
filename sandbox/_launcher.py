"""Starting and supervising an actor process.

``LaunchSpec`` says what to run; ``build_command`` turns it into an argv (pure,
so it can be printed and unit-tested); ``launch`` starts it in a new session so
the whole process group can be killed, with stdout/stderr captured by
``OutputTail``.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import resource
import signal
import subprocess
import threading
from collections import deque
from collections.abc import AsyncIterator, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, TextIO

import anyio
import anyio.abc
import anyio.from_thread
import anyio.lowlevel
import psutil

from ._bwrap import build_bwrap_command
from ._detect import RestrictionModel, detect_restriction_model
from ._late_reap import reap_later
from ._policy import SandboxPolicy
from ._text import escape_controls
from ._uids import UidLease, lease_uid

# Environment variables an actor process inherits from the host; everything
# else is dropped so host secrets never reach plugin code.
# (ACTORBOX_DEBUG_RPC is not among them: the host logs every frame in both directions.)
ENV_ALLOWLIST = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TERM", "HOME", "TMPDIR",
                 "ACTORBOX_ENABLE_CUDA_IPC", "ACTORBOX_SHM_SPARE_BYTES", "CUDA_VISIBLE_DEVICES",
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
    # The actor's uid when the host runs as root; None: launch() leases one no other live
    # actor of this machine has (so per-uid limits are per actor), held until it is reaped.
    uid: int | None = None


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
    if spec.sandboxed:
        # CUDA IPC can't cross a sandbox (the driver passes handles through a file in
        # the exporter's /dev/shm, readable by its user alone): a sandboxed actor copies.
        env.pop("ACTORBOX_ENABLE_CUDA_IPC", None)
        env["ACTORBOX_SANDBOXED"] = "1"
    if spec.policy.allow_gpu and spec.env.get("LD_LIBRARY_PATH"):
        # Where the host found its GPU driver (e.g. /usr/local/nvidia/lib64): a GPU actor needs it too.
        env["LD_LIBRARY_PATH"] = spec.env["LD_LIBRARY_PATH"]
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
    policy = spec.policy
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard < policy.max_open_files:
        # prlimit can't raise the hard limit past the host's own (that needs CAP_SYS_RESOURCE):
        # every start would fail ("Operation not permitted"). The host's is a tighter limit.
        policy = dataclasses.replace(policy, max_open_files=hard)
    return build_bwrap_command(
        spec.python, spec.module_paths, spec.venv_path, spec.pass_fds[0] if spec.pass_fds else None,
        spec.policy.allow_gpu, model, policy, argv=argv, readonly_paths=spec.code_paths,
        env=child_environment(spec), uid=spec.uid if spec.uid is not None else 65534, nproc_limit=nproc,
        gpu_devices=gpus)


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
        # The head of a crash report (faulthandler's "Fatal Python error: ..." and the
        # crashing thread's stack), kept apart: the other threads' stacks that follow it
        # would push it out of ``lines``.
        self.fatal: list[str] = []
        self._fatal_room = 0
        self.closed = anyio.Event()

    async def pump(self, stream: AsyncIterator[bytes] | None) -> None:
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
        # Kept and echoed escaped: the actor chose these bytes, and both reach a terminal.
        text = escape_controls(raw.decode("utf-8", "replace").rstrip("\r"))
        self.lines.append(text)
        if text.startswith("Fatal Python error"):
            self.fatal, self._fatal_room = [], 20
        if self._fatal_room:
            self.fatal.append(text)
            self._fatal_room -= 1
        if self.echo is not None:
            try:
                print(f"{self.prefix} {text}", file=self.echo, flush=True)
            except (ValueError, OSError):
                pass

    def text(self, n: int = 20) -> str:
        """The last ``n`` lines; from a fatal-error report on, when there is one (its head matters most)."""
        if self.fatal:
            return "\n".join(self.fatal[:n])
        return "\n".join(list(self.lines)[-n:])


class ActorProcess:
    """A launched actor process, awaitable on any anyio backend.

    Exit is watched through a pidfd and output through the pipes' fds, so nothing
    depends on which thread forked the process.
    """

    def __init__(self, popen: subprocess.Popen[bytes], lease: UidLease | None = None) -> None:
        self._popen = popen
        self._lease = lease  # the actor's uid, held until the process is reaped
        self.pid = popen.pid
        self._pidfd = os.pidfd_open(popen.pid)
        self._wait_lock = anyio.Lock()
        self.stdout = _chunks(popen.stdout)
        self.stderr = _chunks(popen.stderr)

    @property
    def returncode(self) -> int | None:
        return self._popen.poll()

    async def wait(self) -> int:
        async with self._wait_lock:  # one waiter on the pidfd at a time
            while (rc := self._popen.poll()) is None:
                await anyio.wait_readable(self._pidfd)
            return rc

    async def aclose(self) -> None:
        """Close the pipes and the pidfd (the process must have exited, or be killed first)."""
        for f in (self._popen.stdout, self._popen.stderr):
            if f is not None:
                f.close()
        pidfd, lease, popen = self._pidfd, self._lease, self._popen
        self._pidfd, self._lease = -1, None
        if popen.poll() is not None:
            if pidfd >= 0:
                os.close(pidfd)
            if lease is not None:
                lease.release()  # its processes are gone (the sandbox's die with the launcher)
        elif pidfd >= 0:
            # Killed but not gone yet (the kernel is still tearing it down): reaped, and its uid
            # released, as soon as it is.
            def when_gone() -> None:
                popen.wait()
                if lease is not None:
                    lease.release()

            reap_later(pidfd, popen.pid, when_gone)


async def _chunks(pipe: Any) -> AsyncIterator[bytes]:
    """What a pipe delivers, chunk by chunk, until EOF."""
    if pipe is None:
        return
    fd = pipe.fileno()
    os.set_blocking(fd, False)
    while True:
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            try:
                await anyio.wait_readable(fd)
            except (OSError, ValueError):
                return
            continue
        except (OSError, ValueError):
            return
        if not data:
            return
        yield data


async def launch(spec: LaunchSpec, spawner: Executor) -> ActorProcess:
    """Start the actor process (see ``_launch``); a sandboxed one of a root host gets a uid of its own."""
    lease = None
    if spec.sandboxed and spec.uid is None and os.geteuid() == 0:
        lease = lease_uid()
        spec = dataclasses.replace(spec, uid=lease.uid)
    try:
        return await _launch(spec, spawner, lease)
    except BaseException:
        if lease is not None:
            lease.release()
        raise


async def _launch(spec: LaunchSpec, spawner: Executor, lease: UidLease | None) -> ActorProcess:
    """Start the actor process in its own session (so its group can be killed).

    The fork happens on ``spawner``'s thread, which must outlive the actor: bwrap's
    --die-with-parent (PR_SET_PDEATHSIG) fires when the *thread* that forked it exits,
    so forking from a short-lived worker thread (as trio's open_process does) would
    kill the actor some seconds after its start.
    """
    cmd = build_command(spec)
    env = child_environment(spec) if not spec.sandboxed else {"PATH": "/usr/local/bin:/usr/bin:/bin"}

    def spawn() -> subprocess.Popen[bytes]:
        return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env=env, pass_fds=spec.pass_fds, cwd=spec.cwd, start_new_session=True)

    fut = spawner.submit(spawn)
    done = anyio.Event()
    token = anyio.lowlevel.current_token()
    loop_thread = threading.get_ident()

    def wake(_: Any) -> None:
        if threading.get_ident() == loop_thread:
            done.set()
        else:
            anyio.from_thread.run_sync(done.set, token=token)

    fut.add_done_callback(wake)
    try:
        await done.wait()
    except BaseException:
        # Cancelled while forking: the process must not outlive this call, nor stay a zombie.
        def reap(f: Any) -> None:
            if f.exception() is None:
                popen = f.result()
                kill_group(popen.pid)
                with popen:  # waits (a killed process is reaped at once) and closes the pipes
                    pass

        fut.add_done_callback(reap)
        raise
    return ActorProcess(fut.result(), lease)


def kill_group(pid: int, sig: int = signal.SIGKILL) -> None:
    """Signal the actor's whole process group (it leads its own session)."""
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


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
