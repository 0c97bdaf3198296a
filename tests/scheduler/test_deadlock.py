"""Tests for scheduler/_deadlock.py and the router's backpressure: which waiting calls are a deadlock, which
are not, and max_pending_calls counted in the call table. Endpoints are the recording fakes of test_router."""

from __future__ import annotations

import pytest
import structlog

from scheduler import _deadlock, envelope
from scheduler._router import Scheduler

from .test_router import Recorder, finish

REFUSED = envelope.Status.REFUSED


def actor(sched: Scheduler, label: str, max_concurrency: int = 1, *, queues_calls: bool = False,
          max_pending: int | None = None) -> tuple[int, Recorder]:
    a = sched.add_actor(label, label, max_concurrency, max_pending)
    ep = Recorder(label, queues_calls=queues_calls)
    sched.attach(a.actor_id, ep)
    return a.actor_id, ep


def nested(sched: Scheduler, ep: Recorder, parent: envelope.Call, target: int, method: str) -> int:
    """``ep``'s actor, serving ``parent``, calls ``target.method()``; returns the caller's local id."""
    return ep.call(sched, target, method, parent=parent.call_id)


def refusals(ep: Recorder) -> list[envelope.Reply]:
    return [r for r in ep.replies if r.status == REFUSED]


@pytest.fixture
def host() -> Recorder:
    return Recorder("host", trusted=True)


@pytest.fixture(params=[False, True], ids=["scheduler-queue", "actor-fifo"])
def queues_calls(request: pytest.FixtureRequest) -> bool:
    """Whether a waiting call waits in the scheduler's queue or was delivered ahead to the actor's FIFO."""
    return bool(request.param)


def test_two_actors_each_full_and_waiting_on_the_other_is_a_deadlock(host: Recorder, queues_calls: bool) -> None:
    """A.f awaits B while B.g awaits A, both max_concurrency=1: the closing call fails naming all four calls."""
    sched = Scheduler(prefetch=2)
    a, ea = actor(sched, "A", queues_calls=queues_calls)
    b, eb = actor(sched, "B", queues_calls=queues_calls)
    host.call(sched, a, "f")
    host.call(sched, b, "g")
    f, g = ea.calls[0], eb.calls[0]
    nested(sched, ea, f, b, "x")
    assert refusals(ea) == []  # B.g is busy but waits for nothing yet: A.f just waits
    with structlog.testing.capture_logs() as logs:
        nested(sched, eb, g, a, "y")
    [refused] = refusals(eb)
    assert refused.detail is not None and refused.detail["reason"] == "deadlock"
    message = refused.detail["message"]
    x_id, y_id = refused.detail["cycle"][2], refused.detail["cycle"][0]
    for text in (f"A.f() [call {f.call_id}]", f"B.g() [call {g.call_id}]", f"B.x() [call {x_id}]",
                 f"A.y() [call {y_id}]", "max_concurrency=1"):
        assert text in message
    assert [e["event"] for e in logs] == ["deadlock.detected"]
    # The others go on: B.g ends (its code saw the error), B.x runs, A.f ends.
    finish(sched, eb, g)
    x = next(c for c in eb.calls if c.method == "x")
    finish(sched, eb, x)
    finish(sched, ea, f)
    assert sched.pending_calls() == [] and [r.status for r in host.replies] == [envelope.Status.OK] * 2


def test_three_actors_in_a_ring_is_a_deadlock_naming_all_six_calls(host: Recorder) -> None:
    """A -> B -> C -> A, each full: the call that closes the ring fails and its message names every call."""
    sched = Scheduler(prefetch=2)
    (a, ea), (b, eb), (c, ec) = (actor(sched, n) for n in "ABC")
    for target in (a, b, c):
        host.call(sched, target, "run")
    ra, rb, rc = ea.calls[0], eb.calls[0], ec.calls[0]
    nested(sched, ea, ra, b, "ab")
    nested(sched, eb, rb, c, "bc")
    assert refusals(ea) == refusals(eb) == []
    nested(sched, ec, rc, a, "ca")
    [refused] = refusals(ec)
    assert refused.detail is not None
    message = refused.detail["message"]
    for label, call in (("A", ra), ("B", rb), ("C", rc)):
        assert f"{label}.run() [call {call.call_id}]" in message
    for method in ("B.ab()", "C.bc()", "A.ca()"):
        assert method in message
    assert len(refused.detail["cycle"]) == 6


def test_a_call_queued_behind_a_busy_actor_that_waits_for_nothing_is_no_deadlock(host: Recorder) -> None:
    """A.f -> B.x while B.g computes (no calls of its own), and B.g then calls a third actor: no refusal."""
    sched = Scheduler(prefetch=2)
    (a, ea), (b, eb), (c, _) = (actor(sched, n) for n in "ABC")
    host.call(sched, a, "f")
    host.call(sched, b, "g")
    f, g = ea.calls[0], eb.calls[0]
    nested(sched, ea, f, b, "x")
    nested(sched, eb, g, c, "z")
    assert refusals(ea) == refusals(eb) == []
    assert {i.method: i.state for i in sched.pending_calls()}["x"] == "queued"


def test_a_reentrant_chain_is_no_deadlock(host: Recorder) -> None:
    """host -> A.f -> B.g -> A.h: A.h re-enters A (its ancestor runs there) and is delivered at once."""
    sched = Scheduler(prefetch=2)
    a, ea = actor(sched, "A")
    b, eb = actor(sched, "B")
    host.call(sched, a, "f")
    nested(sched, ea, ea.calls[0], b, "g")
    nested(sched, eb, eb.calls[0], a, "h")
    assert refusals(eb) == [] and [c.method for c in ea.calls] == ["f", "h"] and ea.calls[1].reentrant


def test_a_free_slot_to_come_is_no_deadlock(host: Recorder) -> None:
    """A has two slots: A.f1 waits on B, A.f2 computes; B.g -> A.y waits for A.f2's slot, not for ever."""
    sched = Scheduler(prefetch=2)
    a, ea = actor(sched, "A", 2)
    b, eb = actor(sched, "B")
    host.call(sched, a, "f1")
    host.call(sched, a, "f2")
    host.call(sched, b, "g")
    nested(sched, ea, ea.calls[0], b, "x")
    nested(sched, eb, eb.calls[0], a, "y")
    assert refusals(eb) == []
    finish(sched, ea, ea.calls[1])  # f2 ends: y takes its slot
    assert [c.method for c in ea.calls][-1] == "y"


def test_the_second_slot_also_waiting_makes_it_a_deadlock(host: Recorder) -> None:
    """With both of A's slots waiting on B (full, waiting on A), the call into A fails."""
    sched = Scheduler(prefetch=2)
    a, ea = actor(sched, "A", 2)
    b, eb = actor(sched, "B")
    host.call(sched, a, "f1")
    host.call(sched, a, "f2")
    host.call(sched, b, "g")
    nested(sched, ea, ea.calls[0], b, "x1")
    nested(sched, ea, ea.calls[1], b, "x2")
    nested(sched, eb, eb.calls[0], a, "y")
    [refused] = refusals(eb)
    assert refused.detail is not None and "max_concurrency=2" in refused.detail["message"]


def test_a_check_over_its_budget_reports_nothing_and_says_so(host: Recorder, monkeypatch: pytest.MonkeyPatch) -> None:
    """A wait-for graph larger than one check may visit is not searched: the call waits, an event says why."""
    monkeypatch.setattr(_deadlock, "MAX_VISITS", 2)
    sched = Scheduler(prefetch=2)
    a, ea = actor(sched, "A")
    b, eb = actor(sched, "B")
    host.call(sched, a, "f")
    host.call(sched, b, "g")
    nested(sched, ea, ea.calls[0], b, "x")
    with structlog.testing.capture_logs() as logs:
        nested(sched, eb, eb.calls[0], a, "y")
    assert refusals(eb) == [] and [e["event"] for e in logs] == ["deadlock.check_skipped"]


# -- max_pending_calls -----------------------------------------------------------------------


def test_max_pending_counts_every_caller_and_refuses_at_once_naming_the_limit(host: Recorder) -> None:
    """Running and queued calls from the host and from actors count; the call over the limit is refused."""
    sched = Scheduler(prefetch=2)
    a, ea = actor(sched, "A", max_pending=3)
    b, eb = actor(sched, "B")
    host.call(sched, a, "one")
    host.call(sched, a, "two")
    host.call(sched, b, "run")
    nested(sched, eb, eb.calls[0], a, "three")
    host.call(sched, a, "four")
    [refused] = refusals(host)
    assert refused.detail is not None and refused.detail["reason"] == "max_pending_calls"
    assert refused.detail["limit"] == 3 and "max_pending_calls=3" in refused.detail["message"]
    nested(sched, eb, eb.calls[0], a, "five")
    assert len(refusals(eb)) == 1
    assert [c.method for c in sched.pending_calls() if c.actor == "A"] == ["one", "two", "three"]
    finish(sched, ea, ea.calls[0])
    host.call(sched, a, "six")  # a slot in the limit freed: accepted
    assert len(refusals(host)) == 1 and sched.actors[a].unfinished == 3


def test_max_pending_is_given_back_by_cancels_and_deaths(host: Recorder) -> None:
    """A cancelled queued call and calls failed by the actor's death no longer count."""
    sched = Scheduler(prefetch=2)
    a, _ = actor(sched, "A", max_pending=2)
    host.call(sched, a, "one")
    second = host.call(sched, a, "two")
    sched.cancel(host, second)
    assert sched.actors[a].unfinished == 1
    sched.detach(a, envelope.Status.DIED, {"message": "gone"}, keep_queue=True)
    assert sched.actors[a].unfinished == 0


def test_checks_past_the_time_budget_are_skipped_and_reported_once_a_second(
        host: Recorder, monkeypatch: pytest.MonkeyPatch) -> None:
    """Once the bucket of visits is spent, further checks are given up at once (the calls wait as without
    detection); a flood of them makes one deadlock.check_skipped event, not one per call."""
    monkeypatch.setattr(_deadlock, "BUDGET_BURST", 3)
    monkeypatch.setattr(_deadlock, "BUDGET_PER_S", 0)
    sched = Scheduler(prefetch=2)
    a, ea = actor(sched, "A")
    b, _ = actor(sched, "B")
    host.call(sched, a, "f")
    host.call(sched, a, "queued")  # waits for A.f's slot: a cycle back to A.f is possible, so each call is walked
    host.call(sched, b, "g")
    with structlog.testing.capture_logs() as logs:
        for i in range(5):
            nested(sched, ea, ea.calls[0], b, f"x{i}")  # each check would visit 2 calls
    events = [e for e in logs if e["event"] == "deadlock.check_skipped"]
    assert refusals(ea) == [] and len(events) == 1
    assert events[0]["skipped"] + sched._deadlocks.skipped == 4  # the first check ran; the rest wait for a report


def test_a_nested_call_whose_parent_nothing_waits_for_is_not_walked(
        host: Recorder, monkeypatch: pytest.MonkeyPatch) -> None:
    """A call made by a root call that no call waits for (no parent, no Future dependant, no call queued for its
    actor's slot) cannot close a cycle: it spends none of the check's budget (the task pool's busy workers are
    passed tasks so); once a call waits for the parent's actor, the same call is walked again."""
    monkeypatch.setattr(_deadlock, "BUDGET_BURST", 100)
    monkeypatch.setattr(_deadlock, "BUDGET_PER_S", 0)
    sched = Scheduler(prefetch=2)
    a, ea = actor(sched, "A", max_concurrency=2)
    b, _ = actor(sched, "B")
    host.call(sched, a, "f")
    host.call(sched, b, "g")
    for i in range(3):
        nested(sched, ea, ea.calls[0], b, f"x{i}")
    assert sched._deadlocks._tokens == 100 and refusals(ea) == []
    host.call(sched, a, "second")  # takes A's other slot
    host.call(sched, a, "third")  # waits for a slot of A: for A.f, among others
    nested(sched, ea, ea.calls[0], b, "walked")
    assert sched._deadlocks._tokens < 100 and refusals(ea) == []
