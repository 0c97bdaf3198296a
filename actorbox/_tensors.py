"""Torch tensors and numpy arrays as shared-memory segments (see ``_shm``).

Wire form (inside a payload): ``[dtype, shape, strides, offset, fd_index, nbytes,
requires_grad, device]`` with strides and offset in elements; ``fd_index`` picks
the segment's descriptor among those that travel with the frame (-1: no memory,
a zero-size tensor). A tensor already in a segment is sent as that segment (no
copy, shared writes); any other tensor is copied once into a new segment,
covering just the span its view reaches, keeping its shape and strides.

Unlike torch.multiprocessing, sending does not move the sender's own tensor into
shared memory (see ``export_tensor``); tensors that should be shared both ways are
allocated in a segment (``actorbox.shared_empty``) or are ones received.

CUDA tensors are copied through a CPU segment and restored on the same device
index by the receiver, unless ``ACTORBOX_ENABLE_CUDA_IPC=1``: then they travel as
CUDA IPC handles (``export_cuda_ipc``), the sender keeping the memory alive for the
retention time, and a tensor received that way is cloned before it is re-shared
(CUDA IPC can't re-export an imported allocation).
"""

from __future__ import annotations

import os
import re
import sys
import threading
import time
from collections import deque
from typing import Any

from ._errors import SerializationError, UsageError
from ._shm import SegmentTable, check_layout, extent

_TORCH_DTYPES = (
    "float16", "float32", "float64", "bfloat16", "complex64", "complex128", "int8", "int16", "int32", "int64",
    "uint8", "uint16", "uint32", "uint64", "bool", "float8_e4m3fn", "float8_e5m2",
)
_NUMPY_KINDS = "biufc"  # bool, signed, unsigned, float, complex: plain numbers only


class FdSink:
    """Collects the descriptors a payload's encoding needs, each segment once."""

    def __init__(self, table: SegmentTable | None = None) -> None:
        self.table = table
        self.fds: list[int] = []
        self._index: dict[int, int] = {}  # segment fd -> index in fds
        # id(array) -> (array, wire fields): one numpy array twice in a payload is copied
        # once and arrives as one shared memory (the array is held so its id stays unique).
        self.arrays: dict[int, tuple[Any, list[Any]]] = {}
        # storage address -> (fd index, first byte copied, bytes copied) of fresh torch copies
        self.storages: dict[int, tuple[int, int, int]] = {}
        self.keep: list[Any] = []
        self.ipc = False  # the receiver can open CUDA IPC handles (see Codec.dumps_fds)

    def add_owned(self, fd: int) -> int:
        """Add a descriptor this payload owns outright (a fresh copy nobody else maps)."""
        self.fds.append(fd)
        return len(self.fds) - 1

    def add(self, fd: int, *, fresh: bool = False) -> int:
        """Index of the segment ``fd`` in this payload. A ``fresh`` segment (copied in just
        now, and gone once sent) is never shared with another entry: its fd number may be
        reused by the next fresh segment, while live segments' fds stay distinct."""
        i = None if fresh else self._index.get(fd)
        if i is None:
            i = len(self.fds)
            if not fresh:
                self._index[fd] = i
            self.fds.append(os.dup(fd))  # the frame owns its copies
            if self.table is not None:
                self.table.exported(fd)
        return i

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds = []


class FdSource:
    """The descriptors that arrived with a payload; each is mapped at most once."""

    def __init__(self, fds: tuple[int, ...] | list[int]) -> None:
        self.fds = list(fds)
        self.taken: dict[int, Any] = {}  # index -> (mmap, base)

    def map(self, table: SegmentTable, index: Any, nbytes: Any) -> Any:
        if type(index) is not int or not 0 <= index < len(self.fds):
            raise SerializationError(f"a tensor refers to descriptor {index!r}, but {len(self.fds)} arrived")
        got = self.taken.get(index)
        if got is None:
            fd, self.fds[index] = self.fds[index], -1
            if fd < 0:
                raise SerializationError("a tensor's descriptor was already given up")
            got = self.taken[index] = table.attach(fd, nbytes)
        elif len(got[0]) < nbytes:  # len: the mapped length (size() is the file's)
            raise SerializationError("two tensors claim different sizes of one segment")
        return got

    def close_unused(self) -> None:
        for fd in self.fds:
            if fd >= 0:
                os.close(fd)
        self.fds = []


def is_tensor(obj: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(obj, torch.Tensor)


def is_ndarray(obj: Any) -> bool:
    np = sys.modules.get("numpy")
    return np is not None and type(obj) is np.ndarray


def export_tensor(t: Any, table: SegmentTable, sink: FdSink) -> list[Any]:
    """Wire fields of ``t``; its memory's descriptor goes into ``sink``. A quantized tensor
    has a ninth field, its quantization (``_quantization``): its integer storage is shared
    like any other."""
    if t.is_quantized:
        quant = _quantization(t)
        return [*_export_dense(t, table, sink), quant]
    return _export_dense(t, table, sink)


# A quantized dtype -> the integer dtype of its storage. Packed sub-byte ones (quint4x2,
# quint2x4) have no strided element of their own and are refused.
_QUANTIZED = {"quint8": "uint8", "qint8": "int8", "qint32": "int32"}
_ZERO_POINTS = {"quint8": (0, 255), "qint8": (-128, 127), "qint32": (-(2**31), 2**31 - 1)}  # their valid range
# Scales torch's kernels can compute with: they work in float32, where a larger scale is
# infinite and a smaller one is subnormal or zero (torch accepts both and yields inf or nan).
_SCALES = (2.0**-126, float.fromhex("0x1.fffffep+127"))


def _good_scale(v: Any) -> bool:
    return type(v) in (float, int) and _SCALES[0] <= v <= _SCALES[1]  # (refuses nan)


def _quantization(t: Any) -> list[Any]:
    import torch

    name = str(t.dtype).removeprefix("torch.")
    scheme = t.qscheme()
    if name not in _QUANTIZED or t.device.type != "cpu" or scheme not in (
            torch.per_tensor_affine, torch.per_channel_affine):
        raise SerializationError(
            f"cannot share a quantized {t.device.type} tensor of dtype {t.dtype} with scheme {scheme}: shared are "
            "CPU quint8, qint8 and qint32 tensors, per-tensor or per-channel affine; send t.dequantize(), or "
            "t.int_repr() with its scale and zero point")
    quant: list[Any]
    if scheme == torch.per_tensor_affine:
        scales = [float(t.q_scale())]
        quant = ["per_tensor", scales[0], int(t.q_zero_point())]
    else:
        scales = t.q_per_channel_scales().tolist()
        quant = ["per_channel", int(t.q_per_channel_axis()), scales, t.q_per_channel_zero_points().tolist()]
    bad = [v for v in scales if not _good_scale(v)]
    if bad:
        raise SerializationError(
            f"cannot share a quantized tensor with scale {bad[0]!r}: torch computes in float32, where it is "
            f"infinite, zero or subnormal (its values dequantize to inf or nan); requantize it with a scale "
            f"between {_SCALES[0]:.3g} and {_SCALES[1]:.3g}")
    return quant


def _export_dense(t: Any, table: SegmentTable, sink: FdSink) -> list[Any]:
    import torch

    if t.layout != torch.strided or t.is_sparse:
        raise SerializationError(f"cannot share a {t.layout} tensor: send a dense tensor (t.to_dense())")
    dtype = str(t.dtype).removeprefix("torch.")
    if dtype not in _TORCH_DTYPES and dtype not in _QUANTIZED:
        raise SerializationError(f"tensors of dtype {t.dtype} can't be shared")
    device = str(t.device)
    if t.device.type == "meta":
        raise SerializationError("a meta tensor has no data to send; materialize it (e.g. torch.empty_like)")
    if t.device.type != "cpu":
        t = t.detach().to("cpu")  # copied through CPU shared memory, restored on the device
    requires_grad = bool(t.requires_grad)
    shape, strides, offset = list(t.shape), list(t.stride()), t.storage_offset()
    n = extent(shape, strides, offset)
    if n == 0:
        return [dtype, shape, strides, 0, -1, 0, requires_grad, device]
    itemsize = t.element_size()
    storage = t.untyped_storage()
    seg = table.lookup(storage.data_ptr())
    if seg is not None and n * itemsize <= seg[1]:
        return [dtype, shape, strides, offset, sink.add(seg[0]), seg[1], requires_grad, device]
    # Copy the span the view reaches (from its first element) into a new sealed segment.
    # The sender's own tensor stays in private memory: torch can only move a storage into
    # shared memory in place through its own unsealed /dev/shm files, and a peer holding
    # such a file could truncate it under us (SIGBUS). To share writes, allocate in shared
    # memory from the start (actorbox.shared_empty / actorbox.share) or use a received tensor.
    # Only what this view reaches is copied: the receiver (an untrusted plugin, perhaps)
    # sees none of the rest of the storage (sending batch[0] shows it no other row).
    # Views of one fresh storage sent together arrive as views of one memory when each
    # lies within the span of one sent before it (the whole tensor, then views of it);
    # others get their own copy.
    key = storage.data_ptr()
    copied = sink.storages.get(key)
    if copied is not None:
        index, start, nbytes = copied
        at = offset * itemsize
        if start <= at and n * itemsize <= start + nbytes and (at - start) % itemsize == 0:
            return [dtype, shape, strides, offset - start // itemsize, index, nbytes, requires_grad, device]
    start = offset * itemsize
    nbytes = n * itemsize - start
    # By address, not through .numpy(): torch may be installed without numpy.
    index = sink.add_owned(table.copy_fresh(storage.data_ptr() + start, nbytes))
    sink.storages[key] = (index, start, nbytes)
    sink.keep.append(t)  # the storage's address must stay unique while this payload is built
    return [dtype, shape, strides, offset - start // itemsize, index, nbytes, requires_grad, device]


def import_tensor(fields: list[Any], table: SegmentTable, source: FdSource) -> Any:
    import torch

    quant = fields[8] if len(fields) == 9 else None
    dtype_name, shape, strides, offset, index, nbytes, requires_grad, device = fields[:8]
    if quant is not None:
        if type(dtype_name) is not str or dtype_name not in _QUANTIZED or requires_grad is not False \
                or device != "cpu":
            raise SerializationError(f"refused quantized tensor ({dtype_name!r}, {device!r})")
        dtype = getattr(torch, _QUANTIZED[dtype_name])  # its storage's
    elif type(dtype_name) is not str or dtype_name not in _TORCH_DTYPES or not hasattr(torch, dtype_name):
        raise SerializationError(f"refused tensor dtype {dtype_name!r}")
    else:
        dtype = getattr(torch, dtype_name)
    if type(requires_grad) is not bool or type(device) is not str:
        raise SerializationError("malformed tensor flags")
    shape, strides, offset = check_layout(shape, strides, offset)
    n = extent(shape, strides, offset)
    if index == -1:
        if n != 0:
            raise SerializationError("a non-empty tensor came without memory")
        t = torch.empty_strided(shape, strides, dtype=dtype)
        offset = 0  # nothing to offset into (a quantized one is built on t's empty storage)
    else:
        mm, _ = source.map(table, index, nbytes)
        itemsize = dtype.itemsize
        if n * itemsize > nbytes:
            raise SerializationError("a tensor's view reaches past the end of its shared memory")
        flat = torch.frombuffer(mm, dtype=dtype, count=nbytes // itemsize)
        t = flat.as_strided(shape, strides, offset)
    if quant is not None:
        return _quantized(t, dtype_name, shape, strides, offset, quant)
    if device != "cpu":
        t = _to_device(t, device)
    if requires_grad:
        if not (t.is_floating_point() or t.is_complex()):
            raise SerializationError("requires_grad is only valid for floating point and complex tensors")
        t.requires_grad_(True)
    return t


def _quantized(t: Any, dtype_name: str, shape: list[int], strides: list[int], offset: int, quant: Any) -> Any:
    """A quantized tensor on ``t``'s storage (no copy), after checking a peer's parameters."""
    import torch

    qdtype = getattr(torch, dtype_name)
    low, high = _ZERO_POINTS[dtype_name]
    ok = type(quant) is list and len(quant) >= 1
    kind = quant[0] if ok else None
    try:
        if kind == "per_tensor" and len(quant) == 3:
            scale, zero_point = quant[1], quant[2]
            if not _good_scale(scale) or type(zero_point) is not int or not low <= zero_point <= high:
                raise SerializationError("malformed quantization (scale, zero point)")
            q = torch._empty_affine_quantized([0], scale=float(scale), zero_point=zero_point, dtype=qdtype)
        elif kind == "per_channel" and len(quant) == 4:
            axis, scales, zero_points = quant[1], quant[2], quant[3]
            if not (type(axis) is int and 0 <= axis < len(shape) and type(scales) is list
                    and type(zero_points) is list and len(scales) == len(zero_points) == shape[axis]
                    and all(_good_scale(v) for v in scales)
                    and all(type(v) is int and low <= v <= high for v in zero_points)):
                raise SerializationError("malformed per-channel quantization (axis, scales, zero points)")
            q = torch._empty_per_channel_affine_quantized(
                [0], scales=torch.tensor(scales, dtype=torch.double),
                zero_points=torch.tensor(zero_points, dtype=torch.long), axis=axis, dtype=qdtype)
        else:
            raise SerializationError(f"refused quantization {kind!r}")
        return q.set_(t.untyped_storage(), offset, shape, strides)
    except SerializationError:
        raise
    except (RuntimeError, ValueError, TypeError, OverflowError) as exc:  # torch's own checks
        raise SerializationError(f"refused quantized tensor: {exc}") from None


def _to_device(t: Any, device: str) -> Any:
    import torch

    if not device.startswith("cuda"):
        raise SerializationError(f"refused tensor device {device!r}")
    if not torch.cuda.is_available():
        raise SerializationError(
            f"received a tensor from {device}, but this process has no CUDA device; move it to the CPU "
            "(t.cpu()) before sending, or run this actor with allow_gpu=True on a GPU machine")
    return t.to(device)


def export_ndarray(a: Any, table: SegmentTable, sink: FdSink) -> list[Any]:
    seen = sink.arrays.get(id(a))
    if seen is not None:
        return seen[1]
    fields = _export_ndarray(a, table, sink)
    sink.arrays[id(a)] = (a, fields)
    return fields


def _export_ndarray(a: Any, table: SegmentTable, sink: FdSink) -> list[Any]:
    import mmap


    if a.dtype.kind not in _NUMPY_KINDS:
        raise SerializationError(f"numpy arrays of dtype {a.dtype} can't be shared; convert to a numeric dtype")
    if not a.dtype.isnative:
        raise SerializationError(
            f"numpy arrays in non-native byte order ({a.dtype.str}) can't be shared; convert with "
            "a.astype(a.dtype.newbyteorder('='))")
    itemsize = a.dtype.itemsize
    if any(st < 0 or st % itemsize for st in a.strides):
        a = a.copy()  # negative or unaligned strides: send a compact copy
    shape, strides = list(a.shape), [st // itemsize for st in a.strides]
    addr = a.__array_interface__["data"][0]
    n_rel = extent(shape, strides, 0)
    if n_rel == 0:
        return [a.dtype.str, shape, strides, 0, -1, 0, False, "cpu"]
    # Follow the .base chain to the buffer; one of our mappings means no copy.
    obj, base = a, None
    for _ in range(64):
        # ndarray and stride-trick wrappers have .base; np.frombuffer's is a memoryview (.obj).
        obj = obj.obj if isinstance(obj, memoryview) else getattr(obj, "base", None)
        if obj is None:
            break
        if isinstance(obj, mmap.mmap):
            base = table.base_of(obj)
            break
    seg = table.lookup(base) if base is not None else None
    if seg is not None and base is not None and (addr - base) % itemsize == 0:
        offset = (addr - base) // itemsize
        if (offset + n_rel) * itemsize <= seg[1]:
            return [a.dtype.str, shape, strides, offset, sink.add(seg[0]), seg[1], False, "cpu"]
    # Copy the bytes the view spans, from its first element, into a new segment.
    span = n_rel * itemsize
    index = sink.add_owned(table.copy_fresh(addr, span))
    return [a.dtype.str, shape, strides, 0, index, span, False, "cpu"]


def import_ndarray(fields: list[Any], table: SegmentTable, source: FdSource) -> Any:
    import numpy as np

    dtype_str, shape, strides, offset, index, nbytes, _, device = fields
    if type(dtype_str) is not str or len(dtype_str) > 8:
        raise SerializationError("malformed array dtype")
    try:
        dtype = np.dtype(dtype_str)
    except TypeError:
        raise SerializationError(f"refused array dtype {dtype_str!r}") from None
    if dtype.kind not in _NUMPY_KINDS or not dtype.isnative or device != "cpu":
        raise SerializationError(f"refused array dtype {dtype_str!r}")
    shape, strides, offset = check_layout(shape, strides, offset)
    n = extent(shape, strides, offset)
    itemsize = dtype.itemsize
    if index == -1:
        if n != 0:
            raise SerializationError("a non-empty array came without memory")
        return np.empty(shape, dtype=dtype)
    mm, _ = source.map(table, index, nbytes)
    if n * itemsize > nbytes:
        raise SerializationError("an array's view reaches past the end of its shared memory")
    flat = np.frombuffer(mm, dtype=dtype, count=nbytes // itemsize)
    return np.lib.stride_tricks.as_strided(flat[offset:], shape=shape, strides=[s * itemsize for s in strides])


def shared_empty(table: SegmentTable, shape: tuple[int, ...], dtype: Any) -> Any:
    """An uninitialised tensor allocated in a (pooled) shared-memory segment."""
    import torch

    if not isinstance(dtype, torch.dtype):
        raise UsageError(f"shared_empty(): dtype must be a torch.dtype, not {dtype!r}")
    name = str(dtype).removeprefix("torch.")
    if name not in _TORCH_DTYPES:
        raise UsageError(
            f"shared_empty() can't allocate {dtype} in shared memory: allocate its integer storage "
            f"(e.g. {_QUANTIZED.get(name, 'uint8')}) and quantize from it, or send the tensor (a quantized "
            "CPU tensor of quint8, qint8 or qint32 is shared when sent)")
    if not all(type(d) is int and d >= 0 for d in shape):
        raise UsageError(f"shared_empty(): the shape must be non-negative ints, not {shape!r}")
    t = torch.empty(0, dtype=dtype)
    n = 1
    for d in shape:
        n *= d
    nbytes = n * t.element_size()
    if nbytes == 0:
        return torch.empty(shape, dtype=dtype)
    mm, _ = table.allocate(nbytes)
    return torch.frombuffer(mm, dtype=dtype, count=n).view(shape)


# -- CUDA IPC ----------------------------------------------------------------------

CUDA_IPC_FIELDS = 14
_CUDA_IPC_HANDLE_MAX = 256  # torch's handles: a cudaIpcMemHandle_t (64 bytes) with a small header
# torch's counter files (at::NewProcessWideShmHandle) and their int64 slots: the
# receiver decrements one when it frees the tensor, so only such a name and slot pass.
_TORCH_COUNTER = re.compile(rb"/torch_[0-9_]{1,64}")
_TORCH_COUNTER_SLOTS = 10000


def cuda_ipc_enabled() -> bool:
    return os.environ.get("ACTORBOX_ENABLE_CUDA_IPC", "").strip().lower() in ("1", "true", "yes", "on")


class CudaKeepAlive:
    """Holds shared CUDA storages for ``retention`` seconds, so a sender dropping its
    tensor right after a call can't free memory the receiver is about to open.

    After that, torch's own protocol keeps the memory: a block shared by IPC is freed
    only once each receiver has counted its reference down (in a counter file of the
    sender's /dev/shm, which a receiver in the same /dev/shm opens by name).
    Used from several threads in an actor (worker threads encode results): locked.
    """

    def __init__(self, retention: float = 30.0) -> None:
        self.retention = retention
        self._held: deque[tuple[float, Any]] = deque()
        self._lock = threading.Lock()

    def hold(self, storage: Any) -> None:
        now = time.monotonic()
        with self._lock:
            self._expire(now)
            self._held.append((now + self.retention, storage))

    def expire(self, now: float | None = None) -> int:
        """Drop every storage whose retention has passed; returns how many."""
        with self._lock:
            return self._expire(time.monotonic() if now is None else now)

    def _expire(self, now: float) -> int:
        n = 0
        while self._held and self._held[0][0] <= now:
            self._held.popleft()
            n += 1
        return n

    def clear(self) -> None:
        with self._lock:
            self._held.clear()

    def __len__(self) -> int:
        return len(self._held)


def export_cuda_ipc(t: Any, keepalive: CudaKeepAlive) -> list[Any]:
    """Wire fields of a CUDA tensor shared by IPC handle (see rebuild in ``import_cuda_ipc``)."""
    if getattr(t, "_actorbox_ipc", False) or getattr(t._base, "_actorbox_ipc", False):
        t = t.clone()  # memory opened from another process can't be exported again
    storage = t.untyped_storage()
    (device, handle, size_bytes, offset_bytes, ref_handle, ref_offset, event_handle,
     event_sync) = storage._share_cuda_()
    keepalive.hold(storage)
    dtype = str(t.dtype).removeprefix("torch.")
    return [dtype, list(t.shape), list(t.stride()), t.storage_offset(), int(device), bytes(handle),
            int(size_bytes), int(offset_bytes), bytes(ref_handle), int(ref_offset), bytes(event_handle),
            bool(event_sync), bool(t.requires_grad), "ipc"]


def import_cuda_ipc(fields: list[Any]) -> Any:
    """Open a CUDA tensor a peer shared by IPC handle, after checking every field."""
    import torch

    (dtype_name, shape, strides, offset, device, handle, size_bytes, offset_bytes, ref_handle, ref_offset,
     event_handle, event_sync, requires_grad, tag) = fields
    if tag != "ipc" or type(dtype_name) is not str or dtype_name not in _TORCH_DTYPES or not hasattr(torch, dtype_name):
        raise SerializationError(f"refused CUDA tensor dtype {dtype_name!r}")
    shape, strides, offset = check_layout(shape, strides, offset)
    if not (type(device) is int and device >= 0 and type(handle) is bytes and 0 < len(handle) <= _CUDA_IPC_HANDLE_MAX
            and type(size_bytes) is int and size_bytes >= 0 and type(offset_bytes) is int and offset_bytes >= 0
            and type(ref_handle) is bytes and _TORCH_COUNTER.fullmatch(ref_handle)
            and type(ref_offset) is int and 0 <= ref_offset < _TORCH_COUNTER_SLOTS
            and type(event_handle) is bytes and len(event_handle) <= _CUDA_IPC_HANDLE_MAX and type(event_sync) is bool
            and type(requires_grad) is bool):
        raise SerializationError("malformed CUDA IPC tensor")
    if not torch.cuda.is_available():
        raise SerializationError(
            "received a CUDA tensor by IPC handle, but this process has no CUDA device; unset "
            "ACTORBOX_ENABLE_CUDA_IPC in the sender (tensors then travel through CPU memory), or give "
            "this actor a GPU (SandboxPolicy(allow_gpu=True))")
    dtype = getattr(torch, dtype_name)
    itemsize = dtype.itemsize
    if extent(shape, strides, offset) * itemsize > size_bytes:
        raise SerializationError("a CUDA tensor's view reaches past the end of its allocation")
    try:
        torch.cuda._lazy_init()  # type: ignore[no-untyped-call]  # torch leaves it (and torch.cuda.init) unannotated
        storage = torch.UntypedStorage._new_shared_cuda(device, handle, size_bytes, offset_bytes, ref_handle,
                                                        ref_offset, event_handle, event_sync)
        t = torch.empty(0, dtype=dtype, device=f"cuda:{device}").set_(storage, offset, shape, strides)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise SerializationError(
            f"cannot open a CUDA IPC tensor ({str(exc).splitlines()[0]}): check that both processes see the "
            "same GPU, run as the same user with the same /dev/shm, and run the same torch and driver; or "
            "unset ACTORBOX_ENABLE_CUDA_IPC to copy through CPU memory") from None
    t._actorbox_ipc = True  # type: ignore[attr-defined]  # re-sharing it must clone (see export_cuda_ipc)
    if requires_grad:
        t.requires_grad_(True)
    return t
