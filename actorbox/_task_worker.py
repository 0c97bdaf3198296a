"""``TaskWorker``: the actor tasks run on (actor side).

A worker is an ordinary actor, started by the host's task pool (``_tasks``) through the
same path as any actor, so it gets the sandbox, its environment, tracing and the object
store. The pool first calls ``load(key, fn)`` once per function; after that a call whose
method is ``key`` runs the function with the call's arguments, decoded and answered
exactly as an actor method's. Keys always hold a ``#``, so no key is a method name of
this class. One task runs at a time (the pool starts workers with ``max_concurrency=1``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


class TaskWorker:
    """Runs task functions by key; a key is made callable by ``load``."""

    def load(self, key: str, fn: Callable[..., Any] | str) -> None:
        """Make ``fn`` (a function, or "module:qualname" to import here) callable as method ``key``."""
        if "#" not in key or key.startswith("_"):
            raise ValueError(f"task key {key!r} must hold a '#' and not start with '_'")
        if isinstance(fn, str):
            fn = _import(fn)
        if not callable(fn):
            raise TypeError(f"task {key!r} is not callable: {type(fn).__name__}")
        # A staticmethod on the class: the dispatcher finds public methods on the class
        # only, and a staticmethod of an async function is run as a coroutine.
        setattr(TaskWorker, key, staticmethod(fn))


def _import(ref: str) -> Callable[..., Any]:
    module, _, qualname = ref.partition(":")
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    fn: Callable[..., Any] = obj
    return fn
