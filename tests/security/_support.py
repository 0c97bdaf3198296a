"""Helpers shared by the security tests (host side only: never imported by an actor)."""

from __future__ import annotations

import errno
from typing import Any

import anyio

import actorbox

# Every call in this suite is bounded: a hang fails the test instead of CI.
CALL_TIMEOUT = 15.0

BLOCKED_READ = {errno.ENOENT, errno.EACCES}  # not there at all, or not readable by the actor's uid
BLOCKED_WRITE = {errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOENT}


def assert_blocked(result: dict[str, Any], errnos: set[int], *, what: str) -> dict[str, Any]:
    """``result`` is a probe report from inside the actor: the attempt must have failed with one of ``errnos``."""
    assert not result["ok"], f"{what}: the sandboxed actor succeeded: {result!r}"
    assert result["errno"] in errnos, f"{what}: failed, but not the expected way: {result!r}"
    return result


async def start_actors(rt: actorbox.Runtime, *classes: type) -> list[actorbox.ActorHandle]:
    """Start one actor of each class, concurrently (each start is a sandboxed process)."""
    handles: list[Any] = [None] * len(classes)

    async def one(i: int, cls: type) -> None:
        handles[i] = await rt.start(cls)

    with anyio.fail_after(CALL_TIMEOUT):
        async with anyio.create_task_group() as tg:
            for i, cls in enumerate(classes):
                tg.start_soon(one, i, cls)
    return handles


async def assert_host_serves(rt: actorbox.Runtime, healthy: actorbox.ActorHandle) -> None:
    """The host still routes calls to a well-behaved actor, which still answers correctly."""
    with anyio.fail_after(CALL_TIMEOUT):
        assert await healthy.add(2, 3) == 5
        assert await healthy.echo({"still": ["serving", 1]}) == {"still": ["serving", 1]}
    states = {a.label: a.state for a in rt.actors()}
    assert states[actorbox.info(healthy).label] == "alive", states
