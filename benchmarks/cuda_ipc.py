"""CUDA check, for a GPU machine: IPC round trip, CPU-copy fallback, re-sharing, timings.

Run: ``python benchmarks/cuda_ipc.py [--size-mb 256]``. It prints one line per check
(PASS/FAIL) and a small table, and exits 1 if a check fails. Without a GPU it says
so and exits 0 (nothing to check). Actors run with SandboxPolicy(allow_gpu=True).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

import anyio
import torch
from _common import print_table

import actorbox


@actorbox.actor(sandbox=actorbox.SandboxPolicy(allow_gpu=True))
class GpuWorker:
    def echo(self, t: Any) -> Any:
        return t

    def add_one(self, t: Any) -> None:
        t.add_(1)  # in place: with IPC the host sees it
        torch.cuda.synchronize()

    def describe(self, t: Any) -> list[Any]:
        return [str(t.device), float(t.float().sum())]


async def run_checks(size_mb: int, results: list[tuple[str, bool, str]], timings: list[tuple[str, ...]]) -> None:
    n = size_mb << 18  # float32 elements
    async with actorbox.Runtime() as rt:
        w = await rt.start(GpuWorker)
        t = torch.arange(n, dtype=torch.float32, device="cuda:0")
        # Fallback (IPC off): copied through CPU shared memory, restored on cuda:0.
        os.environ.pop("ACTORBOX_ENABLE_CUDA_IPC", None)
        t0 = time.perf_counter()
        back = await w.echo(t)
        dt = time.perf_counter() - t0
        results.append(("fallback round trip restores the device and data",
                        back.device == t.device and torch.equal(back, t), str(back.device)))
        timings.append(("fallback (CPU copy) round trip", f"{size_mb} MB", f"{dt * 1e3:.1f} ms"))
        # IPC on: no copy, in-place writes visible both ways.
        os.environ["ACTORBOX_ENABLE_CUDA_IPC"] = "1"
        w2 = await rt.start(GpuWorker)  # started with the flag in its environment
        t0 = time.perf_counter()
        back = await w2.echo(t)
        dt = time.perf_counter() - t0
        results.append(("IPC round trip is bit-exact on the same device", torch.equal(back, t), str(back.device)))
        timings.append(("IPC round trip", f"{size_mb} MB", f"{dt * 1e3:.2f} ms"))
        before = float(t[:4].sum())
        await w2.add_one(t)
        torch.cuda.synchronize()
        results.append(("IPC: an in-place write in the actor is seen by the host",
                         float(t[:4].sum()) == before + 4, f"{before} -> {float(t[:4].sum())}"))
        got = await w2.echo(back)  # re-sharing a tensor received over IPC: cloned automatically
        results.append(("re-sharing a received IPC tensor works (cloned)", torch.equal(got, back), ""))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--size-mb", type=int, default=256)
    args = p.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device here: nothing to check (run this on a GPU machine)")
        return 0
    results: list[tuple[str, bool, str]] = []
    timings: list[tuple[str, ...]] = []
    anyio.run(run_checks, args.size_mb, results, timings)
    for name, ok, detail in results:
        print(f"[{'PASS' if ok else 'FAIL'}] {name}" + (f": {detail}" if detail else ""))
    print_table(("measurement", "size", "time"), timings)
    return 0 if all(ok for _, ok, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main())
