"""Decoding budgets: what a hostile actor's small frames cost the host (issue 14, findings 4 and 5).

A real actor (plugins/amplifier.py) sends hand-made bytes that decode to something
huge or slow: maps of integer keys colliding in CPython's hash (40,000 of them
stalled the host's loop 13 s before budgets), megabytes of empty maps in a reply or
a LOG frame (1.2 GB and seconds), a frame of an unknown kind (4.4 GB). Each test
watches the host while the attack runs: the longest gap between ticks of a task
that wants to run every 5 ms (the loop's longest stall) and the peak of its
resident memory (VmHWM, reset first), and then checks that the attacker and the
other actors are served.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import psutil
import pytest

import actorbox

from ._support import CALL_TIMEOUT, assert_host_serves, start_actors
from .plugins.amplifier import Amplifier, Sizes
from .plugins.healthy import Healthy, Models, Victim

pytestmark = pytest.mark.anyio

# A stall past this fails. Budgets keep the worst case near 0.1-0.2 s on a loaded
# 2-core box; before them these attacks stalled the loop 1.3-78 s.
MAX_STALL = 0.5
# Peak growth of the host's memory past this fails (a 60 MiB frame is buffered whole
# once, and its body copied); before budgets, 1.2-4.4 GB.
MAX_GROWTH = 300 << 20
MiB = 1 << 20


@pytest.fixture(scope="module", params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Module scope (overrides tests/conftest.py's): one Runtime serves this module's tests per backend."""
    return request.param  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
async def rt(anyio_backend: str) -> AsyncIterator[actorbox.Runtime]:
    async with actorbox.Runtime() as runtime:
        runtime.register("models", Models())
        yield runtime


_actors: dict[actorbox.Runtime, list[actorbox.ActorHandle]] = {}


async def actors(rt: actorbox.Runtime) -> list[actorbox.ActorHandle]:
    """[healthy, amplifier, victim], started once per Runtime."""
    if rt not in _actors:
        _actors[rt] = await start_actors(rt, Healthy, Amplifier, Victim)
    return _actors[rt]


def _vm_hwm() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc/self/status")


class Watch:
    """What the host went through meanwhile: its loop's longest stall, its memory's peak growth."""

    stall = 0.0
    growth = 0

    def __repr__(self) -> str:
        return f"<loop stalled {self.stall * 1000:.0f} ms at most, memory grew {self.growth / MiB:.0f} MiB>"


@asynccontextmanager
async def watching() -> AsyncIterator[Watch]:
    watch = Watch()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets this process's VmHWM to its current resident size
    before = psutil.Process().memory_info().rss

    async def tick() -> None:
        last = time.monotonic()
        while True:
            await anyio.sleep(0.005)
            now = time.monotonic()
            watch.stall = max(watch.stall, now - last)
            last = now

    async with anyio.create_task_group() as tg:
        tg.start_soon(tick)
        await anyio.sleep(0.02)  # the ticker runs before the attack does
        yield watch
        await anyio.sleep(0.02)  # and once after it
        tg.cancel_scope.cancel()
    watch.growth = _vm_hwm() - before


def _assert_bounded(watch: Watch) -> None:
    assert watch.stall < MAX_STALL, watch
    assert watch.growth < MAX_GROWTH, watch


async def _assert_all_serve(rt: actorbox.Runtime, healthy: Any, amplifier: Any, victim: Any) -> None:
    with anyio.fail_after(CALL_TIMEOUT):
        assert await amplifier.ping() == "pong"
        assert await victim.take(1) == "int"
    await assert_host_serves(rt, healthy)


@pytest.mark.slow
async def test_colliding_keys_in_a_reply_fail_that_call_quickly(rt):
    """A reply of 40,000 hash-colliding integer keys fails its call with SerializationError naming the
    knob, without stalling the host; the actor and the others go on."""
    healthy, amplifier, victim = await actors(rt)
    async with watching() as watch:
        with anyio.fail_after(CALL_TIMEOUT), pytest.raises(actorbox.SerializationError) as info:
            await amplifier.reply_colliding_keys(40_000)
    assert "Runtime(max_decoded_items=" in str(info.value), str(info.value)
    _assert_bounded(watch)
    await _assert_all_serve(rt, healthy, amplifier, victim)


@pytest.mark.slow
async def test_colliding_keys_in_arguments_to_a_host_resident_object(rt):
    """Arguments of 40,000 colliding keys to a host-resident object fail that call with SerializationError,
    without stalling the host (which decodes them)."""
    healthy, amplifier, victim = await actors(rt)
    async with watching() as watch:
        with anyio.fail_after(CALL_TIMEOUT):
            outcome = await amplifier.call_colliding_keys("models", "lookup", 40_000)
    assert outcome["error"] == "SerializationError", outcome
    assert "Runtime(max_decoded_items=" in outcome["message"], outcome
    _assert_bounded(watch)
    await _assert_all_serve(rt, healthy, amplifier, victim)


@pytest.mark.slow
async def test_colliding_keys_in_arguments_to_another_actor(rt):
    """Arguments of 40,000 colliding keys to another actor fail that call quickly with SerializationError:
    the receiving actor decodes under the same budget (actors don't trust each other)."""
    healthy, amplifier, victim = await actors(rt)
    with anyio.fail_after(CALL_TIMEOUT):
        outcome = await amplifier.call_colliding_keys(victim, "take", 40_000)
    assert outcome["error"] == "SerializationError", outcome
    assert "Runtime(max_decoded_items=" in outcome["message"], outcome
    assert outcome["seconds"] < 2.0, outcome  # the victim's own loop was not stalled for long either
    await _assert_all_serve(rt, healthy, amplifier, victim)


@pytest.mark.slow
async def test_empty_maps_in_a_reply_fail_that_call_within_budget(rt):
    """A reply of 16 MiB of empty maps fails its call with SerializationError naming the knob; the host's
    loop and memory stay within bounds, and the actor lives on."""
    healthy, amplifier, victim = await actors(rt)
    async with watching() as watch:
        with anyio.fail_after(CALL_TIMEOUT), pytest.raises(actorbox.SerializationError) as info:
            await amplifier.reply_empty_maps(16 * MiB)
    assert "Runtime(max_decoded_items=" in str(info.value), str(info.value)
    _assert_bounded(watch)
    await _assert_all_serve(rt, healthy, amplifier, victim)


@pytest.mark.slow
@pytest.mark.parametrize(("attack", "nbytes", "reason"), [
    ("log_empty_maps", 16 * MiB, "LOG"),  # a LOG field holding containers: refused at its first header
    ("unknown_kind_empty_maps", 60 * MiB, "unknown envelope kind 99"),  # refused from its first two bytes
])
async def test_bad_frame_of_empty_maps_disconnects_undecoded(rt, attack, nbytes, reason):
    """A LOG frame, or a frame of an unknown kind, full of empty maps disconnects its actor (ActorDiedError
    naming the rule) without being decoded: the host's loop and memory stay within bounds."""
    healthy, _, victim = await actors(rt)
    with anyio.fail_after(CALL_TIMEOUT):
        amplifier = await rt.start(Amplifier)
    async with watching() as watch:
        with anyio.fail_after(CALL_TIMEOUT), pytest.raises(actorbox.ActorDiedError) as info:
            await getattr(amplifier, attack)(nbytes)
    assert "disconnected" in str(info.value) and reason in str(info.value), str(info.value)
    _assert_bounded(watch)
    with anyio.fail_after(CALL_TIMEOUT):
        assert await victim.take(1) == "int"
    await assert_host_serves(rt, healthy)


@pytest.mark.slow
async def test_the_runtime_knob_sets_the_budget_of_host_and_actors():
    """Runtime(max_decoded_items=...) is the budget: a result over it fails naming the knob, at the host and
    in an actor that another actor calls; raised, the same values pass."""
    n = 10_000  # ~30 KB: metered
    async with actorbox.Runtime(max_decoded_items=5_000) as small:
        sizes, victim = await start_actors(small, Sizes, Victim)
        with anyio.fail_after(CALL_TIMEOUT):
            with pytest.raises(actorbox.SerializationError, match=r"Runtime\(max_decoded_items=5000\)"):
                await sizes.numbers(n)
            refused = await sizes.pass_on(victim, n)
            assert refused.startswith("SerializationError") and "max_decoded_items" in refused, refused
            assert await sizes.numbers(100) == list(range(100))  # small results are never refused
    async with actorbox.Runtime(max_decoded_items=50_000) as big:
        sizes, victim = await start_actors(big, Sizes, Victim)
        with anyio.fail_after(CALL_TIMEOUT):
            assert await sizes.numbers(n) == list(range(n))
            assert await sizes.pass_on(victim, n) == "list"


def test_knobs_are_validated():
    """A budget that is not a positive integer is refused when the Runtime is made, naming the knob."""
    with pytest.raises(ValueError, match=r"max_decoded_items"):
        actorbox.Runtime(max_decoded_items=0)
    with pytest.raises(ValueError, match=r"max_map_keys"):
        actorbox.Runtime(max_map_keys=-1)
