"""Ray's column of ``benchmarks/start.py``, run by the interpreter of a venv that has Ray.

``start.py`` runs this file with ``--ray-python`` (or ``RAY_PYTHON``) and reads the one
JSON line it prints last (``RAY_RESULT {...}``). It imports only Ray, torch and psutil,
so the Ray venv needs nothing of actorbox. Ray runs on this machine alone: a local
cluster of ``num_cpus=2`` (the development box's cores), no dashboard, every service on
127.0.0.1, usage statistics off (they would be sent off the machine).

Each measurement mirrors actorbox's: an actor whose ``__init__`` imports torch, timed
from ``.remote()`` until its first call returned; later starts one at a time after the
previous actor was killed; N actors created together until all first calls returned;
idle PSS of the largest batch's worker processes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import psutil

os.environ["RAY_USAGE_STATS_ENABLED"] = "0"  # never phone home, whatever the caller set
os.environ.setdefault("RAY_DISABLE_IMPORT_WARNING", "1")

import ray  # after the environment above: Ray reads it on import


@ray.remote(num_cpus=0)  # placement by count alone: 20 actors fit on a 2-CPU cluster
class RayTorchNode:
    def __init__(self) -> None:
        import torch

        self.version = torch.__version__

    def ping(self) -> str:
        return self.version

    def pid(self) -> int:
        return os.getpid()


def start_many(n: int) -> tuple[float, list[Any]]:
    t0 = time.perf_counter()
    actors = [RayTorchNode.remote() for _ in range(n)]
    ray.get([a.ping.remote() for a in actors])
    return time.perf_counter() - t0, actors


def kill(actors: list[Any]) -> None:
    for a in actors:
        ray.kill(a)


def pss_of(pids: list[int]) -> list[int]:
    out = []
    for pid in pids:
        try:
            out.append(psutil.Process(pid).memory_full_info().pss)
        except psutil.Error:
            pass
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--later", type=int, default=10)
    p.add_argument("--concurrent", default="10,20")
    p.add_argument("--settle", type=float, default=2.0)
    p.add_argument("--num-cpus", type=int, default=2)
    args = p.parse_args()
    concurrent = sorted({int(x) for x in args.concurrent.split(",") if x.strip()})
    out: dict[str, Any] = {"ray": ray.__version__, "later_s": [], "concurrent_s": {}, "pss": []}
    t0 = time.perf_counter()
    # address="local": a cluster of its own, never one another program started on this machine.
    ray.init(address="local", num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False,
             _node_ip_address="127.0.0.1", configure_logging=False)
    out["init_s"] = time.perf_counter() - t0
    try:
        took, actors = start_many(1)
        out["first_s"] = took
        kill(actors)
        for _ in range(args.later):
            took, actors = start_many(1)
            out["later_s"].append(took)
            kill(actors)
        for n in concurrent:
            took, actors = start_many(n)
            out["concurrent_s"][str(n)] = took
            if n == concurrent[-1]:
                time.sleep(args.settle)  # idle: let start-up garbage go before measuring
                out["pss"] = pss_of(ray.get([a.pid.remote() for a in actors]))
            kill(actors)
    finally:
        ray.shutdown()
    print("RAY_RESULT " + json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
