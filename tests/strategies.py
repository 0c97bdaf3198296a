"""Shared hypothesis strategies: wire envelopes and codec payload values."""

from __future__ import annotations

import itertools
import struct
from typing import Any

import msgpack
from hypothesis import strategies as st

from scheduler import envelope

# -- plain msgpack data --------------------------------------------------------------

# msgpack integers span int64 and uint64.
msgpack_ints = st.integers(min_value=-(2**63), max_value=2**64 - 1)
small_ints = st.integers(min_value=-(2**31), max_value=2**31)

_plain_leaves = (
    st.none()
    | st.booleans()
    | msgpack_ints
    | st.floats(allow_nan=False)  # NaN != NaN would make equality checks meaningless
    | st.text(max_size=20)
    | st.binary(max_size=20)
)

# Values that survive a plain msgpack round trip unchanged (lists, str-keyed maps).
plain_values: st.SearchStrategy[Any] = st.recursive(
    _plain_leaves,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
str_maps = st.dictionaries(st.text(max_size=10), plain_values, max_size=4)

# Any msgpack data, including maps keyed by something other than str (a peer may send those).
_any_keys = st.none() | st.booleans() | msgpack_ints | st.floats(allow_nan=False) | st.text(max_size=5) | st.binary(
    max_size=5)
any_values: st.SearchStrategy[Any] = st.recursive(
    _plain_leaves,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(_any_keys, children, max_size=4),
    max_leaves=12,
)

# -- envelopes -------------------------------------------------------------------------

fd_tuples = st.lists(st.integers(min_value=0, max_value=1 << 20), max_size=4).map(tuple)

calls = st.builds(
    envelope.Call,
    call_id=msgpack_ints,
    target=msgpack_ints,
    method=st.text(max_size=30),
    payload=st.binary(max_size=64),
    parent_call_id=st.none() | msgpack_ints,
    trusted=st.booleans(),
    reentrant=st.booleans(),
    deps=st.lists(msgpack_ints, max_size=3).map(tuple),
    resolved=st.lists(st.tuples(st.integers(0, 7), st.binary(max_size=16), st.booleans(), st.just(0)),
                      max_size=2).map(tuple),
    token=st.binary(max_size=32),
    fds=fd_tuples,
)
replies = st.builds(
    envelope.Reply,
    call_id=msgpack_ints,
    status=st.sampled_from(envelope.Status),
    payload=st.binary(max_size=64),
    detail=st.none() | str_maps,
    trusted=st.booleans(),
    fds=fd_tuples,
)
cancels = st.builds(envelope.Cancel, call_id=msgpack_ints)
logs = st.builds(envelope.Log, level=st.text(max_size=10), event=st.text(max_size=30), fields=str_maps)
name_maps = st.dictionaries(st.text(max_size=10), st.tuples(msgpack_ints, st.binary(max_size=16)), max_size=4)
inits = st.builds(
    envelope.Init,
    actor_id=msgpack_ints,
    name=st.none() | st.text(max_size=10),
    payload=st.binary(max_size=64),
    names=name_maps,
)
readies = st.builds(envelope.Ready, pid=msgpack_ints, error=st.none() | st.binary(max_size=64))
stops = st.just(envelope.Stop())
names_msgs = st.builds(envelope.Names, names=name_maps)

# One strategy per message type; tests check that this covers every type in envelope.Message.
MESSAGES: dict[type, st.SearchStrategy[Any]] = {
    envelope.Call: calls,
    envelope.Reply: replies,
    envelope.Cancel: cancels,
    envelope.Log: logs,
    envelope.Init: inits,
    envelope.Ready: readies,
    envelope.Stop: stops,
    envelope.Names: names_msgs,
}
messages: st.SearchStrategy[Any] = st.one_of(*MESSAGES.values())


@st.composite
def mutated_envelopes(draw: st.DrawFn) -> bytes:
    """A valid envelope with one field replaced by arbitrary data, or its bytes damaged."""
    msg = draw(messages)
    body = envelope.encode(msg)
    how = draw(st.sampled_from(["field", "map-entry", "append", "drop", "truncate", "flip", "splice"]))
    if how in ("field", "map-entry", "append", "drop"):
        fields = msgpack.unpackb(body, raw=False, strict_map_key=False)
        maps = [f for f in fields if type(f) is dict]
        if how == "map-entry" and maps:
            draw(st.sampled_from(maps))[draw(_any_keys)] = draw(any_values)
        elif how in ("field", "map-entry"):
            # Keep the kind most of the time so the per-kind validation is what gets exercised.
            for i in draw(st.sets(st.integers(0, len(fields) - 1), min_size=1, max_size=2)):
                fields[i] = draw(any_values)
        elif how == "append":
            fields.append(draw(any_values))
        else:
            del fields[draw(st.integers(0, len(fields) - 1))]
        return msgpack.packb(fields, use_bin_type=True)  # type: ignore[no-any-return]
    if how == "truncate":
        return body[: draw(st.integers(0, max(len(body) - 1, 0)))]
    if how == "flip":
        data = bytearray(body)
        for _ in range(draw(st.integers(1, 4))):
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        return bytes(data)
    at = draw(st.integers(0, len(body)))
    return body[:at] + draw(st.binary(min_size=1, max_size=16)) + body[at:]


# -- codec payload values --------------------------------------------------------------

_hashable_leaves = (
    st.none()
    | st.booleans()
    | st.integers()  # unbounded: big ints travel as an extension type
    | st.floats(allow_nan=False)
    | st.complex_numbers(allow_nan=False)
    | st.text(max_size=20)
    | st.binary(max_size=20)
)
hashable_values: st.SearchStrategy[Any] = st.recursive(
    _hashable_leaves,
    lambda children: st.lists(children, max_size=3).map(tuple) | st.frozensets(children, max_size=3),
    max_leaves=8,
)
codec_values: st.SearchStrategy[Any] = st.recursive(
    _hashable_leaves,
    lambda children: (
        st.lists(children, max_size=4)
        | st.lists(children, max_size=4).map(tuple)
        | st.dictionaries(hashable_values, children, max_size=4)
        | st.sets(hashable_values, max_size=4)
        | st.frozensets(hashable_values, max_size=4)
    ),
    max_leaves=16,
)


def same(a: Any, b: Any) -> bool:
    """Equal *and* of the same types all the way down (1 == 1.0 == True is not enough)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, (set, frozenset)):
        if a != b:
            return False
        by_value = {y: y for y in b}
        return all(same(x, by_value[x]) for x in a)
    if isinstance(a, dict):
        if a.keys() != b.keys():
            return False
        keys_b = {k: k for k in b}
        return all(same(k, keys_b[k]) and same(v, b[k]) for k, v in a.items())
    return a == b  # type: ignore[no-any-return]


# -- hostile input: frames and payloads as an attacker writes them ---------------------
#
# The fuzz suite (tests/security/test_fuzz_frames.py, benchmarks/chaos_soak.py) feeds
# these to the host's and the actor's decoders. A frame is drawn as (wire bytes, number
# of descriptors sent with it); the header may lie about either.

_HEADER = struct.Struct("<II")


def frame(body: bytes, nfds: int = 0) -> bytes:
    """A frame as it goes on the wire: the header (body length, fd count) then the body."""
    return _HEADER.pack(len(body), nfds) + body


@st.composite
def envelope_bodies(draw: st.DrawFn) -> tuple[bytes, int]:
    """An envelope body and the descriptors it claims: valid, damaged, or any bytes."""
    how = draw(st.sampled_from(["valid", "mutated", "mutated", "bytes", "msgpack"]))
    if how == "valid":
        msg = draw(messages)
        return envelope.encode(msg), len(getattr(msg, "fds", ()))
    if how == "mutated":
        return draw(mutated_envelopes()), draw(st.integers(0, 3))
    if how == "bytes":
        return draw(st.binary(max_size=96)), draw(st.integers(0, 2))
    return msgpack.packb(draw(any_values), use_bin_type=True), 0


@st.composite
def hostile_frames(draw: st.DrawFn) -> tuple[bytes, int]:
    """One frame as a hostile peer writes it: (bytes, descriptors attached). The header's
    length or fd count may lie, and the number of descriptors really sent may differ."""
    body, claimed = draw(envelope_bodies())
    how = draw(st.sampled_from(["honest", "honest", "honest", "fd-lie", "length-lie", "huge-header"]))
    if how == "honest":
        return frame(body, claimed), claimed
    if how == "fd-lie":
        return frame(body, draw(st.integers(0, 80))), draw(st.integers(0, 4))
    if how == "length-lie":
        return _HEADER.pack(draw(st.integers(0, len(body) + 16)), claimed) + body, claimed
    return _HEADER.pack(draw(st.integers(0, 2**32 - 1)), draw(st.integers(0, 2**32 - 1))) + body, claimed


@st.composite
def frame_streams(draw: st.DrawFn) -> list[tuple[bytes, int]]:
    """Several hostile frames cut into reads at arbitrary points: [(bytes read, fds with them)].

    Each frame's descriptors ride on the read that holds its first byte (what the kernel
    does), or, now and then, on some other read (a peer calling sendmsg at odd places).
    """
    frames = draw(st.lists(hostile_frames(), min_size=1, max_size=6))
    stream = b"".join(f for f, _ in frames)
    cuts = sorted(draw(st.sets(st.integers(1, max(len(stream) - 1, 1)), max_size=6)) | {0, len(stream)})
    reads = [[stream[a:b], 0] for a, b in itertools.pairwise(cuts) if b > a] or [[b"", 0]]
    starts, pos = [], 0
    for f, _ in frames:
        starts.append(pos)
        pos += len(f)
    for (_, nfds), start in zip(frames, starts, strict=True):
        i = next(k for k in range(len(cuts) - 1) if cuts[k] <= start < cuts[k + 1]) if start < len(stream) else -1
        if draw(st.integers(0, 9)) == 0:
            i = draw(st.integers(0, len(reads) - 1))
        reads[i][1] += nfds
    return [(bytes(b), n) for b, n in reads]


# Payload values as an actor may encode them: msgpack data with extension values of any
# code, holding more payload or raw bytes; tensors and arrays with plausible fields that
# point at descriptors by index (the decoder must check every field).
_ext_codes = st.sampled_from(range(1, 15)) | st.integers(0, 127)
_tensor_fields = st.tuples(
    st.sampled_from(["float32", "uint8", "int64", "bool", "<f4", "|u1", "complex64", "object", "qint8", "x" * 9]),
    st.lists(st.integers(-1, 5), max_size=3) | any_values,
    st.lists(st.integers(-2, 8), max_size=3) | any_values,
    st.integers(-2, 64) | any_values,
    st.integers(-1, 3) | any_values,
    st.integers(-1, 8192) | any_values,
    st.booleans() | any_values,
    st.sampled_from(["cpu", "cuda", "meta", ""]),
).map(list)


def _ext_of(children: st.SearchStrategy[Any]) -> st.SearchStrategy[msgpack.ExtType]:
    return (st.builds(msgpack.ExtType, _ext_codes, children.map(lambda v: msgpack.packb(v, use_bin_type=True)))
            | st.builds(msgpack.ExtType, _ext_codes, st.binary(max_size=24))
            | st.builds(msgpack.ExtType, st.sampled_from([10, 11]),
                        _tensor_fields.map(lambda v: msgpack.packb(v, use_bin_type=True))))


hostile_values: st.SearchStrategy[Any] = st.recursive(
    _plain_leaves,
    lambda children: (st.lists(children, max_size=4) | st.dictionaries(_any_keys, children, max_size=3)
                      | _ext_of(children)),
    max_leaves=10,
)


@st.composite
def hostile_payloads(draw: st.DrawFn) -> bytes:
    """A call payload (``[args, kwargs]``) or reply value as an attacker encodes it."""
    how = draw(st.sampled_from(["call", "call", "value", "bytes"]))
    if how == "call":
        obj = [draw(st.lists(hostile_values, max_size=3)),
               draw(st.dictionaries(st.text(max_size=5) | msgpack_ints, hostile_values, max_size=2))]
    elif how == "value":
        obj = draw(hostile_values)
    else:
        return draw(st.binary(max_size=64))
    return msgpack.packb(obj, use_bin_type=True)  # type: ignore[no-any-return]
