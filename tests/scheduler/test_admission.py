"""Tests for scheduler/_admission.py: the admission rule the router and the actor process
share (the actor's queue: tests/actorbox/test_admission_queue.py; the router's mirror:
test_router.py)."""

from __future__ import annotations

from scheduler import slot_passes_on, starts_at_once


def test_a_call_starts_at_once_only_with_a_free_slot_or_when_re_entrant():
    """A free slot admits a call; a full actor admits only a re-entrant one (queueing it would deadlock)."""
    assert starts_at_once(0, 1, False)
    assert not starts_at_once(1, 1, False)
    assert starts_at_once(1, 1, True)
    assert starts_at_once(5, 1, True)


def test_a_slot_passes_on_only_to_a_waiting_call_and_not_over_the_limit():
    """An ending call's slot goes to a waiting call, unless re-entrant calls hold the actor past its limit."""
    assert slot_passes_on(1, 1, 1)
    assert not slot_passes_on(1, 1, 0)
    assert not slot_passes_on(2, 1, 1)  # a re-entrant call ran past the limit: the slot is freed instead
