"""Sandbox benchmark: actor start time and call round trip, sandboxed vs unsandboxed, side by side.

Run from the repository root: ``python benchmarks/sandbox.py [--starts 10] [--n 2000] [--backend asyncio|trio]``

In one run it measures, for ``Runtime(sandbox="required")`` (bubblewrap) and
``Runtime(sandbox="disabled")`` (a plain process):

(a) actor start: ``rt.start(Cls)`` until the instance is constructed and ready
    (median, min and max of ``--starts`` starts, each actor stopped before the next);
(b) call round trip: a no-arg sync method, ``--n`` sequential calls after a warm-up
    (p50 and p99).

The two modes alternate round by round so drift on this noisy machine hits both.
Numbers are informational: nothing here is a test.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field

import anyio
import structlog
from _common import print_table

import actorbox

MODES = ("required", "disabled")


# Module level so it travels by value (cloudpickle) to the actor process.
@actorbox.actor
class Nop:
    """A no-op actor: only the start and the call path are measured."""

    def ping(self) -> None:
        return None


@dataclass
class Samples:
    starts_ms: list[float] = field(default_factory=list)
    calls_us: list[float] = field(default_factory=list)


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(len(s) * q))]


async def _measure_starts(mode: str, count: int, out: Samples) -> None:
    async with actorbox.Runtime(sandbox=mode) as rt:
        for _ in range(count):
            t0 = time.perf_counter()
            h = await rt.start(Nop)
            out.starts_ms.append((time.perf_counter() - t0) * 1000)
            await rt.stop(h)


async def _measure_calls(mode: str, n: int, warmup: int, out: Samples) -> None:
    clock = time.perf_counter_ns
    async with actorbox.Runtime(sandbox=mode) as rt:
        h = await rt.start(Nop)
        for _ in range(warmup):
            await h.ping()
        for _ in range(n):
            t0 = clock()
            await h.ping()
            out.calls_us.append((clock() - t0) / 1000)
        await rt.stop(h)


async def measure(starts: int, n: int, warmup: int, rounds: int) -> dict[str, Samples]:
    res = {m: Samples() for m in MODES}
    for r in range(rounds):
        # Alternate which mode goes first so neither always runs on a warmer machine.
        order = MODES if r % 2 == 0 else tuple(reversed(MODES))
        for mode in order:
            await _measure_starts(mode, max(1, starts // rounds), res[mode])
        for mode in order:
            await _measure_calls(mode, max(1, n // rounds), warmup, res[mode])
    return res


def report(res: dict[str, Samples], backend: str) -> None:
    sb, un = res["required"], res["disabled"]

    def row(label: str, a: float, b: float, unit: str) -> tuple[str, ...]:
        return (label, f"{a:.1f} {unit}", f"{b:.1f} {unit}", f"{a - b:+.1f} {unit}", f"{a / b:.2f}x")

    rows = [
        row(f"actor start, median of {len(sb.starts_ms)}", statistics.median(sb.starts_ms),
            statistics.median(un.starts_ms), "ms"),
        row("actor start, min", min(sb.starts_ms), min(un.starts_ms), "ms"),
        row("actor start, max", max(sb.starts_ms), max(un.starts_ms), "ms"),
        row(f"call round trip p50 ({len(sb.calls_us)} calls)", pct(sb.calls_us, 0.5), pct(un.calls_us, 0.5), "µs"),
        row(f"call round trip p99 ({len(sb.calls_us)} calls)", pct(sb.calls_us, 0.99), pct(un.calls_us, 0.99),
            "µs"),
    ]
    print(f"actorbox sandbox benchmark: host backend {backend}, Python {platform.python_version()}, "
          f"{os.cpu_count()} CPUs, euid {os.geteuid()}")
    print()
    print_table(("measurement", "sandboxed (bwrap)", "unsandboxed", "difference", "ratio"), rows)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--starts", type=int, default=10, help="actor starts per mode (default 10)")
    p.add_argument("--n", type=int, default=2000, help="timed calls per mode (default 2000)")
    p.add_argument("--warmup", type=int, default=200, help="untimed calls before timing, per actor (default 200)")
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds the samples are split into")
    p.add_argument("--backend", choices=("asyncio", "trio"), default="asyncio")
    p.add_argument("--raw", action="store_true", help="also print every start time, in order")
    args = p.parse_args()
    if args.starts < 1 or args.n < 1 or args.warmup < 0 or args.rounds < 1:
        p.error("--starts, --n and --rounds must be >= 1, --warmup >= 0")
    # The application (this script) owns logging: keep actor.started and the
    # unsandboxed-start warnings out of the table.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    res = anyio.run(measure, args.starts, args.n, args.warmup, args.rounds, backend=args.backend)
    report(res, args.backend)
    if args.raw:
        print()
        for mode, samples in res.items():
            print(f"starts, sandbox={mode} (ms):", " ".join(f"{x:.0f}" for x in samples.starts_ms))
    return 0


if __name__ == "__main__":
    sys.exit(main())
