"""Admission inside an actor process (actorbox/_calls.py, _admission.py), driven message by
message in this process, so the orders that are rare on a real socket are exact here.

A cancel that reaches a call before it starts means it never starts: not when the call
and its cancel come in one read (the call's start is deferred to the end of the read),
and not while a queued call is handed from a worker thread to the loop thread (it is
then in neither the queue nor the running calls, and a cancel used to find nothing).
Real actor processes cover the rest (tests/actorbox/test_inline_calls.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import socket

import pytest

from actorbox._actor_server import ActorServer
from actorbox._job import Job
from scheduler import envelope


class Work:
    def __init__(self):
        self.ran = []

    def work(self, i):
        self.ran.append(i)
        return i

    async def awork(self, i):
        self.ran.append(i)
        return i


def _actor(obj, socks, *, inline):
    """An ActorServer on a socketpair, with ``obj`` as its instance; what it sends is kept."""
    proc = ActorServer(socks[0])
    sent = []
    proc.outbox.send = sent.append
    proc.calls.instance = obj
    proc.inline.ok = inline
    return proc, sent


@contextlib.contextmanager
def _socketpair():
    a, b = socket.socketpair()
    with a, b:
        yield a, b


def _call(proc, call_id, method, i):
    payload, fds = proc.codec.encode_call((i,), {}, [], ipc=False)
    assert fds == ()
    return envelope.Call(call_id, 0, method, payload)


def _statuses(sent):
    return {m.call_id: m.status for m in sent if type(m) is envelope.Reply}


def test_a_call_and_its_cancel_in_one_read_never_start():
    async def main():
        obj = Work()
        proc, sent = _actor(obj, socks, inline=True)
        proc.calls.start(_call(proc, 1, "work", 7))  # admitted; starts once the read ends
        proc.calls.cancel(1)
        await asyncio.sleep(0.05)
        assert obj.ran == [], "a call cancelled before it started ran"
        assert _statuses(sent) == {1: envelope.Status.CANCELLED}
        assert proc.calls.admission.active == 0 and not proc.calls.runner.running

    with _socketpair() as socks:
        asyncio.run(main())


@pytest.mark.parametrize("method", ["work", "awork"])
def test_a_queued_call_cancelled_on_its_way_to_the_loop_never_starts(method):
    """The queued call's slot is freed (next_in_slot(), on the worker that ran the call before it),
    the cancel comes, then the loop thread gets to launch it."""
    async def main():
        obj = Work()
        proc, sent = _actor(obj, socks, inline=method == "work")
        call = _call(proc, 2, method, 8)
        proc.calls.admission.active = 1  # call 1 runs; call 2 waits for its slot
        job = Job(call, getattr(obj, method), method == "awork", contextvars.copy_context())
        proc.calls.admission.waiting.append(job)
        nxt = proc.calls.next_in_slot()  # call 1 ended: call 2 takes its slot
        assert nxt is not None and nxt.call.call_id == 2
        proc.calls.cancel(2)
        proc.calls.launch(nxt)
        await asyncio.sleep(0.05)
        assert obj.ran == [], "a call cancelled before it started ran"
        assert _statuses(sent) == {2: envelope.Status.CANCELLED}
        assert not proc.calls.runner.running

    with _socketpair() as socks:
        asyncio.run(main())
