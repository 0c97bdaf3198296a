"""The ``@actor`` decorator and its validated, frozen options."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, TypeVar, overload

from sandbox import RequirementError, SandboxPolicy, validate_requirements

from ._errors import InvalidPreloadError, InvalidRequirementError, NameTakenError, UsageError
from ._resources import Demand, check_amount, check_custom

T = TypeVar("T", bound=type)

_SANDBOX_MODES = (None, "required", "disabled")

# actorbox's own services live under this prefix (the object store is "actorbox.objects"):
# an actor, extension or registered object taking such a name would answer for the
# service, so none may.
RESERVED_PREFIX = "actorbox."

# A module name as ``import`` takes it: dotted identifiers, nothing else (no paths, no
# code, no relative imports), so a preload can only ever mean importlib.import_module(name).
_MODULE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
_MAX_PRELOAD = 64


def check_preload(preload: object, actor: str | None) -> tuple[str, ...]:
    """``preload`` as a tuple of module names; InvalidPreloadError saying what is wrong otherwise."""
    if isinstance(preload, (str, bytes)) or not isinstance(preload, (list, tuple)):
        raise InvalidPreloadError(f"preload must be a list of module names, e.g. [\"numpy\"], got {preload!r}",
                                  actor=actor)
    if len(preload) > _MAX_PRELOAD:
        raise InvalidPreloadError(f"preload names {len(preload)} modules, more than {_MAX_PRELOAD}; preload the "
                                  "few heavy ones (importing them pulls in their submodules)", actor=actor)
    for m in preload:
        if not isinstance(m, str) or len(m) > 200 or not _MODULE_NAME.fullmatch(m):
            raise InvalidPreloadError(
                f"preload entry {m!r} is not a module name; give dotted identifiers as import takes them "
                "(\"torch\", \"skimage.filters\"), not paths, packages to install or code", actor=actor,
                module=m if isinstance(m, str) else None)
    return tuple(dict.fromkeys(preload))  # in order, each once


def check_name(name: str, what: str) -> None:
    """Raise NameTakenError when ``name`` is reserved for actorbox's own services."""
    if name.startswith(RESERVED_PREFIX):
        raise NameTakenError(
            f"{what} {name!r} is reserved: names starting with {RESERVED_PREFIX!r} belong to actorbox's own "
            "services (such as the object store); choose a name without that prefix", name=name)


@dataclass(frozen=True, slots=True)
class ActorOptions:
    """Options of an actor class, checked once when the class is decorated."""

    name: str | None = None
    dependencies: tuple[str, ...] = ()
    sandbox: str | SandboxPolicy | None = None  # None: the Runtime's default; a policy implies required
    max_concurrency: int = 1
    max_restarts: int = 0
    preload: tuple[str, ...] = ()  # modules the actor process imports before constructing the instance
    # Backpressure: a call made while this many calls to the actor are unfinished fails at once
    # with PendingCallsLimitError (None: no limit).
    max_pending_calls: int | None = None
    # Resources held for the actor's life (Runtime(num_cpus=, num_gpus=, resources=)): none by default.
    num_cpus: float = 0.0
    num_gpus: int = 0
    resources: tuple[tuple[str, float], ...] = ()
    # Set by the Runtime, not by @actor: the GPUs it holds (its CUDA_VISIBLE_DEVICES).
    gpu_ids: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.name is not None and (not isinstance(self.name, str) or not self.name):
            raise UsageError(f"actor name must be a non-empty string, got {self.name!r}")
        if self.name is not None:
            check_name(self.name, "actor name")
        if isinstance(self.dependencies, str) or not all(isinstance(d, str) for d in self.dependencies):
            raise UsageError("dependencies must be a sequence of requirement strings, e.g. ('numpy<2',)")
        object.__setattr__(self, "dependencies", tuple(self.dependencies))
        try:
            validate_requirements(self.dependencies)
        except RequirementError as exc:
            raise InvalidRequirementError(str(exc), actor=self.name) from None
        if not isinstance(self.sandbox, SandboxPolicy) and self.sandbox not in _SANDBOX_MODES:
            raise UsageError(
                f"sandbox must be 'required', 'disabled', a SandboxPolicy or None, got {self.sandbox!r}")
        if type(self.max_concurrency) is not int or self.max_concurrency < 1:
            raise UsageError(f"max_concurrency must be an int >= 1, got {self.max_concurrency!r}")
        if type(self.max_restarts) is not int or self.max_restarts < 0:
            raise UsageError(f"max_restarts must be an int >= 0, got {self.max_restarts!r}")
        object.__setattr__(self, "preload", check_preload(self.preload, self.name))
        if self.max_pending_calls is not None and (type(self.max_pending_calls) is not int
                                                   or self.max_pending_calls < 1):
            raise UsageError(f"max_pending_calls must be an int >= 1 (or None for no limit), "
                             f"got {self.max_pending_calls!r}")
        object.__setattr__(self, "num_cpus", check_amount(self.num_cpus, "num_cpus"))
        object.__setattr__(self, "num_gpus", int(check_amount(self.num_gpus, "num_gpus", integral=True)))
        object.__setattr__(self, "resources", check_custom(
            dict(self.resources) if isinstance(self.resources, tuple) else self.resources, "resources"))

    def demand(self) -> Demand:
        """The resources the actor holds for its life."""
        return Demand(self.num_cpus, self.num_gpus, self.resources)


OPTIONS_ATTR = "__actorbox_options__"


@overload
def actor(cls: T, /) -> T: ...
@overload
def actor(
    *,
    name: str | None = None,
    dependencies: tuple[str, ...] | list[str] = (),
    sandbox: str | SandboxPolicy | None = None,
    max_concurrency: int = 1,
    max_restarts: int = 0,
    preload: tuple[str, ...] | list[str] = (),
    max_pending_calls: int | None = None,
    num_cpus: float = 0,
    num_gpus: int = 0,
    resources: dict[str, float] | None = None,
) -> Any: ...
def actor(cls: Any = None, /, **options: Any) -> Any:
    """Mark a class as an actor class: ``@actor`` or ``@actor(max_concurrency=4, ...)``.

    The class is returned unchanged apart from its options, so it stays usable
    (and testable) as a plain class; ``Runtime.start`` runs it as an actor.
    """
    if "gpu_ids" in options:
        raise UsageError("gpu_ids is not an @actor option: ask for num_gpus=, the Runtime picks the devices")
    if options.get("resources", ()) is None:
        options["resources"] = ()
    opts = ActorOptions(**options)

    def wrap(c: T) -> T:
        if not isinstance(c, type):
            raise UsageError(f"@actor decorates classes, not {type(c).__name__}")
        setattr(c, OPTIONS_ATTR, opts)
        return c

    if cls is None:
        return wrap
    return wrap(cls)


def options_of(cls: type) -> ActorOptions:
    opts = cls.__dict__.get(OPTIONS_ATTR)
    return opts if isinstance(opts, ActorOptions) else ActorOptions()
