"""The router and a connection endpoint never hand an actor a frame it would refuse.

A frame over an actor's limit makes it hang up (it dies with every call it holds),
so the host checks what it sends. These tests drive the real Scheduler and
ConnectionEndpoint over real socketpairs and look at the bytes the actor gets:

- a call whose method name (not its payload) fills the frame is refused;
- a call whose Future arguments (resolved results, the same one twice) fill it is refused;
- the same Future passed many times gives the callee distinct descriptors;
- many calls refused on delivery, one after another, don't recurse through the router.
"""

from __future__ import annotations

import os
import socket

import pytest

from scheduler import envelope
from scheduler._actor_endpoint import ConnectionEndpoint
from scheduler._connection import Connection
from scheduler._endpoint import Endpoint
from scheduler._framing import FrameDecoder
from scheduler._router import Scheduler

LIMIT = 64 * 1024
_open: list[socket.socket] = []


@pytest.fixture(autouse=True)
def _close_sockets():
    yield
    while _open:
        _open.pop().close()


def endpoint(s: Scheduler, label: str) -> tuple[ConnectionEndpoint, socket.socket]:
    a, b = socket.socketpair()
    _open.extend((a, b))
    for x in (a, b):
        x.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        x.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    ep = ConnectionEndpoint(s, lambda f: Connection(a, f, max_frame=LIMIT), lambda m: None, label)
    return ep, b


def frames(peer: socket.socket) -> list[int]:
    """Sizes of the frames waiting on ``peer`` (the actor's side), checked against its limit."""
    peer.setblocking(False)
    data = b""
    try:
        while True:
            data += peer.recv(1 << 20)
    except BlockingIOError:
        pass
    return [len(body) for body, _ in FrameDecoder(LIMIT).feed(data)]


class Recorder(Endpoint):
    def __init__(self, label: str) -> None:
        super().__init__()
        self.label = label
        self.trusted = False
        self.queues_calls = True
        self.calls: list[envelope.Call] = []
        self.replies: list[envelope.Reply] = []

    def deliver_call(self, call: envelope.Call) -> None:
        self.calls.append(call)

    def deliver_reply(self, reply: envelope.Reply) -> None:
        self.replies.append(reply)

    def deliver_cancel(self, call_id: int) -> None:
        pass


def test_a_long_method_name_filling_the_frame_is_refused_not_delivered():
    s = Scheduler()
    for _ in range(70_000):  # global ids past 16 bits take more bytes than the caller's
        next(s._ids)
    caller = Recorder("evil")
    victim, peer = endpoint(s, "victim")
    a = s.add_actor(None, "victim", 1)
    s.attach(a.actor_id, victim)
    n = LIMIT - 40
    while len(envelope.encode(envelope.Call(1, a.actor_id, "m" * (n + 1), b""))) <= LIMIT:
        n += 1
    s.route(caller, envelope.Call(1, a.actor_id, "m" * n, b"", token=a.token))
    assert frames(peer) == []
    (reply,) = caller.replies
    assert reply.status == envelope.Status.REFUSED and "frame limit" in reply.detail["message"]


def test_future_arguments_filling_the_frame_are_refused_not_delivered():
    s = Scheduler()
    caller = Recorder("evil")
    victim, peer = endpoint(s, "victim")
    a = s.add_actor(None, "victim", 1)
    s.attach(a.actor_id, victim)
    s.route(caller, envelope.Call(1, a.actor_id, "make", b"", token=a.token))
    s.route(caller, envelope.Call(2, a.actor_id, "size", b"", deps=(1, 1), token=a.token))  # one 40 KiB result, twice
    s.reply(victim, envelope.Reply(caller.outgoing[1], envelope.Status.OK, b"z" * (40 * 1024)))
    assert frames(peer) == [len(envelope.encode(envelope.Call(1, a.actor_id, "make", b"")))]  # only the first call
    refused = [r for r in caller.replies if r.call_id == 2]
    assert refused and refused[0].status == envelope.Status.REFUSED


def test_one_future_passed_many_times_gives_distinct_descriptors():
    s = Scheduler()
    caller, victim = Recorder("evil"), Recorder("victim")
    a = s.add_actor(None, "victim", 1)
    s.attach(a.actor_id, victim)
    s.route(caller, envelope.Call(1, a.actor_id, "make", b"", token=a.token))
    s.route(caller, envelope.Call(2, a.actor_id, "use", b"", deps=(1,) * 64, token=a.token))
    r, w = os.pipe()
    os.close(w)
    s.reply(victim, envelope.Reply(caller.outgoing[1], envelope.Status.OK, b"r", fds=(r,)))
    s.reply(victim, envelope.Reply(victim.calls[0].call_id, envelope.Status.OK, b""))
    call = victim.calls[-1]
    assert len(call.resolved) == 64 and len(call.fds) == 64 and len(set(call.fds)) == 64
    for fd in call.fds:
        os.close(fd)


def test_many_calls_refused_on_delivery_do_not_recurse():
    s = Scheduler()
    caller = Recorder("host")
    caller.trusted = True
    victim, peer = endpoint(s, "victim")
    a = s.add_actor(None, "victim", 1)
    s.attach(a.actor_id, victim)
    small = [s.route(caller, envelope.Call(i, a.actor_id, "nap", b"")) for i in range(1, 66)]
    for i in range(66, 66 + 2000):  # queued behind the window; each is refused when its turn comes
        s.route(caller, envelope.Call(i, a.actor_id, "size", b"x" * (70 * 1024)))
    for gid in small:  # the actor answers: each reply lets the queue move
        s.reply(victim, envelope.Reply(gid, envelope.Status.OK, b""))
    statuses = [r.status for r in caller.replies]
    assert statuses.count(envelope.Status.OK) == 65 and statuses.count(envelope.Status.REFUSED) == 2000
    assert s.calls == {} and max(frames(peer)) < 100
