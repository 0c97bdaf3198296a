"""Payload encoding: msgpack plus a small allow-list of extension types.

Trust model: anything an actor produced is decoded with ``trusted=False``, which
only ever builds builtin values, exceptions of allow-listed types, actor handles
and types the application registered. Host-produced payloads may also carry
values pickled by the host (``trusted=True``); only actor processes decode those,
and only when the scheduler marked the envelope as coming from the host.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import chain
from typing import Any, NamedTuple

import msgpack

from scheduler import close_fds

from ._decode_limits import EXT_COST, UNMETERED_BYTES, DecodeLimits, Meter
from ._errors import SerializationError
from ._future import Future
from ._handle import ActorHandle
from ._objects import ObjectRef
from ._remote_errors import exception_fields, exception_from_fields
from ._shm import SegmentTable
from ._tensors import (
    CUDA_IPC_FIELDS,
    CudaKeepAlive,
    FdSink,
    FdSource,
    cuda_ipc_enabled,
    export_cuda_ipc,
    export_ndarray,
    export_tensor,
    import_cuda_ipc,
    import_ndarray,
    import_tensor,
    is_ndarray,
    is_tensor,
)

EXT_TUPLE = 1
EXT_SET = 2
EXT_FROZENSET = 3
EXT_COMPLEX = 4
EXT_BIGINT = 5
EXT_EXCEPTION = 6
EXT_HANDLE = 7
EXT_PICKLE = 9
EXT_TENSOR = 10
EXT_NDARRAY = 11
EXT_FUTURE = 12  # a Future argument: index of its result among the call's resolved results
EXT_OBJREF = 13  # an ObjectRef: the object's id in the host's store
EXT_CUDA_IPC = 14  # a CUDA tensor shared by IPC handle (ACTORBOX_ENABLE_CUDA_IPC=1)

# Extension values nest by re-entering the msgpack decoder, which keeps tens of KB
# of C stack per level: a few hundred levels crash the process. Refuse deeper.
MAX_EXT_DEPTH = 32


_Fds = tuple[int, ...] | list[int]


class CallArguments(NamedTuple):
    """A call's decoded arguments."""

    args: list[Any]
    kwargs: dict[str, Any]


class _Forwarded(NamedTuple):
    """The result of a Future argument, as the scheduler forwarded it with the call."""

    payload: bytes
    trusted: bool  # its producer's trust, not the call's
    fds: _Fds


class Codec:
    """Encodes and decodes call payloads for one process.

    ``allow_pickle``: this process is the host and may pickle what msgpack cannot
    carry (host -> actor only). ``make_handle(actor_id, name, label, token)`` builds an
    ActorHandle bound to this process's caller (the host's refuses a forged token);
    ``make_ref(object_id)`` an ObjectRef. What one encoding or decoding needs (its
    descriptors, its budget, its depth) lives on a per-call ``_Encoder``/``_Decoder``,
    so threads share a Codec without sharing state.
    """

    def __init__(
        self,
        *,
        allow_pickle: bool,
        make_handle: Callable[[int, str | None, str, bytes], ActorHandle],
        segments: SegmentTable | None = None,
        make_ref: Callable[[str], ObjectRef] | None = None,
    ) -> None:
        self.allow_pickle = allow_pickle
        self.make_handle = make_handle
        self.make_ref = make_ref
        self.segments = segments if segments is not None else SegmentTable()
        self.cuda_keepalive = CudaKeepAlive()
        # What one message from an actor may decode to; the Runtime sets its own (and
        # passes them to its actors, which decode what other actors send them).
        self.limits = DecodeLimits()
        self._plain = _Encoder(self, None)  # no descriptors: holds no state, so shared

    # -- encoding ----------------------------------------------------------------

    def dumps(self, obj: Any) -> bytes:
        """Encode ``obj``, which may not hold tensors or arrays (they travel as descriptors)."""
        return self._plain.dumps(obj)

    def dumps_fds(self, obj: Any, *, ipc: bool = False) -> tuple[bytes, tuple[int, ...]]:
        """Encode ``obj``; tensors and arrays in it add descriptors, which the caller then owns.

        ``ipc``: whether the receiver can open CUDA IPC handles of this process (it shares
        this process's user and /dev/shm); else CUDA tensors go through CPU memory.
        """
        if self.cuda_keepalive:  # an actor has no sweeper: what is due goes at its next send
            self.cuda_keepalive.expire()
        sink = FdSink(self.segments)
        sink.ipc = ipc
        try:
            data = _Encoder(self, sink).dumps(obj)
        except BaseException:
            sink.close()
            raise
        return data, tuple(sink.fds)

    def encode_call(self, args: tuple[Any, ...], kwargs: dict[str, Any],
                    deps: list[Future[Any]] | None = None, *, ipc: bool = False) -> tuple[bytes, tuple[int, ...]]:
        """Encode call arguments. Futures among the top-level arguments become
        placeholders, their Futures appended to ``deps`` (when given)."""
        if not args and not kwargs:
            return b"", ()
        if deps is not None:
            args = tuple(self._placeholder(a, deps) for a in args)
            kwargs = {k: self._placeholder(v, deps) for k, v in kwargs.items()}
        return self.dumps_fds([list(args), kwargs], ipc=ipc)

    def _placeholder(self, value: Any, deps: list[Future[Any]]) -> Any:
        if type(value) is Future:  # not isinstance: an ABC's costs ~75 ns more per argument (see Caller._settled)
            if value not in deps:
                deps.append(value)
            return msgpack.ExtType(EXT_FUTURE, self.dumps(deps.index(value)))
        return value

    # -- decoding ----------------------------------------------------------------

    def loads(self, data: bytes, trusted: bool) -> Any:
        """Decode a payload without descriptors (``trusted``: the host produced it)."""
        return _Decoder(self).loads(data, trusted)

    def loads_fds(self, data: bytes, trusted: bool, fds: _Fds, *, ipc: bool = False,
                  meter: Meter | None = None) -> Any:
        """Decode a payload that came with descriptors; takes ownership of all of them.

        ``ipc``: CUDA IPC tensors are accepted (the producer is one whose handles this
        process can open, and which is trusted code); else they are refused. ``meter``:
        the budget this payload shares with others of the same message.
        """
        source = FdSource(fds)
        try:
            return _Decoder(self, source=source, ipc=ipc, meter=meter).loads(data, trusted)
        finally:
            source.close_unused()

    def decode_call(self, data: bytes, trusted: bool, fds: _Fds = (),
                    resolved: Sequence[Sequence[Any]] = (), *, ipc: bool = False) -> CallArguments:
        """Decode call arguments; takes ownership of ``fds``. ``resolved``: the results of
        Future arguments as the scheduler forwards them, ``(status, payload, trusted, nfds)``
        each, whose descriptors follow the call's own in ``fds``. ``ipc``: CUDA IPC tensors
        are accepted in the call's own arguments (see ``loads_fds``), never in forwarded results."""
        if not data and not resolved and not fds:  # a no-argument call
            return CallArguments([], {})
        own, forwarded = _split_fds(fds, resolved)
        meter = None
        # The arguments and every forwarded result share one budget: a call is one message.
        untrusted = (0 if trusted else len(data)) + sum(len(f.payload) for f in forwarded if not f.trusted)
        if forwarded and untrusted > UNMETERED_BYTES:
            meter = Meter(self.limits)
        values = self._forwarded_values(forwarded, own, meter)
        if not data:
            close_fds(own)
            return CallArguments([], {})
        source = FdSource(own)
        try:
            obj = _Decoder(self, source=source, ipc=ipc, resolved=values, meter=meter).loads(data, trusted)
        finally:
            source.close_unused()
        if type(obj) is not list or len(obj) != 2 or type(obj[0]) is not list or type(obj[1]) is not dict:
            raise SerializationError("call payload is not [args, kwargs]")
        if not all(type(k) is str for k in obj[1]):
            raise SerializationError("keyword argument names must be strings")
        return CallArguments(obj[0], obj[1])

    def _forwarded_values(self, forwarded: list[_Forwarded], own: _Fds, meter: Meter | None) -> list[Any]:
        """The values of the forwarded results, each decoded with its own producer's trust;
        on failure every descriptor not yet owned by a decode is closed."""
        values: list[Any] = []
        for i, f in enumerate(forwarded):
            try:
                if f.payload:
                    values.append(self.loads_fds(f.payload, f.trusted, f.fds, meter=meter))
                else:  # no value to own them (a forged result may send some)
                    close_fds(f.fds)
                    values.append(None)
            except BaseException:
                close_fds(own)
                for rest in forwarded[i + 1:]:
                    close_fds(rest.fds)
                raise
        return values


def _split_fds(fds: _Fds, resolved: Sequence[Sequence[Any]]) -> tuple[_Fds, list[_Forwarded]]:
    """The call's own descriptors, and each forwarded result with its own (they follow in order)."""
    forwarded: list[_Forwarded] = []
    pos = len(fds) - sum(r[3] for r in resolved)
    own = fds[:pos]
    for _status, payload, trusted, nfds in resolved:
        forwarded.append(_Forwarded(payload, trusted, fds[pos:pos + nfds]))
        pos += nfds
    return own, forwarded


class _Encoder:
    """One encoding: its descriptor sink (None: tensors and arrays are refused), used as
    msgpack's ``default`` for what msgpack can't carry itself."""

    __slots__ = ("_codec", "_sink")

    def __init__(self, codec: Codec, sink: FdSink | None) -> None:
        self._codec = codec
        self._sink = sink

    def dumps(self, obj: Any) -> bytes:
        try:
            return msgpack.packb(obj, default=self._default, use_bin_type=True, strict_types=True)
        except SerializationError:
            raise
        except (TypeError, ValueError, OverflowError) as exc:
            raise SerializationError(f"cannot encode value: {exc}") from exc

    def _default(self, obj: Any) -> Any:
        codec = self._codec
        t = type(obj)
        if t is tuple:
            return msgpack.ExtType(EXT_TUPLE, self.dumps(list(obj)))
        if t is set:
            return msgpack.ExtType(EXT_SET, self.dumps(list(obj)))
        if t is frozenset:
            return msgpack.ExtType(EXT_FROZENSET, self.dumps(list(obj)))
        if t is complex:
            return msgpack.ExtType(EXT_COMPLEX, self.dumps([obj.real, obj.imag]))
        if t is int:  # only reached for ints msgpack cannot hold (beyond 64 bits)
            return msgpack.ExtType(EXT_BIGINT, str(obj).encode())
        if is_tensor(obj) or is_ndarray(obj):
            return self._shared(obj)
        if isinstance(obj, ObjectRef):
            return msgpack.ExtType(EXT_OBJREF, self.dumps(obj.object_id))
        if isinstance(obj, Future):
            raise SerializationError(
                "a Future can be passed only as a top-level argument of a call; await it to send its value")
        if isinstance(obj, ActorHandle):
            return msgpack.ExtType(EXT_HANDLE, self.dumps([obj._actor_id, obj._name, obj._label, obj._token]))
        if isinstance(obj, BaseException):
            return msgpack.ExtType(EXT_EXCEPTION, self.dumps(exception_fields(obj)))
        if codec.allow_pickle:
            from . import _host_pickle  # (the host only: actors never pickle)

            return msgpack.ExtType(EXT_PICKLE, _host_pickle.dumps(obj))  # refuses files, sockets, locks
        # Plain subclasses of builtin containers travel as their base type.
        base: type[Any]
        for base in (dict, list, tuple, str, bytes, int, float):
            if isinstance(obj, base):
                return base(obj)
        raise SerializationError(
            f"cannot send a {t.__module__}.{t.__qualname__} from an actor: only builtin values, "
            "exceptions, actor handles, torch tensors and numpy arrays cross the boundary; convert it to "
            "one of those (a numpy scalar: x.item(); an ndarray subclass such as np.memmap or a masked "
            "array: np.asarray(x); an object: a dict)"
        )

    def _shared(self, obj: Any) -> msgpack.ExtType:
        """A tensor or array: its memory travels as a descriptor in the sink."""
        sink, codec = self._sink, self._codec
        if sink is None:
            raise SerializationError("tensors and arrays travel only as call arguments and results")
        if is_tensor(obj):
            if (obj.device.type == "cuda" and sink.ipc and cuda_ipc_enabled() and not obj.is_quantized
                    and str(obj.layout) == "torch.strided" and obj.untyped_storage().nbytes()):
                return msgpack.ExtType(EXT_CUDA_IPC, self.dumps(export_cuda_ipc(obj, codec.cuda_keepalive)))
            return msgpack.ExtType(EXT_TENSOR, self.dumps(export_tensor(obj, codec.segments, sink)))
        return msgpack.ExtType(EXT_NDARRAY, self.dumps(export_ndarray(obj, codec.segments, sink)))


class _Decoder:
    """One decoding: its descriptors (``source``), whether CUDA IPC tensors are accepted,
    the forwarded results its Future placeholders stand for, its budget (``meter``, opened
    for a large payload from an actor) and how deep its extension values nest."""

    __slots__ = ("_codec", "depth", "ipc", "meter", "resolved", "source")

    def __init__(self, codec: Codec, *, source: FdSource | None = None, ipc: bool = False,
                 resolved: list[Any] | None = None, meter: Meter | None = None) -> None:
        self._codec = codec
        self.source = source
        self.ipc = ipc
        self.resolved = resolved
        self.meter = meter
        self.depth = 0

    def loads(self, data: bytes, trusted: bool) -> Any:
        depth = self.depth
        if depth >= MAX_EXT_DEPTH:
            raise SerializationError(
                f"payload nests tuples/sets/exceptions deeper than {MAX_EXT_DEPTH} levels; flatten it")
        meter = self.meter
        # An actor's message is metered (see _decode_limits) unless it is too small to
        # cost anything: every small call takes the hook-free path below.
        if meter is None and not trusted and depth == 0 and len(data) > UNMETERED_BYTES:
            meter = self.meter = Meter(self._codec.limits)
        self.depth = depth + 1
        try:
            if not trusted and b"\xff" in data:  # (memchr: every ext -1 header holds its type byte, 0xff)
                return self._loads_stamped(data, meter)
            if meter is None or trusted:
                return msgpack.unpackb(
                    data,
                    ext_hook=self._ext_trusted if trusted else self._ext_untrusted,
                    raw=False,
                    strict_map_key=False,
                    use_list=True,
                )
            return msgpack.unpackb(data, ext_hook=self._ext_metered, raw=False, strict_map_key=False, use_list=True,
                                   list_hook=meter.on_list, object_pairs_hook=meter.on_map,
                                   **self._codec.limits.unpack_options())
        except SerializationError:
            raise
        except Exception as exc:  # any decoder failure is the sender's fault
            if meter is not None and type(exc) is ValueError and " exceeds max_" in str(exc):
                raise meter.over() from None  # one container longer than the whole budget
            raise SerializationError(f"undecodable payload: {type(exc).__name__}: {exc}") from None
        finally:
            self.depth = depth

    def _loads_stamped(self, data: bytes, meter: Meter | None) -> Any:
        """An actor's payload that may hold extension type -1: msgpack decodes that one itself
        (a ``msgpack.Timestamp``), never through ``ext_hook``, so past the allow-list. The
        container hooks refuse one wherever it is; payloads without a 0xff byte skip this."""
        if meter is None:
            obj = msgpack.unpackb(data, ext_hook=self._ext_untrusted, raw=False, strict_map_key=False, use_list=True,
                                  list_hook=_no_timestamp, object_pairs_hook=_no_timestamp_pairs)
        else:
            obj = msgpack.unpackb(data, ext_hook=self._ext_metered, raw=False, strict_map_key=False, use_list=True,
                                  list_hook=lambda v: meter.on_list(_no_timestamp(v)),
                                  object_pairs_hook=lambda p: meter.on_map(_checked_pairs(p)),
                                  **self._codec.limits.unpack_options())
        if type(obj) is msgpack.Timestamp:
            raise _timestamp_refused()
        return obj

    def _ext_trusted(self, code: int, data: bytes) -> Any:
        return self._ext(code, data, True)

    def _ext_untrusted(self, code: int, data: bytes) -> Any:
        return self._ext(code, data, False)

    def _ext_metered(self, code: int, data: bytes) -> Any:
        # Charged before it is decoded: each one re-enters msgpack (and a big
        # integer's parse is quadratic in its digits).
        assert self.meter is not None  # only hooked in while metering
        self.meter.charge(EXT_COST + (len(data) if code == EXT_BIGINT else 0))
        return self._ext(code, data, False)

    def _ext(self, code: int, data: bytes, trusted: bool) -> Any:
        codec = self._codec
        if code == EXT_TUPLE:
            return tuple(self.loads(data, trusted))
        if code == EXT_SET or code == EXT_FROZENSET:
            members = self.loads(data, trusted)
            if self.meter is not None and not trusted:  # colliding members cost a set what they cost a map
                self.meter.check_keys(members, "set", "members")
            return set(members) if code == EXT_SET else frozenset(members)
        if code == EXT_COMPLEX:
            re, im = self.loads(data, trusted)
            return complex(float(re), float(im))
        if code == EXT_BIGINT:
            if len(data) > 4301:  # 4300 digits (CPython's str-to-int limit) and a sign
                raise SerializationError("integer too large")
            return int(data.decode("ascii"))
        if code == EXT_HANDLE:
            return self._handle(data, trusted)
        if code == EXT_EXCEPTION:
            return exception_from_fields(self.loads(data, trusted), trusted)
        if code == EXT_TENSOR or code == EXT_NDARRAY:
            fields = self.loads(data, trusted)
            if self.source is None or type(fields) is not list or not (
                    len(fields) == 8 or (len(fields) == 9 and code == EXT_TENSOR)):
                raise SerializationError("malformed shared tensor (or one outside a call payload)")
            if code == EXT_TENSOR:
                return import_tensor(fields, codec.segments, self.source)
            return import_ndarray(fields, codec.segments, self.source)
        if code == EXT_CUDA_IPC:
            return self._cuda_ipc(data, trusted)
        if code == EXT_OBJREF:
            object_id = self.loads(data, trusted)
            if type(object_id) is not str or len(object_id) > 64 or codec.make_ref is None:
                raise SerializationError("malformed object reference")
            return codec.make_ref(object_id)
        if code == EXT_FUTURE:
            index = self.loads(data, trusted)
            values = self.resolved
            if values is None or type(index) is not int or not 0 <= index < len(values):
                raise SerializationError("a Future argument whose result did not arrive")
            return values[index]
        if code == EXT_PICKLE and trusted:
            import pickle

            return pickle.loads(data)  # trusted: produced by the host, never by an actor
        raise SerializationError(f"refused extension type {code} in a payload from an actor")

    def _handle(self, data: bytes, trusted: bool) -> ActorHandle:
        fields = self.loads(data, trusted)
        if type(fields) is not list or len(fields) != 4:
            raise SerializationError("malformed actor handle")
        actor_id, name, label, token = fields
        if (type(actor_id) is not int or not _opt_str(name) or type(label) is not str
                or type(token) is not bytes or len(token) > 64):
            raise SerializationError("malformed actor handle")
        return self._codec.make_handle(actor_id, name, label, token)

    def _cuda_ipc(self, data: bytes, trusted: bool) -> Any:
        if not self.ipc:
            raise SerializationError(
                "refused a CUDA IPC tensor: this process accepts them only from the host (in an "
                "unsandboxed actor) or from an unsandboxed actor it called (in the host); pass CUDA "
                "tensors between actors through the host, or unset ACTORBOX_ENABLE_CUDA_IPC")
        fields = self.loads(data, trusted)
        if type(fields) is not list or len(fields) != CUDA_IPC_FIELDS:
            raise SerializationError("malformed CUDA IPC tensor")
        return import_cuda_ipc(fields)



def _timestamp_refused() -> SerializationError:
    return SerializationError(
        "refused a msgpack Timestamp (extension type -1) in a payload from an actor: it is not one of the "
        "types that cross the boundary; send a time as a number (seconds since the epoch) or an ISO string")


def _no_timestamp(values: list[Any]) -> list[Any]:
    if msgpack.Timestamp in set(map(type, values)):
        raise _timestamp_refused()
    return values


def _checked_pairs(pairs: list[tuple[Any, Any]]) -> list[tuple[Any, Any]]:
    if msgpack.Timestamp in set(map(type, chain.from_iterable(pairs))):
        raise _timestamp_refused()
    return pairs


def _no_timestamp_pairs(pairs: list[tuple[Any, Any]]) -> dict[Any, Any]:
    return dict(_checked_pairs(pairs))


def _opt_str(v: Any) -> bool:
    return v is None or type(v) is str


