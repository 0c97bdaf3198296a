"""Soak: 100,000 calls through the scheduler leave the host's memory and descriptors flat.

Nothing an actor sends may make the host balloon or hold descriptors (trust model,
docs/architecture.md), and that includes plain traffic: per-call state (call table entries,
futures, decoded values, connection buffers) must all be released. After a warm-up (the
allocator's arenas and the loop's buffers settle), 100,000 more calls, 100 in flight over
two actors, may grow the host's RSS by a few MB at most and its descriptor count not at
all. benchmarks/chaos_soak.py runs a million.
"""

from __future__ import annotations

import gc
import os

import anyio
import psutil
import pytest

import actorbox

from .plugins.workers import Worker

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

CALLS = 100_000
WARM_UP = 10_000
IN_FLIGHT = 100
MAX_RSS_GROWTH = 30 * 1024 * 1024
MAX_FD_GROWTH = 2


async def _run(handles: list[actorbox.ActorHandle], calls: int) -> int:
    """``calls`` calls, IN_FLIGHT at a time, alternating methods and actors; returns how many answered right."""
    ok = 0
    todo = iter(range(calls))

    async def caller() -> None:
        nonlocal ok
        for x in todo:
            h = handles[x % len(handles)]
            if x % 2:
                right = await h.add(x, 1) == x + 1
            else:
                right = await h.work([x, "s" * (x % 64)], 0) == [x, "s" * (x % 64)]
            ok += right  # after the await: `ok += await ...` would read ok before it

    async with anyio.create_task_group() as tg:
        for _ in range(IN_FLIGHT):
            tg.start_soon(caller)
    return ok


def _rss() -> int:
    gc.collect()
    return psutil.Process().memory_info().rss


async def test_a_hundred_thousand_calls_leave_memory_and_descriptors_flat():
    """100,000 calls (100 in flight, two actors) after a warm-up: host RSS grows < 30 MB, descriptors
    by at most 2, every call answered with its own value, nothing pending."""
    async with actorbox.Runtime() as rt:
        handles = [await rt.start(Worker), await rt.start(Worker)]
        with anyio.fail_after(50):
            assert await _run(handles, WARM_UP) == WARM_UP
            rss0, fds0 = _rss(), len(os.listdir("/proc/self/fd"))
            assert await _run(handles, CALLS) == CALLS
            rss1, fds1 = _rss(), len(os.listdir("/proc/self/fd"))
        assert rt.pending_calls() == []
        assert all(a.restarts == 0 and a.state == "alive" for a in rt.actors() if a.kind == "actor")
    print(f"soak: {CALLS} calls, RSS {rss0 >> 20} -> {rss1 >> 20} MiB, fds {fds0} -> {fds1}")
    assert rss1 - rss0 < MAX_RSS_GROWTH, (rss0, rss1)
    assert abs(fds1 - fds0) <= MAX_FD_GROWTH, (fds0, fds1)
