"""Task functions and an actor for the task tests: importable, so workers load them by import path."""

from __future__ import annotations

import os
import time
from typing import Any

import actorbox

# Unique to each process that imports this module: which worker ran a task (a worker forked
# from a zygote is pid 1 of its own namespace, so os.getpid() does not tell them apart).
WORKER = os.urandom(8).hex()


@actorbox.task
def double(x: int) -> int:
    return 2 * x


@actorbox.task
def whoami() -> str:
    return WORKER


@actorbox.task(num_cpus=1)
def hold(seconds: float) -> tuple[float, float, str]:
    """Sleep; returns when it ran (monotonic clock: the same on every process of this machine) and where."""
    t0 = time.monotonic()
    time.sleep(seconds)
    return t0, time.monotonic(), WORKER


@actorbox.task
async def sleep_async(seconds: float) -> str:
    import asyncio

    await asyncio.sleep(seconds)
    return "slept"


@actorbox.task(num_cpus=0.5)
def half_cpu() -> str:
    return WORKER


@actorbox.task(num_cpus=64)
def huge() -> None:
    """Asks for more CPUs than any test Runtime has."""


@actorbox.task(resources={"db": 1})
def uses_db() -> str:
    return "db"


@actorbox.task
def make_tensor(n: int) -> Any:
    import torch

    return torch.arange(n, dtype=torch.float32)


@actorbox.task
def tensor_sum(t: Any) -> float:
    return float(t.sum())


@actorbox.task(max_retries=2)
def die() -> None:
    """Ends its own worker every time (an exit: a worker may be pid 1 of its namespace, which ignores SIGKILL
    from inside)."""
    os._exit(13)


@actorbox.task(max_retries=1)
def slow(seconds: float) -> str:
    time.sleep(seconds)
    return WORKER


@actorbox.task(max_retries=3)
def raises(msg: str) -> None:
    raise ValueError(msg)


@actorbox.task(max_retries=2, retry_exceptions=True)
def raises_retried(msg: str) -> None:
    raise ValueError(msg)


@actorbox.task(max_retries=0)
def once() -> str:
    """Never retried: a run after its worker died can only be one that did not count as an attempt."""
    return WORKER


_RUNS = 0


@actorbox.task
def count() -> tuple[int, str]:
    """How many times this function has run in this worker (this run included), and which worker."""
    global _RUNS
    _RUNS += 1
    return _RUNS, WORKER


@actorbox.task
def stamp() -> tuple[float, float, str]:
    """A short task: when it ran (monotonic, as ``hold``) and where."""
    t0 = time.monotonic()
    time.sleep(0.0002)
    return t0, time.monotonic(), WORKER


@actorbox.actor
class FanOut:
    """Fans tasks out from inside an actor."""

    async def squares_doubled(self, n: int) -> list[int]:
        futs = [actorbox.submit(double, i * i) for i in range(n)]
        return [await f for f in futs]

    async def workers(self) -> list[str]:
        return [await actorbox.submit(whoami) for _ in range(2)]

    async def forge(self, method: str) -> str:
        """Call the task pool directly with a method name of its choosing."""
        pool = actorbox.get_actor("actorbox.tasks")
        try:
            await getattr(pool, method)()
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"
        return "ran"

    async def infeasible(self) -> str:
        try:
            await actorbox.submit(huge)
        except actorbox.InfeasibleResourcesError as exc:
            return f"{type(exc).__name__}: {exc}"
        return "ran"


@actorbox.task(num_cpus=2)
def hold_two(seconds: float) -> str:
    time.sleep(seconds)
    return "big"


@actorbox.task(num_gpus=1)
def visible_gpus(seconds: float) -> str:
    time.sleep(seconds)
    return os.environ.get("CUDA_VISIBLE_DEVICES", "<unset>")


@actorbox.actor(num_cpus=2)
class TwoCpus:
    """Holds two CPUs for its life."""

    def ping(self) -> str:
        return "pong"


@actorbox.actor(num_gpus=1)
class OneGpu:
    def visible(self) -> str:
        return os.environ.get("CUDA_VISIBLE_DEVICES", "<unset>")
