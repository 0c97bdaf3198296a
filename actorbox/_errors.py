"""The one exception tree of actorbox, rooted at ``ActorboxError``.

Errors carry their context as attributes and build ``__str__`` from them, so a
message always says what happened and what to do. Every error here can cross a
process boundary: the codec sends its ``args`` plus the context attributes.
"""

from __future__ import annotations

import signal as _signal
from typing import Any, ClassVar


class ActorboxError(Exception):
    """Base class of every error raised by actorbox."""

    # Context attributes carried across processes and shown by __str__.
    fields: ClassVar[tuple[str, ...]] = ()

    def __init__(self, message: str = "", **context: Any) -> None:
        super().__init__(message)
        self.message = message
        for name in self.fields:
            setattr(self, name, context.pop(name, None))
        if context:
            raise TypeError(f"unexpected context for {type(self).__name__}: {sorted(context)}")

    def context(self) -> dict[str, Any]:
        return {name: getattr(self, name, None) for name in self.fields}

    def __str__(self) -> str:
        return str(self.message)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.message, self.context()))


def _rebuild(cls: type[ActorboxError], message: str, context: dict[str, Any]) -> ActorboxError:
    return cls(message, **context)


class CallError(ActorboxError):
    """A call could not be completed; ``actor``, ``method`` and ``call_id`` say which."""

    fields: ClassVar[tuple[str, ...]] = ("actor", "method", "call_id")


class ActorDiedError(CallError):
    """The actor's process died while the call was pending (or before it started)."""

    fields = (*CallError.fields, "pid", "exit_code", "signal", "stderr")

    def __str__(self) -> str:
        ec, sig = self.exit_code, self.signal  # type: ignore[attr-defined]
        how = describe_exit(ec if type(ec) is int else None, sig if type(sig) is int else None)
        parts = [f"actor {self.actor!r} (pid {self.pid}) died: {how}"]  # type: ignore[attr-defined]
        if self.method:  # type: ignore[attr-defined]
            parts[0] += f", failing call {self.method}() [call {self.call_id}]"  # type: ignore[attr-defined]
        if self.message:
            parts.append(str(self.message))
        if self.stderr:  # type: ignore[attr-defined]
            parts.append("last lines of its stderr:\n  " + "\n  ".join(str(self.stderr).splitlines()))  # type: ignore[attr-defined]
        else:
            parts.append("it wrote nothing to stderr; set ACTORBOX_DEBUG_RPC=1 to trace its last frames")
        return "\n".join(parts)


def describe_exit(exit_code: int | None, sig: int | None) -> str:
    if sig:
        try:
            name = _signal.Signals(sig).name
        except ValueError:
            name = f"signal {sig}"
        hint = {"SIGSEGV": " (segmentation fault in native code)",
                "SIGKILL": " (killed: out of memory, a limit, or kill -9)",
                "SIGABRT": " (aborted)"}.get(name, "")
        return f"killed by {name}{hint}"
    if exit_code is not None:
        return f"exited with code {exit_code}"
    return "its connection closed"


class ActorStoppedError(CallError):
    """The actor was stopped (or the Runtime closed) before the call could run."""

    def __str__(self) -> str:
        return self.message or (
            f"actor {self.actor!r} is stopped, so {self.method}() cannot run; start a new actor with rt.start()"  # type: ignore[attr-defined]
        )


class ActorStartError(ActorboxError):
    """An actor could not be started: its process failed to launch or its constructor raised."""

    fields: ClassVar[tuple[str, ...]] = ("actor", "cls", "pid", "stderr")

    def __str__(self) -> str:
        s = str(self.message)
        if self.stderr:  # type: ignore[attr-defined]
            s += "\nlast lines of its stderr:\n  " + "\n  ".join(str(self.stderr).splitlines())  # type: ignore[attr-defined]
        return s


class EnvironmentBuildError(ActorStartError):
    """An actor's Python environment could not be built; ``output`` holds uv's output."""

    fields: ClassVar[tuple[str, ...]] = (*ActorStartError.fields, "output")


class InvalidRequirementError(ActorboxError, ValueError):
    """A dependency is not a requirement actorbox installs (a pip option, a bad URL, not PEP 508)."""

    fields = ("actor", "requirement")


class ExtensionError(ActorboxError):
    """An extension folder could not be loaded: its pyproject.toml is missing or invalid."""

    fields = ("path",)


class MethodNotFoundError(CallError, AttributeError):
    """The actor has no public method of that name."""


class PrivateMethodError(MethodNotFoundError):
    """Only public methods are callable; ``_private`` and ``__dunder__`` names are refused."""


class ActorNotFoundError(ActorboxError, LookupError):
    """No actor is registered under that name (yet)."""

    fields = ("name",)


class NameTakenError(ActorboxError, ValueError):
    """Another live actor already uses that name."""

    fields = ("name",)


class RemoteError(ActorboxError):
    """An exception raised in an actor whose type is not rebuilt here.

    That is: a type that is not allow-listed or not importable, a control-flow
    exception (StopIteration, cancellation, anyio's stream signals) and any actorbox
    error an actor sends, so that none passes for one the host raised. ``type_name``
    is the remote type's qualified name (``actorbox.ActorDiedError``),
    ``remote_traceback`` the remote traceback text, ``actor`` and ``method`` the call
    it answered (the host's record, never what the actor wrote).
    """

    fields = ("type_name", "remote_traceback", "actor", "method")

    def __str__(self) -> str:
        who = f" from actor {self.actor!r}" if self.actor else ""  # type: ignore[attr-defined]
        return f"{self.type_name}{who}: {self.message}"  # type: ignore[attr-defined]


class SerializationError(ActorboxError, TypeError):
    """A value could not be encoded or safely decoded."""


class ProtocolError(ActorboxError):
    """A peer broke the wire protocol (bad frame, over-size frame, bad envelope)."""

    fields = ("actor",)


class CallRefusedError(CallError):
    """The scheduler refused the call (for example a per-actor limit was reached)."""


class CallCancelledError(CallError):
    """The call was cancelled (by another awaiter of the same Future, or by ``Future.cancel()``)."""


class SandboxUnavailableError(ActorStartError):
    """The sandbox is required but this machine cannot provide it; the message carries the remedy."""


class DependencyFailedError(CallError):
    """A Future passed as an argument failed, so this call never ran; ``__cause__`` is that failure."""


class ObjectStoreFullError(ActorboxError):
    """``rt.put`` would exceed the object store's capacity; release objects or raise the capacity."""

    fields = ("capacity", "used", "requested")


class ObjectNotFoundError(ActorboxError, LookupError):
    """No object under that id: it was released, or it expired after its retention time."""

    fields = ("object_id",)
