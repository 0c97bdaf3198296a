"""Hypothesis-made frames at the host's decoder and at the actor's (trust model: a bad
frame fails that call or that actor, never the host, and leaves no descriptor behind).

Unit level: hostile byte streams (tests/strategies.py) go through the same chain a
connection runs -- ``FrameDecoder.feed`` -> ``envelope.decode`` -> ``Codec.decode_call``
/ ``loads_fds`` with ``trusted=False`` -- with real descriptors attached (sealed memfds,
pipes, /dev/null). Only the documented errors may escape, every descriptor passed in is
handed to exactly one owner (who closes it) or closed, and each input is decoded fast.

End to end: a real sandboxed actor (plugins/frame_sender.py) writes hypothesis frames at
the host, and the host writes them at an actor's own decoder (actorbox/_actor_server.py); the
host keeps serving another actor, the bad actor fails with a typed error (it is
disconnected and restarted), no call is left pending and no descriptor is held.

Example counts are small so the suite stays fast; ``HYPOTHESIS_PROFILE=thorough`` (or
benchmarks/chaos_soak.py for hours) runs many more.
"""

from __future__ import annotations

import array
import fcntl
import gc
import os
import signal
import socket
import time
from collections.abc import Iterator
from typing import Any, ClassVar

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import actorbox
from actorbox._codec import Codec
from actorbox._handle import ActorHandle
from scheduler import Connection, FrameDecoder, FrameError, envelope
from tests import strategies as s

from ._support import CALL_TIMEOUT, assert_host_serves, start_actors
from .plugins.frame_sender import FrameSender
from .plugins.healthy import Healthy

# Imported now: the first tensor or array decoded imports them (seconds), which is not the
# decoder's time for that input.
pytest.importorskip("torch")
pytest.importorskip("numpy")

# Errors a decoder may raise on hostile input; anything else escaping is a bug.
DECODER_ERRORS = (FrameError, envelope.EnvelopeError, actorbox.SerializationError)
# One input must not keep the decoder busy: far above what any input here needs (< 10 ms),
# far below a stall anyone would notice.
MAX_SECONDS_PER_INPUT = 1.0
# Few examples by default (each one is cheap at unit level); the thorough profile multiplies them.
UNIT = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def fd_count() -> int:
    """How many descriptors this process holds now."""
    return len(os.listdir("/proc/self/fd"))


def assert_fds_back_to(before: int) -> None:
    """The process holds ``before`` descriptors again. A decoded tensor's mapping holds a
    duplicate until it is collected, so collect before calling a difference a leak (only
    then: with torch loaded a full collection takes tens of milliseconds)."""
    if fd_count() != before:
        gc.collect()
    assert fd_count() == before, f"{fd_count() - before} descriptors more than before"


def make_fds(n: int) -> list[int]:
    """``n`` real descriptors of mixed kinds: sealed and unsealed memfds, a pipe end, /dev/null."""
    out = []
    for i in range(n):
        kind = i % 4
        if kind in (0, 1):
            fd = os.memfd_create("fuzz", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
            os.ftruncate(fd, 4096)
            if kind == 0:
                fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW)
        elif kind == 2:
            r, fd = os.pipe()
            os.close(r)
        else:
            fd = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
        out.append(fd)
    return out


def make_codec(*, host: bool) -> Codec:
    """A codec wired like the host's (may pickle outgoing) or an actor's, with a trivial make_handle."""
    return Codec(allow_pickle=host,
                 make_handle=lambda aid, name, label: ActorHandle(None, aid, name, label),  # type: ignore[arg-type]
                 make_ref=lambda object_id: object_id)


CODECS = {"host": make_codec(host=True), "actor": make_codec(host=False)}


def deliver(codec: Codec, body: bytes, fds: list[int]) -> None:
    """What a receiver does with one frame: decode the envelope, then the payload it carries
    (the receiver owns ``fds`` from here on: every path must close or hand them on)."""
    try:
        msg = envelope.decode(body, fds)
    except envelope.EnvelopeError:
        for fd in fds:
            os.close(fd)
        raise
    if type(msg) is envelope.Call:
        codec.decode_call(msg.payload, False, msg.fds, msg.resolved)
    elif type(msg) is envelope.Reply:
        codec.loads_fds(msg.payload, False, msg.fds)


# -- unit level -----------------------------------------------------------------------


@pytest.mark.parametrize("side", ["host", "actor"])
@UNIT
@given(reads=s.frame_streams())
def test_decoder_chain_raises_only_typed_errors_and_keeps_no_descriptor(side, reads):
    """Hostile reads through FrameDecoder -> envelope.decode -> untrusted payload decode: only
    FrameError/EnvelopeError/SerializationError escape, each descriptor is closed, each read is fast."""
    codec = CODECS[side]
    before = fd_count()
    decoder = FrameDecoder(max_frame=1 << 16)
    try:
        for data, nfds in reads:
            fds = make_fds(nfds)
            t0 = time.monotonic()
            try:
                frames = decoder.feed(data, fds)
            except FrameError:
                break  # the connection ends here; close() below owns what the decoder holds
            for i, (body, ffds) in enumerate(frames):
                try:
                    deliver(codec, body, ffds)
                except DECODER_ERRORS:
                    # The connection would end at this frame: what follows it in this read
                    # is never dispatched, so its descriptors are the reader's to close.
                    for _, rest in frames[i + 1:]:
                        for fd in rest:
                            os.close(fd)
                    break
            else:
                assert time.monotonic() - t0 < MAX_SECONDS_PER_INPUT
                continue
            break
    finally:
        decoder.close()
    assert_fds_back_to(before)


def test_bad_frame_after_good_ones_in_one_read_closes_their_descriptors():
    """Regression (issue 14, finding 2): a read holding a frame with descriptors and then a bad
    header raises FrameError, and the good frame's descriptors are closed, not dropped."""
    decoder = FrameDecoder(max_frame=1 << 16)
    body = envelope.encode(envelope.Reply(1, envelope.Status.OK, b"\xc0", None, False, (0, 0)))
    data = s.frame(body, 2) + (2**31).to_bytes(4, "little") + (0).to_bytes(4, "little")
    before = fd_count()
    fds = make_fds(2)
    with pytest.raises(FrameError, match="exceeds the limit"):
        decoder.feed(data, fds)
    decoder.close()
    assert_fds_back_to(before)  # the good frame's descriptors were closed, not dropped


@pytest.mark.parametrize("side", ["host", "actor"])
@UNIT
@given(payload=s.hostile_payloads(), nfds=st.integers(0, 4),
       resolved=st.lists(st.tuples(st.integers(0, 7), s.hostile_payloads(), st.just(False), st.integers(0, 2)),
                         max_size=2))
def test_untrusted_call_payload_raises_only_serialization_error_and_closes_descriptors(side, payload, nfds, resolved):
    """decode_call(trusted=False) of hostile arguments (extension values of any code, tensors that
    point at real memfds and pipes, Future results): SerializationError or a value, never a leak."""
    codec = CODECS[side]
    while sum(r[3] for r in resolved) > nfds:  # envelope.decode refuses these before the codec sees them
        resolved.pop()
    before = fd_count()
    fds = make_fds(nfds)
    t0 = time.monotonic()
    try:
        value = codec.decode_call(payload, False, fds, tuple(resolved))
    except actorbox.SerializationError:
        value = None
    assert time.monotonic() - t0 < MAX_SECONDS_PER_INPUT
    del value
    assert_fds_back_to(before)


@pytest.mark.parametrize("side", ["host", "actor"])
@UNIT
@given(payload=s.hostile_payloads(), nfds=st.integers(0, 4))
def test_untrusted_reply_payload_raises_only_serialization_error_and_closes_descriptors(side, payload, nfds):
    """loads_fds(trusted=False) of a hostile result: a value or SerializationError, every descriptor closed."""
    codec = CODECS[side]
    before = fd_count()
    fds = make_fds(nfds)
    t0 = time.monotonic()
    try:
        value = codec.loads_fds(payload, False, fds)
    except actorbox.SerializationError:
        value = None
    assert time.monotonic() - t0 < MAX_SECONDS_PER_INPUT
    del value
    assert_fds_back_to(before)


@UNIT
@given(reads=s.frame_streams())
def test_connection_ends_on_a_bad_frame_without_keeping_descriptors(reads):
    """A Connection reading a hostile stream (real socket, real SCM_RIGHTS) dispatches or ends with a
    typed error; once it is closed, no descriptor the peer sent is still open in the reader."""

    def on_frame(body: bytes, fds: list[int]) -> None:
        deliver(CODECS["host"], body, fds)

    async def main() -> None:
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        before = fd_count()
        conn = Connection(a, on_frame, max_frame=1 << 16)
        try:
            for data, nfds in reads:
                fds = make_fds(nfds)
                try:
                    if data or fds:
                        b.sendmsg([data or b"\0"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]
                                  if fds else [])
                finally:
                    for fd in fds:
                        os.close(fd)
            b.shutdown(socket.SHUT_WR)
            with anyio.fail_after(5):
                try:
                    await conn.run()
                except DECODER_ERRORS:
                    pass
        finally:
            conn.close()
        # The reader's own socket is closed too (-1); the peer's end is still ours (+0).
        assert fd_count() == before - 1
        b.close()

    anyio.run(main)


# -- end to end: a real actor's frames at the host --------------------------------------


@pytest.fixture(scope="module", params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Module scope (overrides tests/conftest.py's): one Runtime serves every example of a backend."""
    return request.param  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
async def rt(anyio_backend: str) -> Any:
    async with actorbox.Runtime() as runtime:
        yield runtime


class Pair:
    """[healthy, sender] of a Runtime, started once per module (the sender restarts itself)."""

    handles: ClassVar[dict[int, list[actorbox.ActorHandle]]] = {}


async def pair(rt: actorbox.Runtime) -> list[actorbox.ActorHandle]:
    got = Pair.handles.get(id(rt))
    if got is None:
        got = Pair.handles[id(rt)] = await start_actors(rt, Healthy, FrameSender)
    return got


# A frame whose header claims more bytes than the actor sends leaves the host waiting for
# the rest, and the actor's later frames (its genuine reply) become that frame's body: its
# own calls then go unanswered, like those of an actor that never replies. The caller's
# deadline bounds them; nobody else's call is affected. Such an actor is killed (and so
# restarted) to go on fuzzing with it.
SENDER_TIMEOUT = 3.0


async def until_alive(rt: actorbox.Runtime, handle: actorbox.ActorHandle,
                      healthy: actorbox.ActorHandle | None = None) -> None:
    """Wait for an actor the host disconnected to be restarted, then check it answers; one that
    left its own stream mid-frame is killed (after checking the host still serves ``healthy``)."""
    with anyio.fail_after(4 * CALL_TIMEOUT):
        while True:
            info = next(a for a in rt.actors() if a.label == actorbox.info(handle).label)
            assert info.state in ("alive", "restarting"), info.state  # "dead": it was not restarted
            if info.state == "alive":
                try:
                    with anyio.fail_after(SENDER_TIMEOUT):
                        if await handle.ping() == "pong":
                            return
                except actorbox.ActorDiedError:
                    pass
                except TimeoutError:
                    if healthy is not None:
                        await assert_host_serves(rt, healthy)
                    if info.pid:
                        try:
                            os.kill(info.pid, signal.SIGKILL)
                        except ProcessLookupError:
                            pass
            await anyio.sleep(0.02)


def _remote(exc: BaseException) -> bool:
    """An exception the actor itself encoded (a forged reply answering its own call): typed by the codec."""
    return isinstance(exc, actorbox.ActorboxError) or hasattr(exc, "remote_traceback")


E2E = settings(max_examples=int(os.environ.get("ACTORBOX_FUZZ_E2E_EXAMPLES", "12")), deadline=None,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@pytest.mark.slow
@pytest.mark.anyio
@E2E
@given(streams=st.lists(st.lists(s.hostile_frames(), min_size=1, max_size=4), min_size=1, max_size=3))
async def test_actor_frames_never_hurt_the_host(rt, streams):
    """Hypothesis frames written by a sandboxed actor: its call ends with a value or a typed error, the
    host keeps serving another actor, nothing stays pending and no descriptor stays open."""
    healthy, sender = await pair(rt)
    await until_alive(rt, sender, healthy)
    await assert_host_serves(rt, healthy)
    before = fd_count()
    for frames in streams:
        try:
            with anyio.fail_after(SENDER_TIMEOUT):
                await sender.send(frames)
        except TimeoutError:
            await assert_host_serves(rt, healthy)  # it left only its own call waiting
        except Exception as exc:
            assert _remote(exc), f"an untyped error reached the host's caller: {exc!r}"
        await until_alive(rt, sender, healthy)
    await assert_host_serves(rt, healthy)
    with anyio.fail_after(CALL_TIMEOUT):
        while rt.pending_calls() or fd_count() > before:
            await anyio.sleep(0.02)  # the host closes what it reads as it reads it


@pytest.mark.slow
@pytest.mark.anyio
async def test_frame_cut_short_leaves_only_that_actors_calls_waiting(rt):
    """A header claiming more bytes than the actor sends swallows its later frames: its own call waits
    (bounded by the caller's deadline), the host serves another actor meanwhile, a kill recovers it."""
    healthy, sender = await pair(rt)
    await until_alive(rt, sender, healthy)
    with pytest.raises(TimeoutError), anyio.fail_after(SENDER_TIMEOUT):
        await sender.send([(s.frame(b"\x91\x03")[:4].replace(b"\x02", b"\xff") + b"\0" * 4 + b"\x91", 0)])
    await assert_host_serves(rt, healthy)
    await until_alive(rt, sender, healthy)  # killed, restarted, answering
    assert rt.pending_calls() == []


# -- end to end: the host's frames at an actor's decoder ---------------------------------


def _raw_send(rt: actorbox.Runtime, handle: actorbox.ActorHandle, data: bytes, nfds: int) -> None:
    """Write ``data`` (with ``nfds`` fresh descriptors) on the host's socket to ``handle``'s process."""
    sup = rt._live.actors.supervisors[handle._actor_id]
    assert sup.endpoint is not None
    conn = sup.endpoint.conn
    fds = make_fds(min(nfds, 200))
    try:
        with conn._lock:
            anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
            view = memoryview(data)
            first = True
            while view or first:
                try:
                    n = conn.sock.sendmsg([view], anc if first else [])
                except BlockingIOError:
                    time.sleep(0.001)
                    continue
                except OSError:
                    return  # the actor is already gone (an earlier frame ended it)
                view, first = view[n:], False
    finally:
        for fd in fds:
            os.close(fd)


@pytest.mark.slow
@pytest.mark.anyio
@E2E
@given(frames=st.lists(s.hostile_frames(), min_size=1, max_size=4))
async def test_host_frames_at_an_actor_fail_only_that_actor(rt, frames):
    """Hypothesis frames written at an actor's own decoder: it answers, or ends and is restarted
    (its pending call failing with ActorDiedError); the host and the other actor never notice."""
    healthy, sender = await pair(rt)
    await until_alive(rt, sender, healthy)
    before = fd_count()
    for data, nfds in frames:
        _raw_send(rt, sender, data, nfds)
    try:
        with anyio.fail_after(SENDER_TIMEOUT):
            assert await sender.ping() == "pong"
    except TimeoutError:
        pass  # the actor waits for the rest of a frame the host began: until_alive kills it
    except actorbox.ActorDiedError:
        pass  # the actor gave up on its connection: contained, and it is restarted
    except Exception as exc:  # a crafted call's answer may take the ping's call id
        assert _remote(exc), f"an untyped error reached the host's caller: {exc!r}"
    await until_alive(rt, sender, healthy)
    await assert_host_serves(rt, healthy)
    with anyio.fail_after(CALL_TIMEOUT):
        while rt.pending_calls() or fd_count() > before:
            await anyio.sleep(0.02)


@pytest.fixture(autouse=True, scope="module")
def _forget_pairs() -> Iterator[None]:
    yield
    Pair.handles.clear()
