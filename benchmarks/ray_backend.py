"""actorbox on its local backend, actorbox on Ray, and plain Ray, side by side (one run, one table).

Measures a call round trip (p50, sequential calls), 1,000 pipelined calls (all sent, then
gathered), an actor start (its first call answered; median of 5), and a call taking a
100 MB float32 tensor argument (median of 3). The Ray columns share one local Ray on
127.0.0.1 (no dashboard, usage statistics off) that actorbox's Ray Runtime starts; plain
Ray is driven with ``ray.get`` from the same process. Run: ``python benchmarks/ray_backend.py``
(``--quick`` for fewer repetitions).
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

os.environ["RAY_USAGE_STATS_ENABLED"] = "0"

import anyio
import torch

import actorbox

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import print_table

QUICK = "--quick" in sys.argv
ROUND_TRIPS = 100 if QUICK else 300
PIPELINED = 1000
STARTS = 3 if QUICK else 5
TENSOR_RUNS = 3


class Echo:
    def echo(self, x: Any) -> Any:
        return x

    def size(self, t: Any) -> int:
        return int(t.numel())


async def _timed(fn: Callable[[], Awaitable[Any]]) -> float:
    t0 = time.perf_counter()
    await fn()
    return time.perf_counter() - t0


async def actorbox_column(rt: Any, tensor: torch.Tensor) -> dict[str, float]:
    cls = actorbox.actor(Echo)
    e = await rt.start(cls)
    await e.echo(0)
    rtt = [await _timed(lambda: e.echo(1)) for _ in range(ROUND_TRIPS)]
    pipelined = await _timed(lambda: actorbox.gather(*(e.echo(i) for i in range(PIPELINED))))
    starts = []
    for _ in range(STARTS):
        t0 = time.perf_counter()
        h = await rt.start(cls)
        await h.echo(0)
        starts.append(time.perf_counter() - t0)
        await rt.stop(h)
    big = [await _timed(lambda: e.size(tensor)) for _ in range(TENSOR_RUNS)]
    return {"rtt": statistics.median(rtt), "pipelined": pipelined, "start": statistics.median(starts),
            "tensor": statistics.median(big)}


def plain_ray_column(tensor: torch.Tensor) -> dict[str, float]:
    import ray

    remote_echo = ray.remote(num_cpus=0)(Echo)
    e = remote_echo.remote()
    ray.get(e.echo.remote(0))
    rtt = []
    for _ in range(ROUND_TRIPS):
        t0 = time.perf_counter()
        ray.get(e.echo.remote(1))
        rtt.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    ray.get([e.echo.remote(i) for i in range(PIPELINED)])
    pipelined = time.perf_counter() - t0
    starts = []
    for _ in range(STARTS):
        t0 = time.perf_counter()
        h = remote_echo.remote()
        ray.get(h.echo.remote(0))
        starts.append(time.perf_counter() - t0)
        ray.kill(h)
    big = []
    for _ in range(TENSOR_RUNS):
        t0 = time.perf_counter()
        ray.get(e.size.remote(tensor))
        big.append(time.perf_counter() - t0)
    ray.kill(e)
    return {"rtt": statistics.median(rtt), "pipelined": pipelined, "start": statistics.median(starts),
            "tensor": statistics.median(big)}


async def main() -> None:
    tensor = torch.ones(25 * 1024 * 1024, dtype=torch.float32)  # 100 MiB
    async with actorbox.Runtime() as rt:
        local = await actorbox_column(rt, tensor)
    async with actorbox.Runtime(backend="ray") as rt:
        on_ray = await actorbox_column(rt, tensor)
        plain = plain_ray_column(tensor)
    rows = [
        ("call round trip p50 (us)", *(f"{c['rtt'] * 1e6:,.0f}" for c in (local, on_ray, plain))),
        (f"{PIPELINED:,} pipelined calls (ms)", *(f"{c['pipelined'] * 1e3:,.0f}" for c in (local, on_ray, plain))),
        ("actor start, first call answered (ms)", *(f"{c['start'] * 1e3:,.0f}" for c in (local, on_ray, plain))),
        ("call with a 100 MB tensor argument (ms)", *(f"{c['tensor'] * 1e3:,.1f}" for c in (local, on_ray, plain))),
    ]
    rows.append(("actorbox-on-Ray / plain Ray, round trip", "", f"{on_ray['rtt'] / plain['rtt']:.2f}x", ""))
    rows.append(("actorbox-on-Ray / plain Ray, pipelined", "", f"{on_ray['pipelined'] / plain['pipelined']:.2f}x", ""))
    print_table(("measurement", "actorbox local", "actorbox on Ray", "plain Ray"), rows)
    print(f"({os.cpu_count()} CPUs, torch {torch.__version__}, ray {__import__('ray').__version__}, asyncio)")


if __name__ == "__main__":
    anyio.run(main)
