"""Tests for scheduler/_fds.py: the one set of descriptor helpers actorbox and scheduler share."""

from __future__ import annotations

import os

import pytest

import scheduler
from scheduler._fds import MAX_FDS_PER_FRAME


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def test_close_fds_closes_all_and_skips_ones_already_closed() -> None:
    """close_fds closes every descriptor even when one in the middle is already closed."""
    r1, w1 = os.pipe()
    r2, w2 = os.pipe()
    os.close(w1)
    scheduler.close_fds([r1, w1, r2, w2])
    assert not any(_is_open(fd) for fd in (r1, r2, w2))


def test_dup_all_returns_independent_duplicates() -> None:
    """dup_all's duplicates stay open after the originals are closed."""
    r, w = os.pipe()
    dups = scheduler.dup_all((r, w))
    scheduler.close_fds((r, w))
    try:
        assert len(dups) == 2 and all(_is_open(fd) for fd in dups)
    finally:
        scheduler.close_fds(dups)


def test_dup_all_leaves_nothing_open_when_one_fails() -> None:
    """A dup that fails half way closes the duplicates already made, then raises."""
    r, w = os.pipe()
    before = set(os.listdir("/proc/self/fd"))
    with pytest.raises(OSError):
        scheduler.dup_all((r, w, 1 << 20))  # no such descriptor: the third dup fails
    after = set(os.listdir("/proc/self/fd"))
    scheduler.close_fds((r, w))
    assert after <= before


def test_too_many_fds_names_the_limit_only_over_it() -> None:
    """too_many_fds is silent up to the per-frame limit and names it (and the remedy) above."""
    assert scheduler.too_many_fds(MAX_FDS_PER_FRAME, "a call's arguments") is None
    why = scheduler.too_many_fds(MAX_FDS_PER_FRAME + 1, "a call's arguments")
    assert why is not None and str(MAX_FDS_PER_FRAME) in why and "torch.stack" in why
