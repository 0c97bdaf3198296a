"""What hostile and honest payloads cost the host's event loop and memory, at the default budgets.

Run: ``python benchmarks/hostile_stalls.py [--repeats 3] [--backend asyncio|trio]``

The trust model says nothing an actor sends may stall the host's loop for more than
about 100 ms or grow its memory past a budget. Each row runs one payload from a real
sandboxed actor (tests/security/plugins/amplifier.py and a few honest results) while
a ticker that wants to run every 5 ms records the loop's longest stall, and the
host's peak resident growth (VmHWM, reset before each run) is read after. Rows are
side by side with honest results of the same size on the wire, which are the floor:
reading and copying a frame of that size costs what it costs. Numbers, not
assertions; the median and worst of the repeats are shown.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import anyio  # noqa: E402
import psutil  # noqa: E402
from _common import print_table  # noqa: E402

import actorbox  # noqa: E402
from tests.security.plugins.amplifier import Amplifier  # noqa: E402

MiB = 1 << 20


@actorbox.actor
class Honest:
    """Results an honest plugin returns: bytes, a string, a list of numbers."""

    def blob(self, n: int) -> bytes:
        return b"x" * n

    def text(self, n: int) -> str:
        return "x" * n

    def numbers(self, n: int) -> list[int]:
        return list(range(n))


def _vm_hwm() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


async def _measure(call: Callable[[], Awaitable[Any]]) -> tuple[float, float, str]:
    """(longest loop stall s, peak memory growth MiB, outcome) of one awaited call."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # VmHWM := current RSS
    before = psutil.Process().memory_info().rss
    stall = 0.0
    outcome = ""

    async def tick() -> None:
        nonlocal stall
        last = time.monotonic()
        while True:
            await anyio.sleep(0.005)
            now = time.monotonic()
            stall = max(stall, now - last)
            last = now

    async with anyio.create_task_group() as tg:
        tg.start_soon(tick)
        await anyio.sleep(0.02)
        try:
            with anyio.fail_after(60):
                value = await call()
            outcome = f"ok ({type(value).__name__})"
        except actorbox.ActorboxError as exc:
            outcome = type(exc).__name__
        await anyio.sleep(0.02)
        tg.cancel_scope.cancel()
    return stall, (_vm_hwm() - before) / MiB, outcome


async def run(repeats: int) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    async with actorbox.Runtime() as rt:
        honest = await rt.start(Honest)
        amp = await rt.start(Amplifier)
        await honest.numbers(10)
        await amp.ping()
        cases: list[tuple[str, Callable[[], Awaitable[Any]], bool]] = [
            ("honest: 60 MiB bytes", lambda: honest.blob(60 * MiB), False),
            ("honest: 60 MiB str", lambda: honest.text(60 * MiB), False),
            ("honest: list of 500,000 ints (~2.4 MB)", lambda: honest.numbers(500_000), False),
            ("honest: list of 1,000,000 ints (at the item budget)", lambda: honest.numbers(999_000), False),
            ("hostile: 40,000 hash-colliding keys", lambda: amp.reply_colliding_keys(40_000), False),
            ("hostile: 100,000 hash-colliding keys", lambda: amp.reply_colliding_keys(100_000), False),
            ("hostile: 16 MiB of empty maps in a reply", lambda: amp.reply_empty_maps(16 * MiB), False),
            ("hostile: 60 MiB of empty maps in a reply", lambda: amp.reply_empty_maps(60 * MiB), False),
            ("hostile: 16 MiB of empty maps in a LOG frame", lambda: amp.log_empty_maps(16 * MiB), True),
            ("hostile: 60 MiB frame of an unknown kind", lambda: amp.unknown_kind_empty_maps(60 * MiB), True),
        ]
        for label, call, kills in cases:
            stalls, growths = [], []
            outcome = ""
            for _ in range(repeats):
                if kills:  # the host disconnects it: a fresh one per run
                    amp = await rt.start(Amplifier)
                    await amp.ping()
                s, g, outcome = await _measure(call)
                stalls.append(s * 1000)
                growths.append(g)
            rows.append((label, outcome, f"{statistics.median(stalls):.0f}", f"{max(stalls):.0f}",
                         f"{statistics.median(growths):.0f}", f"{max(growths):.0f}"))
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--repeats", type=int, default=3, help="runs of each payload (default 3)")
    p.add_argument("--backend", choices=("asyncio", "trio"), default="asyncio")
    args = p.parse_args()
    rows = anyio.run(run, args.repeats, backend=args.backend)
    print(f"host loop stall and memory per payload from a sandboxed actor, default budgets, backend {args.backend}, "
          f"{os.cpu_count()} CPUs, {args.repeats} runs each")
    print()
    print_table(("payload", "outcome", "stall p50 ms", "stall max ms", "growth p50 MiB", "growth max MiB"), rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
