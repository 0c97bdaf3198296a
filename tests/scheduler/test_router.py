"""Tests for scheduler/_router.py: the call table, FIFO queues, concurrency and re-entrancy.

Endpoints are small recording fakes: the router is what is under test here.
"""

from __future__ import annotations

import os

import pytest
import structlog

from scheduler import envelope
from scheduler._endpoint import Endpoint
from scheduler._router import Scheduler

OK = envelope.Status.OK


class Recorder(Endpoint):
    """An endpoint that records everything the scheduler delivers to it."""

    def __init__(self, label: str, *, queues_calls: bool = False, trusted: bool = False) -> None:
        super().__init__()
        self.label = label
        self.queues_calls = queues_calls
        self.trusted = trusted
        self.calls: list[envelope.Call] = []
        self.replies: list[envelope.Reply] = []
        self.cancels: list[int] = []
        self._next_local = 1

    def deliver_call(self, call: envelope.Call) -> None:
        self.calls.append(call)

    def deliver_reply(self, reply: envelope.Reply) -> None:
        self.replies.append(reply)

    def deliver_cancel(self, call_id: int) -> None:
        self.cancels.append(call_id)

    # helpers: act as the caller / callee would
    def call(self, sched: Scheduler, target: int, method: str = "m", *, parent: int | None = None,
             local: int | None = None, **kw: object) -> int:
        """Submit a call numbered like a Caller does; returns the local id."""
        if local is None:
            local = self._next_local
            self._next_local += 1
        if not self.trusted and target in sched.actors:  # an actor quotes the token its handle carries
            kw.setdefault("token", sched.actors[target].token)
        sched.route(self, envelope.Call(local, target, method, b"args", parent, **kw))  # type: ignore[arg-type]
        return local

    def methods(self) -> list[str]:
        return [c.method for c in self.calls]


@pytest.fixture
def sched() -> Scheduler:
    return Scheduler(prefetch=2)


def test_an_endpoint_must_implement_every_delivery() -> None:
    """Endpoint is abstract: a subclass missing a deliver_* method fails at construction, not mid-call."""

    class NoCancel(Endpoint):
        def deliver_call(self, call: envelope.Call) -> None: ...

        def deliver_reply(self, reply: envelope.Reply) -> None: ...

    with pytest.raises(TypeError, match="deliver_cancel"):
        NoCancel()  # type: ignore[abstract]


@pytest.fixture
def host() -> Recorder:
    return Recorder("host", trusted=True)


def start_actor(sched: Scheduler, label: str, max_concurrency: int = 1, *, queues_calls: bool = False,
                name: str | None = None) -> tuple[int, Recorder]:
    a = sched.add_actor(name, label, max_concurrency)
    ep = Recorder(label, queues_calls=queues_calls)
    sched.attach(a.actor_id, ep)
    return a.actor_id, ep


def finish(sched: Scheduler, ep: Recorder, call: envelope.Call, payload: bytes = b"result",
           status: envelope.Status = OK) -> None:
    sched.reply(ep, envelope.Reply(call.call_id, status, payload))


# -- FIFO and concurrency ----------------------------------------------------------------


def test_call_reaches_actor_and_reply_reaches_caller(sched: Scheduler, host: Recorder) -> None:
    """A call is delivered with a global id; its reply goes back under the caller's local id."""
    aid, ep = start_actor(sched, "A")
    local = host.call(sched, aid, "incr", local=41)
    [call] = ep.calls
    assert (call.target, call.method, call.payload, call.trusted) == (aid, "incr", b"args", True)
    finish(sched, ep, call, b"42")
    assert host.replies == [envelope.Reply(local, OK, b"42")]
    assert host.replies[0].trusted is False  # the callee is an actor
    assert sched.pending_calls() == []


@pytest.mark.parametrize("max_concurrency", [1, 3])
def test_fifo_and_max_concurrency_without_endpoint_queue(sched: Scheduler, host: Recorder,
                                                        max_concurrency: int) -> None:
    """With queues_calls False, at most max_concurrency calls are delivered, the rest follow in FIFO order."""
    aid, ep = start_actor(sched, "A", max_concurrency)
    for i in range(8):
        host.call(sched, aid, f"m{i}")
    assert ep.methods() == [f"m{i}" for i in range(max_concurrency)]
    delivered = max_concurrency
    while delivered < 8:
        finish(sched, ep, ep.calls[delivered - max_concurrency])
        delivered += 1
        assert ep.methods() == [f"m{i}" for i in range(delivered)]
    assert len(host.replies) == 8 - max_concurrency
    assert [r.call_id for r in host.replies] == list(range(1, 8 - max_concurrency + 1))


def test_window_with_endpoint_queue_is_concurrency_plus_prefetch(host: Recorder) -> None:
    """With queues_calls True, max_concurrency + prefetch calls are in flight before the scheduler queues."""
    sched = Scheduler(prefetch=3)
    aid, ep = start_actor(sched, "A", 2, queues_calls=True)
    for i in range(10):
        host.call(sched, aid, f"m{i}")
    assert ep.methods() == [f"m{i}" for i in range(5)]
    states = [c.state for c in sched.pending_calls()]
    assert states == ["running"] * 2 + ["delivered"] * 3 + ["queued"] * 5
    finish(sched, ep, ep.calls[0])
    assert ep.methods()[-1] == "m5" and len(ep.calls) == 6


def test_delivered_calls_begin_in_the_actors_fifo_order_as_slots_free(host: Recorder) -> None:
    """A call delivered ahead is 'delivered' until a reply frees a slot; then it is running, call.started logged."""
    sched = Scheduler(prefetch=4, log_calls=True)
    aid, ep = start_actor(sched, "A", 1, queues_calls=True)
    for i in range(3):
        host.call(sched, aid, f"m{i}")
    assert [(c.method, c.state) for c in sched.pending_calls()] == [
        ("m0", "running"), ("m1", "delivered"), ("m2", "delivered")]
    with structlog.testing.capture_logs() as logs:
        finish(sched, ep, ep.calls[0])
    started = [e for e in logs if e["event"] == "call.started"]
    assert [e["method"] for e in started] == ["m1"]
    assert [(c.method, c.state) for c in sched.pending_calls()] == [("m1", "running"), ("m2", "delivered")]
    a = sched.actors[aid]
    assert a.active == 1 and [e.method for e in a.unstarted] == ["m2"]


def test_cancelling_a_delivered_call_keeps_the_running_one_and_its_slot(host: Recorder) -> None:
    """A call cancelled while waiting in the actor's FIFO leaves; the running call still holds the only slot."""
    sched = Scheduler(prefetch=4)
    aid, ep = start_actor(sched, "A", 1, queues_calls=True)
    _, second, _ = (host.call(sched, aid, f"m{i}") for i in range(3))
    sched.cancel(host, second)
    assert ep.cancels == [ep.calls[1].call_id]
    sched.reply(ep, envelope.Reply(ep.calls[1].call_id, envelope.Status.CANCELLED))  # the actor drops it from its FIFO
    assert [(c.method, c.state) for c in sched.pending_calls()] == [("m0", "running"), ("m2", "delivered")]
    finish(sched, ep, ep.calls[0])
    assert [(c.method, c.state) for c in sched.pending_calls()] == [("m2", "running")]
    finish(sched, ep, ep.calls[2])
    assert sched.actors[aid].active == 0 and not sched.actors[aid].unstarted


def test_a_reentrant_call_runs_at_once_and_its_end_frees_no_extra_slot(host: Recorder) -> None:
    """Re-entrant calls run past max_concurrency; when one ends, a waiting call still waits for a real slot."""
    sched = Scheduler(prefetch=4)
    aid, ep = start_actor(sched, "A", 1, queues_calls=True)
    host.call(sched, aid, "outer")
    outer = ep.calls[0]
    host.call(sched, aid, "waiting")
    # A calls itself within outer.
    sched.route(ep, envelope.Call(1, aid, "inner", b"", outer.call_id, token=sched.actors[aid].token))
    states = {c.method: c.state for c in sched.pending_calls()}
    assert states == {"outer": "running", "waiting": "delivered", "inner": "running"}
    finish(sched, ep, ep.calls[2])  # inner ends: outer still holds the slot
    assert {c.method: c.state for c in sched.pending_calls()} == {"outer": "running", "waiting": "delivered"}
    finish(sched, ep, outer)
    assert {c.method: c.state for c in sched.pending_calls()} == {"waiting": "running"}


def test_a_dead_actor_starts_nothing_more(host: Recorder) -> None:
    """When the endpoint goes away, delivered calls fail and the mirror of the actor's slots resets."""
    sched = Scheduler(prefetch=4)
    aid, _ = start_actor(sched, "A", 1, queues_calls=True)
    for i in range(3):
        host.call(sched, aid, f"m{i}")
    sched.detach(aid, envelope.Status.DIED, {"message": "gone"}, keep_queue=True)
    assert sched.pending_calls() == [] and [r.status for r in host.replies] == [envelope.Status.DIED] * 3
    a = sched.actors[aid]
    assert a.active == 0 and not a.unstarted


def test_out_of_order_replies_start_next_queued(sched: Scheduler, host: Recorder) -> None:
    """Whichever running call finishes first frees the slot for the oldest queued call."""
    aid, ep = start_actor(sched, "A", 2)
    for i in range(4):
        host.call(sched, aid, f"m{i}")
    finish(sched, ep, ep.calls[1])
    assert ep.methods() == ["m0", "m1", "m2"]
    assert [r.call_id for r in host.replies] == [2]


def test_calls_wait_for_attach(sched: Scheduler, host: Recorder) -> None:
    """Calls to an actor still starting are queued and delivered in order on attach."""
    a = sched.add_actor(None, "A", 1)
    host.call(sched, a.actor_id, "first")
    host.call(sched, a.actor_id, "second")
    ep = Recorder("A")
    sched.attach(a.actor_id, ep)
    assert ep.methods() == ["first"]
    finish(sched, ep, ep.calls[0])
    assert ep.methods() == ["first", "second"]


# -- attribution -------------------------------------------------------------------------


def test_caller_flags_are_set_by_scheduler(sched: Scheduler) -> None:
    """A call from an untrusted actor claiming trusted/reentrant arrives with both flags cleared."""
    _aid, ep_a = start_actor(sched, "A")
    bid, ep_b = start_actor(sched, "B")
    ep_a.call(sched, bid, trusted=True, reentrant=True)
    [call] = ep_b.calls
    assert call.trusted is False and call.reentrant is False


def test_reply_trust_follows_the_callee(sched: Scheduler, host: Recorder) -> None:
    """A reply is marked trusted only when the callee endpoint is trusted, whatever the reply claims."""
    aid, ep_a = start_actor(sched, "A")
    resident = sched.add_actor("models", "models", 1)
    sched.attach(resident.actor_id, host)  # a host-resident named actor
    ep_a.call(sched, resident.actor_id)
    [to_host] = host.calls
    sched.reply(host, envelope.Reply(to_host.call_id, OK, b"from host"))
    assert ep_a.replies[0].trusted is True
    host.call(sched, aid)
    sched.reply(ep_a, envelope.Reply(ep_a.calls[0].call_id, OK, b"from actor", trusted=True))
    assert host.replies[0].trusted is False


def test_reply_from_wrong_endpoint_is_dropped(sched: Scheduler, host: Recorder) -> None:
    """A reply for a call delivered to A but sent by B is ignored; A's own reply still completes it."""
    aid, ep_a = start_actor(sched, "A")
    _bid, ep_b = start_actor(sched, "B")
    host.call(sched, aid)
    [call] = ep_a.calls
    sched.reply(ep_b, envelope.Reply(call.call_id, OK, b"forged"))
    assert host.replies == []
    assert [c.call_id for c in sched.pending_calls()] == [call.call_id]
    sched.reply(ep_a, envelope.Reply(call.call_id, OK, b"real"))
    assert [r.payload for r in host.replies] == [b"real"]


def test_dropped_reply_fds_are_closed(sched: Scheduler, host: Recorder) -> None:
    """fds attached to a reply the scheduler drops (wrong endpoint, unknown call) are closed."""
    aid, ep_a = start_actor(sched, "A")
    _bid, ep_b = start_actor(sched, "B")
    host.call(sched, aid)
    r1, w1 = os.pipe()
    r2, w2 = os.pipe()
    try:
        sched.reply(ep_b, envelope.Reply(ep_a.calls[0].call_id, OK, b"", fds=(r1,)))
        sched.reply(ep_b, envelope.Reply(9999, OK, b"", fds=(r2,)))
        for w in (w1, w2):
            with pytest.raises(BrokenPipeError):
                os.write(w, b"x")
    finally:
        os.close(w1)
        os.close(w2)


def test_reply_for_unknown_call_is_ignored(sched: Scheduler, host: Recorder) -> None:
    """A reply naming a call id that is not in flight changes nothing."""
    aid, ep_a = start_actor(sched, "A")
    host.call(sched, aid)
    sched.reply(ep_a, envelope.Reply(12345, OK, b""))
    assert host.replies == [] and len(sched.pending_calls()) == 1


def test_second_reply_is_ignored(sched: Scheduler, host: Recorder) -> None:
    """Once a call has its reply, another reply for the same id is dropped."""
    aid, ep_a = start_actor(sched, "A")
    host.call(sched, aid)
    [call] = ep_a.calls
    finish(sched, ep_a, call, b"one")
    finish(sched, ep_a, call, b"two")
    assert [r.payload for r in host.replies] == [b"one"]


# -- re-entrancy -------------------------------------------------------------------------


def test_reentrant_chain_is_admitted_past_the_limit(sched: Scheduler, host: Recorder) -> None:
    """host -> A -> M -> A: the nested call to A runs at once (flagged reentrant) though A is at max_concurrency=1."""
    aid, ep_a = start_actor(sched, "A", 1)
    mid, ep_m = start_actor(sched, "M", 1)
    host.call(sched, aid, "outer")
    host.call(sched, aid, "queued")  # unrelated: must keep waiting
    [outer] = ep_a.calls
    assert outer.reentrant is False
    ep_a.call(sched, mid, "middle", parent=outer.call_id)
    [middle] = ep_m.calls
    assert middle.parent_call_id == outer.call_id and middle.reentrant is False
    ep_m.call(sched, aid, "inner", parent=middle.call_id)
    assert ep_a.methods() == ["outer", "inner"]
    inner = ep_a.calls[1]
    assert inner.reentrant is True and inner.parent_call_id == middle.call_id
    info = {c.method: c for c in sched.pending_calls()}
    assert info["inner"].parent_call_id == middle.call_id and info["queued"].state == "queued"
    # Unwinding the chain: only when the outer call finishes does the queued one start.
    finish(sched, ep_a, inner)
    assert ep_a.methods() == ["outer", "inner"]
    assert ep_m.replies[0].status is OK
    finish(sched, ep_m, middle)
    finish(sched, ep_a, outer)
    assert ep_a.methods() == ["outer", "inner", "queued"]
    assert ep_a.calls[2].reentrant is False


def test_reentrant_call_is_flagged_within_the_prefetch_window(sched: Scheduler, host: Recorder) -> None:
    """An actor that queues locally gets a nested call back flagged reentrant, so its FIFO can't hold it."""
    aid, ep_a = start_actor(sched, "A", 1, queues_calls=True)
    mid, ep_m = start_actor(sched, "M", 1)
    host.call(sched, aid, "outer")
    [outer] = ep_a.calls
    ep_a.call(sched, mid, "middle", parent=outer.call_id)
    ep_m.call(sched, aid, "inner", parent=ep_m.calls[0].call_id)
    host.call(sched, aid, "plain")  # within the window too, but not re-entrant
    assert [(c.method, c.reentrant) for c in ep_a.calls] == [("outer", False), ("inner", True), ("plain", False)]


def test_sibling_calls_of_one_root_are_not_reentrant(sched: Scheduler, host: Recorder) -> None:
    """A -> B several times from one call: only the first runs on B (max_concurrency=1); siblings queue."""
    aid, ep_a = start_actor(sched, "A", 1)
    bid, ep_b = start_actor(sched, "B", 1)
    host.call(sched, aid, "outer")
    [outer] = ep_a.calls
    for _ in range(3):
        ep_a.call(sched, bid, "work", parent=outer.call_id)
    assert ep_b.methods() == ["work"]
    states = sorted(c.state for c in sched.pending_calls() if c.method == "work")
    assert states == ["queued", "queued", "running"]
    finish(sched, ep_b, ep_b.calls[0])
    assert ep_b.methods() == ["work", "work"] and not any(c.reentrant for c in ep_b.calls)


def test_direct_self_call_is_reentrant(sched: Scheduler) -> None:
    """An actor calling itself from within a call is admitted past max_concurrency=1."""
    aid, ep_a = start_actor(sched, "A", 1)
    host = Recorder("host", trusted=True)
    host.call(sched, aid, "outer")
    ep_a.call(sched, aid, "self", parent=ep_a.calls[0].call_id)
    assert ep_a.methods() == ["outer", "self"] and ep_a.calls[1].reentrant is True


def test_forged_parent_is_ignored(sched: Scheduler, host: Recorder) -> None:
    """A parent_call_id naming a call the caller is not serving neither joins the chain nor is recorded."""
    aid, ep_a = start_actor(sched, "A", 1)
    _bid, ep_b = start_actor(sched, "B", 1)
    host.call(sched, aid, "outer")
    [outer] = ep_a.calls
    ep_b.call(sched, aid, "sneaky", parent=outer.call_id)  # B is not serving `outer`
    assert ep_a.methods() == ["outer"]
    [sneaky] = [c for c in sched.pending_calls() if c.method == "sneaky"]
    assert sneaky.state == "queued" and sneaky.parent_call_id is None
    finish(sched, ep_a, outer)
    assert ep_a.calls[1].method == "sneaky"
    assert ep_a.calls[1].parent_call_id is None and ep_a.calls[1].reentrant is False


def test_parent_that_is_only_queued_is_ignored(sched: Scheduler, host: Recorder) -> None:
    """Naming as parent a call that was never delivered (still queued) does not join its chain."""
    aid, ep_a = start_actor(sched, "A", 1)
    host.call(sched, aid, "outer")
    host.call(sched, aid, "queued")
    queued_gid = next(c.call_id for c in sched.pending_calls() if c.method == "queued")
    ep_a.call(sched, aid, "nested", parent=queued_gid)
    assert ep_a.methods() == ["outer"]


def test_finished_chain_no_longer_admits(sched: Scheduler, host: Recorder) -> None:
    """After a chain's calls on A have finished, a late call naming it as parent queues normally."""
    aid, ep_a = start_actor(sched, "A", 1)
    mid, ep_m = start_actor(sched, "M", 1)
    host.call(sched, aid, "outer")
    outer = ep_a.calls[0]
    ep_a.call(sched, mid, "middle", parent=outer.call_id)
    middle = ep_m.calls[0]
    host.call(sched, aid, "blocker-1")
    finish(sched, ep_a, outer)  # A moves on to blocker-1 while M is still serving `middle`
    assert ep_a.methods() == ["outer", "blocker-1"]
    ep_m.call(sched, aid, "late", parent=middle.call_id)
    assert ep_a.methods() == ["outer", "blocker-1"]


# -- cancellation ------------------------------------------------------------------------


def test_cancel_queued_call(sched: Scheduler, host: Recorder) -> None:
    """Cancelling a queued call removes it: never delivered, no cancel sent, no reply to the caller."""
    aid, ep_a = start_actor(sched, "A", 1)
    host.call(sched, aid, "running")
    queued = host.call(sched, aid, "queued")
    host.call(sched, aid, "after")
    sched.cancel(host, queued)
    assert [c.method for c in sched.pending_calls()] == ["running", "after"]
    finish(sched, ep_a, ep_a.calls[0])
    assert ep_a.methods() == ["running", "after"]
    assert ep_a.cancels == []
    assert [r.call_id for r in host.replies] == [1]


def test_cancel_running_call(sched: Scheduler, host: Recorder) -> None:
    """Cancelling a running call tells the callee and keeps its slot until the callee acknowledges."""
    aid, ep_a = start_actor(sched, "A", 1)
    local = host.call(sched, aid, "running")
    host.call(sched, aid, "next")
    [running] = ep_a.calls
    sched.cancel(host, local)
    assert ep_a.cancels == [running.call_id]
    assert {c.method: c.state for c in sched.pending_calls()} == {"running": "cancelling", "next": "queued"}
    sched.cancel(host, local)  # a second cancel is a no-op
    assert ep_a.cancels == [running.call_id]
    finish(sched, ep_a, running, status=envelope.Status.CANCELLED)
    assert host.replies == []  # the caller gave up on it
    assert ep_a.methods() == ["running", "next"]


def test_cancel_unknown_local_id_is_harmless(sched: Scheduler, host: Recorder) -> None:
    """Cancelling a call id the caller never used changes nothing."""
    aid, ep_a = start_actor(sched, "A", 1)
    host.call(sched, aid)
    sched.cancel(host, 777)
    assert ep_a.cancels == [] and len(sched.pending_calls()) == 1


def test_cancel_only_affects_callers_own_calls(sched: Scheduler, host: Recorder) -> None:
    """An endpoint cancelling by a local id cancels its own call with that id, never another caller's."""
    aid, ep_a = start_actor(sched, "A", 1)
    _bid, ep_b = start_actor(sched, "B", 1)
    host.call(sched, aid, "host-call", local=1)
    sched.cancel(ep_b, 1)
    assert ep_a.cancels == []
    assert [c.state for c in sched.pending_calls()] == ["running"]


# -- detach, death, forget_caller ----------------------------------------------------------


@pytest.mark.parametrize("status", [envelope.Status.DIED, envelope.Status.STOPPED])
def test_detach_fails_running_and_keeps_queue(sched: Scheduler, host: Recorder, status: envelope.Status) -> None:
    """detach(keep_queue=True) fails running calls with the status; queued calls run on the next attach."""
    aid, _ep_a = start_actor(sched, "A", 1)
    host.call(sched, aid, "running")
    host.call(sched, aid, "queued")
    sched.detach(aid, status, {"pid": 123}, keep_queue=True)
    assert host.replies == [envelope.Reply(1, status, b"", {"pid": 123})]
    assert [(c.method, c.state) for c in sched.pending_calls()] == [("queued", "queued")]
    host.call(sched, aid, "while-restarting")
    new_ep = Recorder("A'")
    sched.attach(aid, new_ep)
    assert new_ep.methods() == ["queued"]
    finish(sched, new_ep, new_ep.calls[0])
    assert new_ep.methods() == ["queued", "while-restarting"]


def test_detach_without_queue_fails_everything(sched: Scheduler, host: Recorder) -> None:
    """detach(keep_queue=False) fails running and queued calls, and every later call, with the status."""
    aid, ep_a = start_actor(sched, "A", 1)
    host.call(sched, aid, "running")
    host.call(sched, aid, "queued")
    detail = {"message": "stopped"}
    sched.detach(aid, envelope.Status.STOPPED, detail, keep_queue=False)
    assert [(r.call_id, r.status, r.detail) for r in host.replies] == [
        (1, envelope.Status.STOPPED, detail), (2, envelope.Status.STOPPED, detail)]
    assert sched.pending_calls() == []
    host.call(sched, aid, "later")
    last = host.replies[-1]
    assert (last.call_id, last.status, last.payload, last.detail) == (3, envelope.Status.STOPPED, b"", detail)
    assert ep_a.methods() == ["running"]


def test_dead_endpoint_replies_are_ignored(sched: Scheduler, host: Recorder) -> None:
    """After detach, a late reply from the old endpoint does not resolve anything."""
    aid, ep_a = start_actor(sched, "A", 1)
    host.call(sched, aid)
    call = ep_a.calls[0]
    sched.detach(aid, envelope.Status.DIED, {}, keep_queue=True)
    finish(sched, ep_a, call, b"late")
    assert [r.status for r in host.replies] == [envelope.Status.DIED]


def test_detach_cancels_calls_the_dead_actor_made(sched: Scheduler, host: Recorder) -> None:
    """When A dies, calls A was waiting on are cancelled at their callee and their replies dropped."""
    aid, ep_a = start_actor(sched, "A", 1)
    bid, ep_b = start_actor(sched, "B", 1)
    host.call(sched, aid, "outer")
    ep_a.call(sched, bid, "running-on-b", parent=ep_a.calls[0].call_id)
    ep_a.call(sched, bid, "queued-on-b")
    sched.detach(aid, envelope.Status.DIED, {}, keep_queue=True)
    assert ep_b.cancels == [ep_b.calls[0].call_id]
    assert [c.method for c in sched.pending_calls()] == ["running-on-b"]
    finish(sched, ep_b, ep_b.calls[0], status=envelope.Status.CANCELLED)
    assert ep_a.replies == []
    assert ep_b.methods() == ["running-on-b"]  # the queued one was dropped, never delivered
    assert sched.pending_calls() == []


def test_forget_caller(sched: Scheduler, host: Recorder) -> None:
    """forget_caller cancels what the endpoint was waiting on and never delivers replies to it."""
    aid, ep_a = start_actor(sched, "A", 1)
    client = Recorder("client")
    client.call(sched, aid, "running")
    client.call(sched, aid, "queued")
    host.call(sched, aid, "host-queued")
    sched.forget_caller(client)
    assert client.alive is False and client.outgoing == {}
    assert ep_a.cancels == [ep_a.calls[0].call_id]
    assert [c.method for c in sched.pending_calls()] == ["running", "host-queued"]
    finish(sched, ep_a, ep_a.calls[0])
    assert client.replies == []
    assert ep_a.methods() == ["running", "host-queued"]


# -- limits on what a caller may have in flight ---------------------------------------------


def test_reused_live_call_id_is_refused(sched: Scheduler, host: Recorder) -> None:
    """Reusing the local id of a call still in flight gets the new call REFUSED; the first is unaffected."""
    aid, ep_a = start_actor(sched, "A", 2)
    client = Recorder("client")
    client.call(sched, aid, "first", local=5)
    client.call(sched, aid, "again", local=5)
    assert ep_a.methods() == ["first"]
    [refused] = client.replies
    assert (refused.call_id, refused.status) == (5, envelope.Status.REFUSED)
    assert [c.method for c in sched.pending_calls()] == ["first"]
    finish(sched, ep_a, ep_a.calls[0], b"first result")
    assert [(r.call_id, r.status, r.payload) for r in client.replies[1:]] == [(5, OK, b"first result")]


def test_untrusted_caller_in_flight_limit() -> None:
    """An untrusted caller past max_outgoing calls in flight is refused; the trusted host is not limited."""
    sched = Scheduler(prefetch=0, max_outgoing=3)
    aid, ep_a = start_actor(sched, "A", 1)
    client = Recorder("client")
    host = Recorder("host", trusted=True)
    for _ in range(4):
        client.call(sched, aid, "c")
    assert [r.status for r in client.replies] == [envelope.Status.REFUSED]
    assert client.replies[0].call_id == 4
    assert len(sched.pending_calls()) == 3
    for _ in range(5):
        host.call(sched, aid, "h")
    assert host.replies == [] and len(sched.pending_calls()) == 8
    finish(sched, ep_a, ep_a.calls[0])  # one of the client's calls completes: room for one more
    client.call(sched, aid, "c")
    assert [r.status for r in client.replies] == [envelope.Status.REFUSED, OK]


def test_refused_and_unroutable_calls_close_their_fds(sched: Scheduler) -> None:
    """fds sent with a call that is refused or has no target are closed by the scheduler."""
    aid, _ep_a = start_actor(sched, "A", 1)
    client = Recorder("client")
    client.call(sched, aid, "first", local=1)
    r1, w1 = os.pipe()
    r2, w2 = os.pipe()
    try:
        sched.route(client, envelope.Call(1, aid, "dup-id", b"", token=sched.actors[aid].token, fds=(r1,)))
        sched.route(client, envelope.Call(2, 999, "nobody", b"", fds=(r2,)))
        assert [r.status for r in client.replies] == [envelope.Status.REFUSED, envelope.Status.NO_ACTOR]
        for w in (w1, w2):
            with pytest.raises(BrokenPipeError):
                os.write(w, b"x")
    finally:
        os.close(w1)
        os.close(w2)


# -- unknown target, inspection -----------------------------------------------------------


def test_unknown_target_gives_no_actor(sched: Scheduler, host: Recorder) -> None:
    """A call to an actor id that does not exist is answered at once with NO_ACTOR and leaves no entry."""
    local = host.call(sched, 999, "anything")
    [reply] = host.replies
    assert (reply.call_id, reply.status, reply.payload, reply.detail) == (
        local, envelope.Status.NO_ACTOR, b"", {"actor_id": 999})
    assert sched.pending_calls() == []


@pytest.mark.parametrize("token", [b"", b"\x00" * 16, b"wrong"], ids=["none", "zeros", "short"])
def test_an_actor_call_without_the_targets_token_is_answered_as_an_unknown_id(sched: Scheduler,
                                                                              token: bytes) -> None:
    """An untrusted call quoting a wrong or no token is never delivered and gets the reply a missing id gets."""
    aid, ep = start_actor(sched, "A")
    evil = Recorder("evil")
    evil.call(sched, aid, "steal", token=token)
    evil.call(sched, 10_000, "steal", token=token)
    wrong, missing = evil.replies
    assert ep.calls == [] and sched.pending_calls() == [] and evil.outgoing == {}
    assert (wrong.status, missing.status) == (envelope.Status.NO_ACTOR, envelope.Status.NO_ACTOR)
    assert wrong.detail == {"actor_id": aid} and missing.detail == {"actor_id": 10_000}  # the same, but the id
    evil.call(sched, aid, "fine")  # the token, as a handle carries it
    assert ep.methods() == ["fine"]
    assert ep.calls[0].token == b""  # the callee is never shown the token


def test_the_host_calls_without_a_token(sched: Scheduler, host: Recorder) -> None:
    """A trusted endpoint (the host) is not asked for a token."""
    aid, ep = start_actor(sched, "A")
    host.call(sched, aid, "m", token=b"")
    assert ep.methods() == ["m"]


def test_tokens_are_random_per_actor_kept_across_restarts_and_named_in_the_table(sched: Scheduler) -> None:
    """Each actor gets its own 16 random bytes, kept while it restarts; name_table pairs names with id and token."""
    aid, ep = start_actor(sched, "A", name="svc")
    other = sched.add_actor(None, "B", 1)
    token = sched.actors[aid].token
    assert len(token) == 16 and token != other.token
    sched.detach(aid, envelope.Status.DIED, {}, keep_queue=True)
    sched.attach(aid, ep)
    assert sched.actors[aid].token == token
    assert sched.name_table() == {"svc": (aid, token)}


def test_removed_actor_gives_no_actor(sched: Scheduler, host: Recorder) -> None:
    """After remove_actor its id and name are gone: calls get NO_ACTOR and the name can be reused."""
    aid, _ = start_actor(sched, "A", name="svc")
    sched.remove_actor(aid)
    host.call(sched, aid)
    assert host.replies[0].status is envelope.Status.NO_ACTOR
    assert "svc" not in sched.names
    sched.add_actor("svc", "svc2", 1)


def test_duplicate_name_is_refused(sched: Scheduler) -> None:
    """add_actor with a name already registered raises KeyError and registers nothing."""
    sched.add_actor("svc", "svc", 1)
    n = len(sched.actors)
    with pytest.raises(KeyError):
        sched.add_actor("svc", "other", 1)
    assert len(sched.actors) == n


def test_pending_calls_contents(sched: Scheduler, host: Recorder) -> None:
    """pending_calls() lists id, actor label, method, caller label, parent, state and age of each call."""
    aid, ep_a = start_actor(sched, "A-label", 1)
    mid, ep_m = start_actor(sched, "M-label", 1)
    host.call(sched, aid, "outer")
    host.call(sched, aid, "waiting")
    outer = ep_a.calls[0]
    ep_a.call(sched, mid, "nested", parent=outer.call_id)
    infos = sorted(sched.pending_calls(), key=lambda c: c.call_id)
    got = [(c.actor, c.method, c.caller, c.parent_call_id, c.state) for c in infos]
    assert got == [
        ("A-label", "outer", "host", None, "running"),
        ("A-label", "waiting", "host", None, "queued"),
        ("M-label", "nested", "A-label", outer.call_id, "running"),
    ]
    assert infos[0].call_id == outer.call_id and infos[2].call_id == ep_m.calls[0].call_id
    assert len({c.call_id for c in infos}) == 3
    assert all(c.age_s >= 0 for c in infos)


def test_global_ids_are_unique_across_callers(sched: Scheduler) -> None:
    """Two callers using the same local id get distinct global ids and their own replies."""
    aid, ep_a = start_actor(sched, "A", 2)
    c1, c2 = Recorder("c1"), Recorder("c2")
    c1.call(sched, aid, "from-c1", local=1)
    c2.call(sched, aid, "from-c2", local=1)
    first, second = ep_a.calls
    assert first.call_id != second.call_id
    finish(sched, ep_a, second, b"for c2")
    finish(sched, ep_a, first, b"for c1")
    assert [r.payload for r in c1.replies] == [b"for c1"]
    assert [r.payload for r in c2.replies] == [b"for c2"]


def test_detaching_one_of_the_actors_an_endpoint_serves_keeps_the_endpoint_alive(host: Recorder) -> None:
    """The host's endpoint serves every host-resident actor: unregistering one must not mark it gone,
    or the host's later calls would never get their replies (rt.unregister then hung every call)."""
    sched = Scheduler()
    shared = Recorder("host-residents", trusted=True)
    r1, r2 = sched.add_actor("r1", "r1", 1), sched.add_actor("r2", "r2", 1)
    sched.attach(r1.actor_id, shared)
    sched.attach(r2.actor_id, shared)
    aid, ep = start_actor(sched, "A")
    shared.call(sched, aid, "m")
    sched.detach(r1.actor_id, envelope.Status.STOPPED, {"message": "unregistered"}, keep_queue=False)
    assert shared.alive and ep.cancels == []
    finish(sched, ep, ep.calls[0])
    assert [r.status for r in shared.replies] == [OK]
    sched.detach(r2.actor_id, envelope.Status.STOPPED, {"message": "unregistered"}, keep_queue=False)
    assert not shared.alive  # the last actor it served is gone: now it is
