"""actorbox.wait, gather and as_completed (actorbox/_waiting.py) with a real actor, on asyncio and trio.

Calls are held in the actor until the test releases them, so which call finishes when is decided by
the test, not by timing: wait's num_returns, timeout and (done, pending) order; that wait and
as_completed never cancel a call (on timeout, cancelled caller, early exit) while gather cancels the
unfinished rest when one fails or its caller is cancelled; argument checks; the same in an actor's own
code; and 200 Futures drained with ``while pending: done, pending = await wait(pending)``.

One Runtime with its actors serves the module per backend.
"""

from __future__ import annotations

from typing import Any

import anyio
import pytest

import actorbox

pytestmark = pytest.mark.anyio

CALL_TIMEOUT = 30.0


@actorbox.actor(max_concurrency=64)
class Latch:
    """``hold(key, value)`` returns ``value`` once ``release(key)`` was called; ``fail`` raises."""

    def __init__(self) -> None:
        self.events: dict[str, anyio.Event] = {}
        self.cancelled: list[str] = []

    def _event(self, key: str) -> anyio.Event:
        return self.events.setdefault(key, anyio.Event())

    async def hold(self, key: str, value: Any = None) -> Any:
        try:
            await self._event(key).wait()
        except BaseException:
            self.cancelled.append(key)
            raise
        return value

    async def release(self, *keys: str) -> None:
        for key in keys:
            self._event(key).set()

    async def fail(self, message: str) -> None:
        raise KeyError(message)

    async def were_cancelled(self) -> list[str]:
        return sorted(self.cancelled)

    async def square(self, i: int) -> int:
        return i * i


@actorbox.actor(max_concurrency=4)
class Fanner:
    """Waits for many calls to another actor from inside an actor."""

    async def fan(self, name: str, n: int) -> list[Any]:
        latch = actorbox.get_actor(name)
        gathered = await actorbox.gather(*(latch.square(i) for i in range(n)))
        seen = [await f async for f in actorbox.as_completed([latch.square(i) for i in range(n)])]
        done, pending = await actorbox.wait([latch.square(i) for i in range(n)], num_returns=n)
        return [gathered, sorted(seen), [await f for f in done], len(pending)]


@pytest.fixture(scope="module", params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Module scope (overrides tests/conftest.py's): the Runtime below lives across this module's tests."""
    return request.param  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
async def rt(anyio_backend: str) -> Any:
    async with actorbox.Runtime() as runtime:
        with anyio.fail_after(CALL_TIMEOUT * 2):
            await runtime.start(Latch, name="latch")
            await runtime.start(Fanner, name="fanner")
        yield runtime


_keys = iter(range(1_000_000))


@pytest.fixture
def key() -> Any:
    """Fresh latch keys for each test (the actor lives across the module)."""
    return lambda name: f"{name}-{next(_keys)}"


async def test_wait_returns_what_finished_in_input_order_and_times_out_without_cancelling(rt, key):
    """Nothing released: wait(timeout) returns ([], all); after one release it returns that one; done never
    holds more than num_returns; the timed-out calls still give their values once released."""
    latch = rt.get_actor("latch")
    ka, kb, kc = key("a"), key("b"), key("c")
    fa, fb, fc = latch.hold(ka, "A"), latch.hold(kb, "B"), latch.hold(kc, "C")
    with anyio.fail_after(CALL_TIMEOUT):
        assert await actorbox.wait([fa, fb, fc], timeout=0.2) == ([], [fa, fb, fc])
        await latch.release(kb)
        assert await actorbox.wait([fa, fb, fc]) == ([fb], [fa, fc])
        await latch.release(kc, ka)
        assert await actorbox.wait([fa, fb, fc], num_returns=3) == ([fa, fb, fc], [])
        assert await actorbox.wait([fc, fb, fa], num_returns=2) == ([fc, fb], [fa])
        assert [await fa, await fb, await fc] == ["A", "B", "C"]


async def test_a_cancelled_wait_cancels_no_call(rt, key):
    """Cancelling the scope around wait (or as_completed) leaves the calls running; they finish when released."""
    latch = rt.get_actor("latch")
    k = key("w")
    fut = latch.hold(k, 7)
    with anyio.move_on_after(0.1) as scope:
        await actorbox.wait([fut])
    assert scope.cancelled_caught and not fut.done()
    with anyio.move_on_after(0.1):
        async for _ in actorbox.as_completed([fut]):
            pass
    with anyio.fail_after(CALL_TIMEOUT):
        await latch.release(k)
        assert await fut == 7
        assert k not in await latch.were_cancelled()


async def test_gather_returns_values_in_order(rt, key):
    """gather gives each Future's value in the order given, whichever finished first; a Future twice, twice."""
    latch = rt.get_actor("latch")
    ka, kb = key("a"), key("b")
    fa, fb = latch.hold(ka, 1), latch.hold(kb, 2)
    await latch.release(kb)
    await latch.release(ka)
    with anyio.fail_after(CALL_TIMEOUT):
        assert await actorbox.gather(fa, fb, fa) == [1, 2, 1]


async def test_gather_raises_the_first_failure_and_cancels_the_rest(rt, key):
    """One call fails: gather raises its error, and the calls still held are cancelled in the actor."""
    latch = rt.get_actor("latch")
    ka, kb = key("a"), key("b")
    fa, fb = latch.hold(ka), latch.hold(kb)
    with anyio.fail_after(CALL_TIMEOUT):
        with pytest.raises(KeyError, match="broken"):
            await actorbox.gather(fa, latch.fail("broken"), fb)
        for f in (fa, fb):
            with pytest.raises(actorbox.CallCancelledError):
                await f
        while (await latch.were_cancelled()).count(ka) + (await latch.were_cancelled()).count(kb) < 2:
            await anyio.sleep(0.01)


async def test_a_cancelled_gather_cancels_its_calls(rt, key):
    """Cancelling the scope around gather cancels the unfinished calls it was given."""
    latch = rt.get_actor("latch")
    k = key("g")
    fut = latch.hold(k)
    with anyio.move_on_after(0.1):
        await actorbox.gather(fut)
    with anyio.fail_after(CALL_TIMEOUT):
        with pytest.raises(actorbox.CallCancelledError):
            await fut
        while k not in await latch.were_cancelled():
            await anyio.sleep(0.01)


async def test_as_completed_yields_futures_in_the_order_they_finish(rt, key):
    """Released c, then a, then b: as_completed yields c, a, b (the Futures themselves, finished)."""
    latch = rt.get_actor("latch")
    ka, kb, kc = key("a"), key("b"), key("c")
    fa, fb, fc = latch.hold(ka, "A"), latch.hold(kb, "B"), latch.hold(kc, "C")
    order = []
    releases = iter([ka, kb])
    with anyio.fail_after(CALL_TIMEOUT):
        await latch.release(kc)
        async for f in actorbox.as_completed([fa, fb, fc]):
            assert f.done()
            order.append(await f)
            nxt = next(releases, None)
            if nxt is not None:
                await latch.release(nxt)
    assert order == ["C", "A", "B"]


async def test_arguments_are_checked_with_usage_errors(rt, key):
    """num_returns out of 1..len, a duplicate, something not a Future or a bad timeout: UsageError saying so."""
    latch = rt.get_actor("latch")
    f = latch.square(3)
    for kwargs, match in [({"num_returns": 0}, "num_returns must be an int from 1 to the number of Futures"),
                          ({"num_returns": 2}, "num_returns"), ({"num_returns": True}, "num_returns"),
                          ({"timeout": -1}, "timeout must be None or seconds >= 0"),
                          ({"timeout": float("nan")}, "timeout")]:
        with pytest.raises(actorbox.UsageError, match=match):
            await actorbox.wait([f], **kwargs)
    with pytest.raises(actorbox.UsageError, match="is given twice"):
        await actorbox.wait([f, f])
    with pytest.raises(actorbox.UsageError, match="not an actorbox Future"):
        await actorbox.gather(f, 42)  # type: ignore[arg-type]
    with pytest.raises(actorbox.UsageError, match="takes a list of actorbox Futures"):
        actorbox.as_completed(f)  # type: ignore[arg-type]
    with pytest.raises(actorbox.UsageError, match="num_returns"):
        await actorbox.wait([])
    assert await f == 9


async def test_wait_gather_and_as_completed_work_inside_an_actor(rt):
    """An actor fanning out 20 calls to another actor collects them with gather, as_completed and wait."""
    squares = [i * i for i in range(20)]
    with anyio.fail_after(CALL_TIMEOUT):
        assert await rt.get_actor("fanner").fan("latch", 20) == [squares, squares, squares, 0]


async def test_draining_200_futures_one_at_a_time(rt):
    """``while pending: done, pending = await wait(pending)`` over 200 calls sees each exactly once."""
    latch = rt.get_actor("latch")
    pending = [latch.square(i) for i in range(200)]
    got = []
    with anyio.fail_after(CALL_TIMEOUT):
        while pending:
            done, pending = await actorbox.wait(pending)
            assert len(done) == 1
            got.append(await done[0])
    assert sorted(got) == [i * i for i in range(200)]


async def test_wait_and_gather_take_task_futures_too(rt):
    """Futures of @actorbox.task functions: wait(num_returns, timeout) returns the finished tasks and leaves a
    long one pending (not cancelled: it is cancelled here by the test), gather returns task values in order."""
    from tests.actorbox.task_plugins import double, sleep_async

    with anyio.fail_after(CALL_TIMEOUT * 2):
        quick = [rt.submit(double, i) for i in range(4)]
        long = rt.submit(sleep_async, 60)
        done, pending = await actorbox.wait([long, *quick], num_returns=4, timeout=CALL_TIMEOUT)
        assert done == quick and pending == [long]
        assert await actorbox.wait([long], timeout=0.1) == ([], [long]) and not long.done()
        assert await actorbox.gather(*quick, rt.submit(double, 10)) == [0, 2, 4, 6, 20]
        long.cancel()
        with pytest.raises(actorbox.CallCancelledError):
            await long
