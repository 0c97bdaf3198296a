"""The object store (actorbox/_objects.py) with a real Runtime and real (sandboxed) actors.

Covers ``rt.put`` / ``await ref`` in the host (the value shares memory with the
store), refs passed to actors (top-level: replaced by the value; nested: an
ObjectRef the actor can await and release), explicit release, time-based
retention (Runtime option, per-put override, ``ACTORBOX_OBJECT_RETENTION``),
the capacity limit, ``stats()``, the ``object.*`` trace events, and no
descriptor or segment leaks across many put/release cycles or after the Runtime
exits.

Tests that talk to an actor share one Runtime and one actor per backend (an
actor start is a sandboxed process); tests of the store alone use their own
short-lived Runtime (no actor process, so cheap), so their stats start at zero.
"""

from __future__ import annotations

import gc
import os
import time
from typing import Any

import anyio
import numpy as np
import pytest
import torch
from structlog.testing import capture_logs

import actorbox

pytestmark = pytest.mark.anyio

CALL_TIMEOUT = 20.0
FD_SLACK = 3  # descriptors a loop may open lazily on its own; a leak grows with the cycle count
MB = 1 << 20


def sample(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    """A float32 tensor with reproducible contents (the same in host and actor)."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def bits(t: torch.Tensor) -> bytes:
    return t.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


# -- the actor (travels by import path) ----------------------------------------------------


@actorbox.actor
class Holder:
    """Inspects, writes and resolves what it is given."""

    def make(self, n, seed=0):
        return sample((n,), seed)

    def plain(self, x):
        return x

    def describe(self, x):
        """Type name, dtype, shape and raw bytes of a received tensor."""
        return [type(x).__name__, str(x.dtype), list(x.shape), bits(x)]

    def fill(self, t, v):
        t.fill_(v)

    async def resolve_nested(self, refs):
        """Each element's type and, for ObjectRefs, the bytes of the awaited tensor."""
        out = []
        for r in refs:
            value = await r
            out.append([type(r).__name__, isinstance(r, actorbox.ObjectRef), r.object_id, bits(value)])
        return out

    async def release_nested(self, refs):
        for r in refs:
            await r.release()

    async def await_nested(self, refs):
        return [bits(await r) for r in refs]


@pytest.fixture(scope="module", params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Module scope (overrides tests/conftest.py's): the Runtime below lives across this module's tests."""
    return request.param  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
async def shared_rt(anyio_backend: str) -> Any:
    async with actorbox.Runtime() as runtime:
        yield runtime


_holders: dict[actorbox.Runtime, actorbox.ActorHandle] = {}


@pytest.fixture
async def holder(shared_rt: actorbox.Runtime) -> actorbox.ActorHandle:
    """The module's Holder actor, started once per Runtime."""
    h = _holders.get(shared_rt)
    if h is None:
        with anyio.fail_after(CALL_TIMEOUT):
            h = _holders[shared_rt] = await shared_rt.start(Holder)
    return h


async def call(aw: Any) -> Any:
    with anyio.fail_after(CALL_TIMEOUT):
        return await aw


# -- put and await in the host ---------------------------------------------------------------


async def test_put_then_await_in_host_returns_an_equal_value():
    """``await rt.put(obj)`` then ``await ref`` in the host returns an equal nested value, tensors and arrays too."""
    obj = {"name": "weights", "n": [1, 2.5, None, True], "t": sample((32, 16), 1),
           "a": np.arange(12, dtype=np.int32).reshape(3, 4), "nested": ("x", {"y": sample((3,), 2)})}
    async with actorbox.Runtime() as rt:
        ref = await rt.put(obj)
        assert isinstance(ref, actorbox.ObjectRef)
        got = await call(ref)
        assert got["name"] == "weights" and got["n"] == [1, 2.5, None, True]
        assert bits(got["t"]) == bits(obj["t"]) and got["t"].shape == obj["t"].shape
        assert got["a"].dtype == np.int32 and np.array_equal(got["a"], obj["a"])
        assert got["nested"][0] == "x"
        assert bits(got["nested"][1]["y"]) == bits(obj["nested"][1]["y"])


async def test_values_awaited_twice_share_the_stores_memory():
    """Two ``await ref`` results map the same shared memory: a write through one is seen through the other."""
    async with actorbox.Runtime() as rt:
        ref = await rt.put({"t": torch.zeros(1000), "a": np.zeros(10)})
        first, second = await call(ref), await call(ref)
        first["t"][7] = 42.0
        first["a"][3] = -1.5
        assert float(second["t"][7]) == 42.0
        assert float(second["a"][3]) == -1.5
        assert float((await call(ref))["t"][7]) == 42.0, "a later await does not see the write"


# -- refs passed to actors ---------------------------------------------------------------------


async def test_top_level_ref_argument_arrives_as_the_value(shared_rt, holder):
    """A ref passed as a top-level argument reaches the actor as the tensor itself, bit-exact and uncopied."""
    t = sample((64, 8), 3)
    ref = await shared_rt.put(t)
    try:
        created = shared_rt.codec.segments.created
        kind, dtype, shape, raw = await call(holder.describe(ref))
        assert (kind, dtype, shape) == ("Tensor", "torch.float32", [64, 8])
        assert raw == bits(t)
        assert shared_rt.codec.segments.created == created, "the host copied the stored tensor again"
        # Same memory as the store's: the actor's write is seen by the next await in the host.
        await call(holder.fill(ref, 3.0))
        assert torch.equal(await call(ref), torch.full((64, 8), 3.0))
    finally:
        await ref.release()


async def test_nested_ref_arrives_as_an_objectref_the_actor_can_await_and_release(shared_rt, holder):
    """A ref inside a list reaches the actor as an ObjectRef it can await for the value and release."""
    t = sample((128,), 4)
    ref = await shared_rt.put(t)
    out = await call(holder.resolve_nested([ref]))
    assert out == [["ObjectRef", True, ref.object_id, bits(t)]]
    await call(holder.release_nested([ref]))
    assert ref.object_id not in shared_rt.object_store
    with pytest.raises(actorbox.ObjectNotFoundError):
        await call(ref)


async def test_actor_awaiting_a_released_ref_gets_object_not_found(shared_rt, holder):
    """An actor awaiting a ref released in the host gets ObjectNotFoundError naming the object.

    Let through, it reaches the host as the actor's error: a RemoteError naming it.
    """
    ref = await shared_rt.put(sample((4,)))
    await ref.release()
    with pytest.raises(actorbox.RemoteError) as ei:
        await call(holder.await_nested([ref]))
    assert ei.value.type_name == "actorbox.ObjectNotFoundError" and ei.value.actor == actorbox.info(holder).label
    assert ref.object_id in str(ei.value)


# -- explicit release --------------------------------------------------------------------------


async def test_released_object_is_gone_with_a_clear_error_and_stats_drop_to_zero():
    """After ``await ref.release()`` awaiting it raises ObjectNotFoundError naming the id, and stats are zero."""
    async with actorbox.Runtime() as rt:
        ref = await rt.put({"t": sample((256, 256))})
        assert rt.object_store.stats()["objects"] == 1
        await ref.release()
        with pytest.raises(actorbox.ObjectNotFoundError) as ei:
            await call(ref)
        err = ei.value
        assert err.object_id == ref.object_id
        assert ref.object_id in str(err)
        assert "released or expired" in str(err)
        s = rt.object_store.stats()
        assert (s["objects"], s["bytes"], s["oldest"]) == (0, 0, None)
        await ref.release()  # a second release is harmless


async def test_released_ref_as_an_argument_fails_the_call(shared_rt, holder):
    """Passing a released ref as a top-level argument raises ObjectNotFoundError instead of sending anything."""
    ref = await shared_rt.put(sample((4,)))
    await ref.release()
    with pytest.raises(actorbox.ObjectNotFoundError):
        await call(holder.describe(ref))


# -- retention ---------------------------------------------------------------------------------


async def test_object_expires_after_the_runtimes_retention_unless_put_with_none():
    """With ``object_retention=0.5`` an object is gone after ~1 s (object.expired logged); retention=None keeps one."""
    with capture_logs() as logs:
        async with actorbox.Runtime(object_retention=0.5) as rt:
            short = await rt.put(sample((100,)))
            kept = await rt.put(sample((100,), 1), retention=None)
            assert torch.equal(await call(short), sample((100,)))  # still there at first
            await anyio.sleep(1.0)
            with pytest.raises(actorbox.ObjectNotFoundError) as ei:
                await call(short)
            assert short.object_id in str(ei.value)
            assert torch.equal(await call(kept), sample((100,), 1))
            s = rt.object_store.stats()
            assert s["objects"] == 1 and s["oldest"]["object_id"] == kept.object_id
    expired = [e for e in logs if e["event"] == "object.expired"]
    assert [e["object_id"] for e in expired] == [short.object_id]
    assert expired[0]["bytes"] >= 400


async def _done(fut):
    with anyio.fail_after(CALL_TIMEOUT):
        while not fut.done():
            await anyio.sleep(0.01)


async def test_a_result_with_shared_memory_not_read_within_the_retention_is_released():
    """Results held for the host's code are held for others too: one left unread past the
    retention has its memory released (object.expired) and reading it raises
    ObjectNotFoundError saying why; one read in time, or one without shared memory, stays."""
    with capture_logs() as logs:
        async with actorbox.Runtime(object_retention=0.5) as rt:
            h = await rt.start(Holder)
            fds0 = len(os.listdir("/proc/self/fd"))
            unread, read, plain = h.make(100_000), h.make(100_000, 1), h.plain([1, 2])
            for f in (unread, read, plain):
                await _done(f)
            assert rt.object_store.stats()["unread_results"] == 2
            kept = await read
            assert rt.object_store.stats()["unread_results"] == 1
            await anyio.sleep(1.2)
            assert rt.object_store.stats()["unread_results"] == 0
            with pytest.raises(actorbox.ObjectNotFoundError, match=r"Holder#\d+\.make\(\) \[call \d+\] was not read"):
                await unread
            assert torch.equal(kept, sample((100_000,), 1))
            assert await plain == [1, 2]
            del kept, read
            gc.collect()
            assert len(os.listdir("/proc/self/fd")) <= fds0, "the unread result's memory was not released"
    expired = [e for e in logs if e["event"] == "object.expired"]
    assert len(expired) == 1 and expired[0]["result_of"].startswith("Holder#"), expired
    assert expired[0]["result_of"].endswith(".make()") and expired[0]["call_id"] == unread.call_id


async def test_with_retention_none_an_unread_result_is_kept_until_read():
    async with actorbox.Runtime(object_retention=None) as rt:
        h = await rt.start(Holder)
        fut = h.make(1000)
        await _done(fut)
        assert rt.object_store.expire(time.monotonic() + 1e6) == 0
        assert torch.equal(await fut, sample((1000,)))


async def test_a_dropped_unread_result_is_not_held():
    async with actorbox.Runtime(object_retention=30) as rt:
        h = await rt.start(Holder)
        fut = h.make(1000)
        await _done(fut)
        assert rt.object_store.stats()["unread_results"] == 1
        del fut
        gc.collect()
        assert rt.object_store.stats()["unread_results"] == 0


async def test_per_put_retention_overrides_the_default():
    """``rt.put(x, retention=0.2)`` expires that object even though the Runtime keeps others 30 s."""
    async with actorbox.Runtime(object_retention=30) as rt:
        quick = await rt.put([1, 2, 3], retention=0.2)
        slow = await rt.put([4, 5, 6])
        await anyio.sleep(0.5)
        # The expiry loop ticks at retention/4 of the default (capped at 1 s): expire now to not wait for it.
        rt.object_store.expire()
        with pytest.raises(actorbox.ObjectNotFoundError):
            await call(quick)
        assert await call(slow) == [4, 5, 6]


async def test_retention_env_var_sets_the_default(monkeypatch):
    """ACTORBOX_OBJECT_RETENTION sets the default retention; an explicit Runtime option wins over it."""
    monkeypatch.setenv("ACTORBOX_OBJECT_RETENTION", "0.3")
    async with actorbox.Runtime() as rt:
        assert rt.object_store.stats()["retention_s"] == 0.3
        ref = await rt.put(sample((10,)))
        await anyio.sleep(1.0)
        with pytest.raises(actorbox.ObjectNotFoundError):
            await call(ref)
    async with actorbox.Runtime(object_retention=5.0) as rt:
        assert rt.object_store.stats()["retention_s"] == 5.0


BAD_RETENTIONS = ["soon", float("nan"), float("inf"), -1, True, [30]]


@pytest.mark.parametrize("bad", BAD_RETENTIONS, ids=repr)
async def test_a_bad_retention_is_refused_at_once_and_leaks_nothing(bad):
    """A put's retention, the Runtime's and the environment variable's are checked before
    anything is made: a put made the object's segments first and leaked them, a Runtime
    took "forever" and its expiry loop crashed later, NaN never expired."""
    async with actorbox.Runtime() as rt:
        fds0 = len(os.listdir("/proc/self/fd"))
        with pytest.raises(ValueError, match=r"retention=\.\.\.\) must be a number of seconds"):
            await rt.put(sample((1000,)), retention=bad)
        gc.collect()
        assert len(os.listdir("/proc/self/fd")) <= fds0
        assert rt.object_store.stats()["objects"] == 0
    with pytest.raises(ValueError, match=r"object_retention=\.\.\.\) must be a number of seconds"):
        actorbox.Runtime(object_retention=bad)


@pytest.mark.parametrize("bad", ["soon", "nan", "-5"])
def test_a_bad_retention_environment_variable_is_refused_with_the_remedy(monkeypatch, bad):
    monkeypatch.setenv("ACTORBOX_OBJECT_RETENTION", bad)
    with pytest.raises(ValueError, match="ACTORBOX_OBJECT_RETENTION"):
        actorbox.Runtime()


async def test_a_get_that_runs_out_of_descriptors_leaks_none():
    """The store hands each reader duplicates of an object's descriptors: one failing
    part-way (EMFILE) gave back none of those already made."""
    import resource

    async with actorbox.Runtime() as rt:
        ref = await rt.put([sample((10,)), sample((10,), 1), sample((10,), 2)])
        gc.collect()
        fds0 = len(os.listdir("/proc/self/fd"))
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        highest = max(int(fd) for fd in os.listdir("/proc/self/fd"))
        fillers = []
        resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 8, hard))
        try:
            while True:  # take every free number below the limit...
                try:
                    fillers.append(os.open("/dev/null", os.O_RDONLY))
                except OSError:
                    break
            os.close(fillers.pop())  # ...but one: room for one duplicate of three
            with pytest.raises(OSError):
                rt.object_store.get(ref.object_id)
        finally:
            for fd in fillers:
                os.close(fd)
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        assert len(os.listdir("/proc/self/fd")) <= fds0
        assert len(await call(ref)) == 3


async def test_retention_none_keeps_objects_until_released():
    """``Runtime(object_retention=None)`` never expires objects: only release (or exit) drops them."""
    async with actorbox.Runtime(object_retention=None) as rt:
        ref = await rt.put("kept")
        assert rt.object_store.expire(time.monotonic() + 1e6) == 0
        assert await call(ref) == "kept"


# -- capacity ----------------------------------------------------------------------------------


async def test_put_past_capacity_raises_a_clear_error_and_fits_after_release():
    """Past the capacity put raises ObjectStoreFullError (capacity, used, requested, remedy); a release makes room."""
    async with actorbox.Runtime(object_store_capacity=MB) as rt:
        fds = fd_count()
        with pytest.raises(actorbox.ObjectStoreFullError) as ei:
            await rt.put(torch.zeros(2 * MB // 4))
        err = ei.value
        assert (err.capacity, err.used) == (MB, 0)
        assert err.requested >= 2 * MB
        msg = str(err)
        assert str(MB) in msg and "release" in msg and "object_store_capacity" in msg
        rt.codec.segments.spares.close()  # a spare segment made meanwhile is a cache, not the object's
        assert fd_count() <= fds, "the refused object's descriptors were not closed"
        assert rt.object_store.stats()["objects"] == 0

        half = await rt.put(torch.zeros(MB // 2 // 4))
        with pytest.raises(actorbox.ObjectStoreFullError) as ei:
            await rt.put(torch.zeros(600 * 1024 // 4))
        assert ei.value.used == rt.object_store.stats()["bytes"] >= MB // 2
        await half.release()
        again = await rt.put(torch.zeros(600 * 1024 // 4))
        assert rt.object_store.stats()["objects"] == 1
        await again.release()


# -- stats -------------------------------------------------------------------------------------


async def test_stats_report_counts_bytes_capacity_and_the_oldest_object():
    """stats() gives object count, bytes held, capacity, retention, unread results with shared
    memory and the oldest object's id, age and size."""
    async with actorbox.Runtime(object_store_capacity=64 * MB, object_retention=30) as rt:
        s = rt.object_store.stats()
        assert s == {"objects": 0, "bytes": 0, "capacity": 64 * MB, "retention_s": 30, "unread_results": 0,
                     "oldest": None}
        first = await rt.put(torch.zeros(MB // 4))
        await anyio.sleep(0.2)
        second = await rt.put(np.zeros(2 * MB, dtype=np.uint8))
        s = rt.object_store.stats()
        assert s["objects"] == 2
        assert 3 * MB <= s["bytes"] < 3 * MB + 64 * 1024
        assert s["capacity"] == 64 * MB
        oldest = s["oldest"]
        assert oldest["object_id"] == first.object_id
        assert 0.2 <= oldest["age_s"] < 10
        assert MB <= oldest["bytes"] < MB + 32 * 1024
        await first.release()
        s = rt.object_store.stats()
        assert s["oldest"]["object_id"] == second.object_id and s["objects"] == 1
        assert 2 * MB <= s["bytes"] < 2 * MB + 32 * 1024


async def test_objects_lists_what_the_store_holds_oldest_first():
    """objects() gives each held object's id, size, age and time left (None: kept until released)."""
    async with actorbox.Runtime(object_retention=30) as rt:
        assert rt.object_store.objects() == []
        first = await rt.put(torch.zeros(MB // 4))
        await anyio.sleep(0.1)
        second = await rt.put(np.zeros(2 * MB, dtype=np.uint8), retention=None)
        listed = rt.object_store.objects()
        assert [o["object_id"] for o in listed] == [first.object_id, second.object_id]
        assert MB <= listed[0]["bytes"] < MB + 32 * 1024 and listed[0]["age_s"] >= 0.1
        assert 29 < listed[0]["expires_in_s"] <= 30 and listed[1]["expires_in_s"] is None
        await first.release()
        assert [o["object_id"] for o in rt.object_store.objects()] == [second.object_id]
        await second.release()


# -- events ------------------------------------------------------------------------------------


async def test_put_release_and_expiry_are_logged_with_id_and_bytes():
    """object.put, object.released and object.expired events carry the object's id and size in bytes."""
    with capture_logs() as logs:
        async with actorbox.Runtime(object_retention=30) as rt:
            a = await rt.put(torch.zeros(1024))
            b = await rt.put(torch.zeros(2048))
            await a.release()
            assert rt.object_store.expire(time.monotonic() + 31) == 1
    by = {(e["event"], e.get("object_id")): e for e in logs if str(e["event"]).startswith("object.")}
    put_a, put_b = by[("object.put", a.object_id)], by[("object.put", b.object_id)]
    assert put_a["bytes"] >= 4096 and put_b["bytes"] >= 8192
    assert put_a["log_level"] == "info"
    assert by[("object.released", a.object_id)]["bytes"] == put_a["bytes"]
    assert by[("object.expired", b.object_id)]["bytes"] == put_b["bytes"]
    assert ("object.expired", a.object_id) not in by
    assert ("object.released", b.object_id) not in by


# -- no leaks ----------------------------------------------------------------------------------


async def wait_for(predicate: Any, timeout: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        gc.collect()
        if predicate():
            return True
        if time.monotonic() > deadline:
            return False
        await anyio.sleep(0.05)


async def test_put_release_cycles_leak_no_descriptors_or_segments():
    """500 put/await/release cycles of a 1 MB tensor leave the host's fd count and mapped segments where they were."""
    x = torch.ones(MB // 4)
    async with actorbox.Runtime() as rt:
        for _ in range(3):  # warm up: lazily opened descriptors, the ObjectService registration
            ref = await rt.put(x)
            await call(ref)
            await ref.release()
        gc.collect()
        fds, segments = fd_count(), len(rt.codec.segments)
        for i in range(500):
            ref = await rt.put(x)
            if i % 5 == 0:
                v = await ref
                assert float(v[123]) == 1.0
                del v
            await ref.release()
        assert rt.object_store.stats()["objects"] == 0
        ok = await wait_for(lambda: fd_count() <= fds + FD_SLACK and len(rt.codec.segments) <= segments)
        assert ok, f"fds {fds} -> {fd_count()}, segments {segments} -> {len(rt.codec.segments)}"


async def test_leaving_the_runtime_releases_every_object():
    """Objects still held (even with retention None) are released when the Runtime exits: 0 objects, fds closed."""
    gc.collect()
    fds = fd_count()
    async with actorbox.Runtime() as rt:
        refs = [await rt.put(torch.zeros(MB // 4), retention=None) for _ in range(5)]
        assert rt.object_store.stats()["objects"] == 5
    s = rt.object_store.stats()
    assert (s["objects"], s["bytes"]) == (0, 0)
    assert await wait_for(lambda: fd_count() <= fds + FD_SLACK), f"fds {fds} -> {fd_count()}"
    with pytest.raises(actorbox.ObjectNotFoundError):
        await refs[0]
