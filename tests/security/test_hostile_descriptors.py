"""A real sandboxed actor tries to make the host hold descriptors it never claimed.

The host counts its own descriptors through /proc/self/fd. Every descriptor it
receives is closed or handed to exactly one owner on every path: a good frame
read together with a bad one that ends the connection (an actor with
max_restarts=5 once left 1.5 GiB in six memfds in the host that way), a frame
whose descriptors no message claims (60 per frame, under the 64 that used to make
the host hang up, stayed open until the actor died), and an actor whose results
the host keeps is held to a bound on descriptors, shown in ``rt.actors()``.
"""

from __future__ import annotations

import gc
import os
from typing import Any

import anyio
import pytest

import actorbox

from ._support import CALL_TIMEOUT, assert_host_serves, start_actors
from .plugins.fd_hoarder import LEAK_NAME, FdHoarder, RestartingHoarder
from .plugins.healthy import Healthy

pytestmark = pytest.mark.anyio


def host_fds() -> int:
    gc.collect()
    return len(os.listdir("/proc/self/fd"))


def leaked_memfds() -> int:
    """Descriptors of the host that refer to the hoarder's named memfds."""
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if f"memfd:{LEAK_NAME}" in os.readlink(f"/proc/self/fd/{fd}"):
                n += 1
        except OSError:
            pass
    return n


async def call(fut: Any) -> Any:
    with anyio.fail_after(CALL_TIMEOUT):
        return await fut


async def settled(before: int) -> int:
    """The host's descriptor count once it is back to ``before`` (or after a second)."""
    with anyio.move_on_after(1.0):
        while host_fds() > before:
            await anyio.sleep(0.02)
    return host_fds()


async def test_a_good_frame_read_with_a_bad_one_leaves_no_memfd_in_the_host():
    """An actor (restarted twice) sends a reply holding an 8 MiB memfd and an oversize header in one write:
    each time it is disconnected and the memfd is closed in the host, not kept after its process is gone."""
    async with actorbox.Runtime() as rt:
        healthy, = await start_actors(rt, Healthy)
        hoarder = await rt.start(RestartingHoarder)
        before = host_fds()
        for _ in range(3):
            with pytest.raises(actorbox.ActorDiedError, match="exceeds the limit"):
                await call(hoarder.good_then_bad(8 << 20))
            with anyio.fail_after(CALL_TIMEOUT):
                label = actorbox.info(hoarder).label
                while {a.label: a.state for a in rt.actors()}.get(label) not in ("alive", "dead"):
                    await anyio.sleep(0.02)
        assert leaked_memfds() == 0, "the host kept the good frame's memfd"
        assert await settled(before) <= before
        await assert_host_serves(rt, healthy)


async def test_descriptors_no_message_claims_are_closed_at_once():
    """60 memfds on a frame that claims none (under the old 64 threshold): the host closes them at once and
    hangs up on that actor alone; its descriptor count is back where it was."""
    async with actorbox.Runtime() as rt:
        healthy, hoarder = await start_actors(rt, Healthy, FdHoarder)
        before = host_fds()
        with pytest.raises(actorbox.ActorDiedError, match="no frame claims"):
            await call(hoarder.unclaimed(60))
        assert leaked_memfds() == 0, "the host held descriptors no message claimed"
        assert await settled(before) <= before
        await assert_host_serves(rt, healthy)


async def test_descriptors_held_per_actor_are_bounded_and_shown():
    """Results the host keeps count against the actor's bound (shown as open_fds): past it, that call fails
    naming the limit and the remedy, the actor goes on, and once released the calls succeed again."""
    async with actorbox.Runtime() as rt:
        healthy, hoarder = await start_actors(rt, Healthy, FdHoarder)
        endpoint = rt._live.actors.supervisors[hoarder._actor_id].endpoint
        endpoint.held.limit = 100

        def open_fds() -> int:
            return {a.label: a.open_fds for a in rt.actors()}[actorbox.info(hoarder).label]

        assert open_fds() == 0
        kept = [await call(hoarder.tensor(4096)) for _ in range(30)]
        assert open_fds() == 30
        kept.append(await call(hoarder.sixty_fds_per_reply()))
        assert open_fds() == 90
        with pytest.raises(actorbox.ActorboxError, match="limit of 100 per actor") as info:
            await call(hoarder.sixty_fds_per_reply())
        assert "release what you hold" in str(info.value)
        assert open_fds() == 90, "the refused reply's descriptors were kept"
        assert await call(hoarder.ping()) == "pong"
        del kept, info
        gc.collect()
        assert open_fds() == 0
        assert len(await call(hoarder.sixty_fds_per_reply())) == 60
        assert {a.label: a.open_fds for a in rt.actors()}[actorbox.info(healthy).label] == 0
        await assert_host_serves(rt, healthy)
