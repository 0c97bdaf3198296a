"""Tests for actorbox/_codec.py: payload encoding and the safe (untrusted) decoder."""

from __future__ import annotations

import enum
import os
import pickle
import sys
import time
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import actorbox
from actorbox._codec import EXT_EXCEPTION, EXT_HANDLE, EXT_PICKLE, EXT_TUPLE, Codec
from actorbox._handle import ActorHandle
from tests import strategies as s


def make_codec(*, allow_pickle: bool) -> Codec:
    """A Codec wired like actorbox/_runtime.py and _child.py build theirs, with a trivial make_handle."""
    return Codec(allow_pickle=allow_pickle,
                 make_handle=lambda actor_id, name, label, token: ActorHandle(None, actor_id, name, label, token))  # type: ignore[arg-type]


HOST = make_codec(allow_pickle=True)
ACTOR = make_codec(allow_pickle=False)


class PluginError(Exception):
    """An exception type defined in this (already imported) test module."""


class Outer:
    class NestedError(Exception):
        pass


class NeedsInit(Exception):
    """Its __str__ needs an attribute only __init__ sets, so it cannot be rebuilt without running __init__."""

    def __init__(self, a: str, b: int) -> None:
        super().__init__(a)
        self.b = b

    def __str__(self) -> str:
        return f"{self.args[0]} ({self.b})"


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no str for you")


class Opaque:
    """An arbitrary application object: not a builtin value."""

    def __init__(self, x: int) -> None:
        self.x = x

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Opaque) and other.x == self.x


class MakesDir:
    """Unpickling this creates a directory: the side effect an attacker's payload would have."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (self.path,))


def round_trip(value: Any, codec: Codec = ACTOR) -> Any:
    return codec.loads(codec.dumps(value), False)


def exc_payload(module: str, qualname: str, args: list[Any], message: str = "msg", tb: str = "",
                context: dict[str, Any] | None = None) -> bytes:
    """An encoded exception as a peer could send it, naming any type it likes."""
    fields = ACTOR.dumps([module, qualname, args, message, tb, context or {}])
    return msgpack.packb(msgpack.ExtType(EXT_EXCEPTION, fields))  # type: ignore[no-any-return]


def raised(exc: BaseException) -> BaseException:
    """``exc`` after being raised and caught, so it carries a traceback."""
    try:
        raise exc
    except BaseException as e:
        return e


# -- values ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        None, True, False, 0, -1, 2**63 - 1, -(2**63), 2**64 - 1, 1.5, float("inf"), "text", "", b"\x00\xff", b"",
        [1, [2, [3, []]]],
        {"a": {"b": {"c": [1, 2]}}},
        (1, (2, (3,))),
        (),
        {1, 2, 3},
        set(),
        frozenset({"a", (1, 2)}),
        complex(1.5, -2.0),
        2**64,
        -(2**63) - 1,
        10**100,
        -(10**100),
        {(1, 2): "tuple key", frozenset({3}): "frozenset key", 5: "int key", None: "none key"},
        [(1, {2}), {"k": (frozenset(), complex(0, 1))}],
    ],
    ids=repr,
)
def test_round_trip_examples(value: Any) -> None:
    """Builtins, containers, tuples, (frozen)sets, complex, big ints, tuple-keyed dicts round-trip, types kept."""
    assert s.same(round_trip(value), value)


@given(s.codec_values)
def test_round_trip_property(value: Any) -> None:
    """Any value built from builtins and containers decodes (untrusted) to an equal value of the same types."""
    assert s.same(round_trip(value), value)
    assert s.same(round_trip(value, HOST), value)


@pytest.mark.parametrize("value", [10**4300 - 1, -(10**4300 - 1)], ids=["positive", "negative"])
def test_largest_encodable_ints_decode(value: int) -> None:
    """An int of 4300 digits (the most Python converts to text) decodes back, whatever its sign."""
    assert round_trip(value) == value


def test_builtin_subclasses_travel_as_base_type() -> None:
    """Without pickle, dict/list/int subclasses (e.g. an IntEnum) arrive as the plain builtin."""

    class Color(enum.IntEnum):
        RED = 1

    class MyDict(dict):  # type: ignore[type-arg]
        pass

    out = round_trip([MyDict(a=1), Color.RED])
    assert out == [{"a": 1}, 1]
    assert type(out[0]) is dict and type(out[1]) is int


def test_call_payload_round_trip() -> None:
    """encode_call/decode_call carry args and kwargs; a call without arguments is an empty payload."""
    assert ACTOR.encode_call((), {}) == (b"", ())
    assert ACTOR.decode_call(b"", False) == ([], {})
    payload, fds = ACTOR.encode_call((1, (2,)), {"k": {3}})
    assert fds == ()
    args, kwargs = ACTOR.decode_call(payload, False, fds)
    assert args == [1, (2,)] and kwargs == {"k": {3}}


@pytest.mark.parametrize(
    "payload",
    [msgpack.packb([1, 2]), msgpack.packb({"a": 1}), msgpack.packb([[], {1: 2}]), msgpack.packb([[], {}, 3])],
    ids=["not-list-dict", "map", "int-kwarg-name", "three-items"],
)
def test_malformed_call_payload(payload: bytes) -> None:
    """A call payload that is not [args, {str: value}] raises SerializationError."""
    with pytest.raises(actorbox.SerializationError):
        ACTOR.decode_call(payload, False)


def test_handle_round_trip() -> None:
    """An ActorHandle is sent as (id, name, label, token) and rebuilt through make_handle, token and all."""
    h = ActorHandle(None, 7, "svc", "svc#7", b"k" * 16)  # type: ignore[arg-type]
    out = round_trip({"h": h})["h"]
    assert isinstance(out, ActorHandle)
    assert (out._actor_id, out._name, out._label, out._token) == (7, "svc", "svc#7", b"k" * 16)


@pytest.mark.parametrize("fields", [["7", None, "x", b""], [7, None, "x"], [7, None, "x", "tok"],
                                    [7, None, "x", b"t" * 65], 7], ids=repr)
def test_malformed_handle_is_refused(fields: Any) -> None:
    """A handle extension with ill-typed fields, the wrong arity or an oversized token raises SerializationError."""
    bad = msgpack.packb(msgpack.ExtType(EXT_HANDLE, msgpack.packb(fields)))
    with pytest.raises(actorbox.SerializationError, match="handle"):
        ACTOR.loads(bad, False)


# -- exceptions --------------------------------------------------------------------------


def test_builtin_exception_keeps_type_and_args() -> None:
    """A builtin exception arrives with its own type and args."""
    out = round_trip(ValueError("bad value", 3))
    assert type(out) is ValueError and out.args == ("bad value", 3)


def test_oserror_subclass_keeps_errno() -> None:
    """OSError(ENOENT, ...) arrives as FileNotFoundError with errno and strerror."""
    out = round_trip(OSError(2, "No such file or directory"))
    assert type(out) is FileNotFoundError and out.errno == 2 and out.strerror == "No such file or directory"


def test_actorbox_error_keeps_context() -> None:
    """An actorbox error the host sends arrives with its type, message and context attributes."""
    err = actorbox.ActorDiedError("it crashed", actor="counter", method="incr", call_id=4, pid=1234,
                                  exit_code=None, signal=9, stderr="Segfault")
    out = ACTOR.loads(HOST.dumps(err), True)
    assert type(out) is actorbox.ActorDiedError
    assert out.context() == err.context()
    assert str(out) == str(err)


def test_actorbox_error_subclass_of_builtin() -> None:
    """MethodNotFoundError the host sends arrives as itself, still an AttributeError, with its context."""
    out = ACTOR.loads(HOST.dumps(actorbox.MethodNotFoundError("no method nope", actor="a", method="nope", call_id=1)),
                      True)
    assert type(out) is actorbox.MethodNotFoundError and isinstance(out, AttributeError)
    assert (out.actor, out.method, out.call_id, str(out)) == ("a", "nope", 1, "no method nope")


def test_exception_from_imported_module_keeps_type() -> None:
    """An exception class defined in an already-imported module (this one) is rebuilt as itself."""
    out = round_trip(PluginError("plugin failed", 42))
    assert type(out) is PluginError and out.args == ("plugin failed", 42)


def test_nested_exception_class_keeps_type() -> None:
    """An exception class nested in a class (dotted qualname) is found and rebuilt."""
    out = round_trip(Outer.NestedError("inner"))
    assert type(out) is Outer.NestedError and out.args == ("inner",)


def test_local_exception_class_becomes_remote_error() -> None:
    """An exception class defined inside a function cannot be looked up: RemoteError names it."""

    class LocalError(Exception):
        pass

    out = round_trip(LocalError("x"))
    assert type(out) is actorbox.RemoteError
    assert "LocalError" in out.type_name and str(out).endswith(": x")


def test_not_imported_module_becomes_remote_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An exception naming a module not imported here becomes RemoteError naming it; the module is never imported."""
    marker = tmp_path / "imported"
    (tmp_path / "evil_plugin_mod.py").write_text(
        f"open({str(marker)!r}, 'w').close()\nclass PluginError(Exception):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    out = ACTOR.loads(exc_payload("evil_plugin_mod", "PluginError", ["boom"], "boom"), False)
    assert type(out) is actorbox.RemoteError
    assert out.type_name == "evil_plugin_mod.PluginError"
    assert str(out) == "evil_plugin_mod.PluginError: boom"
    assert "evil_plugin_mod" not in sys.modules
    assert not marker.exists()


@pytest.mark.parametrize(
    ("module", "qualname"),
    [("builtins", "SystemExit"), ("builtins", "KeyboardInterrupt"), ("builtins", "BaseException"),
     ("builtins", "object"), ("subprocess", "Popen"), ("os", "system"), ("builtins", "NoSuchError")],
)
def test_unsafe_types_become_remote_error(module: str, qualname: str) -> None:
    """Non-Exception types (SystemExit, KeyboardInterrupt, classes, functions) named by a peer become RemoteError."""
    out = ACTOR.loads(exc_payload(module, qualname, ["arg"], "arg"), False)
    assert type(out) is actorbox.RemoteError
    assert qualname in out.type_name


def test_remote_system_exit_is_remote_error() -> None:
    """A SystemExit raised in an actor never becomes a SystemExit in the receiver."""
    out = round_trip(SystemExit(3))
    assert type(out) is actorbox.RemoteError and out.type_name == "SystemExit"


def test_type_needing_init_becomes_remote_error() -> None:
    """An importable exception whose __str__ needs __init__'s state becomes RemoteError with its message."""
    out = round_trip(NeedsInit("a", 1))
    assert type(out) is actorbox.RemoteError
    assert out.type_name.endswith("test_codec.NeedsInit")
    assert str(out).endswith("a (1)")


def test_unprintable_exception_is_encoded() -> None:
    """An exception whose __str__ raises is still sent, with a placeholder message."""
    payload = ACTOR.dumps(Unprintable("x"))
    fields = ACTOR.loads(msgpack.unpackb(payload).data, False)
    assert fields[3] == "<unprintable Unprintable>"


def test_non_plain_exception_args_are_sent_as_repr() -> None:
    """Exception args that are not plain data travel as their repr()."""
    out = round_trip(ValueError(Opaque(1), "plain"))
    assert type(out) is ValueError
    assert out.args[1] == "plain" and out.args[0].startswith("<tests.actorbox.test_codec.Opaque object")


def test_remote_traceback_attached() -> None:
    """The decoded exception carries the remote traceback text as .remote_traceback and in __notes__."""

    def failing_plugin_function() -> None:
        raise KeyError("missing")

    try:
        failing_plugin_function()
    except KeyError as e:
        exc = e
    out = round_trip(exc)
    assert type(out) is KeyError
    tb = out.remote_traceback  # type: ignore[attr-defined]
    assert "Traceback (most recent call last)" in tb and "failing_plugin_function" in tb
    assert len(out.__notes__) == 1
    assert out.__notes__[0].startswith("Remote traceback:\n") and "failing_plugin_function" in out.__notes__[0]


def test_reraised_remote_exception_keeps_first_traceback() -> None:
    """Re-sending a received exception keeps the original remote traceback ahead of the new one."""
    first = round_trip(raised(PluginError("deep")))
    first_tb = first.remote_traceback  # type: ignore[attr-defined]
    again = round_trip(raised(first))
    tb = again.remote_traceback  # type: ignore[attr-defined]
    assert tb.startswith(first_tb)
    assert "The above remote exception was re-raised here" in tb


def test_remote_error_round_trip_keeps_type_name() -> None:
    """A RemoteError sent on again keeps the remote type name it carries."""
    first = ACTOR.loads(exc_payload("gone_module", "GoneError", ["x"], "x"), False)
    again = round_trip(first)
    assert type(again) is actorbox.RemoteError and again.type_name == "gone_module.GoneError"


@pytest.mark.parametrize("cls", [actorbox.ActorDiedError, actorbox.ActorStartError])
def test_ill_typed_context_still_prints(cls: type[actorbox.ActorboxError]) -> None:
    """An actorbox error an actor sends with ill-typed context (stderr=5) still has a working str()."""
    out = ACTOR.loads(exc_payload("actorbox._errors", cls.__name__, ["m"], "m", context={"stderr": 5, "pid": [1]}),
                      False)
    assert isinstance(out, actorbox.ActorboxError)
    assert isinstance(str(out), str)


# -- trust: pickle -----------------------------------------------------------------------


def _pickle_ext(obj: Any) -> msgpack.ExtType:
    return msgpack.ExtType(EXT_PICKLE, pickle.dumps(obj))


@pytest.mark.parametrize(
    "wrap",
    [
        lambda ext: ext,
        lambda ext: [1, {"k": ext}],
        lambda ext: msgpack.ExtType(EXT_TUPLE, msgpack.packb([ext])),
        lambda ext: msgpack.ExtType(EXT_EXCEPTION, msgpack.packb(["builtins", "ValueError", [ext], "m", "", {}])),
    ],
    ids=["bare", "in-containers", "in-tuple-ext", "in-exception-args"],
)
def test_untrusted_pickle_is_refused_without_side_effects(tmp_path: Path, wrap: Any) -> None:
    """A pickle extension in an untrusted payload raises SerializationError and its __reduce__ never runs."""
    target = tmp_path / "pwned"
    payload = msgpack.packb(wrap(_pickle_ext(MakesDir(str(target)))))
    for codec in (ACTOR, HOST):
        with pytest.raises(actorbox.SerializationError, match=f"refused extension type {EXT_PICKLE}"):
            codec.loads(payload, False)
    assert not target.exists()


def test_trusted_decode_unpickles(tmp_path: Path) -> None:
    """With trusted=True (host-produced payloads only) the pickle extension is honoured."""
    payload = HOST.dumps({"obj": Opaque(5)})
    assert HOST.loads(payload, True) == {"obj": Opaque(5)}
    # The same side-effect payload as above does run when trusted: the check above is meaningful.
    target = tmp_path / "made"
    HOST.loads(msgpack.packb(_pickle_ext(MakesDir(str(target)))), True)
    assert target.is_dir()


def test_host_pickled_payload_refused_by_untrusted_decoder() -> None:
    """What the host pickled is refused by an untrusted decode (a forwarded host payload gains no trust)."""
    with pytest.raises(actorbox.SerializationError):
        ACTOR.loads(HOST.dumps(Opaque(1)), False)


@pytest.mark.parametrize("value", [Opaque(1), object(), [1, {"nested": Opaque(2)}], len], ids=repr)
def test_no_pickle_encoder_refuses_arbitrary_objects(value: Any) -> None:
    """Without allow_pickle, an arbitrary object raises SerializationError naming its type and what to do."""
    with pytest.raises(actorbox.SerializationError) as info:
        ACTOR.dumps(value)
    msg = str(info.value)
    assert "cannot send" in msg and "convert it" in msg
    assert "Opaque" in msg or "object" in msg or "builtin_function_or_method" in msg


def test_serialization_error_is_a_type_error() -> None:
    """SerializationError is both an ActorboxError and a TypeError."""
    assert issubclass(actorbox.SerializationError, actorbox.ActorboxError)
    assert issubclass(actorbox.SerializationError, TypeError)


@pytest.mark.parametrize("code", [0, 8, 10, 42, 127])
def test_unknown_extension_types_are_refused(code: int) -> None:
    """Extension codes the codec does not define raise SerializationError, trusted or not."""
    payload = msgpack.packb(msgpack.ExtType(code, b"data"))
    with pytest.raises(actorbox.SerializationError):
        ACTOR.loads(payload, False)
    with pytest.raises(actorbox.SerializationError):
        HOST.loads(payload, True)


# -- fuzzing -----------------------------------------------------------------------------


def _only_serialization_error(payload: bytes) -> Any:
    try:
        return ACTOR.loads(payload, False)
    except actorbox.SerializationError:
        return None


@given(st.binary(max_size=512))
def test_fuzz_random_bytes(payload: bytes) -> None:
    """Untrusted decode of random bytes returns a value or raises SerializationError, nothing else."""
    _only_serialization_error(payload)


_ext_codes = st.sampled_from([1, 2, 3, 4, 5, 6, 7, 9, 0, 100])
_raw_ext = st.builds(msgpack.ExtType, _ext_codes, st.binary(max_size=64))
_exception_types = st.sampled_from(
    [("builtins", n) for n in ("ValueError", "OSError", "ExceptionGroup", "UnicodeDecodeError", "SystemExit")]
    + [("actorbox._errors", n) for n in actorbox.__all__ if n.endswith("Error")]
    + [(__name__, "PluginError"), (__name__, "NeedsInit"), (__name__, "Outer.NestedError"), ("os", "system"),
       ("nope", "x.y")]
)


# Flat values are enough to exercise the exception rebuilders, and much cheaper to draw.
_flat = st.none() | st.booleans() | s.msgpack_ints | st.floats() | st.text(max_size=8) | st.binary(max_size=8)
_small_values = _flat | st.lists(_flat, max_size=3) | st.dictionaries(_flat, _flat, max_size=2)


@st.composite
def _exception_exts(draw: st.DrawFn) -> msgpack.ExtType:
    """An exception extension naming a real type, with arbitrary args, message, traceback and context."""
    module, qualname = draw(_exception_types)
    context_keys = st.sampled_from(["actor", "method", "call_id", "pid", "exit_code", "signal", "stderr", "cls",
                                    "name", "type_name", "x"])
    fields = [module, qualname, draw(st.lists(_small_values, max_size=4)), draw(st.text(max_size=10)),
              draw(st.text(max_size=10)), draw(st.dictionaries(context_keys, _small_values, max_size=4))]
    # Now and then, break the shape itself: a field of the wrong type, or too few fields.
    damage = draw(st.integers(0, 9))
    if damage == 0:
        fields[draw(st.integers(0, 5))] = draw(_small_values)
    elif damage == 1:
        fields = fields[: draw(st.integers(0, 5))]
    return msgpack.ExtType(EXT_EXCEPTION, msgpack.packb(fields))


@st.composite
def _ext_payloads(draw: st.DrawFn) -> msgpack.ExtType:
    """Extension values whose data is itself msgpack of arbitrary values (so the hooks get past parsing)."""
    code = draw(_ext_codes)
    if code == EXT_EXCEPTION:
        return draw(_exception_exts())
    return msgpack.ExtType(code, msgpack.packb(draw(s.any_values | st.lists(s.any_values, max_size=3))))


@given(st.recursive(s.any_values | _raw_ext | _ext_payloads(), lambda c: st.lists(c, max_size=3), max_leaves=6))
def test_fuzz_extension_values(value: Any) -> None:
    """Untrusted decode of arbitrary extension values returns a value or raises SerializationError, nothing else."""
    _only_serialization_error(msgpack.packb(value))


@settings(max_examples=500)
@given(_exception_exts())
def test_fuzz_decoded_exceptions_print(value: msgpack.ExtType) -> None:
    """Any exception the untrusted decoder returns can be turned into text (the host logs and raises it)."""
    out = _only_serialization_error(msgpack.packb(value))
    if isinstance(out, BaseException):
        assert isinstance(str(out), str)
        assert isinstance(repr(out), str)


# -- decoding budgets (issue 14, findings 4 and 5) ---------------------------------------

_PAD = "p" * 9000  # makes a payload bigger than UNMETERED_BYTES, so its decoding is metered
_M = 2**61 - 1  # CPython hashes an int k to k mod this


def _limited(max_items: int = 1_000_000, max_map_keys: int = 100_000) -> Codec:
    from actorbox._decode_limits import DecodeLimits

    codec = make_codec(allow_pickle=False)
    codec.limits = DecodeLimits(max_items, max_map_keys)
    return codec


def _colliding(n: int) -> bytes:
    """A map of n int keys with one hash value, as an actor's bytes (keys: big-integer extension values)."""
    return ACTOR.dumps({msgpack.ExtType(5, str(k * _M + 7).encode()): 0 for k in range(1, n + 1)})


@given(s.codec_values)
def test_metered_decoding_gives_what_plain_decoding_gives(value: Any) -> None:
    """An ordinary value decodes the same through the metered path (a payload over 8 KiB) as through the plain one."""
    out = HOST.loads(ACTOR.dumps([value, _PAD]), False)
    assert s.same(out, [value, _PAD])


def test_a_payload_over_the_item_budget_fails_naming_the_knob() -> None:
    """More values than max_decoded_items: SerializationError naming the limit and the Runtime knob."""
    codec = _limited(max_items=5_000)
    with pytest.raises(actorbox.SerializationError, match=r"more than 5000 values.*Runtime\(max_decoded_items="):
        codec.loads(ACTOR.dumps(list(range(10_000))), False)
    with pytest.raises(actorbox.SerializationError, match=r"max_decoded_items"):  # one array longer than it all
        codec.loads(ACTOR.dumps([list(range(6_000))]), False)
    assert codec.loads(ACTOR.dumps(list(range(1_000))), False) == list(range(1_000))


@pytest.mark.parametrize("shape", [[{}], [[]], [()], [frozenset()]], ids=["maps", "lists", "tuples", "sets"])
def test_empty_containers_are_charged_as_they_are_built(shape: list[Any]) -> None:
    """A payload of small empty containers stops at the budget, with that budget's time and memory, not the
    payload's: each container is charged when built (an extension value before it is decoded)."""
    codec = _limited(max_items=10_000)
    data = ACTOR.dumps(shape * 100_000)
    t0 = time.perf_counter()
    with pytest.raises(actorbox.SerializationError, match=r"max_decoded_items"):
        codec.loads(data, False)
    assert time.perf_counter() - t0 < 0.5


def test_colliding_keys_are_refused_whatever_the_budget() -> None:
    """Keys whose hashes collide are refused before the map is built, in linear time, even under a raised budget."""
    codec = _limited(max_items=10_000_000)
    data = _colliding(20_000)  # ~5 s to build on this machine
    t0 = time.perf_counter()
    with pytest.raises(actorbox.SerializationError, match=r"collide in hash"):
        codec.loads(data, False)
    assert time.perf_counter() - t0 < 0.5
    members = ACTOR.dumps({msgpack.ExtType(5, str(k * _M + 7).encode()) for k in range(1, 5_000)})
    with pytest.raises(actorbox.SerializationError, match=r"set members collide in hash"):
        codec.loads(members, False)


def test_a_few_colliding_keys_are_ordinary() -> None:
    """hash(-1) == hash(-2): maps holding such pairs decode (ordinary data has a pair now and then)."""
    value = [{k: k for k in range(-20, 20)} for _ in range(100)] + [_PAD]
    assert HOST.loads(ACTOR.dumps(value), False) == value


def test_a_map_over_the_key_limit_fails_naming_the_knob() -> None:
    """More non-string keys in one map than max_map_keys: SerializationError naming the knob; str keys don't count."""
    codec = _limited(max_map_keys=1_000)
    with pytest.raises(actorbox.SerializationError, match=r"4000 non-string keys.*Runtime\(max_map_keys="):
        codec.loads(ACTOR.dumps({k: 0 for k in range(4_000)}), False)  # ~12 KB
    strs = {str(k): 0 for k in range(4_000)}
    assert codec.loads(ACTOR.dumps(strs), False) == strs


def test_small_and_trusted_payloads_are_not_metered() -> None:
    """Payloads up to 8 KiB (every small call) and the host's own (trusted) payloads take the hook-free path."""
    codec = _limited(max_items=10)
    assert codec.loads(ACTOR.dumps(list(range(1_000))), False) == list(range(1_000))  # ~2 KB
    assert codec.loads(ACTOR.dumps(list(range(10_000))), True) == list(range(10_000))


def test_a_call_and_its_forwarded_results_share_one_budget() -> None:
    """A call's arguments and the Future results forwarded with it are one message: one budget for all of them."""
    codec = _limited(max_items=25_000)
    part = ACTOR.dumps(list(range(6_000)))  # ~18 KB, ~6,000 values each
    resolved = tuple((0, part, False, 0) for _ in range(5))
    payload, _ = ACTOR.encode_call((1,), {})
    with pytest.raises(actorbox.SerializationError, match=r"max_decoded_items"):
        codec.decode_call(payload, False, (), resolved)
    assert len(codec.decode_call(payload, False, (), resolved[:3])[0]) == 1
