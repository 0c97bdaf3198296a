"""Tensors and arrays between the host and real (sandboxed) actor processes.

Covers actorbox/_tensors.py and actorbox/_shm.py end to end: torch tensors and
numpy arrays in call arguments and results travel as sealed memfd segments whose
descriptors cross the socket. Bit-exact round trips for every dtype, views keep
their shape and strides (and, when already shared, their storage offset),
zero-size and 0-dim tensors, requires_grad, nested containers, shared-write
semantics both ways, no second copy of a tensor already in shared memory,
sending leaves the sender's own tensors working (views stay views of their base,
autograd and inference tensors still work), quantized tensors (quint8, qint8,
qint32, per-tensor and per-channel: their integer storage shared, their
parameters checked), refused kinds (packed quantized, sparse, object arrays,
meta), no descriptor, segment or mapping leaks on either side
after thousands of transfers, and an actor killed while holding tensors the host
also maps.

One Runtime and one actor serve the whole module per backend (an actor start is
a sandboxed process: about a second each), so the set stays fast.
"""

from __future__ import annotations

import gc
import math
import os
import signal
import warnings
from typing import Any

import anyio
import numpy as np
import pytest
import torch

import actorbox
from actorbox._context import process_caller
from actorbox._tensors import _TORCH_DTYPES

pytestmark = pytest.mark.anyio

CALL_TIMEOUT = 20.0
TORCH_DTYPE_NAMES = [n for n in _TORCH_DTYPES if hasattr(torch, n)]
NUMPY_DTYPES = ["bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
                "float16", "float32", "float64", "complex64", "complex128"]
FD_SLACK = 3  # fds a process may open lazily on its own (event loop internals); a leak grows with the count


# -- deterministic samples (the same in the host and in the actor: same torch/numpy) ----------


def sample(name: str, shape: list[int] | tuple[int, ...], seed: int = 0) -> torch.Tensor:
    """A tensor of dtype ``torch.<name>`` with reproducible contents (raw random bits for integers)."""
    dtype = getattr(torch, name)
    g = torch.Generator().manual_seed(seed)
    shape = tuple(shape)
    if dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=g) == 1
    if dtype.is_complex:
        return (torch.randn(shape, generator=g, dtype=torch.complex128) * 100).to(dtype)
    if dtype.is_floating_point:  # float8 types have no rand: built by conversion
        return (torch.randn(shape, generator=g, dtype=torch.float64) * 100).to(dtype)
    itemsize = torch.empty(0, dtype=dtype).element_size()
    raw = torch.randint(0, 256, (math.prod(shape) * itemsize,), dtype=torch.uint8, generator=g)
    return raw.view(dtype).reshape(shape)


def sample_array(dtype: str, shape: list[int] | tuple[int, ...], seed: int = 0) -> np.ndarray:
    """A numpy array of ``dtype`` with reproducible contents (raw random bytes, except bool)."""
    rng = np.random.default_rng(seed)
    shape = tuple(shape)
    dt = np.dtype(dtype)
    if dt.kind == "b":
        return rng.integers(0, 2, shape).astype(bool)
    raw = rng.integers(0, 256, math.prod(shape) * dt.itemsize, dtype=np.uint8)
    return raw.view(dt).reshape(shape)


def bits(t: torch.Tensor) -> torch.Tensor:
    """The bytes of ``t``'s elements in logical order (NaN-safe, float8-safe comparison)."""
    return t.detach().contiguous().reshape(-1).view(torch.uint8)


def assert_same_tensor(got: Any, want: torch.Tensor) -> None:
    assert isinstance(got, torch.Tensor), type(got)
    assert got.dtype == want.dtype
    assert got.shape == want.shape
    assert torch.equal(bits(got), bits(want))


def assert_same_array(got: Any, want: np.ndarray) -> None:
    assert type(got) is np.ndarray, type(got)
    assert got.dtype == want.dtype
    assert got.shape == want.shape
    assert got.tobytes() == want.tobytes()


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def memfd_mappings() -> int:
    """Mappings of our memfds in this process, as the kernel sees them."""
    with open("/proc/self/maps") as f:
        return sum(1 for line in f if "memfd:actorbox" in line)


def quantized() -> torch.Tensor:
    """A quantized tensor that can't be shared: packed 4-bit values have no strided element."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # quantized creation functions are deprecated in this torch
        return torch.quantize_per_tensor(torch.ones(4), 0.1, 0, torch.quint4x2)


QUANTIZED_KINDS = ["quint8", "qint8", "qint32", "per_channel", "view", "empty"]


def quantized_sample(kind: str) -> torch.Tensor:
    """A quantized tensor of ``kind`` with reproducible contents."""
    x = torch.randn(4, 6, generator=torch.Generator().manual_seed(7))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if kind in ("quint8", "qint8", "qint32"):
            return torch.quantize_per_tensor(x, 0.05, 3, getattr(torch, kind))
        if kind == "per_channel":
            scales = torch.linspace(0.01, 0.2, 6, dtype=torch.double)
            return torch.quantize_per_channel(x, scales, torch.arange(-3, 3), 1, torch.qint8)
        if kind == "view":
            return torch.quantize_per_tensor(x, 0.05, 3, torch.quint8).t()[1:, ::2]
        return torch.quantize_per_tensor(torch.randn(0, 3), 0.05, 3, torch.quint8)


def quantization(q: torch.Tensor) -> list[Any]:
    """Everything that makes ``q`` what it is: dtype, layout, integer values, parameters."""
    if q.qscheme() == torch.per_tensor_affine:
        params: list[Any] = [q.q_scale(), q.q_zero_point()]
    else:
        params = [q.q_per_channel_axis(), q.q_per_channel_scales().tolist(), q.q_per_channel_zero_points().tolist()]
    return [str(q.dtype), list(q.shape), list(q.stride()), q.int_repr().flatten().tolist(), str(q.qscheme()), params]


def integers_of(q: torch.Tensor) -> torch.Tensor:
    """The integer tensor on ``q``'s own storage (int_repr() is a copy)."""
    base = {torch.quint8: torch.uint8, torch.qint8: torch.int8, torch.qint32: torch.int32}[q.dtype]
    return torch.empty(0, dtype=base).set_(q.untyped_storage(), q.storage_offset(), q.shape, q.stride())


def sparse(kind: str) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sparse CSR support is "beta"
        dense = torch.eye(3)
        return dense.to_sparse() if kind == "coo" else dense.to_sparse_csr()


# -- the actor (travels by import path) ----------------------------------------------------


@actorbox.actor
class TensorBox:
    """Echoes, makes, inspects, keeps and writes tensors and arrays."""

    def __init__(self) -> None:
        self.kept: Any = None

    def echo(self, value):
        return value

    def first_after(self, t, padding, seconds):
        import time

        time.sleep(seconds)
        return int(t.flatten()[0])

    def make(self, name, shape, seed=0):
        return sample(name, shape, seed)

    def make_array(self, dtype, shape, seed=0):
        return sample_array(dtype, shape, seed)

    def layout(self, t):
        return [list(t.shape), list(t.stride()), t.storage_offset(), str(t.dtype).removeprefix("torch.")]

    def array_layout(self, a):
        return [list(a.shape), list(a.strides), a.dtype.str]

    def grad_info(self, t):
        return [t.is_leaf, t.requires_grad, t.grad_fn is None]

    def make_grad(self):
        return (torch.arange(4.0) * 2).requires_grad_(True)

    def keep(self, value):
        self.kept = value
        return value

    def kept_sum(self):
        return float(self.kept.sum())

    def fill(self, x, v):
        x.fill(v) if isinstance(x, np.ndarray) else x.fill_(v)

    def quantization(self, q):
        return quantization(q)

    def make_quantized(self, kind):
        return quantized_sample(kind)

    def write_integers(self, q, v):
        integers_of(q).fill_(v)

    def write_first_read_second(self, a, b):
        """Write a[0] = 42; report b[0] and whether a and b share memory."""
        a[0] = 42
        if isinstance(a, np.ndarray):
            return [float(b[0]), bool(np.shares_memory(a, b))]
        return [float(b[0]), a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()]

    def pair(self, kind):
        x = torch.zeros(4) if kind == "tensor" else np.zeros(4)
        return [x, x]

    def bad(self, kind):
        if kind == "object":
            return np.array([object()], dtype=object)
        if kind == "structured":
            return np.zeros(3, dtype=[("a", "i4"), ("b", "f8")])
        if kind == "big-endian":
            return np.zeros(3, dtype=">f8")
        if kind == "quantized":
            return quantized()
        return sparse(kind)

    def stats(self):
        gc.collect()
        segs = process_caller.get().codec.segments
        segs.spares.close()  # spare segments are a bounded cache, made again when needed
        return {"fds": fd_count(), "segments": len(segs), "created": segs.created, "maps": memfd_mappings()}

    def hold(self, *values):
        self.kept = values
        return values

    def die(self, *values):
        self.kept = values
        os.kill(os.getpid(), signal.SIGKILL)


# -- fixtures: one Runtime and one actor per backend for the module ---------------------------


@pytest.fixture(scope="module", params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Module scope (overrides tests/conftest.py's): the Runtime below lives across this module's tests."""
    return request.param  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
async def rt(anyio_backend: str) -> Any:
    async with actorbox.Runtime() as runtime:
        # Leak checks call gc.collect() often: freezing what exists now makes each one scan
        # only what the tests create (milliseconds instead of ~70 ms with torch loaded).
        gc.collect()
        gc.freeze()
        try:
            yield runtime
        finally:
            gc.unfreeze()


_boxes: dict[actorbox.Runtime, actorbox.ActorHandle] = {}


@pytest.fixture
async def box(rt: actorbox.Runtime) -> actorbox.ActorHandle:
    """The module's TensorBox actor, started once per Runtime (and again only if a test killed it)."""
    h = _boxes.get(rt)
    if h is None or states(rt).get(actorbox.info(h).label) != "alive":
        h = _boxes[rt] = await fresh_box(rt)
    return h


async def fresh_box(rt: actorbox.Runtime) -> actorbox.ActorHandle:
    with anyio.fail_after(CALL_TIMEOUT):
        return await rt.start(TensorBox)


def states(rt: actorbox.Runtime) -> dict[str, str]:
    return {a.label: a.state for a in rt.actors()}


async def call(fut: Any) -> Any:
    with anyio.fail_after(CALL_TIMEOUT):
        return await fut


# -- every dtype, bit-exact ------------------------------------------------------------------


@pytest.mark.parametrize("name", TORCH_DTYPE_NAMES)
async def test_every_dtype_round_trips_host_actor_host_bit_exact(box, name):
    """A tensor of every shareable dtype sent to an actor and echoed back has the same dtype, shape and bytes."""
    x = sample(name, (5, 7), seed=1)
    assert_same_tensor(await call(box.echo(x)), x)
    assert (await call(box.layout(x)))[3] == name


@pytest.mark.parametrize("name", TORCH_DTYPE_NAMES)
async def test_every_dtype_made_in_the_actor_arrives_bit_exact(box, name):
    """A tensor of every shareable dtype created inside the actor arrives with the same dtype, shape and bytes."""
    assert_same_tensor(await call(box.make(name, [6, 3], 2)), sample(name, (6, 3), seed=2))


# -- views and offsets -----------------------------------------------------------------------

FRESH_VIEWS = {
    "step slices": lambda: sample("float32", (40, 50))[::2, 1::3],
    "transpose": lambda: sample("float64", (7, 9)).t(),
    "permute 3-d": lambda: sample("int32", (4, 5, 6)).permute(2, 0, 1),
    "column": lambda: sample("bfloat16", (8, 9))[:, 4:5],
    "middle of a big storage": lambda: sample("int16", (100_000,))[50_000:50_010],
    "block in the middle": lambda: sample("float32", (300, 300))[100:110, 200:205],
    "expand (stride 0)": lambda: sample("float32", (3,)).expand(4, 3),
    "expand two dims": lambda: sample("complex64", (5,))[None, :, None].expand(3, 5, 2),
    "overlapping windows": lambda: sample("uint8", (64,)).as_strided((10, 4), (3, 1), 7),
}


@pytest.mark.parametrize("which", list(FRESH_VIEWS))
async def test_fresh_view_arrives_with_same_shape_and_strides(box, which):
    """A non-contiguous view (not yet shared) reaches the actor and comes back with its shape, strides and values."""
    x = FRESH_VIEWS[which]()
    shape, strides, _, _ = await call(box.layout(x))
    assert (shape, strides) == (list(x.shape), list(x.stride()))
    y = await call(box.echo(x))
    assert_same_tensor(y, x)
    assert y.stride() == x.stride()


async def test_fresh_view_copies_only_the_span_it_reaches(box):
    """Sending a 10-element view of a 100,000-element tensor copies just those 10 elements, not the storage."""
    x = sample("int16", (100_000,))[50_000:50_010]
    y = await call(box.echo(x))
    assert_same_tensor(y, x)
    assert y.untyped_storage().nbytes() == 10 * 2


@pytest.mark.parametrize("row", [0, 1, 3])
async def test_a_row_of_a_small_batch_shows_the_receiver_no_other_row(box, row):
    """A storage up to 4x the view was copied whole: sending batch[row] to an actor showed
    it the other rows. Only the view's own span is copied, whatever the storage's size."""
    batch = torch.arange(4 * 1000, dtype=torch.float32).reshape(4, 1000)
    y = await call(box.echo(batch[row]))
    assert torch.equal(y, batch[row])
    assert y.untyped_storage().nbytes() == 1000 * 4


SHARED_VIEWS = {
    "block": lambda s: s[10:20, 30:40],
    "step slices": lambda s: s[::3, 1::7],
    "transpose": lambda s: s.t(),
    "row tail": lambda s: s[5, 7:9],
    "flat middle": lambda s: s.view(-1)[5000:5010],
    "expand (stride 0)": lambda s: s[3:4, :5].expand(6, 5),
    "0-dim element": lambda s: s[2, 2],
    "empty slice": lambda s: s[50:50],
}


@pytest.mark.parametrize("which", list(SHARED_VIEWS))
async def test_shared_view_keeps_shape_strides_and_offset_without_a_copy(rt, box, which):
    """A view of a tensor already in shared memory keeps shape, strides and storage offset both ways, uncopied."""
    s = await call(box.make("float32", [100, 100], 3))
    v = SHARED_VIEWS[which](s)
    created = rt.codec.segments.created
    actor_created = (await call(box.stats()))["created"]
    shape, strides, offset, _ = await call(box.layout(v))
    assert (shape, strides) == (list(v.shape), list(v.stride()))
    if v.numel():
        assert offset == v.storage_offset()
    y = await call(box.echo(v))
    assert_same_tensor(y, v)
    assert y.stride() == v.stride()
    if v.numel():
        assert y.storage_offset() == v.storage_offset()
    assert rt.codec.segments.created == created, "the host copied a tensor that was already shared"
    assert (await call(box.stats()))["created"] == actor_created, "the actor copied a tensor that was already shared"
    if v.numel():
        first = (0,) * v.dim()
        y[first] = -1234.5
        assert float(v[first]) == -1234.5, "the echoed view is not the same memory as the original"


# -- zero-size, 0-dim, requires_grad ---------------------------------------------------------


@pytest.mark.parametrize("shape", [(0,), (3, 0), (0, 4, 5), (2, 0, 3)])
async def test_zero_size_tensors_round_trip(box, shape):
    """Zero-size tensors of several shapes and dtypes cross both ways with their shape and dtype."""
    for name in ("float32", "int64", "bool", "bfloat16", "complex128"):
        x = sample(name, shape)
        y = await call(box.echo(x))
        assert_same_tensor(y, x)
        assert y.stride() == x.stride()
        assert_same_tensor(await call(box.make(name, list(shape))), x)
    a = sample_array("float64", shape)
    assert_same_array(await call(box.echo(a)), a)
    assert_same_array(await call(box.make_array("int8", list(shape))), sample_array("int8", shape))


async def test_zero_dim_scalars_round_trip(box):
    """0-dim tensors and arrays (float, int, bool, complex, bfloat16) cross both ways as 0-dim values."""
    for x in (torch.tensor(3.5), torch.tensor(-7), torch.tensor(True), torch.tensor(1 + 2j),
              torch.tensor(0.25, dtype=torch.bfloat16)):
        y = await call(box.echo(x))
        assert_same_tensor(y, x)
        assert y.dim() == 0
    assert_same_tensor(await call(box.make("uint64", [])), sample("uint64", ()))
    for a in (np.array(2.5), np.array(-3, dtype=np.int16), np.array(True), np.array(1j, dtype=np.complex64)):
        assert_same_array(await call(box.echo(a)), a)


async def test_requires_grad_arrives_as_a_leaf_that_requires_grad(box):
    """A tensor requiring grad (leaf or not) arrives as a leaf with requires_grad True and gradients flow."""
    leaf = torch.arange(3.0).requires_grad_(True)
    for x in (leaf, leaf * 2):
        assert await call(box.grad_info(x)) == [True, True, True]
        y = await call(box.echo(x))
        assert (y.is_leaf, y.requires_grad, y.grad) == (True, True, None)
        assert torch.equal(y.detach(), x.detach())
        (y * 3).sum().backward()
        assert torch.equal(y.grad, torch.full((3,), 3.0))
    made = await call(box.make_grad())
    assert (made.is_leaf, made.requires_grad) == (True, True)
    assert torch.equal(made.detach(), torch.arange(4.0) * 2)
    plain = await call(box.echo(torch.arange(3.0)))
    assert not plain.requires_grad
    ints = await call(box.echo(torch.arange(3)))  # integer tensors can't require grad
    assert not ints.requires_grad


# -- containers and aliasing -----------------------------------------------------------------


def assert_same_structure(got: Any, want: Any) -> None:
    assert type(got) is type(want), (type(got), type(want))
    if isinstance(want, torch.Tensor):
        assert_same_tensor(got, want)
    elif isinstance(want, np.ndarray):
        assert_same_array(got, want)
    elif isinstance(want, dict):
        assert list(got) == list(want)
        for k in want:
            assert_same_structure(got[k], want[k])
    elif isinstance(want, (list, tuple)):
        assert len(got) == len(want)
        for g, w in zip(got, want, strict=True):
            assert_same_structure(g, w)
    else:
        assert got == want


async def test_nested_containers_of_tensors_and_arrays_round_trip(box):
    """Tensors and arrays nested in dicts, lists and tuples among plain values come back in the same structure."""
    value = {
        "weights": [sample("float32", (3, 4)), (sample_array("int64", (5,)), 3, "s"),
                    {"deep": [sample("bool", (2,)), None]}],
        "meta": (1.5, sample_array("complex64", (2, 2)), b"raw", {"k": [sample("bfloat16", (4,)).t()]}),
        "n": 7,
        "empty": [sample("float64", (0, 3)), sample_array("uint8", (0,))],
    }
    assert_same_structure(await call(box.echo(value)), value)
    pair = (await call(box.make("int8", [4])), await call(box.make_array("uint16", [3])))
    made = await call(box.echo({"pair": pair}))
    assert_same_structure(made, {"pair": (sample("int8", (4,)), sample_array("uint16", (3,)))})


async def test_same_fresh_tensor_twice_arrives_as_one_shared_memory(box):
    """A host tensor (not yet shared) passed twice in one call arrives as two tensors sharing memory."""
    t = torch.zeros(4)
    assert await call(box.write_first_read_second(t, t)) == [42.0, True]


async def test_same_fresh_array_twice_arrives_as_one_shared_memory(box):
    """A host numpy array (not yet shared) passed twice in one call arrives as two arrays sharing memory."""
    a = np.zeros(4)
    assert await call(box.write_first_read_second(a, a)) == [42.0, True]


async def test_same_shared_tensor_twice_arrives_as_one_shared_memory(box):
    """A tensor already in shared memory passed twice in one call arrives as two tensors sharing memory."""
    s = await call(box.make("float32", [4]))
    assert await call(box.write_first_read_second(s, s)) == [42.0, True]
    a = await call(box.make_array("float64", [4]))
    assert await call(box.write_first_read_second(a, a)) == [42.0, True]


@pytest.mark.parametrize("kind", ["tensor", "array"])
async def test_same_value_twice_in_a_result_arrives_sharing_memory(box, kind):
    """An actor returning one fresh tensor (or array) twice gives the host two values sharing memory."""
    x, y = await call(box.pair(kind))
    x[0] = 42
    assert float(y[0]) == 42.0


# -- numpy -----------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", NUMPY_DTYPES)
async def test_numpy_dtypes_round_trip_bit_exact(box, dtype):
    """numpy arrays of every plain numeric dtype cross both ways with the same dtype, shape and bytes."""
    a = sample_array(dtype, (6, 5), seed=4)
    assert_same_array(await call(box.echo(a)), a)
    assert_same_array(await call(box.make_array(dtype, [3, 7], 5)), sample_array(dtype, (3, 7), seed=5))


ARRAY_VIEWS = {
    "step slices": lambda: sample_array("float64", (40, 50))[::2, 1::3],
    "transpose": lambda: sample_array("int32", (7, 9)).T,
    "fortran order": lambda: np.asfortranarray(sample_array("float32", (6, 8))),
    "middle of a big array": lambda: sample_array("int32", (1_000_000,))[500_000:500_010],
    "block in the middle": lambda: sample_array("uint16", (300, 300))[100:110, 200:205],
    "broadcast (stride 0)": lambda: np.broadcast_to(sample_array("float64", (5,)), (4, 5)),
}


@pytest.mark.parametrize("which", list(ARRAY_VIEWS))
async def test_numpy_views_keep_shape_and_strides(box, which):
    """A non-contiguous numpy view reaches the actor and comes back with its shape, strides and values."""
    a = ARRAY_VIEWS[which]()
    assert await call(box.array_layout(a)) == [list(a.shape), list(a.strides), a.dtype.str]
    b = await call(box.echo(a))
    assert_same_array(b, a)
    assert b.strides == a.strides


async def test_numpy_negative_strides_arrive_with_the_same_values(box):
    """A numpy view with negative strides arrives with the same shape and values (as a compact copy)."""
    a = sample_array("float64", (8, 9))[::-1, ::-2]
    assert_same_array(await call(box.echo(a)), a)


async def test_shared_numpy_view_is_not_copied_and_aliases_the_original(rt, box):
    """A view of an array already in shared memory is re-sent uncopied, with its strides, as the same memory."""
    a = await call(box.make_array("float64", [40, 50], 6))
    created = rt.codec.segments.created
    for v in (a[5:7, 10:20], a[::2, 1::3], a.T, a[3]):
        b = await call(box.echo(v))
        assert_same_array(b, v)
        assert b.strides == v.strides
        b[(0,) * b.ndim] = -99.0
        assert v[(0,) * v.ndim] == -99.0
    assert rt.codec.segments.created == created


@pytest.mark.parametrize("shape", [(0,), (3, 0), (0, 2, 2)])
async def test_numpy_zero_size_round_trip(box, shape):
    """Zero-size numpy arrays of several shapes cross both ways with their shape and dtype."""
    for dtype in ("float32", "bool", "complex128"):
        a = sample_array(dtype, shape)
        assert_same_array(await call(box.echo(a)), a)
        assert_same_array(await call(box.make_array(dtype, list(shape))), a)


@pytest.mark.parametrize("kind", ["object", "structured", "big-endian", "unicode", "datetime"])
async def test_numpy_non_numeric_dtypes_are_refused_from_the_host(box, kind):
    """Sending an object, structured, non-native-byteorder, string or datetime array raises SerializationError."""
    a = {
        "object": np.array([object(), 1], dtype=object),
        "structured": np.zeros(3, dtype=[("a", "i4"), ("b", "f8")]),
        "big-endian": np.arange(3, dtype=">f8"),
        "unicode": np.array(["ab", "c"]),
        "datetime": np.zeros(2, dtype="M8[s]"),
    }[kind]
    with pytest.raises(actorbox.SerializationError, match="can't be shared"):
        await call(box.echo(a))
    assert await call(box.echo(1)) == 1


async def test_a_big_endian_array_is_refused_with_the_conversion_to_make(box):
    with pytest.raises(actorbox.SerializationError, match=r"newbyteorder\('='\)"):
        await call(box.echo(np.arange(3, dtype=">f8")))


@pytest.mark.parametrize("kind", ["object", "structured", "big-endian"])
async def test_numpy_non_numeric_dtypes_are_refused_from_the_actor(box, kind):
    """An actor returning an object, structured or non-native-byteorder array fails the call with SerializationError."""
    with pytest.raises(actorbox.SerializationError, match="can't be shared"):
        await call(box.bad(kind))


# -- shared-write visibility -----------------------------------------------------------------


async def test_host_write_to_a_received_tensor_is_seen_by_the_actor(box):
    """A tensor the actor kept and returned, written in place by the host, shows the write in the actor."""
    t = await call(box.keep(torch.zeros(8)))
    assert await call(box.kept_sum()) == 0.0
    t += 5
    assert await call(box.kept_sum()) == 40.0
    a = await call(box.keep(np.zeros(8)))
    a[:] = 2.5
    assert await call(box.kept_sum()) == 20.0


async def test_actor_write_to_a_shared_tensor_is_seen_by_the_host(box):
    """A shared tensor (or array) the host sends, filled in place by the actor, shows the write in the host."""
    t = await call(box.make("float32", [16], 7))
    assert await call(box.fill(t, 3.0)) is None
    assert torch.equal(t, torch.full((16,), 3.0))
    view = t[2:10:2]
    await call(box.fill(view, -1.0))
    assert t.tolist() == [3.0, 3.0, -1.0, 3.0, -1.0, 3.0, -1.0, 3.0, -1.0] + [3.0] * 7
    a = await call(box.make_array("int32", [4, 4], 8))
    await call(box.fill(a.T, 11))
    assert (a == 11).all()


async def test_already_shared_tensor_is_never_copied_again(rt, box):
    """Re-sending a received tensor creates no new segment in the host; a fresh tensor is copied exactly once."""
    s = await call(box.make("float64", [1000], 9))
    created = rt.codec.segments.created
    actor_created = (await call(box.stats()))["created"]
    for _ in range(5):
        s = await call(box.echo(s))
    await call(box.echo([s, s[10:], s.view(10, 100).t()]))
    assert rt.codec.segments.created == created
    assert (await call(box.stats()))["created"] == actor_created
    await call(box.echo(torch.ones(10)))
    assert rt.codec.segments.created == created + 1


async def test_a_tensor_that_comes_back_reuses_the_senders_mapping(rt, box):
    """The host's shared tensor, echoed back, lands on the very same mapping: no second mmap, no new fds."""
    t = actorbox.shared_empty(1 << 16)
    t.fill_(1.0)
    mapped = len(rt.codec.segments)
    fds = len(os.listdir("/proc/self/fd"))
    for _ in range(20):
        back = await call(box.echo(t))
        assert back.data_ptr() == t.data_ptr()
    back[0] = 5.0
    assert float(t[0]) == 5.0
    assert len(rt.codec.segments) == mapped
    assert len(os.listdir("/proc/self/fd")) == fds


# -- sending leaves the sender's own tensors working ---------------------------------------


async def test_fresh_host_tensor_is_copied_once_and_stays_private(rt, box):
    """A host tensor not in shared memory is copied into one new segment; the actor's write to it stays there."""
    t = torch.zeros(6)
    created = rt.codec.segments.created
    await call(box.fill(t, 3.0))
    assert rt.codec.segments.created == created + 1
    assert torch.equal(t, torch.zeros(6)), "documented: sending does not move the sender's tensor to shared memory"


@pytest.mark.parametrize("dtype", [torch.quint8, torch.qint8, torch.qint32, torch.quint4x2])
async def test_shared_empty_and_share_refuse_quantized_dtypes_with_a_remedy(rt, dtype):
    """They made torch read the pool's memory as a quantized tensor, which crashed the
    process (SIGSEGV); sending a quantized tensor shares it already."""
    with pytest.raises(TypeError, match="quantize from it"):
        actorbox.shared_empty(4, dtype=dtype)
    if dtype is not torch.quint4x2:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch 2.13 deprecates quantized creation
            q = torch.quantize_per_tensor(torch.rand(4), 0.1, 0, dtype)
        with pytest.raises(TypeError, match="quantize from it"):
            actorbox.share(q)


@pytest.mark.parametrize("shape", [(-1, 4), (2.5,)])
async def test_shared_empty_refuses_a_bad_shape_clearly(rt, shape):
    with pytest.raises(ValueError, match="non-negative ints"):
        actorbox.shared_empty(*shape)


async def test_shared_empty_tensor_is_sent_uncopied_and_shares_writes_both_ways(rt, box):
    """A tensor from actorbox.shared_empty (or share) crosses with no copy; writes on either side are seen by both."""
    t = actorbox.shared_empty(4, 4, dtype=torch.float64)
    t.zero_()
    s = actorbox.share(torch.arange(5.0))
    created = rt.codec.segments.created
    await call(box.fill(t, 3.0))
    assert torch.equal(t, torch.full((4, 4), 3.0, dtype=torch.float64))
    await call(box.keep(s))
    s.mul_(2)
    assert await call(box.kept_sum()) == 20.0
    assert rt.codec.segments.created == created


async def test_sending_a_view_keeps_it_aliased_with_its_base(box):
    """After a view of a host tensor is sent, the view and its base in the host are still one memory."""
    base = torch.zeros(10)
    view = base[2:5]
    await call(box.echo(view))
    base[3] = 7.0
    assert float(view[1]) == 7.0, "sending the view detached it from its base"
    view[0] = -1.0
    assert float(base[2]) == -1.0


async def test_two_views_of_one_fresh_storage_arrive_sharing_memory(box):
    """A host tensor and a view of it, sent in one call, arrive in the actor as views of one memory."""
    a = torch.zeros(6)
    assert await call(box.write_first_read_second(a, a[:3])) == [42.0, True]


async def test_sending_a_tensor_saved_for_backward_keeps_backward_working(box):
    """Sending a leaf that a pending autograd graph saved does not invalidate that graph's backward()."""
    w = torch.arange(3.0).requires_grad_(True)
    loss = (w * w).sum()  # saves w for the backward pass
    await call(box.echo(w))
    loss.backward()
    assert torch.equal(w.grad, torch.arange(3.0) * 2)


async def test_inference_mode_tensor_can_be_sent(box):
    """A tensor created under torch.inference_mode() crosses like any other (the call does not fail)."""
    with torch.inference_mode():
        t = torch.arange(4.0)
    assert_same_tensor(await call(box.echo(t)), torch.arange(4.0))


# -- refused kinds ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", QUANTIZED_KINDS)
async def test_quantized_tensors_round_trip_with_their_quantization(box, kind):
    """quint8, qint8, qint32, per-tensor and per-channel, views and empty: the actor sees the
    same integers, layout and parameters, and both directions come back bit-exact."""
    q = quantized_sample(kind)
    assert await call(box.quantization(q)) == quantization(q)
    assert quantization(await call(box.echo(q))) == quantization(q)
    assert quantization(await call(box.make_quantized(kind))) == quantization(q)


async def test_a_quantized_tensor_is_shared_memory_both_ways(rt, box):
    """Its integer storage is a segment like any other: an in-place write on either side is
    seen by the other, and sending it again copies nothing."""
    q = await call(box.make_quantized("qint8"))
    created = rt.codec.segments.created
    await call(box.write_integers(q, 5))
    assert q.int_repr().eq(5).all(), "the actor's write is not seen by the host"
    assert (q.q_scale(), q.q_zero_point()) == (0.05, 3)
    integers_of(q).fill_(-2)
    assert (await call(box.quantization(q)))[3] == [-2] * q.numel(), "the host's write is not seen by the actor"
    assert rt.codec.segments.created == created, "the host copied a tensor that was already shared"


@pytest.mark.parametrize("scale", [1e300, 1e-40])
async def test_a_quantized_tensor_whose_scale_float32_cannot_hold_is_refused_with_a_remedy(box, scale):
    """torch accepts such a scale and dequantizes to inf or nan; the sender is told to
    requantize, and the receiver refuses one a peer forged (tests/security)."""
    q = torch._empty_affine_quantized([4], scale=scale, zero_point=0, dtype=torch.quint8)
    with pytest.raises(actorbox.SerializationError, match="requantize"):
        await call(box.echo(q))
    assert await call(box.echo("still fine")) == "still fine"


@pytest.mark.parametrize("kind", ["quantized", "coo", "csr"])
async def test_quantized_and_sparse_tensors_are_refused_with_a_remedy(box, kind):
    """Packed quantized (quint4x2) and sparse tensors fail with a SerializationError saying
    what to send instead, both directions."""
    t = quantized() if kind == "quantized" else sparse(kind)
    remedy = "dequantize" if kind == "quantized" else "dense"
    with pytest.raises(actorbox.SerializationError, match=remedy):
        await call(box.echo(t))
    with pytest.raises(actorbox.SerializationError, match=remedy):
        await call(box.bad(kind))
    assert await call(box.echo("still fine")) == "still fine"


async def test_meta_tensor_is_refused_with_serialization_error(box):
    """A tensor without data (device 'meta') fails the call with SerializationError, not another exception."""
    with pytest.raises(actorbox.SerializationError):
        await call(box.echo(torch.empty(3, device="meta")))


async def test_tensors_sent_to_a_busy_actor_arrive_as_themselves(rt, box):
    """Calls queued behind a full socket: each tensor's descriptor is the one it was sent
    with, though the host closed its own and opened new files (here, put objects)
    meanwhile. A queued call kept only the number, and delivered whatever file took it."""
    padding = b"p" * (200 << 10)  # a few calls fill the socket's buffer
    calls, puts = [], []
    for i in range(24):
        calls.append(box.first_after(torch.full((256,), i, dtype=torch.int64), padding, 0.01))
        puts.append(await rt.put(torch.full((256,), 4242, dtype=torch.int64)))
    with anyio.fail_after(60):
        assert [await c for c in calls] == list(range(24))
    for ref in puts:
        await ref.release()


# -- no leaks --------------------------------------------------------------------------------


def _dev_shm() -> set[str]:
    try:
        return set(os.listdir("/dev/shm"))
    except FileNotFoundError:
        return set()


def _host_stats(rt: actorbox.Runtime) -> dict[str, int]:
    gc.collect()
    rt.codec.segments.spares.close()  # spare segments are a bounded cache, made again when needed
    return {"fds": fd_count(), "segments": len(rt.codec.segments), "maps": memfd_mappings()}


async def _assert_no_growth(rt, box, host0, actor0) -> None:
    host1 = _host_stats(rt)
    actor1 = await call(box.stats())
    assert host1["fds"] <= host0["fds"] + FD_SLACK, (host0, host1)
    assert host1["segments"] <= host0["segments"] + 1, (host0, host1)
    assert host1["maps"] <= host0["maps"] + 1, (host0, host1)
    assert actor1["fds"] <= actor0["fds"] + FD_SLACK, (actor0, actor1)
    assert actor1["segments"] <= actor0["segments"] + 1, (actor0, actor1)
    assert actor1["maps"] <= actor0["maps"] + 1, (actor0, actor1)


async def test_ten_thousand_shared_transfers_leak_nothing(rt):
    """10,000 echoes of a shared tensor leave host and actor fds, segments and mappings flat; nothing in /dev/shm."""
    box = await fresh_box(rt)
    shm0 = _dev_shm()
    s = await call(box.make("float32", [64], 10))
    for _ in range(20):  # warm up whatever is opened lazily
        await box.echo(s)
    host0, actor0 = _host_stats(rt), await call(box.stats())
    with anyio.fail_after(45):
        for _ in range(10_000):
            await box.echo(s)
    await _assert_no_growth(rt, box, host0, actor0)
    assert {n for n in _dev_shm() - shm0 if "actorbox" in n or "torch" in n or n.startswith("psm_")} == set()
    await rt.stop(box)


async def test_two_thousand_fresh_transfers_leak_nothing(rt):
    """2,000 fresh tensors and 2,000 fresh arrays sent to the actor leave fds, segments and mappings flat."""
    box = await fresh_box(rt)
    shm0 = _dev_shm()
    for _ in range(20):
        await box.echo(torch.ones(16))
    host0, actor0 = _host_stats(rt), await call(box.stats())
    created = rt.codec.segments.created
    with anyio.fail_after(45):
        for i in range(2_000):
            await box.echo(torch.full((16,), float(i)))
            await box.echo(np.full(16, i))
    assert rt.codec.segments.created == created + 4_000
    await _assert_no_growth(rt, box, host0, actor0)
    assert {n for n in _dev_shm() - shm0 if "actorbox" in n or "torch" in n or n.startswith("psm_")} == set()
    await rt.stop(box)


async def test_unread_results_release_their_segments(rt, box):
    """Results never awaited (their Futures dropped) still release their descriptors and segments."""
    s = await call(box.make("float32", [64], 11))
    await box.echo(s)
    host0 = _host_stats(rt)
    futs = [box.echo(s) for _ in range(200)]
    await call(futs[-1])  # replies arrive in order: all are in by now
    del futs
    host1 = _host_stats(rt)
    assert host1["fds"] <= host0["fds"] + FD_SLACK, (host0, host1)
    assert host1["segments"] <= host0["segments"] + 1, (host0, host1)


# -- an actor killed while holding tensors ---------------------------------------------------


async def test_actor_killed_while_holding_tensors_leaves_host_tensors_valid(rt, box):
    """A SIGKILLed actor fails its call (ActorDiedError); shared host tensors stay valid; fds return to baseline."""
    assert await call(box.echo(1)) == 1  # the module's actor is up before the baseline
    host0 = _host_stats(rt)
    victim = await fresh_box(rt)
    t, a = await call(victim.hold(sample("float32", (256, 256), 12), sample_array("int64", (1000,), 13)))
    s = await call(victim.make("float64", [32], 14))
    with pytest.raises(actorbox.ActorDiedError):
        # It holds t, a and s (mapped by the host too) and the call's own arguments when it dies.
        await call(victim.die(t, a, s[::2], torch.arange(8), np.ones(3)))
    assert states(rt)[actorbox.info(victim).label] == "dead"
    gc.collect()
    assert_same_tensor(t, sample("float32", (256, 256), 12))
    assert_same_array(a, sample_array("int64", (1000,), 13))
    assert_same_tensor(s, sample("float64", (32,), 14))
    t.add_(1)
    a += 1
    assert float(t[0, 0]) == float(sample("float32", (256, 256), 12)[0, 0]) + 1
    assert int(a[-1]) == int(sample_array("int64", (1000,), 13)[-1]) + 1
    del t, a, s
    for _ in range(100):  # the supervisor closes the dead actor's connection asynchronously
        host1 = _host_stats(rt)
        if host1["fds"] <= host0["fds"] and host1["segments"] <= host0["segments"]:
            break
        await anyio.sleep(0.05)
    assert host1["fds"] <= host0["fds"], (host0, host1)
    assert host1["segments"] <= host0["segments"], (host0, host1)
    assert host1["maps"] <= host0["maps"], (host0, host1)
    assert await call(box.echo(5)) == 5
