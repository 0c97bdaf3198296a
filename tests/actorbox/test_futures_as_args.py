"""Futures as call arguments (scheduler/_router.py WAITING, actorbox/_caller.py), with real actors.

A pending Future of a call to actor A passed as an argument of a call to actor B:
the scheduler holds B's call in state "waiting" and hands A's result straight to
B, without the host decoding or mapping it; plain values, keyword arguments, one
Future used by two calls or twice in one call; A's failure (an exception, or its
process dying) fails B's call with DependencyFailedError chained to that failure
while B's method never runs; Futures already finished when passed; cancelling
the wait for B; and the documented limitation that code inside an actor cannot
pass a pending Future.

One Runtime with a Producer (A) and a Consumer (B) serves the module per backend.
"""

from __future__ import annotations

import gc
import os
import time
from typing import Any

import anyio
import pytest
import torch

import actorbox

pytestmark = pytest.mark.anyio

CALL_TIMEOUT = 20.0


def sample(shape: list[int] | tuple[int, ...], seed: int = 0) -> torch.Tensor:
    """A float64 tensor with reproducible contents (the same in host and actor: same torch)."""
    return torch.randn(tuple(shape), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def bits(t: torch.Tensor) -> bytes:
    return t.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


# -- the actors (travel by import path) --------------------------------------------------------


@actorbox.actor(max_concurrency=8)
class Producer:
    """Makes values after an optional delay, fails, or dies."""

    async def make(self, shape, seed=0, delay=0.0):
        await anyio.sleep(delay)
        return sample(shape, seed)

    async def value(self, v, delay=0.0):
        await anyio.sleep(delay)
        return v

    async def fail(self, key, delay=0.0):
        await anyio.sleep(delay)
        raise KeyError(key)

    async def die(self, delay=0.0):
        await anyio.sleep(delay)
        os._exit(3)


@actorbox.actor(max_concurrency=8)
class Consumer:
    """Receives values; counts how many of its receiving methods ran."""

    def __init__(self) -> None:
        self.calls = 0

    async def echo(self, *args, **kwargs):
        self.calls += 1
        return [list(args), kwargs]

    async def digest(self, t):
        """dtype, shape and raw bytes of a tensor: no tensor goes back to the host."""
        self.calls += 1
        return [str(t.dtype), list(t.shape), bits(t)]

    async def digest_pair(self, a, b):
        self.calls += 1
        return [bits(a), bits(b), a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()]

    async def count(self):
        return self.calls

    async def pass_pending(self, producer):
        """Passes a pending Future of ``producer`` as an argument (not allowed inside an actor)."""
        fut = producer.value(1, 0.2)
        try:
            producer.value(fut)
        finally:
            await fut

    async def pass_finished(self, producer):
        """Passes a Future that already finished as an argument (its value is used)."""
        fut = producer.value(9)
        await fut
        return await producer.value(fut)


# -- fixtures: one Runtime, one Producer and one Consumer per backend ------------------------


@pytest.fixture(scope="module", params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Module scope (overrides tests/conftest.py's): the Runtime below lives across this module's tests."""
    return request.param  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
async def rt(anyio_backend: str) -> Any:
    async with actorbox.Runtime() as runtime:
        yield runtime


_actors: dict[tuple[actorbox.Runtime, type], actorbox.ActorHandle] = {}


async def _one(rt: actorbox.Runtime, cls: type) -> actorbox.ActorHandle:
    h = _actors.get((rt, cls))
    if h is None:
        with anyio.fail_after(CALL_TIMEOUT):
            h = _actors[(rt, cls)] = await rt.start(cls)
    return h


@pytest.fixture
async def producer(rt: actorbox.Runtime) -> actorbox.ActorHandle:
    return await _one(rt, Producer)


@pytest.fixture
async def consumer(rt: actorbox.Runtime) -> actorbox.ActorHandle:
    return await _one(rt, Consumer)


async def call(aw: Any) -> Any:
    with anyio.fail_after(CALL_TIMEOUT):
        return await aw


def states(rt: actorbox.Runtime, handle: actorbox.ActorHandle, method: str) -> list[str]:
    return [c.state for c in rt.pending_calls() if c.actor == actorbox.info(handle).label and c.method == method]


# -- success -------------------------------------------------------------------------------------


async def test_pending_future_tensor_reaches_the_next_actor_without_the_host_mapping_it(rt, producer, consumer):
    """B gets the tensor A made, bit-exact, and the host neither copies nor maps it unless it awaits A's Future."""
    segs = rt.codec.segments
    created, mapped = segs.created, len(segs)
    fa = producer.make([64, 48], 5, 0.2)
    fb = consumer.digest(fa)
    assert await call(fb) == ["torch.float64", [64, 48], bits(sample((64, 48), 5))]
    assert (segs.created, len(segs)) == (created, mapped), "the host decoded the intermediate tensor"
    t = await call(fa)  # the host asks for it itself: now (and only now) it maps it
    assert bits(t) == bits(sample((64, 48), 5))
    assert len(segs) == mapped + 1
    assert segs.created == created


async def test_waiting_call_shows_as_waiting_while_the_dependency_runs(rt, producer, consumer):
    """While A is still running, ``rt.pending_calls()`` shows B's call in state "waiting"."""
    fa = producer.make([8], 1, 1.0)
    fb = consumer.digest(fa)
    assert states(rt, consumer, "digest") == ["waiting"]
    await anyio.sleep(0.3)
    assert states(rt, consumer, "digest") == ["waiting"]
    assert states(rt, producer, "make") == ["running"]
    assert (await call(fb))[2] == bits(sample((8,), 1))
    assert states(rt, consumer, "digest") == [] and states(rt, producer, "make") == []


async def test_plain_values_and_keyword_arguments(producer, consumer):
    """Pending Futures of plain values work as positional and keyword arguments among ordinary ones."""
    fa = producer.value({"k": [1, 2], "s": "x"}, 0.1)
    fk = producer.value("kw", 0.05)
    out = await call(consumer.echo(1, fa, None, x=fk, y=3))
    assert out == [[1, {"k": [1, 2], "s": "x"}, None], {"x": "kw", "y": 3}]


async def test_one_future_feeds_two_calls(producer, consumer):
    """The same pending Future passed to two calls gives both its value (a tensor, bit-exact in each)."""
    fa = producer.make([16, 16], 7, 0.1)
    f1, f2 = consumer.digest(fa), consumer.digest(fa)
    want = ["torch.float64", [16, 16], bits(sample((16, 16), 7))]
    assert await call(f1) == want
    assert await call(f2) == want
    assert bits(await call(fa)) == want[2]


async def test_one_future_passed_twice_in_one_call(producer, consumer):
    """A Future passed twice in one call arrives twice as the same result (one memory)."""
    fa = producer.make([10], 8, 0.1)
    a, b, same = await call(consumer.digest_pair(fa, fa))
    assert a == b == bits(sample((10,), 8))
    assert same
    fv = producer.value(5, 0.05)
    assert await call(consumer.echo(fv, fv, k=fv)) == [[5, 5], {"k": 5}]


# -- failures ------------------------------------------------------------------------------------


async def test_failed_dependency_fails_the_call_with_the_error_chained(producer, consumer):
    """When A raises KeyError, B's call fails with DependencyFailedError caused by that KeyError; B never runs."""
    before = await call(consumer.count())
    fa = producer.fail("missing", 0.1)
    fb = consumer.echo(fa)
    with pytest.raises(actorbox.DependencyFailedError) as ei:
        await call(fb)
    err = ei.value
    assert isinstance(err.__cause__, KeyError)
    assert err.__cause__.args == ("missing",)
    assert (err.actor, err.method) == (actorbox.info(consumer).label, "echo")
    assert "KeyError" in str(err) and "was not run" in str(err)
    with pytest.raises(KeyError):
        await call(fa)
    assert await call(consumer.count()) == before


async def test_a_long_chain_of_futures_fails_link_by_link_without_recursing(rt, producer, consumer):
    """A failure passed down a chain of 600 dependent calls: each link failed the next one
    a call deeper, until the recursion limit killed the actor whose reply started it and
    left the chain hanging. Every link now fails with DependencyFailedError."""
    before = await call(consumer.count())
    head = producer.fail("root", 0.2)
    links = [consumer.echo(head)]
    for _ in range(599):
        links.append(consumer.echo(links[-1]))
    with pytest.raises(actorbox.DependencyFailedError):
        await call(links[-1])
    with pytest.raises(KeyError):
        await call(head)
    for link in links[::50]:
        with pytest.raises(actorbox.DependencyFailedError):
            await call(link)
    assert await call(consumer.count()) == before
    assert await call(producer.value(5)) == 5, "the producer was killed"
    assert rt.pending_calls() == []


@actorbox.actor
class Doomed:
    async def die(self, delay=0.0):
        await anyio.sleep(delay)
        os._exit(3)


async def test_dead_dependency_fails_the_call_caused_by_actor_died(rt, consumer):
    """When A's process dies, B's call fails with DependencyFailedError caused by ActorDiedError; B never runs."""
    before = await call(consumer.count())
    with anyio.fail_after(CALL_TIMEOUT):
        doomed = await rt.start(Doomed)
    fa = doomed.die(0.2)
    fb = consumer.echo(fa)
    with pytest.raises(actorbox.DependencyFailedError) as ei:
        await call(fb)
    cause = ei.value.__cause__
    assert isinstance(cause, actorbox.ActorDiedError)
    assert cause.exit_code == 3
    assert "ActorDiedError" in str(ei.value)
    with pytest.raises(actorbox.ActorDiedError):
        await call(fa)
    assert await call(consumer.count()) == before


async def test_dead_dependencys_error_names_the_dead_actor_and_method(rt, consumer):
    """The ActorDiedError chained to DependencyFailedError names A and its method, like awaiting A's Future does."""
    with anyio.fail_after(CALL_TIMEOUT):
        doomed = await rt.start(Doomed)
    fa = doomed.die(0.2)
    fb = consumer.echo(fa)
    with pytest.raises(actorbox.DependencyFailedError) as ei:
        await call(fb)
    with pytest.raises(actorbox.ActorDiedError) as direct:
        await call(fa)
    cause = ei.value.__cause__
    assert isinstance(cause, actorbox.ActorDiedError)
    label = actorbox.info(doomed).label
    assert (cause.actor, cause.method) == (direct.value.actor, direct.value.method) == (label, "die")
    assert label in str(ei.value)


async def test_a_call_waiting_for_a_future_fails_at_once_when_its_actor_stops(rt, producer):
    """Stopping the actor a call waits to run on failed queued calls at once, but one still
    waiting for a Future argument only failed once that finished (or never)."""
    with anyio.fail_after(CALL_TIMEOUT):
        target = await rt.start(Consumer)
    slow = producer.value(1, 3.0)
    waiting = target.echo(slow)
    await anyio.sleep(0.2)
    await call(rt.stop(target))
    with anyio.fail_after(1.5), pytest.raises(actorbox.ActorStoppedError):
        await waiting
    assert await call(slow) == 1


async def test_a_death_passed_down_a_chain_arrives_as_the_death(rt, consumer):
    """A dies; B waited on A and C on B: C's cause was "CallRefusedError ... dep_failed",
    now it is A's ActorDiedError, as B's is."""
    with anyio.fail_after(CALL_TIMEOUT):
        doomed = await rt.start(Doomed)
    fa = doomed.die(0.2)
    fb = consumer.echo(fa)
    fc = consumer.echo(fb)
    for f in (fb, fc):
        with pytest.raises(actorbox.DependencyFailedError) as ei:
            await call(f)
        cause = ei.value.__cause__
        assert isinstance(cause, actorbox.ActorDiedError), repr(cause)
        assert (cause.actor, cause.method) == (actorbox.info(doomed).label, "die")
    assert "through 1 call that waited for it" in str(ei.value)


async def test_cancelled_dependency_fails_the_waiting_call(rt, producer, consumer):
    """Cancelling A's call while B waits on it fails B with DependencyFailedError caused by CallCancelledError."""
    before = await call(consumer.count())
    fa = producer.value("never", 1.0)
    fb = consumer.echo(fa)
    await anyio.sleep(0.1)
    assert fa.cancel()
    with pytest.raises(actorbox.DependencyFailedError) as ei:
        await call(fb)
    assert isinstance(ei.value.__cause__, actorbox.CallCancelledError)
    assert states(rt, consumer, "echo") == []
    assert await call(consumer.count()) == before


# -- no leaks ------------------------------------------------------------------------------------


async def test_chained_tensor_results_leak_no_host_descriptors(rt, producer, consumer):
    """100 A->B hand-offs of a tensor (A's Futures then dropped unread) leave the host's fd count where it was."""
    await call(consumer.digest(producer.make([256], 0)))  # warm up
    gc.collect()
    fds = len(os.listdir("/proc/self/fd"))
    for i in range(100):
        fa = producer.make([256], i)
        assert (await call(consumer.digest(fa)))[2] == bits(sample((256,), i))
        del fa
    deadline = time.monotonic() + 3
    while True:
        gc.collect()
        now = len(os.listdir("/proc/self/fd"))
        if now <= fds + 3 or time.monotonic() > deadline:
            break
        await anyio.sleep(0.05)
    assert now <= fds + 3, f"host fds {fds} -> {now}"


# -- finished Futures ----------------------------------------------------------------------------


async def test_finished_future_as_argument_passes_its_value(producer, consumer):
    """A Future that already finished is replaced by its value (plain or tensor) when passed."""
    fv = producer.value([1, "two"])
    assert await call(fv) == [1, "two"]
    assert await call(consumer.echo(fv, k=fv)) == [[[1, "two"]], {"k": [1, "two"]}]
    ft = producer.make([5, 5], 11)
    await call(ft)
    assert (await call(consumer.digest(ft)))[2] == bits(sample((5, 5), 11))


async def test_failed_future_as_argument_raises_at_call_time(producer, consumer):
    """A Future that already failed makes the call raise DependencyFailedError at once, chained to the failure."""
    before = await call(consumer.count())
    fa = producer.fail("gone")
    with pytest.raises(KeyError):
        await call(fa)
    with pytest.raises(actorbox.DependencyFailedError) as ei:
        consumer.echo(fa)  # raised by the call itself, before anything is sent
    assert isinstance(ei.value.__cause__, KeyError)
    assert "KeyError" in str(ei.value)
    assert await call(consumer.count()) == before


# -- cancellation --------------------------------------------------------------------------------


async def test_cancelling_the_wait_removes_the_waiting_call(rt, producer, consumer):
    """Cancelling the await of B while it waits on A removes B's call from pending_calls; B never runs."""
    before = await call(consumer.count())
    fa = producer.value("late", 1.0)
    fb = consumer.echo(fa)
    assert states(rt, consumer, "echo") == ["waiting"]
    with anyio.move_on_after(0.2) as scope:
        await fb
    assert scope.cancelled_caught
    assert states(rt, consumer, "echo") == []
    assert states(rt, producer, "value") == ["running"], "cancelling B must not cancel A"
    with pytest.raises(actorbox.CallCancelledError):
        await call(fb)
    assert await call(fa) == "late"
    assert await call(consumer.count()) == before


# -- inside an actor -----------------------------------------------------------------------------


async def test_actor_passing_a_pending_future_gets_a_serialization_error(producer, consumer):
    """Inside an actor, a pending Future as an argument raises SerializationError saying to await it first."""
    with pytest.raises(actorbox.SerializationError) as ei:
        await call(consumer.pass_pending(producer))
    msg = str(ei.value)
    assert "only of calls made by the host" in msg
    assert "await it and pass its value" in msg


async def test_actor_passing_a_finished_future_passes_its_value(producer, consumer):
    """Inside an actor, a Future that already finished can be passed: its value is used."""
    assert await call(consumer.pass_finished(producer)) == 9
