"""Deadlock detection and max_pending_calls with real actor processes (scheduler/_deadlock.py, _router.py).

Actors of max_concurrency=1 in a ring, each waiting on the next while the next waits on it:
the call that closes the cycle fails with DeadlockError (typed in the actor that made it;
an actorbox error the actor lets through reaches the host as RemoteError naming it), its
message names every actor, method and call id, the others finish and the actors go on
serving. A call queued behind a busy actor that waits for nothing, and a re-entrant chain
through a host-resident actor, are no deadlocks. ``@actor(max_pending_calls=)`` refuses the
call over the limit at once, from the host and from another actor alike.

One Runtime with its actors serves the module per backend.
"""

from __future__ import annotations

from typing import Any

import anyio
import pytest

import actorbox

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

CALL_TIMEOUT = 30.0


@actorbox.actor(max_concurrency=1)
class Ring:
    """One member of a ring: ``run`` waits at the gate until every member runs, then calls the next."""

    async def run(self, gate: str, nxt: str, catch: bool = True) -> list[Any]:
        await actorbox.get_actor(gate).arrive()
        try:
            return ["ok", await actorbox.get_actor(nxt).poke()]
        except actorbox.DeadlockError as exc:
            if not catch:
                raise
            return ["deadlock", isinstance(exc, actorbox.CallError), exc.method, str(exc)]

    async def poke(self) -> str:
        return "poked"

    async def busy(self, latch: str) -> str:
        """Busy until the host opens ``latch``: its one call out waits for nothing that waits."""
        await actorbox.get_actor(latch).wait()
        return "done"

    async def poke_next(self, nxt: str) -> str:
        return str(await actorbox.get_actor(nxt).poke())

    async def through_host(self, relay: str, me: str) -> str:
        """host -> this -> the host's relay -> this again: re-entrant, admitted past the limit."""
        return str(await actorbox.get_actor(relay).back(me))


@actorbox.actor(max_concurrency=1, max_pending_calls=2)
class Limited:
    async def hold(self, s: float) -> str:
        await anyio.sleep(s)
        return "held"


@actorbox.actor(max_concurrency=4)
class Flooder:
    async def flood(self, name: str, n: int, s: float) -> list[str]:
        """Makes ``n`` calls to ``name`` at once; what each ended with."""
        target = actorbox.get_actor(name)
        futures = [target.hold(s) for _ in range(n)]
        out = []
        for f in futures:
            try:
                out.append(await f)
            except actorbox.PendingCallsLimitError as exc:
                out.append(f"limit {exc.limit}")
        return out


class Gate:
    """Host-resident: ``arrive`` returns once ``n`` callers have arrived (a barrier, reusable)."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.arrived = 0
        self.event = anyio.Event()

    async def arrive(self) -> None:
        self.arrived += 1
        event = self.event
        if self.arrived == self.n:
            event.set()
            self.arrived, self.event = 0, anyio.Event()
        await event.wait()


class Latch:
    """Host-resident: ``wait`` returns once the host calls ``open`` (directly, on the object)."""

    def __init__(self) -> None:
        self.event = anyio.Event()

    async def wait(self) -> None:
        await self.event.wait()


class Relay:
    """Host-resident: calls back into the actor named ``name``."""

    def __init__(self, rt: actorbox.Runtime) -> None:
        self.rt = rt

    async def back(self, name: str) -> str:
        return str(await self.rt.get_actor(name).poke())


@pytest.fixture(scope="module", params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Module scope (overrides tests/conftest.py's): the Runtime below lives across this module's tests."""
    return request.param  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
async def rt(anyio_backend: str) -> Any:
    async with actorbox.Runtime() as runtime:
        runtime.register("gate2", Gate(2), max_concurrency=2)
        runtime.register("gate3", Gate(3), max_concurrency=3)
        runtime.register("relay", Relay(runtime), max_concurrency=4)
        with anyio.fail_after(CALL_TIMEOUT * 2):
            for name in ("ring-a", "ring-b", "ring-c"):
                await runtime.start(Ring, name=name)
            await runtime.start(Limited, name="limited")
            await runtime.start(Flooder, name="flooder")
        yield runtime


async def gather_all(*aws: Any) -> list[Any]:
    """Each awaitable's value, or the exception it raised, in order (under a deadline)."""
    out: list[Any] = [None] * len(aws)

    async def one(i: int, aw: Any) -> None:
        try:
            out[i] = await aw
        except actorbox.ActorboxError as exc:
            out[i] = exc

    with anyio.fail_after(CALL_TIMEOUT):
        async with anyio.create_task_group() as tg:
            for i, aw in enumerate(aws):
                tg.start_soon(one, i, aw)
    return out


async def test_two_actors_waiting_on_each_other_fail_one_call_with_a_typed_deadlock_error(rt):
    """A.run awaits B while B.run awaits A: one nested call fails with DeadlockError in its actor, naming both
    actors, all four calls and their ids; the other run finishes, and both actors go on serving."""
    a, b = rt.get_actor("ring-a"), rt.get_actor("ring-b")
    results = await gather_all(a.run("gate2", "ring-b"), b.run("gate2", "ring-a"))
    assert sorted(r[0] for r in results) == ["deadlock", "ok"], results
    [dead] = [r for r in results if r[0] == "deadlock"]
    _, is_call_error, method, message = dead
    assert is_call_error and method == "poke"
    for text in ("ring-a.run() [call ", "ring-b.run() [call ", "ring-a.poke() [call ", "ring-b.poke() [call ",
                 "max_concurrency=1"):
        assert text in message, message
    assert await gather_all(a.poke(), b.poke()) == ["poked", "poked"]
    assert rt.pending_calls() == []


async def test_a_three_actor_ring_names_every_actor_and_reaches_the_host_as_the_actors_error(rt):
    """A -> B -> C -> A: the closing call's DeadlockError, let through by its actor, reaches the host as a
    RemoteError of type actorbox.DeadlockError naming all three actors; the other two runs finish."""
    hs = [rt.get_actor(f"ring-{c}") for c in "abc"]
    nxt = ["ring-b", "ring-c", "ring-a"]
    results = await gather_all(*(h.run("gate3", n, False) for h, n in zip(hs, nxt, strict=True)))
    errors = [r for r in results if isinstance(r, BaseException)]
    assert len(errors) == 1 and [r for r in results if not isinstance(r, BaseException)] == [["ok", "poked"]] * 2
    [err] = errors
    assert isinstance(err, actorbox.RemoteError) and err.type_name == "actorbox.DeadlockError"
    for c in "abc":
        assert f"ring-{c}.run() [call " in str(err) and f"ring-{c}.poke() [call " in str(err), str(err)
    assert await gather_all(*(h.poke() for h in hs)) == ["poked"] * 3


async def test_a_call_queued_behind_a_busy_actor_that_waits_for_nothing_succeeds(rt):
    """A -> B.poke while B.busy waits on the host (which waits for nothing): A's call waits for B's slot, is
    not refused, and succeeds once the host lets B.busy end."""
    a, b = rt.get_actor("ring-a"), rt.get_actor("ring-b")
    latch = Latch()
    rt.register("latch", latch, max_concurrency=4)
    try:
        busy = b.busy("latch")
        calling = a.poke_next("ring-b")
        with anyio.fail_after(CALL_TIMEOUT):
            while not any(c.method == "poke" and c.state in ("queued", "delivered") for c in rt.pending_calls()):
                await anyio.sleep(0.01)
        latch.event.set()
        assert await gather_all(calling, busy) == ["poked", "done"]
    finally:
        rt.unregister("latch")


async def test_a_re_entrant_chain_through_the_host_is_no_deadlock(rt):
    """host -> A -> host-resident relay -> A: the inner call re-enters A (max_concurrency=1) and succeeds."""
    a = rt.get_actor("ring-a")
    assert await gather_all(a.through_host("relay", "ring-a")) == ["poked"]


async def test_max_pending_calls_refuses_the_call_over_the_limit_at_once(rt):
    """With two calls unfinished, a third from the host fails at once with PendingCallsLimitError naming the limit;
    once they end, calls are accepted again."""
    lim = rt.get_actor("limited")
    first, second = lim.hold(0.3), lim.hold(0.3)
    with anyio.fail_after(5):
        with pytest.raises(actorbox.PendingCallsLimitError, match="max_pending_calls=2") as info:
            await lim.hold(0)
    assert info.value.limit == 2 and isinstance(info.value, actorbox.CallRefusedError)
    assert await gather_all(first, second) == ["held", "held"]
    assert await gather_all(lim.hold(0)) == ["held"]


async def test_max_pending_calls_limits_an_actor_calling_the_actor_the_same_way(rt):
    """An actor making five calls at once to an actor limited to two gets two results and three typed refusals."""
    out = await gather_all(rt.get_actor("flooder").flood("limited", 5, 0.2))
    assert out == [["held", "held", "limit 2", "limit 2", "limit 2"]]


def test_max_pending_calls_is_validated_like_the_other_options():
    """@actor(max_pending_calls=0) or a non-int fails at decoration with UsageError saying what it takes."""
    for bad in (0, -1, 1.5, "3", True):
        with pytest.raises(actorbox.UsageError, match="max_pending_calls must be an int >= 1"):
            actorbox.actor(max_pending_calls=bad)
