"""``ActorHandle``: a reference to an actor through which its methods are called."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from ._errors import PrivateMethodError
from ._process import process_caller

if TYPE_CHECKING:
    from ._future import Future


class HandleCaller(Protocol):
    """What a handle needs from its process's caller (a ``Caller`` is one)."""

    def call(self, actor_id: int, label: str, method: str, args: tuple[Any, ...],
             kwargs: dict[str, Any], token: bytes = b"") -> Future[Any]: ...

    async def stop_actor(self, actor_id: int) -> None: ...


class ActorHandle:
    """Call an actor's public methods: ``await handle.method(*args, **kwargs)``.

    Every call goes through the host's scheduler. Handles can be passed as call
    arguments and arrive as working handles in the receiving process. A handle is a
    capability: it carries the actor's random reference token, and an actor's call is
    served only with the token, so an actor reaches only actors whose handle reached it.
    """

    __slots__ = ("_caller", "_methods", "_token", "actor_id", "label", "name")

    def __init__(self, caller: HandleCaller, actor_id: int, name: str | None, label: str, token: bytes = b"") -> None:
        self._caller = caller
        self._methods: dict[str, _Method] = {}
        self._token = token
        self.actor_id = actor_id
        self.name = name
        self.label = label

    def __repr__(self) -> str:
        return f"<ActorHandle {self.label} id={self.actor_id}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ActorHandle) and other.actor_id == self.actor_id

    def __hash__(self) -> int:
        return hash(("ActorHandle", self.actor_id))

    def __reduce__(self) -> tuple[Any, tuple[int, str | None, str, bytes]]:
        # Pickled host -> actor only (constructor arguments travel cloudpickled): rebuilt
        # there bound to that process's caller, token and all, never with the host's.
        return (_rebuild, (self.actor_id, self.name, self.label, self._token))

    def __getattr__(self, method: str) -> _Method:
        if method.startswith("_"):
            raise AttributeError(method)
        m = self._methods.get(method)
        if m is None:
            m = self._methods[method] = _Method(self, method)
        return m

    def call(self, method: str, /, *args: Any, **kwargs: Any) -> Future[Any]:
        """Call ``method`` by name (for methods whose names the handle itself uses, like ``stop``)."""
        if method.startswith("_"):
            raise PrivateMethodError(
                f"{method!r} is private: only public methods of an actor can be called",
                actor=self.label, method=method, call_id=None)
        return self._caller.call(self.actor_id, self.label, method, args, kwargs, self._token)

    async def stop(self) -> None:
        """Stop the actor (idempotent): graceful first, killed after the grace period."""
        await self._caller.stop_actor(self.actor_id)


class _Method:
    """``handle.method``: calling it starts the call and returns its Future."""

    # __name__ and __qualname__ as functions have them: tools that name what they are given
    # (anyio's ``tg.start_soon(handle.method)``, which then says that a Future is no coroutine)
    # find them instead of failing with AttributeError on the handle.
    __slots__ = ("__name__", "__qualname__", "_handle", "_name")

    def __init__(self, handle: ActorHandle, name: str) -> None:
        self._handle = handle
        self._name = name
        self.__name__ = name
        self.__qualname__ = f"{handle.label}.{name}"

    def __call__(self, *args: Any, **kwargs: Any) -> Future[Any]:
        h = self._handle
        return h._caller.call(h.actor_id, h.label, self._name, args, kwargs, h._token)

    def __repr__(self) -> str:
        return f"<actor method {self._handle.label}.{self._name}>"


def _rebuild(actor_id: int, name: str | None, label: str, token: bytes) -> ActorHandle:
    return ActorHandle(process_caller.get(), actor_id, name, label, token)
