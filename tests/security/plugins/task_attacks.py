"""Hostile and careless uses of the task pool, for the task attack tests."""

from __future__ import annotations

import time
from typing import Any

import actorbox


@actorbox.task
def double(x: int) -> int:
    return 2 * x


@actorbox.task(num_cpus=1)
async def nested(x: int) -> int:
    """A task that submits another and waits for it (as Ray's nested tasks)."""
    return await actorbox.submit(double, x)


@actorbox.task
async def call_back(h: Any) -> str:
    """A task that calls the actor that waits for it."""
    return await h.ping()


@actorbox.task
async def call_back_later(h: Any, s: float) -> str:
    """Wait, then call the actor ``h`` (not re-entrantly: nothing up this task's chain runs there)."""
    import asyncio

    await asyncio.sleep(s)
    return await h.ping()


@actorbox.task
def deep(n: int) -> Any:
    out: Any = 0
    for _ in range(n):
        out = [out]
    return out


@actorbox.task
def nap(s: float) -> str:
    time.sleep(s)
    return "napped"


@actorbox.task
def total(t: Any) -> float:
    return float(t.sum())


@actorbox.task(max_retries=0)
def spray(span: int) -> str:
    """A lying worker: answer every call id near its own (its own early, its neighbours' never given to it),
    twice, then return for real."""
    from actorbox._caller import current_call
    from tests.security.plugins.saboteur import OK, pack, reply_body, send_body

    own = current_call.get()
    for _ in range(2):
        for cid in range(max(1, own - span), own + span + 1):
            send_body(reply_body(cid, OK, pack("forged")))
    time.sleep(0.2)
    return "real"


@actorbox.actor
class Submitter:
    """Submits tasks from inside an actor."""

    def ping(self) -> str:
        return "pong"

    async def loop_back(self, me: Any) -> str:
        return await actorbox.submit(call_back, me)

    async def forge(self, method: str) -> str:
        pool = actorbox.get_actor("actorbox.tasks")
        try:
            await getattr(pool, method)()
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"
        return "ran"

    async def forge_call(self, method: str, *args: Any) -> str:
        """Call the task pool with a method of its choosing and arguments; the result's repr or the error."""
        pool = actorbox.get_actor("actorbox.tasks")
        try:
            return repr(await getattr(pool, method)(*args))
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"

    async def flood(self, n: int, s: float) -> list[str]:
        futs = []
        refused = []
        for _ in range(n):
            try:
                futs.append(actorbox.submit(nap, s))
            except Exception as exc:
                refused.append(type(exc).__name__)
        outs = []
        for f in futs:
            try:
                outs.append(await f)
            except Exception as exc:
                outs.append(type(exc).__name__)
        return outs + refused

    async def spray(self, span: int) -> str:
        return await actorbox.submit(spray, span)

    async def doubles(self, n: int) -> list[int]:
        return list(await actorbox.gather(*[actorbox.submit(double, i) for i in range(n)]))

    async def tensor_flood(self, n: int) -> dict[str, int]:
        """Submit ``n`` tasks at once, each with a tensor argument (a descriptor the host holds while it waits)."""
        import torch

        futs, out = [], {}
        for i in range(n):
            try:
                futs.append(actorbox.submit(total, torch.full((4,), float(i))))
            except Exception as exc:
                out[type(exc).__name__] = out.get(type(exc).__name__, 0) + 1
        for f in futs:
            try:
                await f
                out["ok"] = out.get("ok", 0) + 1
            except Exception as exc:
                out[type(exc).__name__] = out.get(type(exc).__name__, 0) + 1
        return out

    async def nested_double(self, x: int) -> int:
        return await actorbox.submit(double, x)

    async def nested(self, x: int) -> int:
        return await actorbox.submit(nested, x)

    async def deep(self, n: int) -> str:
        try:
            await actorbox.submit(deep, n)
        except Exception as exc:
            return f"{type(exc).__name__}: {str(exc)[:200]}"
        return "decoded"
