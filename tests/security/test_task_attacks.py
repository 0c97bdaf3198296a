"""Hostile actors and tasks against the task pool (``actorbox.tasks``), and a careless host.

A real sandboxed actor calls the pool with methods it crafted, submits tasks that wait for
tasks, and floods it; the host must answer each with a typed error, never disconnect a
well-behaved caller for what it named, and never leave a Future waiting for good.
"""

from __future__ import annotations

import anyio
import pytest

import actorbox

from ._support import CALL_TIMEOUT
from .plugins.task_attacks import Submitter, double

pytestmark = pytest.mark.anyio

_REF = "tests.security.plugins.task_attacks:double"


def _state(rt: actorbox.Runtime, handle: actorbox.ActorHandle) -> str:
    return next(a.state for a in rt.actors() if a.label == actorbox.info(handle).label)


async def test_task_options_nested_past_the_parsers_depth_are_refused_not_fatal() -> None:
    """Options JSON nested ~1,500 deep (inside the 2 KiB bound) is refused with UsageError like any malformed
    options: the parser's RecursionError neither escapes the pool nor disconnects the actor that sent it."""
    async with actorbox.Runtime() as rt:
        h = await rt.start(Submitter)
        with anyio.fail_after(CALL_TIMEOUT):
            for options in ("[" * 1500, '{"resources":' + "[" * 1500):
                got = await h.forge(f"{_REF}?{options}")
                assert got.startswith("UsageError: task tests.security.plugins.task_attacks:double(): its options "
                                      "are malformed"), got
            assert _state(rt, h) == "alive"
            assert await h.ping() == "pong"
            assert await rt.submit(double, 21) == 42
        assert [c for c in rt.pending_calls() if c.actor == "actorbox.tasks"] == []
