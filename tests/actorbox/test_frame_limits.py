"""Frames over the size limit fail one call with a clear error; the actor lives on.

``Runtime(max_frame_size=)`` is the largest frame either side accepts. A frame over
it used to reach the peer, which refused it and dropped the connection: an actor
sent a 70 MB bytes argument died with every call it held. Now the side that would
send it fails that one message instead, with an error that says what to do:

- host -> actor arguments (and replies to an actor's own calls): ``CallRefusedError``;
- an actor's result: ``SerializationError`` raised to the caller;
- an actor's own call with oversized arguments: ``SerializationError`` in the actor;
- the actor learns the Runtime's limit, so a raised limit lets big frames through.
"""

from __future__ import annotations

import anyio
import pytest

import actorbox

pytestmark = pytest.mark.anyio

MiB = 1 << 20
LIMIT = 1 * MiB
CALL_TIMEOUT = 30.0


@actorbox.actor
class Sized:
    def size(self, b):
        return len(b)

    def make(self, n):
        return b"x" * n

    def pid(self):
        import os

        return os.getpid()

    def call_sink(self, method, n):
        """Calls the host-resident 'sink' (size: with n bytes made here; make: asking for n
        bytes); returns its result or the error's type and text."""
        arg = b"b" * n if method == "size" else n
        try:
            return getattr(actorbox.get_actor("sink"), method)(arg).result(timeout=CALL_TIMEOUT)
        except actorbox.ActorboxError as exc:
            return [type(exc).__name__, str(exc)]


    def count(self, tensors):
        return len(tensors)

    def make_tensors(self, n):
        import torch

        return [torch.full((4,), i) for i in range(n)]

    def send_tensors(self, n):
        """Calls the host-resident 'sink' with n tensors; its result or the error's type and text."""
        import torch

        try:
            return actorbox.get_actor("sink").count([torch.zeros(4) for _ in range(n)]).result(timeout=CALL_TIMEOUT)
        except actorbox.ActorboxError as exc:
            return [type(exc).__name__, str(exc)]


class Sink:
    def size(self, b):
        return len(b)

    def count(self, tensors):
        return len(tensors)

    def make_tensors(self, n):
        import torch

        return [torch.full((4,), i) for i in range(n)]

    def make(self, n):
        return b"y" * n


async def call(fut):
    with anyio.fail_after(CALL_TIMEOUT):
        return await fut


async def test_an_argument_over_the_limit_is_refused_and_the_actor_lives_on():
    async with actorbox.Runtime(max_frame_size=LIMIT) as rt:
        h = await rt.start(Sized)
        pid = await call(h.pid())
        assert await call(h.size(b"a" * (LIMIT - 8192))) == LIMIT - 8192
        with pytest.raises(actorbox.CallRefusedError) as ei:
            await call(h.size(b"a" * (LIMIT + 1)))
        msg = str(ei.value)
        assert f"over the {LIMIT}-byte frame limit" in msg
        assert "shared memory" in msg and "max_frame_size" in msg
        assert await call(h.pid()) == pid, "the actor was restarted or replaced"
        assert rt.pending_calls() == []


async def test_a_result_over_the_limit_fails_that_call_only():
    async with actorbox.Runtime(max_frame_size=LIMIT) as rt:
        h = await rt.start(Sized)
        pid = await call(h.pid())
        with pytest.raises(actorbox.SerializationError) as ei:
            await call(h.make(LIMIT + 1))
        msg = str(ei.value)
        assert "the result encodes to" in msg and f"frame limit of {LIMIT} bytes" in msg
        assert "max_frame_size" in msg
        assert len(await call(h.make(1000))) == 1000
        assert await call(h.pid()) == pid


async def test_an_actors_own_call_over_the_limit_fails_in_the_actor():
    async with actorbox.Runtime(max_frame_size=LIMIT) as rt:
        rt.register("sink", Sink())
        h = await rt.start(Sized)
        pid = await call(h.pid())
        kind, msg = await call(h.call_sink("size", LIMIT + 1))
        assert kind == "SerializationError" and "a call encodes to" in msg
        assert await call(h.call_sink("size", 100)) == 100  # its calls still work
        assert await call(h.pid()) == pid


async def test_a_reply_to_an_actor_over_the_limit_is_refused():
    async with actorbox.Runtime(max_frame_size=LIMIT) as rt:
        rt.register("sink", Sink())
        h = await rt.start(Sized)
        pid = await call(h.pid())
        kind, msg = await call(h.call_sink("make", LIMIT + 1))
        assert kind == "CallRefusedError" and "its result encode" in msg and "max_frame_size" in msg
        assert await call(h.call_sink("make", 10)) == b"y" * 10
        assert await call(h.pid()) == pid


async def test_more_tensors_than_one_message_carries_fail_that_call_alone_every_way():
    """Each tensor or array travels as a descriptor, and a message carries at most 64: a call
    with 65 killed the actor that received it (the frame was refused, with every call it
    held); past 253 the sender failed with a raw OSError. Now the call fails, with a remedy."""
    import torch

    async with actorbox.Runtime() as rt:
        rt.register("sink", Sink())
        h = await rt.start(Sized)
        pid = await call(h.pid())
        assert await call(h.count([torch.zeros(4) for _ in range(64)])) == 64
        for n in (65, 300):
            with pytest.raises(actorbox.CallRefusedError, match=rf"hold {n} tensors or arrays.*torch\.stack"):
                await call(h.count([torch.zeros(4) for _ in range(n)]))
        with pytest.raises(actorbox.SerializationError, match=r"the result holds 65 tensors"):
            await call(h.make_tensors(65))
        kind, msg = await call(h.send_tensors(65))
        assert kind == "SerializationError" and "arguments hold 65 tensors" in msg
        kind, msg = await call(h.call_sink("make_tensors", 65))
        assert kind == "CallRefusedError" and "its result holds 65 tensors" in msg
        assert len(await call(h.make_tensors(64))) == 64
        assert await call(h.pid()) == pid, "the actor was killed"
        assert rt.pending_calls() == []


@pytest.mark.slow
async def test_a_raised_limit_reaches_the_actor():
    """Past the default 64 MiB: with max_frame_size raised, 70 MB goes both ways."""
    n = 70 * 10**6
    async with actorbox.Runtime(max_frame_size=80 * MiB) as rt:
        h = await rt.start(Sized)
        assert await call(h.size(b"c" * n)) == n
        assert len(await call(h.make(n))) == n


class Holder:
    def __init__(self, blob):
        self.n = len(blob)

    def size(self):
        return self.n


async def test_constructor_arguments_past_the_default_limit_reach_a_raised_limit():
    """The actor reads its INIT under the Runtime's limit (given on its command line),
    not the 64 MiB default: with max_frame_size raised, a 70 MB constructor argument works."""
    n = 70 * 10**6
    async with actorbox.Runtime(max_frame_size=80 * MiB) as rt:
        h = await rt.start(Holder, b"i" * n)
        assert await call(h.size()) == n


async def test_constructor_arguments_over_the_limit_fail_the_start_clearly():
    """Constructor arguments over the limit fail rt.start() with what to do, before any process waits on them."""
    async with actorbox.Runtime(max_frame_size=LIMIT) as rt:
        with pytest.raises(actorbox.ActorboxError, match="max_frame_size"):
            with anyio.fail_after(CALL_TIMEOUT):
                await rt.start(Holder, b"i" * (2 * LIMIT), name="holder")
        h = await rt.start(Holder, b"ok", name="holder")  # the name was not kept
        assert await call(h.size()) == 2
