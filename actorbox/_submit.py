"""``actorbox.submit``: a task from the host (inside a Runtime) or from an actor's code.

In the host it is ``rt.submit`` of the running Runtime. In an actor the task is a call
to the host's task pool (``actorbox.tasks``) through the actor's caller: the function
goes by import path and its options as plain data in the call's method name, which the
pool parses and checks (``actor_task_method``, ``parse_actor_task``); nothing is pickled.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from ._errors import ActorboxError, UsageError
from ._future import Future
from ._process import process_caller
from ._task_options import TaskOptions, check_task_function, task_options

TASKS_NAME = "actorbox.tasks"
TASK_LABEL = "task"  # a task's Future reads "task.<name>#<n>()" in errors
# The longest method name an actor's task call may have: an import path and a few options.
MAX_ACTOR_TASK_METHOD = 2048
# What an actor's task may ask for; its environment and sandbox are the actor's own.
_ACTOR_OPTIONS = ("num_cpus", "num_gpus", "resources", "max_retries", "retry_exceptions")


def submit(fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
    """Run ``fn(*args, **kwargs)`` as a task (see ``@actorbox.task``); returns its Future.

    Works in the host inside ``async with Runtime()`` (as ``rt.submit``) and in an actor's
    code, where ``fn`` must be importable (defined in a module, not a script) and runs in
    the actor's own environment and sandbox, on workers only that actor's tasks use.
    """
    caller: Any = process_caller.get()
    if caller is None:
        raise ActorboxError("actorbox.submit() needs a running actorbox Runtime: call it inside 'async with "
                            "actorbox.Runtime() as rt:' or from an actor's code")
    host_submit = getattr(caller, "submit_task", None)
    if host_submit is not None:
        fut: Future[Any] = host_submit(fn, args, kwargs)
        return fut
    check_task_function(fn)
    method = actor_task_method(fn, task_options(fn))
    pool = caller.get_actor(TASKS_NAME)
    fut = caller.call(pool._actor_id, TASK_LABEL, method, args, kwargs, pool._token)
    return fut


def actor_task_method(fn: Callable[..., Any], opts: TaskOptions) -> str:
    """The method name of an actor's task call: ``module:qualname`` and its options as JSON."""
    module, name = getattr(fn, "__module__", None), getattr(fn, "__qualname__", "")
    if not module or module == "__main__" or "<" in name:
        raise UsageError(f"task {name}() can't be submitted from an actor: a task an actor submits goes by "
                         "import path, so define it at the top level of a module (not in a script or a function)")
    options = {"num_cpus": opts.num_cpus, "num_gpus": opts.num_gpus, "resources": dict(opts.resources),
               "max_retries": opts.max_retries, "retry_exceptions": opts.retry_exceptions}
    return f"{module}:{name}?{json.dumps(options, separators=(',', ':'))}"


def parse_actor_task(method: str) -> tuple[str, TaskOptions]:
    """``(import path, options)`` of an actor's task call (host side); UsageError if malformed."""
    ref, sep, options = method.partition("?")
    module, colon, name = ref.partition(":")
    if not sep or not colon or len(method) > MAX_ACTOR_TASK_METHOD or not all(
            p.isidentifier() for p in (*module.split("."), *name.split("."))):
        raise UsageError(f"{method[:200]!r} is no task call: submit tasks with actorbox.submit(fn, ...)")
    try:
        given = json.loads(options)
    except (ValueError, RecursionError):  # malformed, or nested past the parser's depth (the 2 KiB allow ~1,000)
        given = None
    if not isinstance(given, dict) or any(k not in _ACTOR_OPTIONS for k in given):
        raise UsageError(f"task {ref}(): its options are malformed; submit tasks with actorbox.submit(fn, ...)")
    return ref, TaskOptions(**given)
