"""Tests for scheduler/_envelope.py: wire messages, their encoding and the strict decoder."""

from __future__ import annotations

import dataclasses
import time
import typing
from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from scheduler import envelope
from tests import strategies as s

MESSAGE_TYPES = typing.get_args(envelope.Message)


def _is_int(v: Any) -> bool:
    return type(v) is int


def _is_str_map(v: Any) -> bool:
    return type(v) is dict and all(type(k) is str for k in v)


def _is_name_map(v: Any) -> bool:
    return _is_str_map(v) and all(type(x) is tuple and len(x) == 2 and type(x[0]) is int and type(x[1]) is bytes
                                  for x in v.values())


def assert_valid(msg: Any, fds: tuple[int, ...]) -> None:
    """``msg`` is a message whose fields all have their declared types."""
    t = type(msg)
    assert t in MESSAGE_TYPES, t
    if t is envelope.Call:
        assert _is_int(msg.call_id) and _is_int(msg.target) and type(msg.method) is str
        assert type(msg.payload) is bytes and (msg.parent_call_id is None or _is_int(msg.parent_call_id))
        assert type(msg.trusted) is bool and type(msg.reentrant) is bool and type(msg.token) is bytes
        assert msg.fds == fds
    elif t is envelope.Reply:
        assert _is_int(msg.call_id) and type(msg.status) is envelope.Status and type(msg.payload) is bytes
        assert msg.detail is None or _is_str_map(msg.detail), msg.detail
        assert type(msg.trusted) is bool and msg.fds == fds
    elif t is envelope.Cancel:
        assert _is_int(msg.call_id)
    elif t is envelope.Log:
        assert type(msg.level) is str and type(msg.event) is str and _is_str_map(msg.fields), msg
    elif t is envelope.Init:
        assert _is_int(msg.actor_id) and (msg.name is None or type(msg.name) is str)
        assert type(msg.payload) is bytes and _is_name_map(msg.names), msg
    elif t is envelope.Ready:
        assert _is_int(msg.pid) and (msg.error is None or type(msg.error) is bytes)
    elif t is envelope.Names:
        assert _is_name_map(msg.names), msg
    if t not in (envelope.Call, envelope.Reply):
        assert not fds


def decode_or_refuse(body: bytes, fds: tuple[int, ...] = ()) -> None:
    """decode() either returns a valid message or raises EnvelopeError (anything else fails the test)."""
    try:
        msg = envelope.decode(body, fds)
    except envelope.EnvelopeError:
        return
    assert_valid(msg, fds)


# -- the message types -----------------------------------------------------------------


def test_strategies_cover_every_message_type() -> None:
    """tests/strategies.py has a strategy for every member of envelope.Message."""
    assert set(s.MESSAGES) == set(MESSAGE_TYPES)


@pytest.mark.parametrize("cls", MESSAGE_TYPES, ids=lambda c: c.__name__)
def test_messages_are_frozen_slotted_dataclasses(cls: type) -> None:
    """Every wire message is a frozen dataclass with __slots__ (STYLE rule 9)."""
    assert dataclasses.is_dataclass(cls)
    assert cls.__dataclass_params__.frozen  # type: ignore[attr-defined]
    assert "__slots__" in cls.__dict__


def test_messages_cannot_be_mutated() -> None:
    """Assigning to a field of a message raises FrozenInstanceError."""
    call = envelope.Call(1, 2, "m", b"")
    with pytest.raises(dataclasses.FrozenInstanceError):
        call.method = "other"  # type: ignore[misc]


# -- round trip ------------------------------------------------------------------------


@pytest.mark.parametrize("cls", MESSAGE_TYPES, ids=lambda c: c.__name__)
@given(data=st.data())
def test_round_trip(cls: type, data: st.DataObject) -> None:
    """decode(encode(m), m.fds) == m for every message type, fds included."""
    msg = data.draw(s.MESSAGES[cls])
    fds = getattr(msg, "fds", ())
    out = envelope.decode(envelope.encode(msg), fds)
    assert type(out) is cls
    assert out == msg
    assert getattr(out, "fds", ()) == fds
    if cls is envelope.Reply:
        assert type(out.status) is envelope.Status


def test_encoding_omits_fd_numbers() -> None:
    """Only the fd count goes into the body: the same call with other fd numbers encodes identically."""
    a = envelope.Call(1, 2, "m", b"p", fds=(3, 4))
    b = envelope.Call(1, 2, "m", b"p", fds=(70, 80))
    assert envelope.encode(a) == envelope.encode(b)


# -- strictness ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "fds"),
    [
        pytest.param([envelope.Kind.CALL, 1, 2, "m", b"", None, False, False, 1], (), id="call-claims-missing-fd"),
        pytest.param([envelope.Kind.CALL, 1, 2, "m", b"", None, False, False, 0], (5,), id="call-unclaimed-fd"),
        pytest.param([envelope.Kind.CALL, 1, 2, b"m", b"", None, False, False, 0], (), id="call-method-bytes"),
        pytest.param([envelope.Kind.CALL, 1, 2, "m", "payload", None, False, False, 0], (), id="call-payload-str"),
        pytest.param([envelope.Kind.CALL, 1, 2, "m", b"", 1.5, False, False, 0], (), id="call-parent-float"),
        pytest.param([envelope.Kind.CALL, 1, 2, "m", b"", None, 1, False, 0], (), id="call-trusted-int"),
        pytest.param([envelope.Kind.CALL, True, 2, "m", b"", None, False, False, 0], (), id="call-id-bool"),
        pytest.param([envelope.Kind.CALL, 1, 2, "m", b"", None, False, False], (), id="call-short"),
        pytest.param([envelope.Kind.CALL, 1, 2, "m", b"", None, False, False, [], [], 0, "tok"], (),
                     id="call-token-str"),
        pytest.param([envelope.Kind.CALL, 1, 2, "m", b"", None, False, False, [], [], 0, b"t" * 65], (),
                     id="call-token-long"),
        pytest.param([envelope.Kind.REPLY, 1, 99, b"", None, False, 0], (), id="reply-bad-status"),
        pytest.param([envelope.Kind.REPLY, 1, "OK", b"", None, False, 0], (), id="reply-status-str"),
        pytest.param([envelope.Kind.REPLY, 1, 0, b"", [1], False, 0], (), id="reply-detail-list"),
        pytest.param([envelope.Kind.CANCEL, 1], (3,), id="cancel-with-fd"),
        pytest.param([envelope.Kind.CANCEL, "1"], (), id="cancel-id-str"),
        pytest.param([envelope.Kind.LOG, "info", "e", []], (), id="log-fields-list"),
        pytest.param([envelope.Kind.INIT, 1, 5, b"", {}], (), id="init-name-int"),
        pytest.param([envelope.Kind.READY, 1, "err"], (), id="ready-error-str"),
        pytest.param([envelope.Kind.STOP, 1], (), id="stop-extra"),
        pytest.param([envelope.Kind.NAMES, []], (), id="names-list"),
        pytest.param([0], (), id="kind-0"),
        pytest.param([99], (), id="kind-99"),
        pytest.param([True], (), id="kind-bool"),
        pytest.param(["call"], (), id="kind-str"),
        pytest.param([], (), id="empty"),
        pytest.param({"kind": 1}, (), id="map"),
        pytest.param(7, (), id="int"),
    ],
)
def test_malformed_envelopes_are_refused(fields: Any, fds: tuple[int, ...]) -> None:
    """Wrong arity, wrong field types, unknown kinds and fd mismatches raise EnvelopeError."""
    with pytest.raises(envelope.EnvelopeError):
        envelope.decode(msgpack.packb(fields, use_bin_type=True), fds)


@pytest.mark.parametrize("body", [b"", b"\xc1", b"\x92\x01", b"\x93\x03\x01\x02\x00extra"], ids=repr)
def test_undecodable_bytes_are_refused(body: bytes) -> None:
    """Empty, invalid, truncated or trailing-garbage msgpack raises EnvelopeError."""
    with pytest.raises(envelope.EnvelopeError):
        envelope.decode(body)


def test_envelope_error_is_a_value_error() -> None:
    """EnvelopeError subclasses ValueError, so callers catching ValueError also catch it."""
    assert issubclass(envelope.EnvelopeError, ValueError)


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param([envelope.Kind.LOG, "info", "event", {1: "x"}], id="log-fields-int-key"),
        pytest.param([envelope.Kind.REPLY, 1, 0, b"", {b"k": 1}, False, 0], id="reply-detail-bytes-key"),
        pytest.param([envelope.Kind.NAMES, {"a": "not-an-id"}], id="names-value-str"),
        pytest.param([envelope.Kind.INIT, 1, None, b"", {"a": [1]}], id="init-names-value-list"),
        pytest.param([envelope.Kind.NAMES, {"a": 1}], id="names-value-id-without-token"),
        pytest.param([envelope.Kind.NAMES, {"a": [1, "token"]}], id="names-token-str"),
    ],
)
def test_map_fields_are_type_checked(fields: list[Any]) -> None:
    """Map fields are checked like the rest: non-str keys (and non-int actor ids in name maps) are refused."""
    with pytest.raises(envelope.EnvelopeError):
        envelope.decode(msgpack.packb(fields, use_bin_type=True))


# -- fuzzing ---------------------------------------------------------------------------


@given(body=st.binary(max_size=256), fds=s.fd_tuples)
def test_fuzz_random_bytes(body: bytes, fds: tuple[int, ...]) -> None:
    """Random bytes either decode to a well-typed message or raise EnvelopeError."""
    decode_or_refuse(body, fds)


@given(body=s.mutated_envelopes(), fds=s.fd_tuples)
def test_fuzz_mutated_envelopes(body: bytes, fds: tuple[int, ...]) -> None:
    """Valid envelopes with a field replaced or bytes damaged decode to a well-typed message or raise EnvelopeError."""
    decode_or_refuse(body, fds)


@given(fields=st.lists(s.any_values, max_size=10), kind=st.sampled_from(envelope.Kind), fds=s.fd_tuples)
def test_fuzz_arrays_of_any_kind(fields: list[Any], kind: envelope.Kind, fds: tuple[int, ...]) -> None:
    """A [kind, arbitrary fields...] array decodes to a well-typed message or raises EnvelopeError."""
    decode_or_refuse(msgpack.packb([int(kind), *fields], use_bin_type=True), fds)


def test_deeply_nested_input_is_refused_not_crashed() -> None:
    """A payload nesting arrays 100,000 deep raises EnvelopeError (no RecursionError, no hang)."""
    body = b"\x91" * 100_000 + b"\xc0"
    with pytest.raises(envelope.EnvelopeError):
        envelope.decode(body)


def test_huge_declared_length_is_refused_quickly() -> None:
    """A bin32 header declaring 4 GiB on a short body raises EnvelopeError without allocating it."""
    body = b"\x93\x06\x01\xc6\xff\xff\xff\xff" + b"x" * 8
    with pytest.raises(envelope.EnvelopeError):
        envelope.decode(body)


# -- envelopes from actors: kind first, then bounded (issue 14, finding 5) -------------

_ACTOR_SENDABLE = (envelope.Call, envelope.Reply, envelope.Cancel, envelope.Log, envelope.Ready)


def _array32(*items: bytes) -> bytes:
    """An array with a 32-bit length header, as a hand-written sender may write one."""
    return b"\xdd" + len(items).to_bytes(4, "big") + b"".join(items)


@pytest.mark.parametrize("cls", _ACTOR_SENDABLE, ids=lambda c: c.__name__)
@given(data=st.data())
def test_from_actor_decodes_what_an_actor_sends(cls: type, data: st.DataObject) -> None:
    """Every message an actor may send decodes the same with from_actor=True (LOG fields: scalars, as sent)."""
    msg = data.draw(s.MESSAGES[cls])
    if cls is envelope.Log:
        msg = envelope.Log(msg.level, msg.event, {k: v for k, v in msg.fields.items()
                                             if not isinstance(v, (list, dict, bytes))})
    if cls is envelope.Reply:
        msg = dataclasses.replace(msg, detail=None)
    fds = getattr(msg, "fds", ())
    assert envelope.decode(envelope.encode(msg), fds, from_actor=True) == msg


@pytest.mark.parametrize("kind", [envelope.Kind.INIT, envelope.Kind.STOP, envelope.Kind.NAMES, 0, 9, 99, 127, 2**40])
def test_from_actor_refuses_other_kinds_undecoded(kind: int) -> None:
    """Host-only and unknown kinds are refused from their first bytes: a 30 MiB body of empty maps
    behind them is never decoded."""
    maps = b"\xdd" + (30 << 20).to_bytes(4, "big") + b"\x80" * (30 << 20)
    head = msgpack.packb(kind)
    for body in (bytes([0x92]) + head + maps, _array32(head, maps)):
        t0 = time.perf_counter()
        with pytest.raises(envelope.EnvelopeError, match=r"unknown envelope kind|may not send"):
            envelope.decode(body, from_actor=True)
        assert time.perf_counter() - t0 < 0.05


def test_from_actor_accepts_any_array_header() -> None:
    """An array32 header (not what encode() writes, but valid msgpack) is read like a fixarray."""
    body = _array32(*(msgpack.packb(x) for x in [envelope.Kind.CANCEL, 7]))
    assert envelope.decode(body, from_actor=True) == envelope.Cancel(7)


@pytest.mark.parametrize("value", [b"\x80", b"\x90", b"\xdd" + (1 << 20).to_bytes(4, "big") + b"\x80" * (1 << 20),
                                   b"\xd4\x01\x90", b"\xc4\x01x"], ids=["map", "list", "maps", "ext", "bytes"])
def test_log_fields_from_an_actor_must_be_scalars(value: bytes) -> None:
    """A LOG field holding anything but a scalar is refused at its header, before anything in it is built
    (one over MAX_LOG_BYTES before anything at all is)."""
    head = msgpack.packb(envelope.Kind.LOG) + msgpack.packb("info") + msgpack.packb("e")
    body = b"\x94" + head + b"\x81\xa1x" + value
    with pytest.raises(envelope.EnvelopeError, match=r"LOG field 'x' is not a scalar|LOG envelope of \d+ bytes, over"):
        envelope.decode(body, from_actor=True)


def test_log_fields_from_an_actor_are_bounded() -> None:
    """A LOG event with more fields than MAX_LOG_FIELDS is refused, naming the limit."""
    many = envelope.encode(envelope.Log("info", "e", {f"f{i}": i for i in range(envelope.MAX_LOG_FIELDS + 1)}))
    with pytest.raises(envelope.EnvelopeError, match=rf"over the limit of {envelope.MAX_LOG_FIELDS}"):
        envelope.decode(many, from_actor=True)


def test_containers_in_an_actors_call_are_bounded() -> None:
    """A CALL whose deps hold a tree of small arrays is refused once its arrays hold ACTOR_ENVELOPE_VALUES
    values; no map is accepted in a big CALL or REPLY of an actor (a small one can't amplify)."""
    tree = _array32(*[b"\x9f" + b"\x90" * 15] * 60)  # 60 arrays of 15 empty arrays: 960 containers
    body = _array32(*(msgpack.packb(x) for x in [envelope.Kind.CALL, 1, 2, "m", b"", None, False, False]),
                    _array32(*[tree] * 60), b"\x90", b"\x00", b"\xc4\x00")
    with pytest.raises(envelope.EnvelopeError, match=r"over 4096 values"):
        envelope.decode(body, from_actor=True)
    reply = msgpack.packb([envelope.Kind.REPLY, 1, 0, b"x" * 8192, {"k": 1}, False, 0])
    with pytest.raises(envelope.EnvelopeError, match=r"undecodable envelope"):
        envelope.decode(reply, from_actor=True)
