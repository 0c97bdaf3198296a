"""A real sandboxed actor attacks the host's shared-memory tensor decoder.

The hostile actor (tests/security/plugins/shm_saboteur.py) answers its own call
with a hand-built REPLY whose payload holds a tensor or array (extension types 10
and 11) and whose descriptors travel by SCM_RIGHTS: unsealed memfds, pipes,
files, sockets, sizes and views reaching past the memory, refused dtypes and
devices, bad descriptor indices; and a valid sealed segment it then tries to
shrink under the host (which would fault the host with SIGBUS). The object store
section of docs/architecture.md says a segment is mapped only if it is a memfd sealed
against shrinking and the view stays inside it: each attempt fails that call
with SerializationError (or is harmless), never crashes or hangs the host,
leaks no descriptor, and the host keeps serving another actor.

One Runtime with both actors serves the module per backend (each start is a
sandboxed process); a reply that fails to decode fails only that call.
"""

from __future__ import annotations

import errno
import gc
import os
from typing import Any

import anyio
import pytest
import torch

import actorbox

from ._support import CALL_TIMEOUT, assert_host_serves, start_actors
from .plugins.healthy import Healthy
from .plugins.shm_saboteur import ATTACKS, NOT_ARGS, ODD_BUT_HARMLESS, TWO_SIZES, ShmSaboteur

pytestmark = pytest.mark.anyio


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


_actors: dict[actorbox.Runtime, list[actorbox.ActorHandle]] = {}


@pytest.fixture
async def actors(rt: actorbox.Runtime) -> list[actorbox.ActorHandle]:
    """[healthy, saboteur] for this Runtime, started once (again only if one died)."""
    pair = _actors.get(rt)
    states = {a.label: a.state for a in rt.actors()}
    if pair is None or any(states.get(actorbox.info(h).label) != "alive" for h in pair):
        pair = _actors[rt] = await start_actors(rt, Healthy, ShmSaboteur)
    return pair


def host_fds() -> int:
    gc.collect()
    return len(os.listdir("/proc/self/fd"))


async def call(fut: Any) -> Any:
    with anyio.fail_after(CALL_TIMEOUT):
        return await fut


@pytest.mark.parametrize("attack", list(ATTACKS))
async def test_forged_tensor_reply_fails_that_call_with_serialization_error(rt, actors, attack):
    """A forged tensor/array reply (bad fd, size, view, dtype, device or index) fails only that call, leaking no fd."""
    healthy, saboteur = actors
    assert await call(saboteur.ping()) == "pong"  # the previous attack's late genuine reply is in and dropped
    fds0 = host_fds()
    with pytest.raises(actorbox.SerializationError):
        await call(saboteur.forged_tensor_reply(attack))
    assert host_fds() <= fds0, "the host kept a descriptor of a refused tensor"
    assert await call(saboteur.ping()) == "pong"
    await assert_host_serves(rt, healthy)


async def test_descriptors_on_a_reply_with_no_value_are_closed(rt, actors):
    """An OK reply with an empty payload but descriptors attached: nothing decodes them, and
    the host kept every one (an actor could fill the host's descriptor table)."""
    healthy, saboteur = actors
    assert await call(saboteur.ping()) == "pong"
    fds0 = host_fds()
    for _ in range(20):
        assert await call(saboteur.empty_reply_with_fds(8)) is None
    assert host_fds() <= fds0, "the host kept descriptors of replies with no value"
    # The same reply as a Future argument: the scheduler forwards it to the next call.
    n0 = await call(saboteur.fd_count())
    for _ in range(10):
        assert await call(saboteur.take(saboteur.empty_reply_with_fds(8))) is None
    assert await call(saboteur.fd_count()) <= n0, "an argument with no value kept its descriptors"
    await assert_host_serves(rt, healthy)


class Resident:
    def ping(self, *args):
        return "pong"


async def test_forged_tensor_arguments_to_a_host_resident_object_fail_that_call_alone(rt, actors):
    """An actor's call to a host-resident object whose argument is a forged tensor fails
    with SerializationError; the host closed the descriptors twice before (EBADF out of the
    call's task took the Runtime down, and a reused number closed another file)."""
    healthy, saboteur = actors
    if "resident" not in rt.named_actors():
        rt.register("resident", Resident())
    fds0 = host_fds()
    for attack in [*ATTACKS, NOT_ARGS]:
        assert await call(saboteur.forged_call("resident", attack)) == "SerializationError", attack
    assert host_fds() <= fds0, "the host kept a descriptor of a refused argument"
    assert await call(saboteur.ping()) == "pong"
    await assert_host_serves(rt, healthy)


@pytest.mark.parametrize("attack", [*ODD_BUT_HARMLESS, TWO_SIZES])
async def test_odd_descriptors_are_refused_or_harmless(rt, actors, attack):
    """Write-sealed or read-only memfds, 64 fds for one tensor, one fd at two sizes: refused, or readable safely."""
    healthy, saboteur = actors
    assert await call(saboteur.ping()) == "pong"
    fds0 = host_fds()
    try:
        value = await call(saboteur.forged_tensor_reply(attack))
    except actorbox.SerializationError:
        pass
    else:
        for v in value if isinstance(value, list) else [value]:
            if getattr(v, "is_quantized", False):
                assert v.storage_offset() == 0 or v.numel() > 0, "an empty tensor kept a forged offset"
                v = v.int_repr()
            assert v.sum() is not None  # every element readable
        del value, v
    assert host_fds() <= fds0, "the host kept descriptors it does not use"
    assert await call(saboteur.ping()) == "pong"
    await assert_host_serves(rt, healthy)


async def test_sealed_segment_cannot_be_shrunk_under_the_host(rt, actors):
    """An actor can't truncate a segment it sent (sealed: EPERM); the host reads every byte, still shared, no SIGBUS."""
    healthy, saboteur = actors
    n = 3 * 4096
    fds0 = host_fds()
    t = await call(saboteur.sealed_then_truncate(n))
    outcome = await call(saboteur.last_truncate())
    assert outcome == {"truncate": errno.EPERM, "truncate to one page": errno.EPERM,
                       "add a write seal": errno.EPERM, "size": n}, outcome
    assert torch.equal(t, torch.tensor([i % 251 for i in range(n)], dtype=torch.uint8))  # touches every page
    assert await call(saboteur.scribble(7))
    assert bool((t == 7).all()), "the segment is no longer the actor's memory"
    t.fill_(1)
    del t
    assert host_fds() <= fds0
    await assert_host_serves(rt, healthy)


async def test_a_segment_once_sent_never_carries_another_tensor(rt, actors):
    """An actor keeps ways back to a segment it received that no descriptor count sees (an
    O_PATH handle reopened later, the pages spliced into a pipe); the host's later fresh
    tensors of that size, sent to another actor, never land in that memory."""
    healthy, saboteur = actors
    n = 1 << 20
    assert await call(saboteur.keep_a_way_back(torch.full((n,), 0x11, dtype=torch.uint8))) == 4096
    for _ in range(20):  # the same size, fresh each time, let go at once
        r = await call(healthy.echo(torch.full((n,), 0x22, dtype=torch.uint8)))
        assert bool((r == 0x22).all())
        del r
    through_file, through_pipe = await call(saboteur.look_back())
    assert through_file == b"\x11" * 4096, "a later tensor went into memory an actor can still reach"
    assert through_pipe == b"\x11" * 4096, "a later tensor went into pages an actor spliced away"
    await assert_host_serves(rt, healthy)


async def test_host_fd_count_does_not_grow_across_all_attempts(rt, actors):
    """Three rounds of every attack leave the host's open descriptor count where it was."""
    healthy, saboteur = actors
    assert await call(saboteur.ping()) == "pong"
    fds0 = host_fds()
    for _ in range(3):
        for attack in [*ATTACKS, *ODD_BUT_HARMLESS, TWO_SIZES]:
            try:
                value = await call(saboteur.forged_tensor_reply(attack))
            except actorbox.SerializationError:
                continue
            del value
    assert await call(saboteur.ping()) == "pong"
    assert host_fds() <= fds0
    await assert_host_serves(rt, healthy)


def test_segment_larger_than_memory_is_refused() -> None:
    """A sealed memfd claiming more bytes than the machine has is refused before it is mapped."""
    import fcntl

    from actorbox._shm import SegmentTable

    table = SegmentTable()
    huge = table.max_segment + (1 << 30)
    fd = os.memfd_create("huge", os.MFD_ALLOW_SEALING)
    os.ftruncate(fd, huge)  # sparse: costs nothing until touched
    fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK)
    with pytest.raises(actorbox.SerializationError, match="larger than this machine's memory"):
        table.attach(fd, 4096)
    with pytest.raises(OSError):
        os.fstat(fd)  # the refused descriptor was closed


def test_a_sparse_segment_is_refused_and_its_descriptor_closed() -> None:
    """A sealed memfd with holes (pages the sender never allocated) is refused before it is mapped, naming why."""
    import fcntl

    from actorbox._shm import SegmentTable

    fd = os.memfd_create("sparse", os.MFD_ALLOW_SEALING)
    os.ftruncate(fd, 1 << 20)
    os.pwrite(fd, b"x" * 4096, 0)  # one page of 256
    fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK)
    with pytest.raises(actorbox.SerializationError, match="sparse"):
        SegmentTable().attach(fd, 1 << 20)
    with pytest.raises(OSError):
        os.fstat(fd)


def test_a_segment_bigger_than_its_tensor_is_refused() -> None:
    """A dense segment far larger than the bytes its tensor claims is refused (the sender's export never makes one)."""
    import fcntl

    from actorbox._shm import SegmentTable, spare_size

    fd = os.memfd_create("big", os.MFD_ALLOW_SEALING)
    os.ftruncate(fd, 1 << 20)
    os.posix_fallocate(fd, 0, 1 << 20)
    fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK)
    assert spare_size(4096) < 1 << 20
    with pytest.raises(actorbox.SerializationError, match="1048576-byte memory file"):
        SegmentTable().attach(fd, 4096)


def test_a_shared_empty_tensor_written_in_part_is_filled_before_it_is_sent() -> None:
    """A tensor allocated in shared memory and written in part (sparse) is filled when exported, so a
    receiver that refuses sparse segments maps it, with the written values and zeros elsewhere."""
    from actorbox._shm import SegmentTable
    from actorbox._tensors import FdSink, FdSource, export_tensor, import_tensor, shared_empty

    sender, receiver = SegmentTable(), SegmentTable()
    t = shared_empty(sender, (1 << 18,), torch.float32)  # 1 MiB, no page touched yet
    t[:1024] = 3.0
    sink = FdSink(sender)
    fields = export_tensor(t, sender, sink)
    assert os.fstat(sink.fds[0]).st_blocks * 512 >= 1 << 20
    got = import_tensor(fields, receiver, FdSource(sink.fds))
    assert float(got[:1024].sum()) == 3072.0 and float(got[1024:].abs().sum()) == 0.0
    del got, t
