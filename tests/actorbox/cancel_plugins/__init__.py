"""Actors for the cancellation tests, in a module of their own so an actor imports only this."""

from __future__ import annotations

import time

import anyio

import actorbox


@actorbox.actor
class Napper:
    async def nap(self, s: float) -> None:
        await anyio.sleep(s)

    async def block(self, s: float) -> None:
        time.sleep(s)  # blocks the actor's event loop: it cannot see the stop request, so it is killed

    def ping(self) -> str:
        return "pong"


@actorbox.actor
class SlowStart:
    def __init__(self, s: float) -> None:
        time.sleep(s)  # the constructor: rt.start() waits for it

    def ping(self) -> str:
        return "pong"


@actorbox.actor(dependencies=["six==1.16.0"])
class NeedsSix:
    """Its environment is built on first use (the tests give the Runtime a uv that never finishes)."""

    def ping(self) -> str:
        return "pong"
