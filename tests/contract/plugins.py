"""Actors and tasks the contract tests run on both backends (importable: classes travel by import path)."""

from __future__ import annotations

import os
from typing import Any

import anyio

import actorbox


@actorbox.actor(max_concurrency=4)
class Counter:
    def __init__(self, start: int = 0) -> None:
        self.n = start
        self.cancelled = 0

    def incr(self, k: int = 1) -> int:
        self.n += k
        return self.n

    def add(self, a: int, b: int) -> int:
        return a + b

    def get(self) -> int:
        return self.n

    def boom(self, key: str) -> None:
        raise KeyError(key)

    def die(self) -> None:
        os._exit(3)

    def tensor(self, n: int) -> Any:
        import torch

        return torch.arange(n, dtype=torch.float32)

    def total(self, t: Any) -> float:
        return float(t.sum())

    def unsendable(self) -> Any:
        return object()

    async def slow(self, seconds: float) -> float:
        try:
            await anyio.sleep(seconds)
        except BaseException:
            self.cancelled += 1
            raise
        return seconds

    def cancels(self) -> int:
        return self.cancelled

    async def call_other(self, other: Any, k: int) -> int:
        result: int = await other.incr(k)
        return result

    async def call_named(self, name: str, k: int) -> int:
        result: int = await actorbox.get_actor(name).incr(k)
        return result


@actorbox.actor(max_restarts=1)
class Phoenix:
    def __init__(self) -> None:
        self.calls = 0

    def count(self) -> int:
        self.calls += 1
        return self.calls

    def die(self) -> None:
        os._exit(4)


@actorbox.actor(max_concurrency=1, max_pending_calls=2)
class Narrow:
    async def wait(self, seconds: float) -> None:
        await anyio.sleep(seconds)


class Models:
    """Registered with rt.register (host-resident locally; a Ray named actor holding a copy on Ray)."""

    def get(self, name: str) -> dict[str, Any]:
        return {"name": name, "labels": ["no", "yes"]}

    def hidden(self) -> str:
        return "not exposed"


class Broken:
    def __init__(self) -> None:
        raise ValueError("no config")


@actorbox.task
def square(x: int) -> int:
    return x * x


@actorbox.task
def fail(message: str) -> None:
    raise ValueError(message)


@actorbox.task(resources={"no-such-resource": 1})
def impossible() -> None:
    return None


# Tasks whose tries leave marks in a folder of the host: unsandboxed on the local backend
# (a sandboxed worker has its own /tmp); the Ray backend never sandboxes.
@actorbox.task(max_retries=2, sandbox="disabled")
def die_once(folder: str) -> str:
    mark = os.path.join(folder, "died")
    if not os.path.exists(mark):
        open(mark, "w").close()
        os._exit(5)
    return "second try"


@actorbox.task(max_retries=0, sandbox="disabled")
def always_die(folder: str) -> None:
    os._exit(6)


@actorbox.task(max_retries=2, retry_exceptions=True, sandbox="disabled")
def flaky(folder: str) -> int:
    tries = len(os.listdir(folder))
    open(os.path.join(folder, f"try{tries}"), "w").close()
    if tries == 0:
        raise RuntimeError("first try fails")
    return tries + 1


@actorbox.task(resources={"node2": 1})
def node_of_task() -> str:
    import ray

    return str(ray.get_runtime_context().get_node_id())


@actorbox.actor(resources={"node2": 1})
class OnNode2:
    def node(self) -> str:
        import ray

        return str(ray.get_runtime_context().get_node_id())


@actorbox.actor(max_concurrency=2)
class SyncOnly:
    """Sync methods only: on Ray it runs in the threaded shell (no event loop in its worker)."""

    def incr_other(self, name: str, k: int) -> int:
        result: int = actorbox.get_actor(name).incr(k).result(timeout=60)
        return result

    def pid(self) -> int:
        return os.getpid()

    def die(self) -> None:
        os._exit(7)
