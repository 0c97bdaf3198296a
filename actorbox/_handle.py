"""``ActorHandle``: a reference to an actor through which its methods are called.

The handle's attribute namespace belongs to the actor: every public name reaches the
actor's method of that name, whatever it is called (``stop``, ``name``, ``call``...).
So the handle keeps its own state in private slots and its own operations live
elsewhere: ``await rt.stop(handle)`` stops the actor, ``actorbox.info(handle)`` says
which actor it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from ._errors import PrivateMethodError, UsageError
from ._process import process_caller

if TYPE_CHECKING:
    from ._future import Future


class HandleCaller(Protocol):
    """What a handle needs from its process's caller (a ``Caller`` is one)."""

    def call(self, actor_id: int, label: str, method: str, args: tuple[Any, ...],
             kwargs: dict[str, Any], token: bytes = b"") -> Future[Any]: ...


class ActorHandle:
    """Call an actor's public methods: ``await handle.method(*args, **kwargs)``.

    Any public method name reaches the actor (the handle has no public attributes of
    its own); ``actorbox.info(handle)`` gives its id, name and label and
    ``await rt.stop(handle)`` stops it. Every call goes through the host's scheduler.
    Handles can be passed as call arguments and arrive as working handles in the
    receiving process. A handle is a capability: it carries the actor's random
    reference token, and an actor's call is served only with the token, so an actor
    reaches only actors whose handle reached it.
    """

    __slots__ = ("_actor_id", "_caller", "_label", "_methods", "_name", "_token")

    def __init__(self, caller: HandleCaller, actor_id: int, name: str | None, label: str, token: bytes = b"") -> None:
        self._caller = caller
        self._methods: dict[str, _Method] = {}
        self._token = token
        self._actor_id = actor_id
        self._name = name
        self._label = label

    def __repr__(self) -> str:
        return f"<ActorHandle {self._label} id={self._actor_id}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ActorHandle) and other._actor_id == self._actor_id

    def __hash__(self) -> int:
        return hash(("ActorHandle", self._actor_id))

    def __reduce__(self) -> tuple[Any, tuple[int, str | None, str, bytes]]:
        # Pickled host -> actor only (constructor arguments travel cloudpickled): rebuilt
        # there bound to that process's caller, token and all, never with the host's.
        return (_rebuild, (self._actor_id, self._name, self._label, self._token))

    def __getattr__(self, method: str) -> _Method:
        # Reached only for names the slots and dunders above don't have: every public
        # name is the actor's. A private one is refused here, before anything is sent
        # (PrivateMethodError is an AttributeError too, so hasattr() and copy's probes
        # of dunders still work).
        if method.startswith("_"):
            raise PrivateMethodError(
                f"{method!r} is private: only public methods of an actor (names not starting with '_') "
                f"can be called through its handle; make it public in the actor's class to call it",
                actor=self._label, method=method, call_id=None)
        m = self._methods.get(method)
        if m is None:
            m = self._methods[method] = _Method(self, method)
        return m


class _Method:
    """``handle.method``: calling it starts the call and returns its Future."""

    # __name__ and __qualname__ as functions have them: tools that name what they are given
    # (anyio's ``tg.start_soon(handle.method)``) find them instead of failing with
    # AttributeError on the handle.
    __slots__ = ("__name__", "__qualname__", "_handle", "_name")

    def __init__(self, handle: ActorHandle, name: str) -> None:
        self._handle = handle
        self._name = name
        self.__name__ = name
        self.__qualname__ = f"{handle._label}.{name}"

    def __call__(self, *args: Any, **kwargs: Any) -> Future[Any]:
        h = self._handle
        return h._caller.call(h._actor_id, h._label, self._name, args, kwargs, h._token)

    def __repr__(self) -> str:
        return f"<actor method {self._handle._label}.{self._name}>"


@dataclass(frozen=True, slots=True)
class HandleInfo:
    """Which actor a handle reaches: ``actorbox.info(handle)``."""

    actor_id: int  # unique within the Runtime, as in rt.actors() and `ps`
    name: str | None  # the name it was started or registered under, if any
    label: str  # its name, or ClassName#id: how errors, logs and rt.actors() refer to it


def info(handle: ActorHandle) -> HandleInfo:
    """The id, name and label of the actor ``handle`` reaches (in the host or in an actor)."""
    if not isinstance(handle, ActorHandle):
        raise UsageError(f"actorbox.info() takes an actor handle, got {type(handle).__name__}")
    return HandleInfo(handle._actor_id, handle._name, handle._label)


def _rebuild(actor_id: int, name: str | None, label: str, token: bytes) -> ActorHandle:
    return ActorHandle(process_caller.get(), actor_id, name, label, token)
