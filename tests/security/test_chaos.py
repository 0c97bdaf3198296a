"""Chaos: actor processes SIGKILLed at random while 1,000 calls are in flight.

The trust model's promises under faults (docs/architecture.md): a dead actor fails the calls
it was running with ActorDiedError, is restarted (max_restarts), and every other call
goes on; nothing hangs, nothing fails with an untyped error, and afterwards no call is
pending and no process or descriptor is left behind. benchmarks/chaos_soak.py runs the
same for as long as one likes.
"""

from __future__ import annotations

import os
import random
import signal
from dataclasses import dataclass, field

import anyio
import psutil
import pytest

import actorbox

from .plugins.workers import Worker

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

ACTORS = 5
IN_FLIGHT = 1_000
CALLS = 12_000
# Each call is bounded: one still unanswered after this long counts as hung.
CALL_BOUND = 30.0


@dataclass
class Tally:
    """What became of the calls issued."""

    issued: int = 0
    ok: int = 0
    wrong: int = 0  # answered, but with someone else's value
    typed: dict[str, int] = field(default_factory=dict)  # ActorboxError subclasses, by name
    untyped: list[str] = field(default_factory=list)
    hung: int = 0
    kills: int = 0


async def _call(h: actorbox.ActorHandle, x: int, tally: Tally) -> None:
    tally.issued += 1
    try:
        with anyio.fail_after(CALL_BOUND):
            got = await h.work(x)
    except TimeoutError:
        tally.hung += 1
    except actorbox.ActorboxError as exc:
        name = type(exc).__name__
        tally.typed[name] = tally.typed.get(name, 0) + 1
    except Exception as exc:
        tally.untyped.append(repr(exc))
    else:
        if got == x:
            tally.ok += 1
        else:
            tally.wrong += 1


async def _killer(rt: actorbox.Runtime, rng: random.Random, tally: Tally, stop: anyio.Event) -> None:
    """SIGKILL a random alive actor's process every 20-150 ms until told to stop."""
    while not stop.is_set():
        await anyio.sleep(rng.uniform(0.02, 0.15))
        if stop.is_set():  # told to stop while it slept: no kill after the calls are over
            break
        alive = [a.pid for a in rt.actors() if a.kind == "actor" and a.state == "alive" and a.pid]
        if alive:
            try:
                os.kill(rng.choice(alive), signal.SIGKILL)
                tally.kills += 1
            except ProcessLookupError:
                pass


def _children() -> list[psutil.Process]:
    return psutil.Process().children(recursive=True)


async def test_random_sigkills_under_a_thousand_calls_in_flight():
    """Random SIGKILLs of 5 actors under 1,000 calls in flight: every call ends with its own value
    or a typed ActorboxError, none hangs, no call is left pending, no process or descriptor leaks."""
    rng = random.Random(20261205)
    tally = Tally()
    assert not _children()
    async with actorbox.Runtime() as rt:
        handles = [await rt.start(Worker) for _ in range(ACTORS)]
        fds_before = len(os.listdir("/proc/self/fd"))
        stop = anyio.Event()
        todo = iter(range(CALLS))

        async def caller() -> None:
            for x in todo:
                await _call(handles[x % ACTORS], x, tally)

        with anyio.fail_after(CALL_BOUND + 20):
            async with anyio.create_task_group() as tg:
                tg.start_soon(_killer, rt, rng, tally, stop)
                async with anyio.create_task_group() as callers:
                    for _ in range(IN_FLIGHT):
                        callers.start_soon(caller)
                stop.set()
        # A kill just before the stop is noticed within milliseconds; until then its actor
        # still shows as alive (restarts from a zygote take ~25 ms: none may be pending to wait for).
        await anyio.sleep(0.5)
        restarts = sum(a.restarts for a in rt.actors() if a.kind == "actor")
        # Every actor came back, and answers.
        with anyio.fail_after(CALL_BOUND):
            while any(a.state != "alive" for a in rt.actors() if a.kind == "actor"):
                await anyio.sleep(0.05)
            for h in handles:
                assert await h.add(2, 3) == 5
        assert rt.pending_calls() == []
        fds_after = len(os.listdir("/proc/self/fd"))
    summary = (f"{tally.issued} calls, {tally.ok} ok, typed failures {tally.typed}, {len(tally.untyped)} untyped, "
               f"{tally.hung} hung, {tally.wrong} wrong, {tally.kills} kills, {restarts} restarts")
    print(summary)
    assert tally.issued == CALLS, summary
    assert tally.untyped == [] and tally.hung == 0 and tally.wrong == 0, (summary, tally.untyped[:5])
    assert tally.ok + sum(tally.typed.values()) == CALLS, summary
    assert set(tally.typed) <= {"ActorDiedError"}, summary
    assert tally.kills >= 5 and restarts >= 5 and tally.typed, summary  # the chaos really happened
    assert abs(fds_after - fds_before) <= 2, (fds_before, fds_after, summary)
    with anyio.fail_after(5):
        while _children():
            await anyio.sleep(0.05)
