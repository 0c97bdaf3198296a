"""The CUDA paths of the tensor codec, exercised on a machine without a GPU.

What can run here runs for real: the IPC wire fields are validated, a receiver
without CUDA refuses with the remedy, and the CPU fallback restores the device
name. benchmarks/cuda_ipc.py checks the real round trips on a GPU machine.
"""

from __future__ import annotations

import os
import weakref

import pytest
import torch

import actorbox
from actorbox import SerializationError
from actorbox._tensors import CUDA_IPC_FIELDS, CudaKeepAlive, cuda_ipc_enabled, import_cuda_ipc, import_tensor


def ipc_fields(**over: object) -> list[object]:
    base = {"dtype": "float32", "shape": [4], "strides": [1], "offset": 0, "device": 0, "handle": b"h" * 64,
            "size": 16, "storage_offset": 0, "ref_handle": b"r", "ref_offset": 0, "event": None,
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


def test_keepalive_releases_the_ipc_counter_before_dropping_the_storage() -> None:
    """At the end of the retention the sender counts the receiver's reference as dropped
    (torch would otherwise keep the block for ever), while it still holds the storage."""
    released: list[tuple[tuple[bytes, int], bool]] = []

    class Storage:
        pass

    s = Storage()
    alive = weakref.ref(s)
    keep = CudaKeepAlive(retention=0.0, release=lambda ref: released.append((ref, alive() is not None)))
    keep.hold(s, (b"/torch_1_2", 3))
    del s
    assert alive() is not None  # held
    assert keep.expire() == 1
    assert released == [((b"/torch_1_2", 3), True)]
    assert alive() is None and len(keep) == 0
    keep.hold(Storage())  # a storage without a counter is just dropped
    assert keep.expire() == 1 and len(released) == 1


def test_receiver_never_hands_torch_the_senders_counter_name(monkeypatch: pytest.MonkeyPatch) -> None:
    """The counter file named in the wire form is a peer's choice: the receiver gives torch
    a name that exists nowhere instead, so nothing a peer names is ever opened or written."""
    import actorbox._tensors as tensors

    seen: list[tuple[object, ...]] = []

    def fake_open(*args: object) -> torch.UntypedStorage:
        seen.append(args)
        return torch.UntypedStorage(16)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "_lazy_init", lambda: None)
    monkeypatch.setattr(torch.UntypedStorage, "_new_shared_cuda", staticmethod(fake_open))
    with pytest.raises(SerializationError):  # the CPU build can't place it on cuda:0, after opening
        import_cuda_ipc(ipc_fields(ref_handle=b"/torch_host_refcounts", ref_offset=10**9))
    assert len(seen) == 1
    assert seen[0][4] == tensors._NO_COUNTER and seen[0][5] == 0
    assert not os.path.exists("/dev/shm" + tensors._NO_COUNTER.decode())


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
        assert not rt.cuda_ipc_reaches(boxed.actor_id) and rt.cuda_ipc_reaches(trusted.actor_id)
        assert not rt.cuda_ipc_reaches_all()
        await boxed.stop()
        assert rt.cuda_ipc_reaches_all()
