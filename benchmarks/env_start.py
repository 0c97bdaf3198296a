"""Environment benchmark: an extension with one dependency, from nothing to its first call.

Run from the repository root: ``python benchmarks/env_start.py [--rounds 3] [--dependency "six==1.16.0"]``

In one run, each row timed from ``rt.load_extension(folder)`` until its first call
returned (median of ``--rounds``, each in a new Runtime; Runtime start-up not
included), side by side:

- cold, empty uv cache: the environment is built and the package downloaded;
- cold: the environment is built (uv's download cache already holds the package);
- warm: the environment is cached, nothing is installed;
- host environment: an @actor class without dependencies, for comparison.

For scale: pyisolate 0.10.2 took about 1.8 s to the first call of a cached
extension on this machine. Numbers are informational: nothing here is a test.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable

import anyio
import structlog
from _common import print_table

import actorbox


@actorbox.actor
class Nop:
    def ping(self) -> str:
        return "pong"


NODE = "class Node:\n    def ping(self):\n        import {module}\n        return 'pong'\n"


def write_extension(parent: str, dependency: str, module: str) -> str:
    d = os.path.join(parent, "bench-node")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "pyproject.toml"), "w") as f:
        f.write(f'[project]\nname = "bench-node"\ndependencies = ["{dependency}"]\n\n'
                '[tool.actorbox]\nentry = "node:Node"\n')
    with open(os.path.join(d, "node.py"), "w") as f:
        f.write(NODE.format(module=module))
    return d


async def first_call(env_root: str, start: Callable[[actorbox.Runtime], Awaitable[actorbox.ActorHandle]]) -> float:
    async with actorbox.Runtime(env_root=env_root) as rt:
        t0 = time.perf_counter()
        h = await start(rt)
        assert await h.ping() == "pong"
        return time.perf_counter() - t0


async def main(args: argparse.Namespace) -> None:
    work = tempfile.mkdtemp(prefix="actorbox-bench-env-")
    ext = write_extension(work, args.dependency, args.module)
    warm_root = os.path.join(work, "warm")
    samples: dict[str, list[float]] = {k: [] for k in ("cold, empty uv cache", "cold", "warm", "host env")}

    async def load(rt: actorbox.Runtime) -> actorbox.ActorHandle:
        return await rt.load_extension(ext)

    async def host(rt: actorbox.Runtime) -> actorbox.ActorHandle:
        return await rt.start(Nop)

    await first_call(warm_root, load)  # builds the warm cache (and fills uv's download cache)
    for i in range(args.rounds):
        os.environ["UV_CACHE_DIR"] = os.path.join(work, f"uv-cache-{i}")
        samples["cold, empty uv cache"].append(await first_call(os.path.join(work, f"cold-empty-{i}"), load))
        del os.environ["UV_CACHE_DIR"]
        samples["cold"].append(await first_call(os.path.join(work, f"cold-{i}"), load))
        samples["warm"].append(await first_call(warm_root, load))
        samples["host env"].append(await first_call(warm_root, host))
    print(f"extension with dependencies = [{args.dependency!r}]: load_extension() to its first call returned, "
          f"median of {args.rounds} (Python {platform.python_version()}, {os.cpu_count()} CPUs)\n")
    rows = [(k, f"{statistics.median(v) * 1e3:.0f} ms", f"{min(v) * 1e3:.0f} ms", f"{max(v) * 1e3:.0f} ms")
            for k, v in samples.items()]
    print_table(("start", "median", "min", "max"), rows)
    print("\nfor scale: pyisolate 0.10.2, cached extension to its first call: ~1800 ms on this machine")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--dependency", default="six==1.16.0")
    p.add_argument("--module", default="six", help="what the node imports on its first call")
    p.add_argument("--backend", default="asyncio", choices=("asyncio", "trio"))
    args = p.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    sys.exit(anyio.run(main, args, backend=args.backend))
