"""Tests for actorbox/_admission.py: an actor process's admission queue, which applies
scheduler's admission rule to the calls it is delivered."""

from __future__ import annotations

import contextvars

from actorbox._admission import AdmissionQueue
from actorbox._job import Job
from scheduler import envelope


def _job(call_id: int, *, reentrant: bool = False) -> Job:
    call = envelope.Call(call_id, 0, "m", b"", reentrant=reentrant)
    return Job(call, lambda: None, False, contextvars.copy_context())


def test_the_queue_runs_calls_in_order_max_concurrency_at_a_time():
    """Calls past max_concurrency wait in FIFO order; each ending call hands its slot to the oldest."""
    q = AdmissionQueue()
    q.max_concurrency = 2
    assert [q.admit(_job(i)) for i in range(1, 5)] == [True, True, False, False]
    claimed: list[int] = []
    nxt = q.release(lambda job: claimed.append(job.call.call_id))
    assert nxt is not None and nxt.call.call_id == 3 and claimed == [3]
    assert q.active == 2


def test_a_re_entrant_call_runs_past_the_limit_and_then_frees_its_slot():
    """A re-entrant call takes a slot past the limit; when it ends, the waiting call still waits for a real slot."""
    q = AdmissionQueue()
    assert q.admit(_job(1)) and not q.admit(_job(2)) and q.admit(_job(3, reentrant=True))
    assert q.active == 2
    assert q.release(lambda job: None) is None  # the re-entrant call ended: its slot is not passed on
    assert q.active == 1 and [j.call.call_id for j in q.waiting] == [2]


def test_a_withdrawn_call_leaves_the_queue_and_is_never_handed_a_slot():
    """A cancel takes a waiting call out of the queue; the next slot goes to the one after it."""
    q = AdmissionQueue()
    q.admit(_job(1))
    q.admit(_job(2))
    q.admit(_job(3))
    withdrawn = q.withdraw(2)
    assert withdrawn is not None and withdrawn.call.call_id == 2
    assert q.withdraw(2) is None and q.withdraw(1) is None  # gone, and a running call is not in the queue
    nxt = q.release(lambda job: None)
    assert nxt is not None and nxt.call.call_id == 3
