"""The one exception tree of actorbox, rooted at ``ActorboxError``.

Errors carry their context as typed attributes and build ``__str__`` from them, so
a message always says what happened and what to do. Every error here can cross a
process boundary: the codec sends its ``message`` plus ``context()``, and the
receiver rebuilds it as ``cls(message, **context)``. So each class's ``fields``
name exactly the keyword-only parameters of its ``__init__`` (a test checks it).
"""

from __future__ import annotations

import signal as _signal
from typing import Any, ClassVar

from sandbox import PolicyError as _SandboxPolicyError


class ActorboxError(Exception):
    """Base class of every error raised by actorbox."""

    # Context attributes carried across processes and shown by __str__; each is a
    # keyword-only parameter of the class's __init__.
    fields: ClassVar[tuple[str, ...]] = ()
    # The traceback text of the process that raised it, when the codec rebuilt it here.
    remote_traceback: str | None = None

    def __init__(self, message: str = "") -> None:
        super().__init__(message)
        self.message = message

    def context(self) -> dict[str, Any]:
        """The context attributes by name, as sent across a process boundary."""
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

    def __init__(self, message: str = "", *, actor: str | None = None, method: str | None = None,
                 call_id: int | None = None) -> None:
        super().__init__(message)
        self.actor = actor
        self.method = method
        self.call_id = call_id


class ActorDiedError(CallError):
    """The actor's process died while the call was pending (or before it started)."""

    fields = (*CallError.fields, "pid", "exit_code", "signal", "stderr")

    def __init__(self, message: str = "", *, actor: str | None = None, method: str | None = None,
                 call_id: int | None = None, pid: int | None = None, exit_code: int | None = None,
                 signal: int | None = None, stderr: str | None = None) -> None:
        super().__init__(message, actor=actor, method=method, call_id=call_id)
        self.pid = pid
        self.exit_code = exit_code
        self.signal = signal
        self.stderr = stderr

    def __str__(self) -> str:
        # The fields come from the scheduler's record: checked anyway, so __str__ never raises.
        ec, sig = self.exit_code, self.signal
        how = describe_exit(ec if type(ec) is int else None, sig if type(sig) is int else None)
        parts = [f"actor {self.actor!r} (pid {self.pid}) died: {how}"]
        if self.method:
            parts[0] += f", failing call {self.method}() [call {self.call_id}]"
        if self.message:
            parts.append(str(self.message))
        if self.stderr:
            parts.append("last lines of its stderr:\n  " + "\n  ".join(str(self.stderr).splitlines()))
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
            f"actor {self.actor!r} is stopped, so {self.method}() cannot run; start a new actor with rt.start()"
        )


class ActorStartError(ActorboxError):
    """An actor could not be started: its process failed to launch or its constructor raised."""

    fields: ClassVar[tuple[str, ...]] = ("actor", "cls", "pid", "stderr")

    def __init__(self, message: str = "", *, actor: str | None = None, cls: str | None = None,
                 pid: int | None = None, stderr: str | None = None) -> None:
        super().__init__(message)
        self.actor = actor
        self.cls = cls
        self.pid = pid
        self.stderr = stderr

    def __str__(self) -> str:
        s = str(self.message)
        if self.stderr:
            s += "\nlast lines of its stderr:\n  " + "\n  ".join(str(self.stderr).splitlines())
        return s


class EnvironmentBuildError(ActorStartError):
    """An actor's Python environment could not be built; ``output`` holds uv's output."""

    fields: ClassVar[tuple[str, ...]] = (*ActorStartError.fields, "output")

    def __init__(self, message: str = "", *, actor: str | None = None, cls: str | None = None,
                 pid: int | None = None, stderr: str | None = None, output: str | None = None) -> None:
        super().__init__(message, actor=actor, cls=cls, pid=pid, stderr=stderr)
        self.output = output


class InvalidRequirementError(ActorboxError, ValueError):
    """A dependency is not a requirement actorbox installs (a pip option, a bad URL, not PEP 508)."""

    fields = ("actor", "requirement")

    def __init__(self, message: str = "", *, actor: str | None = None, requirement: str | None = None) -> None:
        super().__init__(message)
        self.actor = actor
        self.requirement = requirement


class InvalidPreloadError(ActorboxError, ValueError):
    """An actor's ``preload`` option is not a list of module names (dotted identifiers)."""

    fields = ("actor", "module")

    def __init__(self, message: str = "", *, actor: str | None = None, module: str | None = None) -> None:
        super().__init__(message)
        self.actor = actor
        self.module = module


class ExtensionError(ActorboxError):
    """An extension folder could not be loaded: its pyproject.toml is missing or invalid."""

    fields = ("path",)

    def __init__(self, message: str = "", *, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


class PolicyError(ActorboxError, _SandboxPolicyError):
    """A sandbox policy asks for something that would break the sandbox (also a ``ValueError``).

    ``actorbox.SandboxPolicy(...)`` raises it; it is also the ``sandbox`` package's
    ``PolicyError``, so code catching either (or ``ValueError``) sees it.
    """


class MethodNotFoundError(CallError, AttributeError):
    """The actor has no public method of that name."""


class PrivateMethodError(MethodNotFoundError):
    """Only public methods are callable; ``_private`` and ``__dunder__`` names are refused."""


class ActorNotFoundError(ActorboxError, LookupError):
    """No actor is registered under that name (yet)."""

    fields = ("name",)

    def __init__(self, message: str = "", *, name: str | None = None) -> None:
        super().__init__(message)
        self.name = name


class NameTakenError(ActorboxError, ValueError):
    """Another live actor already uses that name."""

    fields = ("name",)

    def __init__(self, message: str = "", *, name: str | None = None) -> None:
        super().__init__(message)
        self.name = name


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

    def __init__(self, message: str = "", *, type_name: str | None = None, remote_traceback: str | None = None,
                 actor: str | None = None, method: str | None = None) -> None:
        super().__init__(message)
        self.type_name = type_name
        self.remote_traceback = remote_traceback
        self.actor = actor
        self.method = method

    def __str__(self) -> str:
        who = f" from actor {self.actor!r}" if self.actor else ""
        return f"{self.type_name}{who}: {self.message}"


class SerializationError(ActorboxError, TypeError):
    """A value could not be encoded or safely decoded."""


class UsageError(ActorboxError, TypeError, ValueError):
    """actorbox's API was given something it does not take (a wrong type or value).

    Also a ``TypeError`` and a ``ValueError``: what Python code would raise for the same
    mistake, so ``except ValueError`` around a setting keeps working."""


class ProtocolError(ActorboxError):
    """A peer broke the wire protocol (bad frame, over-size frame, bad envelope)."""

    fields = ("actor",)

    def __init__(self, message: str = "", *, actor: str | None = None) -> None:
        super().__init__(message)
        self.actor = actor


class CallRefusedError(CallError):
    """The scheduler refused the call (for example a per-actor limit was reached)."""


class CallTimeoutError(CallError, TimeoutError):
    """``Future.result(timeout)`` gave up waiting; the call itself goes on (cancel it with
    ``future.cancel()``). Also a ``TimeoutError``."""


class CallCancelledError(CallError):
    """The call was cancelled (by another awaiter of the same Future, or by ``Future.cancel()``)."""


class SandboxUnavailableError(ActorStartError):
    """The sandbox is required but this machine cannot provide it; the message carries the remedy."""


class DependencyFailedError(CallError):
    """A Future passed as an argument failed, so this call never ran; ``__cause__`` is that failure."""


class ObjectStoreFullError(ActorboxError):
    """``rt.put`` would exceed the object store's capacity; release objects or raise the capacity."""

    fields = ("capacity", "used", "requested")

    def __init__(self, message: str = "", *, capacity: int | None = None, used: int | None = None,
                 requested: int | None = None) -> None:
        super().__init__(message)
        self.capacity = capacity
        self.used = used
        self.requested = requested


class ObjectNotFoundError(ActorboxError, LookupError):
    """No object under that id: it was released, or it expired after its retention time."""

    fields = ("object_id",)

    def __init__(self, message: str = "", *, object_id: str | None = None) -> None:
        super().__init__(message)
        self.object_id = object_id


class PendingCallsLimitError(CallRefusedError):
    """Refused at once: the actor already has ``limit`` unfinished calls (``@actor(max_pending_calls=)``).

    Nothing was sent; await some of the calls in flight (or raise the limit) and call again."""

    fields = (*CallError.fields, "limit")

    def __init__(self, message: str = "", *, actor: str | None = None, method: str | None = None,
                 call_id: int | None = None, limit: int | None = None) -> None:
        super().__init__(message, actor=actor, method=method, call_id=call_id)
        self.limit = limit


class DeadlockError(CallError):
    """The call would have closed a cycle of calls waiting on each other, none able to go on;
    the message names every actor, method and call id in the cycle. Only this call fails."""


class InfeasibleResourcesError(ActorboxError, ValueError):
    """A task or actor asks for more of a resource than the Runtime has in all (it could never
    start): ``resource`` (``"CPU"``, ``"GPU"`` or a custom name), ``requested``, ``available``."""

    fields = ("resource", "requested", "available")

    def __init__(self, message: str = "", *, resource: str | None = None, requested: float | None = None,
                 available: float | None = None) -> None:
        super().__init__(message)
        self.resource = resource
        self.requested = requested
        self.available = available


class TaskFailedError(ActorDiedError):
    """A task's worker died on every attempt (``max_retries`` + 1 of them): ``causes`` holds
    each attempt's ActorDiedError message, oldest first; the other fields are the last one's."""

    fields = (*ActorDiedError.fields, "causes")

    def __init__(self, message: str = "", *, actor: str | None = None, method: str | None = None,
                 call_id: int | None = None, pid: int | None = None, exit_code: int | None = None,
                 signal: int | None = None, stderr: str | None = None,
                 causes: list[str] | tuple[str, ...] | None = None) -> None:
        super().__init__(message, actor=actor, method=method, call_id=call_id, pid=pid, exit_code=exit_code,
                         signal=signal, stderr=stderr)
        self.causes = causes  # as given: each attempt's cause, oldest first

    def __str__(self) -> str:
        tries = "\n".join(f"  attempt {i}: {c}" for i, c in enumerate(self.causes or (), 1))
        return f"task {self.method}() failed: {self.message}" + (f"\n{tries}" if tries else "")


class BackendUnavailableError(UsageError, ImportError):
    """``Runtime(backend=...)`` names a backend whose package is not installed (the message says
    which, and the ``pip install`` that adds it)."""
