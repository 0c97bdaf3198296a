"""Plain workers for the chaos and soak tests: they answer, restart when killed, and hold calls briefly."""

from __future__ import annotations

import asyncio

import actorbox


@actorbox.actor(max_restarts=10_000, max_concurrency=16)
class Worker:
    """Echoes after a short wait, so that many calls are in flight when its process is killed."""

    async def work(self, x, delay=0.002):
        await asyncio.sleep(delay)
        return x

    def add(self, a, b):
        return a + b

    def ping(self):
        return "pong"
