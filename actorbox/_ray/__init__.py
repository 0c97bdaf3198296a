"""actorbox's Ray backend: ``actorbox.Runtime(backend="ray")`` (needs ``pip install 'actorbox[ray]'``)."""

from ._runtime import RayRuntime as RayRuntime

__all__ = ["RayRuntime"]
