"""Well-behaved actors: the host must keep serving them after every attack."""

from __future__ import annotations

import asyncio

import actorbox


@actorbox.actor
class Healthy:
    """Answers simple questions; used to show the host still serves other actors."""

    def add(self, a, b):
        return a + b

    async def echo(self, value):
        return value


@actorbox.actor(max_concurrency=2)
class Victim:
    """An actor a hostile actor attacks: it must never unpickle what a peer sends.

    ``hold`` keeps a call in flight (in the host's call table) until ``release``.
    """

    def __init__(self):
        self.released = asyncio.Event()

    async def hold(self):
        await self.released.wait()
        return "held and released"

    async def release(self):
        self.released.set()

    def take(self, value):
        return type(value).__name__


class Models:
    """A host-resident named actor (registered with rt.register, lives in the host)."""

    def __init__(self, rt=None):
        self.rt = rt
        self.private_ran = []
        self.public_calls = 0

    def _secret(self):
        self.private_ran.append("_secret")
        return "the host's secret"

    def lookup(self, key):
        self.public_calls += 1
        return f"model:{key}"

    def ping(self):
        return "pong"

    async def my_parent(self):
        """The parent_call_id the scheduler recorded for the calls of this method now in flight."""
        return [c.parent_call_id for c in self.rt.pending_calls() if c.method == "my_parent"]
