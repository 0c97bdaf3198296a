"""Which backend a Runtime runs on: the local one (``_runtime``) or Ray (``_ray``, imported only here,
on demand, so the local backend never imports Ray)."""

from __future__ import annotations

from typing import Any

from ._errors import BackendUnavailableError, UsageError

BACKENDS = ("local", "ray")


def other_backend(backend: object, options: dict[str, Any]) -> Any:
    """The Runtime of a backend other than the local one (``Runtime(backend=...)`` hands off here)."""
    if backend == "ray":
        try:
            import ray  # noqa: F401  (only to say what is missing)
        except ImportError as exc:
            raise BackendUnavailableError(
                f"Runtime(backend='ray') needs Ray, which is not installed here ({exc}); install it with: "
                "pip install 'actorbox[ray]'") from None
        from ._ray import RayRuntime

        return RayRuntime(backend="ray", **options)
    raise UsageError(f"Runtime(backend=...) must be one of {', '.join(map(repr, BACKENDS))}, got {backend!r}")

