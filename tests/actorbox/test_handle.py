"""Tests for actorbox/_handle.py: what a handle's method objects look like to other libraries.

The caller is a stub that only makes Futures: what is under test is the handle, not the call.
"""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from actorbox._future import Future
from actorbox._handle import ActorHandle

pytestmark = pytest.mark.anyio


class _FutureMaker:
    """Makes the Future a call returns, sending nothing."""

    def call(self, actor_id: int, label: str, method: str, args: tuple[Any, ...], kwargs: dict[str, Any],
             token: bytes = b"") -> Future[Any]:
        return Future(self, 1, label, method, actor_id)  # type: ignore[arg-type]  # never resolved here

    def on_loop_thread(self) -> bool:
        return True

    async def stop_actor(self, actor_id: int) -> None:
        raise AssertionError("not called")


def test_a_method_object_has_a_name_and_a_qualified_name() -> None:
    """handle.method has __name__ (the method) and __qualname__ (label.method), as functions do."""
    incr = ActorHandle(_FutureMaker(), 3, None, "Counter").incr
    assert (incr.__name__, incr.__qualname__) == ("incr", "Counter.incr")


async def test_start_soon_with_a_method_gets_anyios_readable_error() -> None:
    """tg.start_soon(handle.method, x) fails with anyio's TypeError naming the method (a call returns a
    Future, not a coroutine), not with an AttributeError on the method object."""
    handle = ActorHandle(_FutureMaker(), 3, None, "Counter")
    with pytest.raises(BaseExceptionGroup) as ei:
        async with anyio.create_task_group() as tg:
            tg.start_soon(handle.incr, 1)
    [error] = ei.value.exceptions
    assert isinstance(error, TypeError) and "Counter.incr()" in str(error) and "coroutine" in str(error)
