"""Tests for scheduler/_dependency.py: the chain of failed dependencies a DEP_FAILED reply carries."""

from __future__ import annotations

from typing import Any

import pytest

from scheduler import DependencyFailure, FailedCall, Scheduler, envelope
from scheduler._dependency import MAX_HOPS

from .test_router import Recorder, finish, start_actor


@pytest.fixture
def host() -> Recorder:
    return Recorder("host", trusted=True)


def test_a_chain_of_waiting_calls_names_each_hop_down_to_the_first_failure(host: Recorder) -> None:
    """C waits on B, which waits on A; A fails: C's reply names B then A, carries A's error payload unchanged."""
    sched = Scheduler(prefetch=2)
    aid, a = start_actor(sched, "A")
    bid, _ = start_actor(sched, "B")
    cid, _ = start_actor(sched, "C")
    la = host.call(sched, aid, "fail")
    lb = host.call(sched, bid, "use", deps=(la,))
    lc = host.call(sched, cid, "use", deps=(lb,))
    finish(sched, a, a.calls[0], b"A's error", status=envelope.Status.ERROR)
    replies = {r.call_id: r for r in host.replies}
    reply_c = replies[lc]
    assert reply_c.status == envelope.Status.DEP_FAILED and reply_c.payload == b"A's error"
    failure = DependencyFailure.from_detail(reply_c.detail)
    assert failure is not None
    assert failure.chain == (FailedCall("B", "use", lb, "DEP_FAILED"), FailedCall("A", "fail", la, "ERROR"))
    assert failure.cause == FailedCall("A", "fail", la, "ERROR") and failure.hops == 1
    assert not any(k.startswith("dep_") for k in reply_c.detail or {})  # no prefixed keys any more


def test_the_first_failures_detail_travels_with_the_chain(host: Recorder) -> None:
    """A dependency that died keeps its own detail (how it died) under the chain, through an envelope round trip."""
    sched = Scheduler(prefetch=2)
    aid, a = start_actor(sched, "A")
    bid, _ = start_actor(sched, "B")
    la = host.call(sched, aid, "m")
    lb = host.call(sched, bid, "use", deps=(la,))
    sched.reply(a, envelope.Reply(a.calls[0].call_id, envelope.Status.DIED, b"", {"message": "killed", "pid": 7}))
    [reply] = [r for r in host.replies if r.call_id == lb]
    decoded = envelope.decode(envelope.encode(reply))
    assert isinstance(decoded, envelope.Reply)
    failure = DependencyFailure.from_detail(decoded.detail)
    assert failure is not None and failure.cause.status == "DIED"
    assert failure.detail == {"message": "killed", "pid": 7} and failure.hops == 0


def test_a_long_chain_keeps_its_nearest_and_last_hops_and_counts_them_all() -> None:
    """A chain past MAX_HOPS stays bounded (no detail quadratic in a chain's length) but counts every hop."""
    root = FailedCall("A", "m", 1, "ERROR")
    failure = DependencyFailure.of(root, None)
    for i in range(2, 200):
        failure = DependencyFailure.of(FailedCall("B", "m", i, "DEP_FAILED"), failure.to_detail())
    assert len(failure.chain) == MAX_HOPS and failure.hops == 198
    assert failure.chain[0].caller_call_id == 199 and failure.cause == root


@pytest.mark.parametrize("detail", [None, {}, {"dependency_failure": "x"}, {"dependency_failure": {"chain": []}},
                                    {"dependency_failure": {"chain": [["A", "m", "1", "ERROR"]], "hops": 0}},
                                    {"dependency_failure": {"chain": [["A", "m", 1, "ERROR"]], "hops": 0,
                                                            "detail": 5}}])
def test_a_detail_not_in_the_shape_describes_no_failure(detail: dict[str, Any] | None) -> None:
    """from_detail answers None for a detail that is not a dependency failure, never raising on its shape."""
    assert DependencyFailure.from_detail(detail) is None
