"""The ``@task`` decorator and its validated, frozen options."""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar, overload

from sandbox import SandboxPolicy

from ._errors import UsageError
from ._options import ActorOptions
from ._resources import Demand, check_amount, check_custom

F = TypeVar("F", bound=Callable[..., Any])

OPTIONS_ATTR = "__actorbox_task_options__"

# Ray's default: a task whose worker dies is tried three more times. A task that kills
# its worker every time (out of memory, a native crash) then fails after four tries.
DEFAULT_MAX_RETRIES = 3


@dataclass(frozen=True, slots=True)
class TaskOptions:
    """Options of a task function, checked once when it is decorated."""

    num_cpus: float = 1.0
    num_gpus: int = 0
    resources: tuple[tuple[str, float], ...] = ()  # custom amounts, sorted by name
    max_retries: int = DEFAULT_MAX_RETRIES  # more tries when the worker dies (not when the task raises)
    retry_exceptions: bool = False  # also try again when the task raises
    dependencies: tuple[str, ...] = ()
    sandbox: str | SandboxPolicy | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "num_cpus", check_amount(self.num_cpus, "num_cpus"))
        object.__setattr__(self, "num_gpus", int(check_amount(self.num_gpus, "num_gpus", integral=True)))
        object.__setattr__(self, "resources", check_custom(
            dict(self.resources) if isinstance(self.resources, tuple) else self.resources, "resources"))
        if type(self.max_retries) is not int or self.max_retries < 0:
            raise UsageError(f"max_retries must be an int >= 0, got {self.max_retries!r}")
        if type(self.retry_exceptions) is not bool:
            raise UsageError(f"retry_exceptions must be True or False, got {self.retry_exceptions!r}")
        if os.environ.get("ACTORBOX_CHILD") == "1":
            # In an actor (a worker importing the task's module, an actor submitting it): the
            # host checked them, and an environment need not hold the checker (packaging).
            object.__setattr__(self, "dependencies", tuple(self.dependencies))
        else:  # the worker's actor options check dependencies and sandbox as @actor does
            object.__setattr__(self, "dependencies", self.worker_options().dependencies)

    def demand(self) -> Demand:
        return Demand(self.num_cpus, self.num_gpus, self.resources)

    def worker_options(self) -> ActorOptions:
        """The options of the worker actors this task runs on: one task at a time each."""
        return ActorOptions(dependencies=self.dependencies, sandbox=self.sandbox, max_concurrency=1)


@overload
def task(fn: F, /) -> F: ...
@overload
def task(
    *,
    num_cpus: float = 1,
    num_gpus: int = 0,
    resources: dict[str, float] | None = None,
    max_retries: int = DEFAULT_MAX_RETRIES,
    retry_exceptions: bool = False,
    dependencies: tuple[str, ...] | list[str] = (),
    sandbox: str | SandboxPolicy | None = None,
) -> Callable[[F], F]: ...
def task(fn: Any = None, /, **options: Any) -> Any:
    """Mark a function as a task: ``@task`` or ``@task(num_cpus=2, max_retries=0, ...)``.

    The function is returned unchanged apart from its options, so it stays callable
    as a plain function; ``rt.submit(fn, ...)`` (or ``actorbox.submit``) runs it on a
    sandboxed worker process and returns an ``actorbox.Future``.
    """
    if "resources" in options and options["resources"] is None:
        options["resources"] = ()
    opts = TaskOptions(**options)

    def wrap(f: F) -> F:
        check_task_function(f)
        setattr(f, OPTIONS_ATTR, opts)
        return f

    if fn is None:
        return wrap
    return wrap(fn)


def check_task_function(fn: object) -> None:
    """UsageError unless ``fn`` is a plain function (sync or async) that can run as a task."""
    if isinstance(fn, type):
        raise UsageError(f"{fn.__qualname__} is a class: start classes as actors (rt.start), "
                         "and make tasks of functions")
    if not (inspect.isfunction(fn) or inspect.isbuiltin(fn)):
        raise UsageError(f"a task is a function (def or async def), got {type(fn).__name__}")


def task_options(fn: Callable[..., Any]) -> TaskOptions:
    """The options ``@task`` gave ``fn``; the defaults for a plain function."""
    opts = getattr(fn, OPTIONS_ATTR, None)
    return opts if isinstance(opts, TaskOptions) else TaskOptions()
