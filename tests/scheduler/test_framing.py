"""Tests for scheduler/_framing.py: the incremental frame decoder."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from scheduler._framing import DEFAULT_MAX_FRAME, HEADER, MAX_FDS_PER_FRAME, FrameDecoder, FrameError, encode_header


def frame(body: bytes, nfds: int = 0) -> bytes:
    return encode_header(len(body), nfds) + body


def is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


@pytest.fixture
def pipe_fds() -> Iterator[list[int]]:
    """Six real descriptors (three pipes); those a test leaves open are closed afterwards."""
    fds: list[int] = []
    for _ in range(3):
        fds.extend(os.pipe())
    inodes = {fd: os.fstat(fd).st_ino for fd in fds}
    yield fds
    for fd, ino in inodes.items():
        # Only close a number that still refers to our pipe: a number the code under
        # test closed may since have been reused by someone else.
        try:
            if os.fstat(fd).st_ino == ino:
                os.close(fd)
        except OSError:
            pass


BODIES = [b"first", b"", b"x" * 300, bytes(range(256))]
STREAM = b"".join(frame(b) for b in BODIES)


def test_header_layout() -> None:
    """The header is body length then fd count, both u32 little endian, 8 bytes in all."""
    assert HEADER.size == 8
    assert encode_header(0x01020304, 3) == b"\x04\x03\x02\x01\x03\x00\x00\x00"


def test_one_frame_in_one_feed() -> None:
    """A complete frame fed at once comes back as (body, no fds)."""
    assert FrameDecoder().feed(frame(b"hello")) == [(b"hello", [])]


def test_multiple_frames_in_one_feed() -> None:
    """Several frames in one chunk come back in order, empty bodies included."""
    assert FrameDecoder().feed(STREAM) == [(b, []) for b in BODIES]


def test_split_at_every_byte_boundary() -> None:
    """Splitting the stream into two feeds at any byte gives the same frames, none twice."""
    for cut in range(len(STREAM) + 1):
        dec = FrameDecoder()
        got = dec.feed(STREAM[:cut]) + dec.feed(STREAM[cut:])
        assert got == [(b, []) for b in BODIES], f"split at byte {cut}"


def test_split_at_every_pair_of_boundaries() -> None:
    """Three feeds cut anywhere, fds arriving with each frame's first byte, give the same frames."""
    first = frame(b"0123456789", 2)
    data = first + frame(b"ab", 1)
    second_start = len(first)
    for i in range(1, len(data)):
        for j in range(i, len(data) + 1):
            pieces = [(data[:i], [3, 4]), (data[i:j], []), (data[j:], [])]
            which = 0 if second_start < i else 1 if second_start < j else 2
            pieces[which][1].append(5)
            dec = FrameDecoder()
            got = [f for chunk, fds in pieces for f in dec.feed(chunk, fds)]
            assert got == [(b"0123456789", [3, 4]), (b"ab", [5])], (i, j)


def test_byte_by_byte() -> None:
    """Feeding one byte at a time yields each frame exactly when its last byte arrives."""
    dec = FrameDecoder()
    got: list[tuple[int, bytes]] = []
    for i in range(len(STREAM)):
        got.extend((i, body) for body, _ in dec.feed(STREAM[i : i + 1]))
    ends = []
    pos = 0
    for b in BODIES:
        pos += HEADER.size + len(b)
        ends.append(pos - 1)
    assert got == list(zip(ends, BODIES, strict=True))


def test_partial_frame_yields_nothing() -> None:
    """A header without its full body produces no frame until the rest arrives."""
    dec = FrameDecoder()
    data = frame(b"abcdef")
    assert dec.feed(data[:-1]) == []
    assert dec.feed(data[-1:]) == [(b"abcdef", [])]


def test_fds_attached_to_frames_in_order() -> None:
    """Descriptors are handed to frames in arrival order, each frame taking the count it claims."""
    dec = FrameDecoder()
    stream = frame(b"a", 1) + frame(b"b", 0) + frame(b"c", 2)
    assert dec.feed(stream, [10, 11, 12]) == [(b"a", [10]), (b"b", []), (b"c", [11, 12])]


def test_fds_arriving_with_first_byte_wait_for_their_frame() -> None:
    """fds fed with a frame's first bytes are kept until that frame completes, then attached to it."""
    dec = FrameDecoder()
    data = frame(b"payload", 2)
    assert dec.feed(data[:3], [7, 8]) == []
    assert dec.feed(data[3:]) == [(b"payload", [7, 8])]


def test_frame_at_the_limit_is_accepted() -> None:
    """A body of exactly max_frame bytes is accepted."""
    assert FrameDecoder(max_frame=16).feed(frame(b"z" * 16)) == [(b"z" * 16, [])]


def test_oversize_frame_raises_on_header() -> None:
    """A header announcing more than max_frame bytes raises FrameError before the body is buffered."""
    dec = FrameDecoder(max_frame=16)
    with pytest.raises(FrameError, match="exceeds the limit"):
        dec.feed(encode_header(17, 0))


def test_default_limit_refuses_huge_length() -> None:
    """With the default limit, a header claiming 4 GiB is refused at once."""
    assert DEFAULT_MAX_FRAME < 0xFFFFFFFF
    with pytest.raises(FrameError):
        FrameDecoder().feed(encode_header(0xFFFFFFFF, 0))


def test_too_many_fds_raises() -> None:
    """A frame claiming more than MAX_FDS_PER_FRAME descriptors raises FrameError."""
    with pytest.raises(FrameError, match="file descriptors"):
        FrameDecoder().feed(encode_header(1, MAX_FDS_PER_FRAME + 1))


def test_max_fds_accepted() -> None:
    """A frame with exactly MAX_FDS_PER_FRAME descriptors is accepted."""
    fds = list(range(100, 100 + MAX_FDS_PER_FRAME))
    assert FrameDecoder().feed(frame(b"k", MAX_FDS_PER_FRAME), fds) == [(b"k", fds)]


def test_fewer_fds_than_claimed_raises(pipe_fds: list[int]) -> None:
    """A complete frame whose claimed descriptors did not all arrive raises FrameError."""
    with pytest.raises(FrameError, match="2 file descriptors but 1 arrived"):
        FrameDecoder().feed(frame(b"body", 2), [pipe_fds[0]])


def test_close_closes_undelivered_fds(pipe_fds: list[int]) -> None:
    """close() closes descriptors that no complete frame claimed, and only those."""
    r1, w1, r2, w2, r3, _ = pipe_fds
    dec = FrameDecoder()
    data = frame(b"one", 1) + frame(b"two-incomplete", 2)
    assert dec.feed(data[:-1], [r1, r2, r3]) == [(b"one", [r1])]
    dec.close()
    assert is_open(r1)  # delivered: the frame's owner closes it
    for fd in (r2, r3):
        with pytest.raises(OSError):
            os.fstat(fd)
    assert is_open(w1) and is_open(w2)


def test_close_after_fd_shortfall_releases_fds(pipe_fds: list[int]) -> None:
    """After a FrameError for missing fds, close() still closes the fds that did arrive."""
    r1 = pipe_fds[0]
    dec = FrameDecoder()
    with pytest.raises(FrameError):
        dec.feed(frame(b"x", 2), [r1])
    dec.close()
    with pytest.raises(OSError):
        os.fstat(r1)


def test_close_is_idempotent(pipe_fds: list[int]) -> None:
    """close() twice is harmless: the second call finds nothing left to close."""
    r1 = pipe_fds[0]
    dec = FrameDecoder()
    dec.feed(frame(b"x", 1)[:3], [r1])
    dec.close()
    dec.close()
    assert not is_open(r1)


def test_good_frames_fds_are_closed_when_a_later_frame_in_the_read_is_bad(pipe_fds: list[int]) -> None:
    """Frames complete before a bad header in the same read are dropped with their fds closed, not leaked."""
    r1, _, r2, _, r3, _ = pipe_fds
    dec = FrameDecoder(max_frame=64)
    data = frame(b"one", 1) + frame(b"two", 2) + encode_header(65, 0)
    with pytest.raises(FrameError, match="exceeds the limit"):
        dec.feed(data, [r1, r2, r3])
    assert not any(is_open(fd) for fd in (r1, r2, r3))


def test_fds_are_closed_when_a_frame_claims_more_than_arrived(pipe_fds: list[int]) -> None:
    """A shortfall on a later frame closes the fds of the complete frames before it and the ones left over."""
    r1, _, r2, _, _, _ = pipe_fds
    dec = FrameDecoder()
    with pytest.raises(FrameError, match="3 file descriptors but 1 arrived"):
        dec.feed(frame(b"one", 1) + frame(b"two", 3), [r1, r2])
    assert not is_open(r1) and not is_open(r2)


def test_fds_no_frame_claims_are_closed_at_once(pipe_fds: list[int]) -> None:
    """fds arriving with whole frames that claim none are closed at once (FrameError), not held for later."""
    r1, w1, r2, _, _, _ = pipe_fds
    dec = FrameDecoder()
    with pytest.raises(FrameError, match="2 file descriptors arrived that no frame claims"):
        dec.feed(frame(b"log"), [r1, r2])
    assert not is_open(r1) and not is_open(r2)
    assert is_open(w1)


def test_fds_beyond_what_an_incomplete_frame_claims_are_closed_at_once(pipe_fds: list[int]) -> None:
    """An incomplete frame whose header is in keeps exactly the fds it claims; more is refused and all closed."""
    r1, _, r2, _, r3, _ = pipe_fds
    dec = FrameDecoder()
    with pytest.raises(FrameError, match="2 file descriptors arrived that no frame claims"):
        dec.feed(frame(b"payload", 1)[:10], [r1, r2, r3])
    assert not any(is_open(fd) for fd in (r1, r2, r3))


def test_fds_of_an_incomplete_frame_whose_header_is_in_must_all_be_there(pipe_fds: list[int]) -> None:
    """Once a frame's header is in, its fds have arrived (they come with its first byte): fewer is refused at once."""
    r1 = pipe_fds[0]
    dec = FrameDecoder()
    with pytest.raises(FrameError, match="2 file descriptors but 1 arrived"):
        dec.feed(frame(b"payload", 2)[:10], [r1])
    assert not is_open(r1)


def test_fds_held_for_a_partial_header_stay_bounded(pipe_fds: list[int]) -> None:
    """Before a frame's header is complete its fds are held (up to one frame's worth) and delivered with it."""
    r1, _, r2, _, _, _ = pipe_fds
    dec = FrameDecoder()
    data = frame(b"payload", 2)
    assert dec.feed(data[:3], [r1, r2]) == []
    assert is_open(r1) and is_open(r2)
    assert dec.feed(data[3:]) == [(b"payload", [r1, r2])]
