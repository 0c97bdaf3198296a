"""Task benchmark (issue 18): no-op task throughput, task round trip next to an actor call's, and a
fan-out of small tensor tasks; the same with Ray when a Python with Ray is given.

Run: ``python benchmarks/tasks.py [--n 1000] [--rounds 3] [--ray-python PATH]``

In one run it measures

(a) throughput: 1,000 no-op tasks submitted at once, all awaited; tasks/s (best of rounds),
    with the pool warm (its workers started by a first round), and the host's CPU time per
    task (this process's, median of rounds); beside it the floor: 1,000 no-op calls to one
    actor at once (one trip through the scheduler each, where a task makes two), calls/s
    and host CPU per call;
(b) round trip: one no-op task submitted and awaited, repeated; p50 and p99, next to a
    no-op call to an actor (one sync method, sandboxed like the workers) measured in the
    same rounds, interleaved;
(c) fan-out: 500 tasks each given a small tensor (1,000 float32) and returning its sum,
    submitted at once; wall time.

Workers and the actor run in the default sandbox; the Runtime has the machine's CPUs.
With ``--ray-python`` (default: /work/ray-venv/bin/python if it exists) the same three are
run with Ray (``@ray.remote`` functions, ``ray.get``) in that Python and printed beside.
Numbers are informational (targets: >= 20,000 no-op tasks/s; round trip within 1.5x an
actor call's); nothing here is a test.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any

import anyio

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import actorbox
from benchmarks._common import print_table

RAY_DEFAULT = "/work/ray-venv/bin/python"


@actorbox.task
def noop() -> None:
    return None


@actorbox.task
def tensor_sum(t: Any) -> float:
    return float(t.sum())


@actorbox.actor
class Echo:
    def noop(self) -> None:
        return None


async def _actorbox(n: int, rounds: int, fan: int) -> dict[str, float]:
    import torch

    async with actorbox.Runtime() as rt:
        # Warm: every worker started and each function loaded (a first round of each).
        await _gather([rt.submit(noop) for _ in range(n)])
        await _gather([rt.submit(tensor_sum, torch.ones(10)) for _ in range(50)])
        best, cpu = await _rate(lambda: rt.submit(noop), n, rounds)
        echo = await rt.start(Echo)
        await _gather([echo.noop() for _ in range(n)])
        calls_best, calls_cpu = await _rate(echo.noop, n, rounds)
        task_rt, call_rt = [], []
        for _ in range(rounds * 200):
            t0 = time.perf_counter()
            await rt.submit(noop)
            task_rt.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            await echo.noop()
            call_rt.append(time.perf_counter() - t0)
        tensors = [actorbox.share(torch.full((1000,), float(i))) for i in range(fan)]
        t0 = time.perf_counter()
        sums = await _gather([rt.submit(tensor_sum, t) for t in tensors])
        fan_s = time.perf_counter() - t0
        assert sums == [1000.0 * i for i in range(fan)]
        workers = sum(1 for a in rt.actors() if a.label.startswith("task-worker#"))
    return {"tasks_per_s": best, "task_cpu_us": cpu, "calls_per_s": calls_best, "call_cpu_us": calls_cpu,
            "task_p50_us": _p(task_rt, 50), "task_p99_us": _p(task_rt, 99),
            "call_p50_us": _p(call_rt, 50), "call_p99_us": _p(call_rt, 99), "fanout_s": fan_s,
            "workers": workers}


async def _rate(submit: Any, n: int, rounds: int) -> tuple[float, float]:
    """``n`` calls of ``submit()`` at once, all awaited, ``rounds`` times: the best rate (per second) and the
    median host CPU time per call (us)."""
    best, cpus = 0.0, []
    for _ in range(rounds):
        t0, c0 = time.perf_counter(), time.process_time()
        await _gather([submit() for _ in range(n)])
        best = max(best, n / (time.perf_counter() - t0))
        cpus.append((time.process_time() - c0) / n * 1e6)
    return best, sorted(cpus)[len(cpus) // 2]


async def _gather(futs: list[Any]) -> list[Any]:
    return [await f for f in futs]


def _p(samples: list[float], q: int) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, int(len(s) * q / 100))] * 1e6


_RAY_SCRIPT = r"""
import json, sys, time
import ray, torch
n, rounds, fan = map(int, sys.argv[1:4])
ray.init(include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
@ray.remote
def noop(): return None
@ray.remote
def tensor_sum(t): return float(t.sum())
@ray.remote
class Echo:
    def noop(self): return None
ray.get([noop.remote() for _ in range(n)])
ray.get([tensor_sum.remote(torch.ones(10)) for _ in range(50)])
best = 0.0
for _ in range(rounds):
    t0 = time.perf_counter(); ray.get([noop.remote() for _ in range(n)])
    best = max(best, n / (time.perf_counter() - t0))
echo = Echo.remote(); ray.get(echo.noop.remote())
ray.get([echo.noop.remote() for _ in range(n)])
calls_best = 0.0
for _ in range(rounds):
    t0 = time.perf_counter(); ray.get([echo.noop.remote() for _ in range(n)])
    calls_best = max(calls_best, n / (time.perf_counter() - t0))
task_rt, call_rt = [], []
for _ in range(rounds * 200):
    t0 = time.perf_counter(); ray.get(noop.remote()); task_rt.append(time.perf_counter() - t0)
    t0 = time.perf_counter(); ray.get(echo.noop.remote()); call_rt.append(time.perf_counter() - t0)
tensors = [torch.full((1000,), float(i)) for i in range(fan)]
t0 = time.perf_counter(); ray.get([tensor_sum.remote(t) for t in tensors]); fan_s = time.perf_counter() - t0
p = lambda s, q: sorted(s)[min(len(s) - 1, int(len(s) * q / 100))] * 1e6
print(json.dumps({"tasks_per_s": best, "calls_per_s": calls_best, "task_p50_us": p(task_rt, 50),
                  "task_p99_us": p(task_rt, 99), "call_p50_us": p(call_rt, 50), "call_p99_us": p(call_rt, 99),
                  "fanout_s": fan_s, "workers": -1}))
"""


def _ray(python: str, n: int, rounds: int, fan: int) -> dict[str, float] | None:
    try:
        # A local cluster on 127.0.0.1, usage statistics off: nothing leaves the machine.
        out = subprocess.run([python, "-c", _RAY_SCRIPT, str(n), str(rounds), str(fan)], capture_output=True,
                             text=True, timeout=600, check=True,
                             env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        print(f"ray: not measured ({type(exc).__name__}: {exc})", file=sys.stderr)
        return None
    result: dict[str, float] = json.loads(out.strip().splitlines()[-1])
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1000, help="no-op tasks submitted at once")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--fan", type=int, default=500, help="small tensor tasks in the fan-out")
    ap.add_argument("--ray-python", default=os.environ.get("RAY_PYTHON") or (
        RAY_DEFAULT if os.path.exists(RAY_DEFAULT) else None), help="a Python with Ray and torch (or $RAY_PYTHON)")
    ap.add_argument("--backend", default="asyncio", choices=("asyncio", "trio"))
    args = ap.parse_args()
    ours = anyio.run(_actorbox, args.n, args.rounds, args.fan, backend=args.backend)
    ray = _ray(args.ray_python, args.n, args.rounds, args.fan) if args.ray_python else None
    rows = []
    for key, label, fmt in [("tasks_per_s", f"no-op tasks/s, {args.n} at once (best of {args.rounds})", "{:,.0f}"),
                            ("task_cpu_us", "host CPU per no-op task (us)", "{:,.1f}"),
                            ("calls_per_s", f"no-op actor calls/s, {args.n} at once to one actor", "{:,.0f}"),
                            ("call_cpu_us", "host CPU per actor call (us)", "{:,.1f}"),
                            ("task_p50_us", "task round trip p50 (us)", "{:,.0f}"),
                            ("task_p99_us", "task round trip p99 (us)", "{:,.0f}"),
                            ("call_p50_us", "actor call round trip p50 (us)", "{:,.0f}"),
                            ("call_p99_us", "actor call round trip p99 (us)", "{:,.0f}"),
                            ("fanout_s", f"fan-out of {args.fan} small tensor tasks (s)", "{:.3f}")]:
        rows.append((label, fmt.format(ours[key]), fmt.format(ray[key]) if ray and key in ray else "-"))
    ratio = ours["task_p50_us"] / ours["call_p50_us"]
    rows.append(("task p50 / actor call p50", f"{ratio:.2f}x", f"{ray['task_p50_us'] / ray['call_p50_us']:.2f}x"
                 if ray else "-"))
    print(f"\n{os.cpu_count()} CPUs, backend {args.backend}, {int(ours['workers'])} workers; "
          f"targets: >= 20,000 tasks/s ({'met' if ours['tasks_per_s'] >= 20_000 else 'missed'}), "
          f"round trip <= 1.5x an actor call's ({'met' if ratio <= 1.5 else 'missed'})\n")
    print_table(("measurement", "actorbox", "ray"), rows)


if __name__ == "__main__":
    main()
