"""Wire messages between the host and an actor process.

Every message is a frozen, slotted dataclass; on the wire it is a msgpack array
whose first element is the message kind. Payloads are opaque ``bytes`` to this
layer: the scheduler routes envelopes and never decodes what they carry.
msgpack is used because its decoder only ever builds plain data (no code runs,
nothing is imported), which is what the trust model requires of anything an
actor sends.
"""

from __future__ import annotations

import dataclasses
import enum
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgpack


class Kind(enum.IntEnum):
    CALL = 1
    REPLY = 2
    CANCEL = 3
    LOG = 4
    INIT = 5
    READY = 6
    STOP = 7
    NAMES = 8


class Status(enum.IntEnum):
    """Outcome of a call, as carried by a Reply."""

    OK = 0
    ERROR = 1  # payload is an encoded exception raised by the callee
    DIED = 2  # the callee's process died; detail describes how
    CANCELLED = 3  # the call was cancelled before it produced a result
    STOPPED = 4  # the callee was stopped (or never running) when the call was due
    NO_ACTOR = 5  # the target actor id is unknown
    REFUSED = 6  # the scheduler refused the call (limits); detail says why
    DEP_FAILED = 7  # a call this one depended on failed; payload/detail are that call's failure


@dataclass(frozen=True, slots=True)
class Call:
    """Invoke ``method`` on actor ``target``; ``call_id`` is local to the sender's connection."""

    call_id: int
    target: int
    method: str
    payload: bytes
    parent_call_id: int | None = None
    trusted: bool = False  # set by the scheduler only: payload was produced by the host
    # Set by the scheduler only: the call's chain is already running on the target,
    # so the target must run it now even past its max_concurrency (re-entrancy).
    reentrant: bool = False
    # Futures passed as arguments: the caller's local ids of the calls whose results
    # this call needs (set by the caller); the scheduler waits for them and delivers
    # their results in ``resolved`` as (status, payload, trusted, number of fds).
    deps: tuple[int, ...] = ()
    resolved: tuple[tuple[int, bytes, bool, int], ...] = ()
    # The target's reference token, as its handle carries it (set by an actor's caller): the
    # scheduler serves an actor's call only when it matches, so a guessed id reaches nothing.
    token: bytes = b""
    # All descriptors: the call's own first, then each resolved result's, in order.
    fds: tuple[int, ...] = field(default=(), compare=False)


@dataclass(frozen=True, slots=True)
class Reply:
    call_id: int
    status: Status
    payload: bytes = b""
    detail: dict[str, Any] | None = None
    trusted: bool = False  # set by the scheduler only
    fds: tuple[int, ...] = field(default=(), compare=False)


@dataclass(frozen=True, slots=True)
class Cancel:
    call_id: int


@dataclass(frozen=True, slots=True)
class Log:
    """A structured log event from an actor process (forwarded to the host's logger)."""

    level: str
    event: str
    fields: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Init:
    """Host -> actor: who you are and what to construct (payload is host-encoded, trusted)."""

    actor_id: int
    name: str | None
    payload: bytes
    names: dict[str, tuple[int, bytes]]  # as Names


@dataclass(frozen=True, slots=True)
class Ready:
    """Actor -> host: construction finished; ``error`` holds an encoded exception on failure."""

    pid: int
    error: bytes | None = None


@dataclass(frozen=True, slots=True)
class Stop:
    """Host -> actor: finish up and exit."""


@dataclass(frozen=True, slots=True)
class Names:
    """Host -> actor: the current named-actor registry (name -> (actor id, reference token))."""

    names: dict[str, tuple[int, bytes]]


Message = Call | Reply | Cancel | Log | Init | Ready | Stop | Names


def _slot_init(cls: type) -> None:
    """Give a frozen dataclass an ``__init__`` that writes its slots through their
    descriptors: still frozen afterwards, but built in about half the time (a Call
    and a Reply are built several times per call, on both sides)."""
    fields = dataclasses.fields(cls)
    ns: dict[str, Any] = {"__builtins__": {}}
    params, body = [], []
    for f in fields:
        ns[f"_set_{f.name}"] = cls.__dict__[f.name].__set__
        if f.default is not dataclasses.MISSING:
            ns[f"_default_{f.name}"] = f.default
            params.append(f"{f.name}=_default_{f.name}")
        else:
            params.append(f.name)
        body.append(f"    _set_{f.name}(self, {f.name})")
    exec(f"def __init__(self, {', '.join(params)}):\n" + "\n".join(body), ns)  # as dataclasses does
    init = ns["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    setattr(cls, "__init__", init)  # noqa: B010 (mypy forbids assigning a method to a class)


_slot_init(Call)
_slot_init(Reply)


_STATUS = {int(s): s for s in Status}  # Status(x) runs enum machinery; this is one dict lookup


# One Packer per thread (a Packer is not thread-safe; packb builds a new one per call).
_packers = threading.local()


class EnvelopeError(ValueError):
    """Bytes that do not form a valid envelope."""


def encode(msg: Message) -> bytes:
    """Serialize an envelope (without its fds, which travel beside the frame)."""
    # isinstance narrows for mypy and, on these exact (final) types, costs what ``type() is`` does.
    if isinstance(msg, Call):
        fields: list[Any] = [Kind.CALL, msg.call_id, msg.target, msg.method, msg.payload, msg.parent_call_id,
                             msg.trusted, msg.reentrant, list(msg.deps), [list(r) for r in msg.resolved],
                             len(msg.fds), msg.token]
    elif isinstance(msg, Reply):
        fields = [Kind.REPLY, msg.call_id, int(msg.status), msg.payload, msg.detail, msg.trusted, len(msg.fds)]
    elif isinstance(msg, Cancel):
        fields = [Kind.CANCEL, msg.call_id]
    elif isinstance(msg, Log):
        fields = [Kind.LOG, msg.level, msg.event, msg.fields]
    elif isinstance(msg, Init):
        fields = [Kind.INIT, msg.actor_id, msg.name, msg.payload, msg.names]
    elif isinstance(msg, Ready):
        fields = [Kind.READY, msg.pid, msg.error]
    elif isinstance(msg, Stop):
        fields = [Kind.STOP]
    elif isinstance(msg, Names):
        fields = [Kind.NAMES, msg.names]
    else:  # pragma: no cover - programming error
        raise TypeError(f"not an envelope: {msg!r}")
    try:
        packer = _packers.packer
    except AttributeError:
        packer = _packers.packer = msgpack.Packer(use_bin_type=True)
    body: bytes = packer.pack(fields)
    return body


def _check(cond: bool, what: str) -> None:
    if not cond:
        raise EnvelopeError(what)


def _opt_int(v: Any) -> bool:
    return v is None or (type(v) is int)


def decode(body: bytes, fds: list[int] | tuple[int, ...] = (), *, from_actor: bool = False) -> Message:
    """Parse an envelope; raises EnvelopeError on anything malformed.

    Validation is strict on types so that code further on can trust field types
    without re-checking (an actor controls every byte of what it sends).

    ``from_actor``: an actor sent it (the host's side). Its kind is read first and
    nothing else is decoded unless an actor may send that kind; the rest is decoded
    under limits that only a malformed envelope exceeds (``ACTOR_ENVELOPE_VALUES``
    values; no maps but a LOG's fields, which must be scalars), so a frame of empty
    containers or colliding keys costs the host nothing before it is refused.
    """
    if from_actor:
        kind = _kind(body)
        if kind not in _ACTOR_KINDS:
            raise EnvelopeError(f"an actor may not send a {Kind(kind).name} envelope" if kind in _KINDS
                                else f"unknown envelope kind {kind}")
    try:
        if not from_actor or (len(body) <= ACTOR_ENVELOPE_VALUES and kind != Kind.LOG):
            # (An actor's small envelope can't hold more values than it has bytes: nothing to bound.)
            obj = msgpack.unpackb(body, raw=False, use_list=True, strict_map_key=False)
        elif kind == Kind.LOG:
            obj = _read_log(body)
        else:  # a map only in a REPLY's detail, which an actor may not send
            obj = msgpack.unpackb(body, raw=False, use_list=True, strict_map_key=True, max_map_len=0,
                                  max_array_len=64, list_hook=_counter(ACTOR_ENVELOPE_VALUES))
    except EnvelopeError:
        raise
    except Exception as exc:  # msgpack raises several unrelated types on bad input
        raise EnvelopeError(f"undecodable envelope: {type(exc).__name__}: {exc}") from None
    _check(type(obj) is list and len(obj) >= 1 and type(obj[0]) is int, "envelope is not a [kind, ...] array")
    kind = obj[0]
    n = len(obj)
    try:
        if kind == Kind.CALL:
            _check(n == 12, "CALL has 12 fields")
            _, cid, target, method, payload, parent, trusted, reentrant, deps, resolved, nfds, token = obj
            _check(type(cid) is int and type(target) is int and type(method) is str, "CALL field types")
            _check(type(payload) is bytes and _opt_int(parent) and type(trusted) is bool, "CALL field types")
            _check(type(reentrant) is bool and type(token) is bytes and len(token) <= 64, "CALL field types")
            _check(type(deps) is list and type(resolved) is list and nfds == len(fds), "CALL field types")
            if deps or resolved:  # the common call has neither: skip the per-item checks
                _check(len(deps) <= 64 and all(type(d) is int for d in deps), "CALL deps")
                _check(len(resolved) <= 64 and all(_resolved(r) for r in resolved), "CALL resolved results")
                _check(sum(r[3] for r in resolved) <= nfds, "CALL fd count mismatch")
                return Call(cid, target, method, payload, parent, trusted, reentrant, tuple(deps),
                            tuple(tuple(r) for r in resolved), token, tuple(fds))
            return Call(cid, target, method, payload, parent, trusted, reentrant, (), (), token, tuple(fds))
        if kind == Kind.REPLY:
            _check(n == 7, "REPLY has 7 fields")
            _, cid, status, payload, detail, trusted, nfds = obj
            _check(type(cid) is int and type(payload) is bytes and type(trusted) is bool, "REPLY field types")
            _check(detail is None or _str_keys(detail), "REPLY detail must be a map with string keys")
            _check(nfds == len(fds), "REPLY fd count mismatch")
            st = _STATUS.get(status) if type(status) is int else None
            if st is None:
                raise EnvelopeError(f"REPLY status {status!r} is not a Status")
            return Reply(cid, st, payload, detail, trusted, tuple(fds))
        _check(not fds, "only CALL and REPLY carry file descriptors")
        if kind == Kind.CANCEL:
            _check(n == 2 and type(obj[1]) is int, "CANCEL field types")
            return Cancel(obj[1])
        if kind == Kind.LOG:
            _check(n == 4 and type(obj[1]) is str and type(obj[2]) is str and _str_keys(obj[3]), "LOG field types")
            return Log(obj[1], obj[2], obj[3])
        if kind == Kind.INIT:
            _check(n == 5 and type(obj[1]) is int and _opt_str(obj[2]) and type(obj[3]) is bytes, "INIT field types")
            _check(_names(obj[4]), "INIT names must map names to [actor id, token]")
            return Init(obj[1], obj[2], obj[3], _name_table(obj[4]))
        if kind == Kind.READY:
            _check(n == 3 and type(obj[1]) is int and (obj[2] is None or type(obj[2]) is bytes), "READY field types")
            return Ready(obj[1], obj[2])
        if kind == Kind.STOP:
            _check(n == 1, "STOP has no fields")
            return Stop()
        if kind == Kind.NAMES:
            _check(n == 2 and _names(obj[1]), "NAMES must map names to [actor id, token]")
            return Names(_name_table(obj[1]))
    except (ValueError, TypeError) as exc:  # EnvelopeError, a bad Status value, unhashable keys
        raise EnvelopeError(str(exc)) from None
    raise EnvelopeError(f"unknown envelope kind {kind}")


# What an actor's envelope may decode to, besides its payload's bytes: a CALL with
# 64 Future arguments is ~400 values; a LOG's fields are each one key and one scalar.
ACTOR_ENVELOPE_VALUES = 4096
MAX_LOG_FIELDS = 1024
# A LOG event from an actor: each of its strings (level, event, keys, values) at most
# MAX_LOG_TEXT characters, the whole envelope at most MAX_LOG_BYTES, so what the host
# escapes and prints for one event stays small (escaping control characters costs up to
# ~0.5 µs each: a 50 MB field stalled the host's loop for seconds). An actor's forwarder
# trims its events to fit (``log_event``); the host refuses one that does not.
MAX_LOG_TEXT = 1024
MAX_LOG_BYTES = 64 * 1024
_ACTOR_KINDS = frozenset({Kind.CALL, Kind.REPLY, Kind.CANCEL, Kind.LOG, Kind.READY})
_KINDS = frozenset(int(k) for k in Kind)
_SCALARS = frozenset((bool, int, float, str))  # what an actor's log forwarder sends (others as repr)
_NOT_SCALAR = object()


def _kind(body: bytes) -> int:
    """The kind of an envelope, read from its first bytes; nothing else is decoded."""
    if len(body) >= 2 and 0x91 <= body[0] <= 0x9F and body[1] < 0x80:  # fixarray, fixint: what encode() writes
        return body[1]
    # Any other header form (an array16/32, a wider int): read just those two items,
    # with every container, string and extension length capped at zero.
    u = msgpack.Unpacker(max_buffer_size=16, max_str_len=0, max_bin_len=0, max_array_len=0, max_map_len=0,
                         max_ext_len=0)
    try:
        u.feed(body[:16])
        kind = u.unpack() if u.read_array_header() >= 1 else None
    except Exception as exc:  # not msgpack, or not an array, or a first item that is no small int
        raise EnvelopeError(f"undecodable envelope: {type(exc).__name__}: {exc}") from None
    if type(kind) is not int:
        raise EnvelopeError("envelope is not a [kind, ...] array")
    return kind


def _counter(limit: int) -> Callable[[list[Any]], list[Any]]:
    """A list hook for msgpack that refuses the envelope once its arrays hold ``limit`` values."""
    left = limit

    def count(value: list[Any]) -> list[Any]:
        nonlocal left
        left -= len(value) + 1
        if left < 0:
            raise EnvelopeError(f"envelope holds over {limit} values; refused")
        return value

    return count


def _read_log(body: bytes) -> list[Any]:
    """An actor's LOG envelope, item by item: its fields are scalars, so any container
    in them is refused at its header, before anything in it is built; so is a string
    over MAX_LOG_TEXT characters' worth of bytes, and an envelope over MAX_LOG_BYTES."""
    _check(len(body) <= MAX_LOG_BYTES, f"LOG envelope of {len(body)} bytes, over the limit of {MAX_LOG_BYTES}")
    u = msgpack.Unpacker(raw=False, max_buffer_size=max(len(body), 1), max_array_len=0, max_map_len=0,
                         max_ext_len=0, max_bin_len=0, max_str_len=4 * MAX_LOG_TEXT)
    u.feed(body)
    _check(u.read_array_header() == 4, "LOG has 4 fields")
    obj: list[Any] = [u.unpack(), _log_item(u, "level"), _log_item(u, "event")]
    _check(type(obj[1]) is str and type(obj[2]) is str, "LOG field types")
    n = u.read_map_header()
    _check(n <= MAX_LOG_FIELDS, f"LOG event has {n} fields, over the limit of {MAX_LOG_FIELDS}")
    fields: dict[str, Any] = {}
    for _ in range(n):
        key = _log_item(u, "field name")
        _check(type(key) is str, "LOG fields must be a map with string keys")
        fields[key] = _log_item(u, f"field {key[:64]!r}")
    _check(u.tell() == len(body), "LOG envelope has trailing bytes")
    obj.append(fields)
    return obj


def _log_item(u: msgpack.Unpacker, what: str) -> Any:
    try:
        value = u.unpack()
    except ValueError:  # a container, extension value or long string over its cap: not read further
        value = _NOT_SCALAR
    _check(value is None or (type(value) in _SCALARS and (type(value) is not str or len(value) <= MAX_LOG_TEXT)),
           f"LOG {what} is not a scalar of at most {MAX_LOG_TEXT} characters (what an actor's logger sends); "
           "refused undecoded")
    return value


def log_event(level: str, event: str, fields: dict[str, Any]) -> Log:
    """A LOG envelope the host accepts, made of an actor's event (scalar ``fields``; others
    already as their repr): strings over MAX_LOG_TEXT characters are cut, the cut marked;
    fields past MAX_LOG_FIELDS or the envelope's MAX_LOG_BYTES are dropped and counted in a
    ``log_fields_cut`` field. An honest actor's event is so shortened, never refused."""
    budget = MAX_LOG_BYTES - 2 * (4 * MAX_LOG_TEXT + 3) - 64  # what level, event and headers may take
    out: dict[str, Any] = {}
    cut = 0
    for k, v in fields.items():
        key = _log_text(k)
        if type(v) is str:
            v = _log_text(v)
        size = _utf8_len(key) + 3 + (_utf8_len(v) + 3 if type(v) is str else 9)
        if size > budget or len(out) >= MAX_LOG_FIELDS - 1:
            cut += 1
            continue
        budget -= size
        out[key] = v
    if cut:
        out["log_fields_cut"] = cut
    return Log(_log_text(level), _log_text(event), out)


def _log_text(s: str) -> str:
    if len(s) <= MAX_LOG_TEXT:
        return s
    mark = f"...[{len(s)} characters, cut]"
    return s[: MAX_LOG_TEXT - len(mark)] + mark


def _utf8_len(s: str) -> int:
    return len(s) if s.isascii() else len(s.encode("utf-8", "surrogatepass"))


def _resolved(r: Any) -> bool:
    return (type(r) is list and len(r) == 4 and type(r[0]) is int and type(r[1]) is bytes
            and type(r[2]) is bool and type(r[3]) is int and 0 <= r[3] <= 64)


def _str_keys(v: Any) -> bool:
    return type(v) is dict and all(type(k) is str for k in v)


def _names(v: Any) -> bool:
    return _str_keys(v) and all(type(x) is list and len(x) == 2 and type(x[0]) is int and type(x[1]) is bytes
                                for x in v.values())


def _name_table(v: dict[str, list[Any]]) -> dict[str, tuple[int, bytes]]:
    return {k: (x[0], x[1]) for k, x in v.items()}


def _opt_str(v: Any) -> bool:
    return v is None or type(v) is str
