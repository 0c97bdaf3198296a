"""How an exception crosses a process boundary: its fields on the wire, and its rebuilding.

The receiver rebuilds an exception as its own type only where that is safe, and never
lets the sender pass for someone else (see ``rebuild_exception``); an actor's text is
bounded and escaped before anyone displays it. The codec carries the fields as one
extension value (``EXT_EXCEPTION``).
"""

from __future__ import annotations

import builtins
import sys
import traceback
from typing import Any

from sandbox import escape_controls

from . import _errors
from ._errors import SerializationError

_SAFE_BUILTIN_EXCEPTIONS = {
    name: obj
    for name, obj in vars(builtins).items()
    if isinstance(obj, type) and issubclass(obj, Exception)
}
_ACTORBOX_ERRORS = {
    name: obj
    for name, obj in vars(_errors).items()
    if isinstance(obj, type) and issubclass(obj, _errors.ActorboxError)
}
_MAX_TRACEBACK = 64 * 1024
# What of an actor's exception text the receiver keeps (the rest is cut, the cut marked):
# each character is escaped for the terminal, and 50 MB of them stalled the host for seconds.
_MAX_MESSAGE = 64 * 1024
_MAX_TYPE_NAME = 1024


def exception_fields(exc: BaseException) -> list[Any]:
    """What of ``exc`` crosses a process boundary: type, plain args, message, traceback, context."""
    t = type(exc)
    tb = "".join(traceback.format_exception(exc))[-_MAX_TRACEBACK:]
    prior = getattr(exc, "remote_traceback", None)
    if prior:
        tb = prior + "\nThe above remote exception was re-raised here:\n" + tb
    context: dict[str, Any] = {}
    if isinstance(exc, _errors.ActorboxError):
        context = {k: v for k, v in exc.context().items() if _is_plain(v)}
        args: list[Any] = [exc.message]
    else:
        raw = exc.args
        if isinstance(exc, OSError) and len(raw) == 2 and (exc.filename is not None or exc.filename2 is not None):
            # OSError keeps its file names beside args: without them the message loses them.
            raw = (exc.errno, exc.strerror, exc.filename, None, exc.filename2)
        args = [a if _is_plain(a) else repr(a) for a in raw]
    try:
        message = str(exc)
    except Exception:
        message = f"<unprintable {t.__qualname__}>"
    return [t.__module__, t.__qualname__, args, message, tb, context]


def exception_from_fields(fields: Any, trusted: bool) -> BaseException:
    """The exception ``fields`` (from ``exception_fields``, decoded) describe; ``trusted``: the host sent them."""
    if type(fields) is not list or len(fields) != 6:
        raise SerializationError("malformed exception")
    module, qualname, args, message, tb, context = fields
    if not (type(module) is str and type(qualname) is str and type(args) is list
            and type(message) is str and type(tb) is str and type(context) is dict):
        raise SerializationError("malformed exception")
    exc = rebuild_exception(module, qualname, args, message, context, trusted=trusted)
    if not trusted:  # display text an actor chose: no terminal escape sequences in it
        tb = escape_controls(_cut(tb, _MAX_TRACEBACK, tail=True), newlines=True)
    exc.remote_traceback = tb  # type: ignore[attr-defined]  # set on any exception type, builtins too
    if tb:
        exc.add_note("Remote traceback:\n" + tb.rstrip())
    return exc


def _cut(text: str, limit: int, *, tail: bool = False) -> str:
    """``text`` cut to about ``limit`` characters, its head kept (its tail: ``tail``), the cut said."""
    if len(text) <= limit:
        return text
    if tail:
        return f"[{len(text) - limit} characters cut]\n" + text[-limit:]
    return text[:limit] + f"... [{len(text) - limit} characters cut]"


def _is_plain(v: Any) -> bool:
    if v is None or type(v) in (bool, int, float, str, bytes):
        return True
    if type(v) in (list, tuple):
        return all(_is_plain(x) for x in v)
    if type(v) is dict:
        return all(type(k) is str and _is_plain(x) for k, x in v.items())
    return False


def rebuild_exception(module: str, qualname: str, args: list[Any], message: str,
                      context: dict[str, Any], *, trusted: bool = False) -> BaseException:
    """Rebuild a remote exception as its own type where that is safe, else RemoteError.

    Safe means: a builtin ``Exception`` subclass, an actorbox error, or an
    ``Exception`` subclass whose module the receiver has *already* imported --
    nothing is imported and no ``__init__`` of a non-builtin class runs on the
    strength of what a peer sent. And the type must not let the sender pass for
    someone else: control-flow exceptions (``StopIteration``, cancellation, anyio's
    and trio's stream signals) would steer the receiver's own code, so they always
    arrive as RemoteError; actorbox's errors keep their type only when the host sent
    them (``trusted``), since from an actor they would pass for the host's own
    (``ActorDiedError`` naming another actor); ``attribute_error`` restores the few
    an actor may say about the call it answers.
    """
    cls = _exception_type(module, qualname) if len(module) + len(qualname) <= _MAX_TYPE_NAME else None
    foreign = cls is None or _is_control_flow(cls) or (not trusted and issubclass(cls, _errors.ActorboxError))
    if cls is not None and not foreign:
        if module == "builtins":
            try:
                return cls(*args)
            except Exception:
                pass
        elif module == "actorbox._errors":
            fields = set(_ACTORBOX_ERRORS[qualname].fields)
            ctx = {k: v for k, v in context.items() if k in fields}
            try:
                return cls(message if not args else str(args[0]), **ctx)
            except Exception:
                pass
        else:
            try:
                exc = cls.__new__(cls)
                exc.args = tuple(args)
                str(exc)  # a type whose __str__ needs __init__'s attributes can't be rebuilt this way
                return exc
            except Exception:
                pass
    type_name = f"{module}.{qualname}" if module != "builtins" else qualname
    if module == "actorbox._errors":
        type_name = f"actorbox.{qualname}"
    claimed_method = None
    if cls is _errors.RemoteError and type(context.get("type_name")) is str:
        # Passed on from further away: still foreign, still named by its original type.
        type_name = context["type_name"]
    elif cls is not None and issubclass(cls, _errors.ActorboxError) and type(context.get("method")) is str:
        claimed_method = context["method"]  # what attribute_error checks; replaced there by the truth
    if not trusted:  # bounded first: escaping costs up to ~0.5 µs a character, on the host's loop
        type_name = escape_controls(_cut(type_name, _MAX_TYPE_NAME))
        message = escape_controls(_cut(message, _MAX_MESSAGE), newlines=True)
    return _errors.RemoteError(message, type_name=type_name, method=claimed_method)


# What an actor may say about the call it was asked to run, and so keeps its type from
# an actor (restated with the call's true identity): that it has no such method, that
# the method is private, that a value could not be sent.
_VERDICTS: dict[str, type[_errors.MethodNotFoundError]] = {
    "actorbox.MethodNotFoundError": _errors.MethodNotFoundError,
    "actorbox.PrivateMethodError": _errors.PrivateMethodError,
}


def attribute_error(error: BaseException, actor: str, method: str, call_id: int) -> BaseException:
    """The error that answered ``actor``'s call ``method``, attributed to that actor.

    A RemoteError gets the answering actor's label and the call's method (whatever
    the actor claimed). The actor's verdict on this very call (no such method, a
    private name, an unsendable value: ``_VERDICTS``) becomes that actorbox error
    again, with the call's identity, never the one the actor wrote.
    """
    if not isinstance(error, _errors.RemoteError):
        return error
    claimed = error.method
    error.actor, error.method = actor, method
    verdict: _errors.ActorboxError
    if error.type_name == "actorbox.SerializationError":
        verdict = _errors.SerializationError(error.message)
    else:
        cls = _VERDICTS.get(error.type_name or "")
        if cls is None or claimed != method:
            return error
        verdict = cls(error.message, actor=actor, method=method, call_id=call_id)
    verdict.remote_traceback = error.remote_traceback
    for note in getattr(error, "__notes__", ()):
        verdict.add_note(note)
    return verdict


def _exception_type(module: str, qualname: str) -> type[Exception] | None:
    """The Exception subclass a peer names, found without importing anything; None if there is none."""
    if module == "builtins":
        return _SAFE_BUILTIN_EXCEPTIONS.get(qualname)
    if module == "actorbox._errors":
        return _ACTORBOX_ERRORS.get(qualname)
    return _lookup_imported(module, qualname)


# Exceptions by which concurrency libraries steer their callers (end of stream, closed or
# broken resource, would block, cancelled, too slow): raised by a peer they would end a
# loop or a task of the receiver's. Any class defined by these modules, or derived from one.
_CONTROL_FLOW_MODULES = ("anyio", "trio", "asyncio", "concurrent.futures", "sniffio", "outcome")


def _is_control_flow(cls: type[BaseException]) -> bool:
    if issubclass(cls, (StopIteration, StopAsyncIteration)) or not issubclass(cls, Exception):
        return True  # BaseException types (SystemExit, KeyboardInterrupt, GeneratorExit, ...) too
    for base in cls.__mro__:
        mod = getattr(base, "__module__", "") or ""
        if any(mod == m or mod.startswith(m + ".") for m in _CONTROL_FLOW_MODULES):
            return True
    return False


def _lookup_imported(module: str, qualname: str) -> type[Exception] | None:
    mod = sys.modules.get(module)
    if mod is None or "<" in qualname:
        return None
    obj: Any = mod
    for part in qualname.split("."):
        # vars(), not getattr(): no module __getattr__ hook (lazy import) may run.
        try:
            obj = vars(obj).get(part)
        except TypeError:
            return None
        if obj is None:
            return None
    if isinstance(obj, type) and issubclass(obj, Exception):
        return obj
    return None
