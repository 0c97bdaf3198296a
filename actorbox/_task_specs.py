"""``TaskSpec``: one task function as the host's task pool knows it, and the kind of worker it runs on."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgpack

import sandbox

from ._import_paths import import_paths
from ._resources import Demand, Resources
from ._submit import parse_actor_task
from ._task_options import TaskOptions, check_task_function, task_options

if TYPE_CHECKING:
    from ._supervisor import ActorSupervisor


@dataclass(frozen=True, slots=True)
class TaskSpec:
    """A task function: its key, options, and the workers it may run on."""

    key: str  # the method name of its calls (to the pool, then to a worker): "<qualname>#<n>"
    name: str
    options: TaskOptions
    demand: Demand
    # The workers it may run on: who submitted it (None: the host; else an actor id, whose
    # tasks never share a process with anyone else's), its environment, sandbox and import roots.
    kind: Hashable
    load: Any  # what a worker loads: the function (pickled by value) or "module:qualname" to import
    paths: tuple[str, ...]  # sys.path roots in the worker
    module_paths: tuple[str, ...]  # bound read-only into its sandbox
    requirements: tuple[str, ...] | None  # its own environment's, or None for the host's


def host_spec(fn: Callable[..., Any], n: int, resources: Resources) -> TaskSpec:
    """The spec of a function the host submits (the ``n``-th the pool has seen).

    Raises UsageError for what is no function and InfeasibleResourcesError for a task
    that asks for more than the Runtime has.
    """
    check_task_function(fn)
    opts = task_options(fn)
    name = getattr(fn, "__qualname__", repr(fn))
    resources.check_feasible(opts.demand(), f"task {name}()")
    requirements = sandbox.validate_requirements(opts.dependencies)[0] if opts.dependencies else None
    module = getattr(fn, "__module__", None) or "__main__"
    paths, module_paths = import_paths(module)
    # By reference when the worker can import it (nothing pickled); else by value, as
    # classes defined in a script travel.
    load: Any = f"{module}:{name}" if paths and "<" not in name else fn
    kind = (None, requirements, opts.sandbox, tuple(paths), tuple(module_paths))
    return TaskSpec(f"{name}#{n}", name, opts, opts.demand(), kind, load, tuple(paths), tuple(module_paths),
                    requirements)


def actor_spec(sup: ActorSupervisor, method: str, n: int, resources: Resources) -> TaskSpec:
    """The spec of a task the actor ``sup`` supervises submitted (``method``: its import path and
    options, see ``_submit``): it runs in that actor's environment, sandbox and import roots, on
    workers no one else's tasks use.

    Raises UsageError for a malformed method and InfeasibleResourcesError for a task that
    asks for more than the Runtime has.
    """
    ref, opts = parse_actor_task(method)
    name = ref.partition(":")[2]
    resources.check_feasible(opts.demand(), f"task {name}()")
    paths = tuple(msgpack.unpackb(sup.init_payload)[0])  # the host made it: where the actor imports from
    sandbox_choice = sup.options.sandbox
    kind = (sup.actor_id, sup.requirements, sandbox_choice, paths, sup.module_paths)
    worker_opts = TaskOptions(opts.num_cpus, opts.num_gpus, opts.resources, opts.max_retries,
                              opts.retry_exceptions, (), sandbox_choice)
    return TaskSpec(f"{name}#{n}", name, worker_opts, opts.demand(), kind, ref, paths, sup.module_paths,
                    sup.requirements)
