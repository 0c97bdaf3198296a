"""What the Runtime's parts may use of it, and nothing more: ``ActorServices``, ``HostServices``.

Supervisors (and the host's caller) receive these objects instead of the Runtime, so they depend on a narrow,
explicit set of services (the scheduler, the codec, the loggers, the spawner thread,
the task group they run in, the sandbox choice, the environments) and the Runtime's
module depends on them, never the other way round.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio.abc

from sandbox import EnvironmentManager, SandboxPolicy
from scheduler import Scheduler

if TYPE_CHECKING:
    from ._codec import Codec
    from ._objects import ObjectStore
    from ._options import ActorOptions
    from ._zygotes import Zygotes


@dataclass(frozen=True, slots=True)
class ActorServices:
    """The Runtime's parts a supervisor uses; built once the Runtime is entered."""

    scheduler: Scheduler
    codec: Codec
    # Where the Runtime's events go: structlog loggers, or tees that also record them
    # while ACTORBOX_TRACE_FILE is set (hence Any: both have the logger's methods).
    log: Any
    actor_log: Any
    max_frame_size: int
    debug_rpc: bool
    grace_period: float
    # Forks every actor process: must live as long as the actors (see sandbox.launch).
    spawner: ThreadPoolExecutor
    # Where supervisors run: shielded from the Runtime's own scope (see Runtime.__aenter__).
    supervision: anyio.abc.TaskGroup
    # (mode, policy) for an actor's options: "required" or "disabled", and the policy in force.
    sandbox_for: Callable[[ActorOptions], tuple[str, SandboxPolicy]]
    environments: Callable[[], EnvironmentManager]
    # True once the Runtime exits: an actor that dies then is not restarted.
    closing: Callable[[], bool]
    zygotes: Zygotes  # prepared processes that fork actors (issue 17)


@dataclass(frozen=True, slots=True)
class HostServices:
    """The Runtime's parts the host's caller uses (``_host_caller.py``)."""

    scheduler: Scheduler
    codec: Codec
    object_store: ObjectStore  # holds put objects and results the host's code has not read
    get_actor: Callable[[str], Any]  # a handle by name (Runtime.get_actor)
    cuda_ipc_reaches: Callable[[int], bool]  # whether an actor can open the host's CUDA IPC handles
