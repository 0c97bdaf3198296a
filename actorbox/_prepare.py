"""``rt.prepare``: the zygote that actors of a class or an extension folder fork from, ready before their first start.

An actor's zygote (``_zygotes``) is per (environment, sandbox policy, preload, the actor's
module binds): the same key its first start would compute, so that start then forks
(milliseconds) instead of waiting for the zygote's own imports (torch: about a second).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ._actor_launch import environment, launch_spec
from ._errors import UsageError

if TYPE_CHECKING:
    from ._actors import StartRequest
    from ._services import ActorServices


@dataclass(frozen=True, slots=True)
class ZygoteInfo:
    """The zygote ``await rt.prepare(...)`` made ready: what actors of that class or extension fork from."""

    pid: int | None  # host pid of the zygote's Python process
    preload: tuple[str, ...]  # what it imported for its actors: torch when the host uses it, the preload option
    environment: str | None  # its environment's directory; None: the host's
    sandboxed: bool
    launched: bool  # this call started it (False: it was running already)
    waited_s: float  # how long this call took (building the environment included)


async def prepare(services: ActorServices, req: StartRequest, sandbox: object = None) -> ZygoteInfo | None:
    """Build ``req``'s environment, launch (or find) its zygote; None where none can serve (an event says why)."""
    if sandbox is not None and "entry" not in req.what:
        raise UsageError("rt.prepare(Cls, sandbox=...): the sandbox of an actor class is its @actor(sandbox=...) "
                         "option (or the Runtime's); sandbox= is for an extension folder, as for load_extension")
    t0 = time.monotonic()
    label = f"{req.short} (prepare)"
    env = await environment(services, req.requirements, label, req.cls_name)
    # (no socket: the spec is only the zygote's key and its launch; each fork brings its actor's own)
    spec = launch_spec(services, req.options, label, tuple(req.module_paths), env, -1)
    zygotes = services.zygotes
    if req.options.num_gpus:
        services.log.info("zygote.unavailable", zygote=label, reason="an actor's GPUs are picked at its start, "
                          "and its zygote sees only those", consequence="its zygote starts at its first start")
        return None
    before = zygotes.by_key.get(zygotes.key_of(spec, req.options.preload))
    z = await zygotes.zygote_for(spec, req.options.preload, say=True)
    if z is None:
        return None
    return ZygoteInfo(z.pid, z.preload, spec.venv_path if env is not None else None, spec.sandboxed,
                      z is not before, round(time.monotonic() - t0, 6))
