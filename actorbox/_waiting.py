"""Waiting for many Futures: ``actorbox.wait``, ``actorbox.gather``, ``actorbox.as_completed``.

They watch Futures rather than await them: a watch is a waiter in the Future's list that
the reply wakes (``_future.Waiter``), so giving a watch up (a timeout, a cancelled scope, an
iteration left early) never cancels a call, and one wake-up serves all the Futures of one
wait (``while pending: done, pending = await wait(pending)`` over n Futures costs O(n) per
round, with no task per Future). Only ``gather`` cancels: it owns its calls, as
``asyncio.gather`` does, so when one fails or the caller is cancelled the unfinished rest
are cancelled.

Where this process's loop cannot wake the watcher (an event loop of its own inside a sync
method), they poll, as ``Future`` itself does there (``Future._wait_off_loop``).
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Iterable
from typing import Any

import anyio

from ._errors import UsageError
from ._future import Future

# Seconds between looks where no wake-up can reach the watcher: from the first, doubling up to the last.
_POLL, _POLL_MAX = 0.0002, 0.005


class _Watch:
    """One wake-up for whichever of a set of Futures finishes first (a ``_future.Waiter``)."""

    __slots__ = ("_event", "_set")

    def __init__(self) -> None:
        self._event = anyio.Event()
        self._set = False

    def done(self) -> bool:
        return self._set

    def set_result(self, result: None, /) -> None:
        self._set = True
        self._event.set()


def _futures(futures: Iterable[Any], what: str, *, unique: bool) -> list[Future[Any]]:
    """``futures`` as a list, each checked to be an actorbox.Future (once, if ``unique``)."""
    if isinstance(futures, (str, bytes, Future)) or not isinstance(futures, Iterable):
        raise UsageError(f"{what} takes a list of actorbox Futures (the results of handle.method(...)), "
                         f"got {type(futures).__name__}")
    out = list(futures)
    seen: set[int] = set()
    for i, f in enumerate(out):
        if type(f) is not Future:
            raise UsageError(f"{what}: item {i} is {type(f).__name__}, not an actorbox Future; pass the Futures "
                             "that calls return (run other awaitables in an anyio task group)")
        if unique:
            if id(f) in seen:
                raise UsageError(f"{what}: {f.actor}.{f.method}() [call {f.call_id}] is given twice; give each "
                                 "Future once")
            seen.add(id(f))
    return out


def _watchable(fut: Future[Any]) -> bool:
    """Whether this thread's loop wakes a watcher of ``fut`` (else: poll)."""
    caller = fut._caller
    return caller.on_loop_thread() and not caller.pumps_here()


async def _until_one_finishes(pending: list[Future[Any]], deadline: float) -> None:
    """Return when one of ``pending`` (all unfinished) finishes, or at ``deadline``; cancels nothing."""
    if not all(_watchable(f) for f in pending):
        nap = _POLL
        with anyio.move_on_after(max(0.0, deadline - anyio.current_time())):
            while not any(f.done() for f in pending):
                for f in pending:
                    if f._caller.on_loop_thread():
                        f._caller.pump(f, 0)  # a nested loop on the loop thread: read the replies here
                if any(f.done() for f in pending):
                    break
                await anyio.sleep(nap)
                nap = min(2 * nap, _POLL_MAX)
        return
    watch = _Watch()
    for f in pending:
        if f._waiters is None:
            f._waiters = [watch]
        else:
            f._waiters.append(watch)
    try:
        with anyio.move_on_after(max(0.0, deadline - anyio.current_time())):
            await watch._event.wait()
    finally:
        for f in pending:
            waiters = f._waiters
            if waiters is not None and watch in waiters:
                waiters.remove(watch)  # (a Future watched round after round keeps no old watches)


async def wait(futures: Iterable[Future[Any]], *, num_returns: int = 1,
               timeout: float | None = None) -> tuple[list[Future[Any]], list[Future[Any]]]:
    """Wait until ``num_returns`` of ``futures`` have finished, or ``timeout`` seconds passed.

    Returns ``(done, pending)``: ``done`` holds at most ``num_returns`` finished Futures,
    ``pending`` the rest, each list in the order given (as ``ray.wait``: a Future that also
    finished goes to ``pending`` once ``done`` is full). Awaiting a done Future gives its
    value or raises its error. Nothing is cancelled, not on timeout nor when the caller is
    cancelled; the Futures may be awaited elsewhere meanwhile.
    """
    futs = _futures(futures, "actorbox.wait()", unique=True)
    if type(num_returns) is not int or not 1 <= num_returns <= len(futs):
        raise UsageError(f"actorbox.wait(): num_returns must be an int from 1 to the number of Futures "
                         f"({len(futs)}), got {num_returns!r}")
    if timeout is not None and (type(timeout) not in (int, float) or not timeout >= 0):  # (NaN is not >= 0)
        raise UsageError(f"actorbox.wait(): timeout must be None or seconds >= 0, got {timeout!r}")
    deadline = math.inf if timeout is None else anyio.current_time() + timeout
    while True:
        pending = [f for f in futs if not f.done()]
        if len(futs) - len(pending) >= num_returns or anyio.current_time() >= deadline:
            break
        await _until_one_finishes(pending, deadline)
    done: list[Future[Any]] = []
    rest: list[Future[Any]] = []
    for f in futs:
        (done if f.done() and len(done) < num_returns else rest).append(f)
    return done, rest


async def gather(*futures: Future[Any]) -> list[Any]:
    """The values of ``futures``, in order, once all have finished.

    The first to fail (in time) raises its error, and the unfinished rest are cancelled; so
    are they when the caller is cancelled. A Future given twice gives its value twice.
    """
    futs = _futures(futures, "actorbox.gather()", unique=False)
    try:
        while True:
            pending = []
            for f in futs:
                if f.done():
                    f.result()  # raises the first failure seen
                else:
                    pending.append(f)
            if not pending:
                break
            await _until_one_finishes(pending, math.inf)
    except BaseException:
        for f in futs:
            f.cancel()  # (a no-op for those that finished)
        raise
    return [f.result() for f in futs]


class _AsCompleted:
    """The async iterator of ``as_completed``: each Future once, as it finishes."""

    def __init__(self, futs: list[Future[Any]]) -> None:
        self._left = futs

    def __aiter__(self) -> _AsCompleted:
        return self

    async def __anext__(self) -> Future[Any]:
        while self._left:
            for i, f in enumerate(self._left):
                if f.done():
                    del self._left[i]
                    return f
            await _until_one_finishes(self._left, math.inf)
        raise StopAsyncIteration


def as_completed(futures: Iterable[Future[Any]]) -> AsyncIterator[Future[Any]]:
    """Iterate over ``futures`` as they finish (``async for fut in actorbox.as_completed(fs)``).

    Yields the Futures themselves, finished (those already finished first, in the order
    given), as ``asyncio.as_completed`` does under ``async for``; ``await fut`` gives its
    value or raises its error. Leaving the loop early, or a cancelled caller, cancels none
    of them.
    """
    return _AsCompleted(_futures(futures, "actorbox.as_completed()", unique=True))
