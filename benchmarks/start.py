"""Start benchmark: what starting and keeping torch-importing actors costs (issue 17).

Run from the repository root: ``python benchmarks/start.py [--later 10] [--concurrent 10,20] [--backend asyncio|trio]
[--ray-python /work/ray-venv/bin/python]``

In one run, for an actor whose constructor imports torch (as almost every ML
extension's module does), sandboxed (bubblewrap), each timed from ``rt.start`` until
its first call returned:

- the reference: a bare ``python -c "import torch"`` in a fresh process;
- the first start of the environment (the first actor of a new Runtime);
- later starts of that environment (p50, p99 of ``--later``, one at a time);
- N concurrent starts (``--concurrent``): until all N first calls returned, in a fresh
  Runtime (so the batch includes starting its zygote: an import of torch) and in a fresh
  Runtime after ``await rt.prepare(TorchNode)`` (the zygote ready before the clock starts;
  the prepare itself is timed as its own row);
- idle PSS per actor (median and max) of the largest concurrent batch, read with
  psutil's ``memory_full_info().pss`` of the actors' pids ``rt.actors()`` lists (shared pages
  are split between the processes that map them, so the figures add up).

The same for Ray in its own column (``_ray_start.py``, run by ``--ray-python`` or
``$RAY_PYTHON``: a venv with Ray, torch and psutil; else this Python when it has Ray;
skipped otherwise): a local cluster of 2 CPUs, no dashboard, on 127.0.0.1 only.
Targets of issue 17 on the 2-core development machine: later starts within 0.15x the
bare import, 20 concurrent starts within 1x, idle PSS at most 50 MB.
Numbers are informational: nothing here is a test.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field

import anyio
import psutil
import structlog
import torch
from _common import print_table

import actorbox

# The host uses torch, as a plugin host passing tensors does: so its zygotes preload it
# (they do only when the host has imported it) and a forked actor starts with it imported.
assert torch.__version__


# Module level so it travels by value (cloudpickle) to the actor process.
@actorbox.actor
class TorchNode:
    """An extension that needs torch: the import is what a start pays for."""

    def __init__(self) -> None:
        import torch

        self.version = torch.__version__

    def ping(self) -> str:
        return self.version


@dataclass
class Column:
    first_s: float | None = None
    later_s: list[float] = field(default_factory=list)
    concurrent_s: dict[int, float] = field(default_factory=dict)
    prepared_s: dict[int, float] = field(default_factory=dict)  # after rt.prepare (actorbox only)
    prepare_s: list[float] = field(default_factory=list)  # rt.prepare in a fresh Runtime: the zygote's start
    pss: list[int] = field(default_factory=list)


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(len(s) * q))]


def bare_import_s(repeats: int) -> list[float]:
    """Wall time of ``python -c "import torch"`` in fresh processes (the floor a spawned actor pays)."""
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import torch"], check=True)
        out.append(time.perf_counter() - t0)
    return out


def pss_of(pids: list[int]) -> list[int]:
    """Proportional set size in bytes of each pid (the ones that are gone or unreadable skipped)."""
    out = []
    for pid in pids:
        try:
            out.append(psutil.Process(pid).memory_full_info().pss)
        except psutil.Error:
            pass
    return out


async def measure_actorbox(later: int, concurrent: list[int], settle_s: float) -> Column:
    col = Column()
    async with actorbox.Runtime(sandbox="required") as rt:
        t0 = time.perf_counter()
        h = await rt.start(TorchNode)
        await h.ping()
        col.first_s = time.perf_counter() - t0
        await rt.stop(h)
        for _ in range(later):
            t0 = time.perf_counter()
            h = await rt.start(TorchNode)
            await h.ping()
            col.later_s.append(time.perf_counter() - t0)
            await rt.stop(h)
    for n in concurrent:
        async with actorbox.Runtime(sandbox="required") as rt:
            async def one() -> None:
                await (await rt.start(TorchNode)).ping()  # the Runtime stops it on exit

            t0 = time.perf_counter()
            async with anyio.create_task_group() as tg:
                for _ in range(n):
                    tg.start_soon(one)
            col.concurrent_s[n] = time.perf_counter() - t0
            if n == max(concurrent):
                await anyio.sleep(settle_s)  # idle: let start-up garbage go before measuring
                col.pss = pss_of([a.pid for a in rt.actors() if a.pid is not None and a.kind == "actor"])
        async with actorbox.Runtime(sandbox="required") as rt:
            t0 = time.perf_counter()
            info = await rt.prepare(TorchNode)  # the zygote, ready before the clock starts
            col.prepare_s.append(time.perf_counter() - t0)
            assert info is not None, "no zygote: see the zygote.unavailable event"

            async def forked() -> None:
                await (await rt.start(TorchNode)).ping()

            t0 = time.perf_counter()
            async with anyio.create_task_group() as tg:
                for _ in range(n):
                    tg.start_soon(forked)
            col.prepared_s[n] = time.perf_counter() - t0
    return col


def measure_ray(python: str, later: int, concurrent: list[int], settle_s: float,
                num_cpus: int) -> tuple[Column | None, str]:
    """Ray's column, measured by ``_ray_start.py`` under ``python`` (a venv with Ray), and a note on it.

    A failed Ray run gives no column and a note with its stderr: actorbox's table still prints.
    """
    helper = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_ray_start.py")
    argv = [python, helper, "--later", str(later), "--concurrent", ",".join(map(str, concurrent)),
            "--settle", str(settle_s), "--num-cpus", str(num_cpus)]
    # Ray's usage statistics would be sent off the machine: off, whatever the caller's environment says.
    proc = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})
    line = next((x for x in reversed(proc.stdout.splitlines()) if x.startswith("RAY_RESULT ")), None)
    if proc.returncode != 0 or line is None:
        return None, f"Ray: the run with {python} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}"
    got = json.loads(line.removeprefix("RAY_RESULT "))
    col = Column(first_s=got["first_s"], later_s=got["later_s"],
                 concurrent_s={int(k): v for k, v in got["concurrent_s"].items()}, pss=got["pss"])
    return col, (f"Ray {got['ray']} ({python}): a local cluster, num_cpus={num_cpus}, no dashboard, on 127.0.0.1; "
                 f"ray.init() took {got['init_s']:.2f} s before the first start")


def report(bare: list[float], cols: dict[str, Column], concurrent: list[int], backend: str) -> None:
    ref = statistics.median(bare)

    def secs(v: float | None) -> str:
        return "-" if v is None else f"{v:.3f} s ({v / ref:.2f}x)"

    def mib(v: float | None) -> str:
        return "-" if v is None else f"{v / 1e6:.0f} MB"

    names = list(cols)
    rows = [(f"bare `python -c \"import torch\"` (median of {len(bare)})", *(f"{ref:.3f} s (1.00x)" for _ in names))]
    rows.append(("first start of the environment", *(secs(cols[n].first_s) for n in names)))
    later = len(next(iter(cols.values())).later_s)
    rows.append((f"later starts p50 (of {later})", *(secs(pct(cols[n].later_s, 0.5)) for n in names)))
    rows.append((f"later starts p99 (of {later})", *(secs(pct(cols[n].later_s, 0.99)) for n in names)))
    for k in concurrent:
        rows.append((f"{k} concurrent starts, fresh Runtime, all ready",
                     *(secs(cols[n].concurrent_s.get(k)) for n in names)))
        rows.append((f"{k} concurrent starts after rt.prepare, all ready",
                     *(secs(cols[n].prepared_s.get(k)) for n in names)))
    rows.append((f"rt.prepare in a fresh Runtime (its zygote's start), median of {len(concurrent)}",
                 *(secs(statistics.median(cols[n].prepare_s) if cols[n].prepare_s else None) for n in names)))
    big = max(concurrent)
    rows.append((f"idle PSS per actor, median of {big}",
                 *(mib(statistics.median(cols[n].pss) if cols[n].pss else None) for n in names)))
    rows.append((f"idle PSS per actor, max of {big}", *(mib(max(cols[n].pss) if cols[n].pss else None)
                                                         for n in names)))
    print(f"start benchmark: torch {torch.__version__}, host backend {backend}, Python "
          f"{platform.python_version()}, {os.cpu_count()} CPUs, "
          f"{psutil.virtual_memory().total / (1 << 30):.0f} GiB, euid {os.geteuid()}")
    print("each start timed from start to the first call's reply; x: relative to the bare import")
    print()
    print_table(("measurement", *names), rows)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--later", type=int, default=10, help="later starts, one at a time (default 10)")
    p.add_argument("--concurrent", default="10,20", help="batch sizes started concurrently (default 10,20)")
    p.add_argument("--bare", type=int, default=3, help="bare torch imports for the reference (default 3)")
    p.add_argument("--settle", type=float, default=2.0, help="idle seconds before reading PSS (default 2)")
    p.add_argument("--backend", choices=("asyncio", "trio"), default="asyncio")
    p.add_argument("--no-ray", action="store_true", help="skip Ray even when it is installed")
    p.add_argument("--ray-python", default=os.environ.get("RAY_PYTHON"),
                   help="a Python with Ray (and torch, psutil) installed, e.g. /work/ray-venv/bin/python; "
                        "default $RAY_PYTHON, else this one if it has Ray")
    p.add_argument("--ray-num-cpus", type=int, default=2,
                   help="CPUs of the local Ray cluster (default 2, this box's; Ray starts that many workers at once)")
    args = p.parse_args()
    try:
        concurrent = sorted({int(x) for x in args.concurrent.split(",") if x.strip()})
    except ValueError:
        p.error("--concurrent takes comma-separated integers, e.g. 10,20")
    if args.later < 1 or args.bare < 1 or not concurrent or min(concurrent) < 1:
        p.error("--later, --bare and each --concurrent size must be >= 1")
    # The application (this script) owns logging: keep actor events out of the table.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    bare = bare_import_s(args.bare)
    cols = {"actorbox (bwrap)": anyio.run(measure_actorbox, args.later, concurrent, args.settle,
                                          backend=args.backend)}
    ray_python = args.ray_python or (sys.executable if importlib.util.find_spec("ray") else None)
    ray_note = None
    if ray_python and not args.no_ray:
        ray_col, ray_note = measure_ray(ray_python, args.later, concurrent, args.settle, args.ray_num_cpus)
        if ray_col is not None:
            cols["Ray"] = ray_col
    report(bare, cols, concurrent, args.backend)
    if ray_note:
        print(f"\n{ray_note}")
    elif not args.no_ray:
        print("\nRay: not installed here (column skipped; --ray-python or RAY_PYTHON names a Python that has it)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
