"""Tests of ``sandbox.launch`` through a real Runtime: a sandboxed actor lives as long as its Runtime.

bwrap runs with ``--die-with-parent`` (PR_SET_PDEATHSIG), which the kernel fires when
the *thread* that forked the process exits, not the process. Under trio,
``anyio.open_process`` forks from a worker thread of trio's thread cache, and an
idle worker exits after ``trio._core._thread_cache.IDLE_TIMEOUT`` (10 s): the actor
is then SIGKILLed with its Runtime still running. The test shortens that timeout so
what happens 10 s after a start by default happens within a second.
"""

from __future__ import annotations

import anyio
import pytest

import actorbox

pytestmark = pytest.mark.anyio


@actorbox.actor
class Sleeper:
    def ping(self):
        return "pong"


async def test_actor_outlives_the_thread_that_launched_it(anyio_backend, monkeypatch):
    """A sandboxed actor stays alive after the (trio worker) thread that started its process has exited."""
    if anyio_backend == "trio":
        import trio._core._thread_cache as thread_cache

        monkeypatch.setattr(thread_cache, "IDLE_TIMEOUT", 0.2)  # 10 s by default
    async with actorbox.Runtime() as rt:
        with anyio.fail_after(20):
            h = await rt.start(Sleeper)
            await anyio.sleep(1.5)  # idle workers have exited by now
            assert {a.label: a.state for a in rt.actors()}[actorbox.info(h).label] == "alive"
            assert await h.ping() == "pong"
