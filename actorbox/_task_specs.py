"""``TaskSpec``: one task function as the host's task pool knows it, and the kind of worker it runs on."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgpack

import sandbox

from ._errors import UsageError
from ._import_paths import import_paths
from ._resources import Demand, Resources
from ._submit import parse_actor_task
from ._task_options import TaskOptions, check_task_function, task_options

if TYPE_CHECKING:
    from ._supervisor import ActorSupervisor

# Distinct task functions (with options) one actor may submit: each is remembered in the host.
MAX_ACTOR_TASKS = 1000


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


class TaskSpecs:
    """The task functions a pool knows: the host's by function (and key), each actor's by the
    method its calls named (at most MAX_ACTOR_TASKS per actor)."""

    def __init__(self, resources: Resources, supervisor: Callable[[int], ActorSupervisor | None]) -> None:
        self.resources = resources
        self.supervisor = supervisor
        self._keys = itertools.count(1)
        self._by_key: dict[str, TaskSpec] = {}
        self._by_fn: dict[Callable[..., Any], TaskSpec] = {}
        self._by_actor: dict[int, dict[str, TaskSpec]] = {}

    def of_function(self, fn: Callable[..., Any]) -> TaskSpec:
        """The spec of ``fn``, which the host submits (made the first time: see ``host_spec``)."""
        spec = self._by_fn.get(fn)
        if spec is None:
            spec = self._by_fn[fn] = host_spec(fn, next(self._keys), self.resources)
            self._by_key[spec.key] = spec
        return spec

    def of_call(self, method: str, trusted: bool, caller: object) -> TaskSpec | None:
        """The spec of a call to the pool naming ``method``: the host's (``trusted``) by key, an
        actor's (``caller``, its endpoint) parsed from it, checked and kept; None when unknown.
        Raises UsageError (or InfeasibleResourcesError) for one an actor may not submit."""
        if trusted:
            return self._by_key.get(method)
        actor_id = getattr(caller, "actor_id", None)
        sup = self.supervisor(actor_id) if isinstance(actor_id, int) else None
        if sup is None or not isinstance(actor_id, int):
            return None
        known = self._by_actor.setdefault(actor_id, {})
        spec = known.get(method)
        if spec is None:
            if len(known) >= MAX_ACTOR_TASKS:
                raise UsageError(f"actor {sup.label!r} submitted {len(known)} different task functions, the most "
                                 "one actor may; submit fewer distinct functions (or options)")
            spec = known[method] = actor_spec(sup, method, next(self._keys), self.resources)
        return spec
