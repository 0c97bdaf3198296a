"""Launching one actor's process: its environment, its launch spec, and what failing to launch means.

The supervisor (``_supervisor.py``) decides when to launch and what to do with the
process; this module only turns an actor's options into a running, unconnected
process and a socket to it, with the errors a user can act on.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

import msgpack

import sandbox

from ._errors import ActorStartError, EnvironmentBuildError, SandboxUnavailableError
from ._zygotes import ForkedProcess

if TYPE_CHECKING:
    from ._options import ActorOptions
    from ._services import ActorServices

_ACTORBOX_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# actorbox's own packages, bound read-only into every sandbox (wherever they are installed).
CODE_PATHS = tuple(os.path.join(_ACTORBOX_ROOT, p) for p in ("actorbox", "scheduler", "sandbox"))
# Bytes an INIT frame adds to its payload (kind, ids, the name table): generous.
INIT_ENVELOPE = 64 << 10


@dataclass(frozen=True, slots=True)
class Launched:
    """A launched actor process, not yet told what to construct."""

    proc: sandbox.ActorProcess | ForkedProcess  # forked by its environment's zygote, or launched alone
    sock: socket.socket  # the host's end of the actor's socket
    sandboxed: bool
    policy: sandbox.SandboxPolicy


def init_payload(import_paths: list[str], pickled_spec: bytes) -> bytes:
    """The INIT frame's payload: where the actor imports from, and what it constructs."""
    return msgpack.packb([import_paths, pickled_spec], use_bin_type=True)


async def environment(services: ActorServices, requirements: tuple[str, ...] | None, label: str,
                      cls_name: str) -> sandbox.Environment | None:
    """The actor's own environment, built (or found in the cache); None: the host's."""
    if requirements is None:
        return None
    try:
        return await services.environments().ensure(requirements, label=label)
    except sandbox.EnvBuildError as exc:
        raise EnvironmentBuildError(
            f"could not build the Python environment of actor {label!r}: {exc}\nFix or remove the "
            "failing requirement in its dependencies and start it again.",
            actor=label, cls=cls_name, output=exc.output) from None
    except OSError as exc:
        root = services.environments().root
        raise EnvironmentBuildError(
            f"could not prepare the Python environment of actor {label!r} under {root}: {exc}; check "
            "that the directory is yours and writable (or choose another: Runtime(env_root=...))",
            actor=label, cls=cls_name, output="") from exc


def launch_spec(services: ActorServices, options: ActorOptions, label: str, module_paths: tuple[str, ...],
                launch_env: sandbox.Environment | None, fd: int) -> sandbox.LaunchSpec:
    """How the actor's process is launched (its interpreter, binds, variables, sandbox): on socket ``fd``."""
    mode, policy = services.sandbox_for(options)
    if launch_env is None:  # the host's environment
        python, venv, import_paths, binds, extra = (
            sys.executable, sys.prefix if sys.prefix != sys.base_prefix else None, (_ACTORBOX_ROOT,),
            (*CODE_PATHS, sys.base_prefix), {})
    else:
        python, venv, import_paths, binds = (
            launch_env.python, launch_env.path, (launch_env.code_dir,), launch_env.bind_paths)
        extra = {sandbox.HOST_PACKAGES_VAR: launch_env.packages_dir}
    if options.gpu_ids is not None:  # the GPUs the Runtime gave it (num_gpus=): only those are visible
        extra = {**extra, "CUDA_VISIBLE_DEVICES": ",".join(map(str, options.gpu_ids))}
    return sandbox.LaunchSpec(
        python=python, module="actorbox._child", args=(str(fd), str(services.max_frame_size)),
        env=os.environ, pass_fds=(fd,), import_paths=import_paths,
        code_paths=binds, module_paths=module_paths, venv_path=venv, extra_env=extra,
        label=label, sandboxed=mode == "required", policy=policy)  # a uid of its own: leased


async def launch(services: ActorServices, options: ActorOptions, label: str, cls_name: str,
                 module_paths: tuple[str, ...], launch_env: sandbox.Environment | None) -> Launched:
    """Start the actor's process (sandboxed unless chosen otherwise); raises ActorStartError."""
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        spec = launch_spec(services, options, label, module_paths, launch_env, child.fileno())
        if not spec.sandboxed:
            services.log.warning("actor.unsandboxed", actor=label,
                                 reason="sandbox='disabled' was chosen explicitly: this actor runs with the "
                                        "host's privileges and can read and change everything the host can")
        try:
            # From the zygote of its environment, sandbox and preload when one can fork it.
            proc: sandbox.ActorProcess | ForkedProcess | None = await services.zygotes.launch(
                spec, options.preload, child)
            if proc is None:
                # A fresh socket: a zygote that failed to fork this actor was handed the other one's
                # end (and may keep a copy: it imported third-party packages).
                child.close()
                parent.close()
                parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
                spec = dataclasses.replace(spec, args=(str(child.fileno()), *spec.args[1:]),
                                           pass_fds=(child.fileno(),))
                proc = await sandbox.launch(spec, services.spawner)
        except sandbox.SandboxUnavailable as exc:
            parent.close()
            raise SandboxUnavailableError(
                f"cannot start actor {label!r} in a sandbox: {exc}\nTo run it without isolation "
                "(trusted code only), pass sandbox='disabled' to @actor or to Runtime().",
                actor=label, cls=cls_name) from None
        except OSError as exc:
            parent.close()
            raise ActorStartError(
                f"could not launch the process for actor {label!r}: {exc}; check that "
                f"{spec.python} runs", actor=label, cls=cls_name) from exc
        except BaseException:  # cancelled while launching: launch() kills what it forked
            parent.close()
            raise
    finally:
        child.close()
    return Launched(proc, parent, spec.sandboxed, spec.policy)
