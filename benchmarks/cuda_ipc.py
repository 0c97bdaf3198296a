"""CUDA check, for a GPU machine: IPC round trip, CPU-copy fallback, re-sharing, timings.

Run: ``python benchmarks/cuda_ipc.py [--size-mb 256]``. It prints one line per check
(PASS/FAIL) and a table of medians, and exits 1 if a check fails. Without a GPU it
says so and exits 0 (nothing to check). CUDA IPC reaches unsandboxed actors only
(docs/debugging.md, "CUDA IPC failures"): the IPC checks use one, and a sandboxed
actor with SandboxPolicy(allow_gpu=True) checks the copy it gets instead.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import traceback
from collections.abc import Awaitable, Callable
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

    def double(self, t: Any) -> Any:
        return t * 2  # a new CUDA tensor, shared back to the host

    def where(self, t: Any) -> list[Any]:
        return [str(t.device), bool(getattr(t, "_actorbox_ipc", False))]


@actorbox.actor
class CpuWorker(GpuWorker):
    """The same methods, sandboxed without the GPU's device nodes."""


@actorbox.actor(sandbox="disabled")
class IpcWorker(GpuWorker):
    """The same methods, unsandboxed: trusted code, which CUDA IPC can reach."""


Results = list[tuple[str, bool, str]]


async def check(results: Results, name: str, body: Callable[[], Awaitable[tuple[bool, str]]]) -> None:
    try:
        ok, detail = await body()
    except Exception as exc:  # a failed check is reported, and the others still run
        ok, detail = False, f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
        traceback.print_exc()
    results.append((name, ok, detail))


async def median_ms(fn: Callable[[], Awaitable[Any]], n: int = 10) -> float:
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        await fn()
        torch.cuda.synchronize()
        samples.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(samples)


async def run_checks(size_mb: int, results: Results, timings: list[tuple[str, ...]]) -> None:
    n = size_mb << 18  # float32 elements
    async with actorbox.Runtime(object_retention=1.0) as rt:
        t = torch.arange(n, dtype=torch.float32, device="cuda:0")
        # IPC off: copied through CPU shared memory, restored on cuda:0.
        os.environ.pop("ACTORBOX_ENABLE_CUDA_IPC", None)
        copy = await rt.start(GpuWorker)

        async def fallback() -> tuple[bool, str]:
            back = await copy.echo(t)
            return back.device == t.device and torch.equal(back, t), str(back.device)

        await check(results, "IPC off: the round trip restores device and data", fallback)
        timings.append(("IPC off (through CPU memory) round trip", f"{size_mb} MB",
                        f"{await median_ms(lambda: copy.echo(t), 5):.1f} ms"))

        os.environ["ACTORBOX_ENABLE_CUDA_IPC"] = "1"  # actors started from here on have it too
        ipc = await rt.start(IpcWorker)

        async def round_trip() -> tuple[bool, str]:
            back = await ipc.echo(t)
            where = await ipc.where(t)
            return torch.equal(back, t) and where == ["cuda:0", True], f"actor saw {where}"

        await check(results, "IPC on: the round trip is bit-exact and the actor got it by IPC", round_trip)

        async def in_place() -> tuple[bool, str]:
            before = float(t[:4].sum())
            await ipc.add_one(t)
            after = float(t[:4].sum())
            t.sub_(1)
            return after == before + 4, f"{before} -> {after}"

        await check(results, "IPC on: an in-place write in the actor is seen by the host", in_place)

        async def result_by_ipc() -> tuple[bool, str]:
            d = await ipc.double(t)
            return torch.equal(d, t * 2) and getattr(d, "_actorbox_ipc", False), str(d.device)

        await check(results, "IPC on: a new CUDA result comes back to the host by IPC", result_by_ipc)

        async def outlives_retention() -> tuple[bool, str]:
            kept = await ipc.double(t)  # the actor's block, which it stops holding after 1 s
            await anyio.sleep(1.5)
            for _ in range(5):  # the actor allocates again: it must not reuse the block the host still maps
                await ipc.double(torch.full_like(t, 7.0))
            return torch.equal(kept, t * 2), ""

        await check(results, "IPC on: a received tensor stays intact after the sender's retention", outlives_retention)

        async def reshare() -> tuple[bool, str]:
            back = await ipc.echo(t)  # received by IPC in the host
            again = await ipc.echo(back)  # the host must clone it to share it again
            other = await rt.start(IpcWorker)
            hop = await other.echo(back)
            return torch.equal(again, t) and torch.equal(hop, t), ""

        await check(results, "IPC on: re-sharing a tensor received by IPC works (cloned)", reshare)

        async def sandboxed_copy() -> tuple[bool, str]:
            boxed = await rt.start(GpuWorker)  # IPC on, but sandboxed: the host copies
            back = await boxed.echo(t)
            where = await boxed.where(t)
            before = float(t[:4].sum())
            await boxed.add_one(t)
            return (torch.equal(back, t) and where == ["cuda:0", False] and float(t[:4].sum()) == before,
                    f"actor saw {where}")

        await check(results, "IPC on, sandboxed GPU actor: a copy, restored on cuda:0", sandboxed_copy)

        async def no_cuda_receiver() -> tuple[bool, str]:
            blind = await rt.start(CpuWorker)
            try:
                await blind.echo(t)
            except actorbox.SerializationError as exc:
                return "no CUDA device" in str(exc), str(exc).splitlines()[0][:160]
            return False, "no error"

        await check(results, "IPC on: a receiver without CUDA fails the call with a clear error", no_cuda_receiver)

        async def no_leak() -> tuple[bool, str]:
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated()
            for _ in range(20):
                fresh = torch.ones(4 << 20, device="cuda:0")  # 16 MB, shared and dropped
                await ipc.echo(fresh)
                del fresh
            await anyio.sleep(2.5)  # the retention (1 s) passes and the sweeper runs
            torch.cuda.synchronize()
            grown = torch.cuda.memory_allocated() - base
            return grown < 16 << 20, f"{grown >> 20} MiB still allocated after 20 x 16 MB shared"

        await check(results, "IPC on: shared blocks are freed after the retention", no_leak)
        try:
            timings.append(("IPC on round trip", f"{size_mb} MB", f"{await median_ms(lambda: ipc.echo(t)):.2f} ms"))
        except actorbox.ActorboxError as exc:
            timings.append(("IPC on round trip", f"{size_mb} MB", f"failed: {type(exc).__name__}"))

        async def clone() -> None:
            t.clone()

        timings.append(("device-to-device clone (reference)", f"{size_mb} MB", f"{await median_ms(clone):.2f} ms"))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--size-mb", type=int, default=256)
    args = p.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device here: nothing to check (run this on a GPU machine)")
        return 0
    results: Results = []
    timings: list[tuple[str, ...]] = []
    anyio.run(run_checks, args.size_mb, results, timings)
    for name, ok, detail in results:
        print(f"[{'PASS' if ok else 'FAIL'}] {name}" + (f": {detail}" if detail else ""))
    print_table(("measurement", "size", "median"), timings)
    return 0 if results and all(ok for _, ok, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main())
