"""Looking up the method a call names, with the public-only rule of the trust model."""

from __future__ import annotations

import inspect
from typing import Any

from ._errors import MethodNotFoundError, PrivateMethodError


def resolve_method(obj: Any, name: str, label: str, call_id: int | None) -> tuple[Any, bool]:
    """Return ``(bound_method, is_async)`` for a public method defined on ``obj``'s class.

    Instance attributes, properties and anything starting with ``_`` are refused:
    a caller may only reach what the class declares as its interface.
    """
    if name.startswith("_"):
        raise PrivateMethodError(
            f"{label}.{name}() refused: names starting with '_' are private and cannot be called "
            "through a handle; expose a public method instead",
            actor=label, method=name, call_id=call_id)
    attr = inspect.getattr_static(type(obj), name, None)
    if attr is None or not (inspect.isfunction(attr) or isinstance(attr, (staticmethod, classmethod))):
        public = sorted(n for n, v in inspect.getmembers(type(obj), callable) if not n.startswith("_"))
        raise MethodNotFoundError(
            f"{label} has no method {name!r}; its public methods are: {', '.join(public) or '(none)'}",
            actor=label, method=name, call_id=call_id)
    bound = getattr(obj, name)
    return bound, inspect.iscoroutinefunction(bound)
