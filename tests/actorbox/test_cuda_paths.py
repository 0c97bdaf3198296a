"""The CUDA paths of the tensor codec, exercised on a machine without a GPU.

What can run here runs for real: the IPC wire fields are validated, a receiver
without CUDA refuses with the remedy, and the CPU fallback restores the device
name. benchmarks/cuda_ipc.py checks the real round trips on a GPU machine.
"""

from __future__ import annotations

import os
import sys
import threading
import time
import weakref

import pytest
import torch

import actorbox
from actorbox import SerializationError
from actorbox._tensors import CUDA_IPC_FIELDS, CudaKeepAlive, cuda_ipc_enabled, import_cuda_ipc, import_tensor


def ipc_fields(**over: object) -> list[object]:
    base = {"dtype": "float32", "shape": [4], "strides": [1], "offset": 0, "device": 0, "handle": b"h" * 64,
            "size": 16, "storage_offset": 0, "ref_handle": b"/torch_12_345_0", "ref_offset": 0, "event": b"e" * 64,
            "sync": False, "grad": False, "tag": "ipc"}
    base.update(over)
    return list(base.values())


def test_ipc_is_off_unless_enabled(monkeypatch: pytest.MonkeyPatch) -> None:
    """CUDA IPC is used only with ACTORBOX_ENABLE_CUDA_IPC=1."""
    monkeypatch.delenv("ACTORBOX_ENABLE_CUDA_IPC", raising=False)
    assert not cuda_ipc_enabled()
    monkeypatch.setenv("ACTORBOX_ENABLE_CUDA_IPC", "1")
    assert cuda_ipc_enabled()


def test_wire_form_has_the_documented_field_count() -> None:
    """The IPC wire form carries the 14 fields torch needs to reopen the allocation."""
    assert len(ipc_fields()) == CUDA_IPC_FIELDS


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal a CPU-only receiver gives")
def test_receiver_without_cuda_refuses_with_the_remedy() -> None:
    """An IPC tensor reaching a process with no CUDA fails with a message naming both remedies."""
    with pytest.raises(SerializationError, match=r"no CUDA device.*ACTORBOX_ENABLE_CUDA_IPC.*allow_gpu"):
        import_cuda_ipc(ipc_fields())


@pytest.mark.parametrize("bad", [
    {"dtype": "object"}, {"tag": "pickle"}, {"shape": [-1]}, {"strides": [1, 2]}, {"device": -1},
    {"handle": "not-bytes"}, {"size": -5}, {"event": 3}, {"sync": 1}, {"grad": "yes"},
    {"handle": b""}, {"handle": b"h" * 257}, {"event": None}, {"event": b"e" * 257},
    # The counter is a file the receiver opens and writes when it frees the tensor:
    # only torch's own counter names, and a slot inside such a file, pass.
    {"ref_handle": b"r"}, {"ref_handle": b"/torch_"}, {"ref_handle": b"/torch_1_2_3/../x"},
    {"ref_handle": b"/dev/shm/torch_1_2_3"}, {"ref_handle": None}, {"ref_offset": -1}, {"ref_offset": 10000},
])
def test_malformed_ipc_fields_are_refused(bad: dict[str, object]) -> None:
    """Every field of an IPC tensor is type-checked before torch sees any of it."""
    with pytest.raises(SerializationError):
        import_cuda_ipc(ipc_fields(**bad))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal a CPU-only receiver gives")
def test_copied_cuda_tensor_on_a_cpu_only_receiver_is_refused_clearly() -> None:
    """The CPU-copy fallback restores the device; a receiver without CUDA says how to fix it."""
    from actorbox._shm import SegmentTable
    from actorbox._tensors import FdSource

    with pytest.raises(SerializationError, match="no CUDA device"):
        import_tensor(["float32", [0], [1], 0, -1, 0, False, "cuda:0"], SegmentTable(), FdSource(()))


def test_keepalive_holds_storages_for_the_retention_time() -> None:
    """The sender side keeps shared storages referenced until their retention has passed."""
    keep = CudaKeepAlive(retention=0.0)
    keep.hold(object())
    keep.hold(object())  # the first one has expired by now and is dropped
    assert len(keep) == 1
    assert len(CudaKeepAlive(retention=60.0)) == 0


def test_keepalive_never_drops_a_storage_before_its_time() -> None:
    """Actors encode results on several worker threads at once: a storage is never
    released before its retention has passed, however the threads interleave."""
    keep = CudaKeepAlive(retention=0.002)
    early: list[float] = []

    class Storage:
        pass

    def worker() -> None:
        for _ in range(2000):
            s = Storage()
            due = time.monotonic() + keep.retention
            weakref.finalize(s, lambda due=due: early.append(due) if time.monotonic() < due else None)
            keep.hold(s)
            del s
            keep.expire()

    threads = [threading.Thread(target=worker) for _ in range(8)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible: races show at once
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(interval)
    assert early == []
    keep.clear()
    assert len(keep) == 0


def test_cuda_ipc_tensors_are_taken_only_where_the_receiver_allows_them() -> None:
    """A payload with a CUDA IPC tensor is refused unless its decoder was told the producer
    may send them (the host, for unsandboxed actors; an unsandboxed actor, from the host)."""
    import msgpack

    from actorbox._codec import EXT_CUDA_IPC, Codec

    codec = Codec(allow_pickle=False, make_handle=lambda *a: None)
    data = msgpack.packb(msgpack.ExtType(EXT_CUDA_IPC, codec.dumps(ipc_fields())))
    with pytest.raises(SerializationError, match="refused a CUDA IPC tensor"):
        codec.loads_fds(data, False, ())
    with pytest.raises(SerializationError) as allowed:  # on to torch: no CUDA here, or a fake handle
        codec.loads_fds(data, False, (), ipc=True)
    assert "refused a CUDA IPC tensor" not in str(allowed.value)


class EnvProbe:
    def flags(self) -> list[str | None]:
        return [os.environ.get("ACTORBOX_ENABLE_CUDA_IPC"), os.environ.get("ACTORBOX_SANDBOXED")]


@actorbox.actor(sandbox="disabled")
class TrustedEnvProbe(EnvProbe):
    pass


@pytest.mark.anyio
async def test_cuda_ipc_reaches_unsandboxed_actors_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CUDA driver passes IPC handles through a file in the sender's /dev/shm that only
    its user can open: the host uses IPC only towards unsandboxed actors, and a sandboxed
    actor never gets the switch (the CUDA tensors it sends are copied)."""
    monkeypatch.setenv("ACTORBOX_ENABLE_CUDA_IPC", "1")
    async with actorbox.Runtime() as rt:
        boxed = await rt.start(EnvProbe)
        trusted = await rt.start(TrustedEnvProbe)
        assert await boxed.flags() == [None, "1"]
        assert await trusted.flags() == ["1", None]
        reaches = rt._live.actors.cuda_ipc_reaches
        assert not reaches(actorbox.info(boxed).actor_id) and reaches(actorbox.info(trusted).actor_id)
        await rt.stop(boxed)
        assert not reaches(actorbox.info(boxed).actor_id) and reaches(actorbox.info(trusted).actor_id)
