"""The admission rule of an actor's calls, one definition for both of its keepers.

An actor runs ``max_concurrency`` calls at once; a re-entrant call (one its own
running call waits on) runs past that limit, since queueing it would deadlock; every
other call waits in a FIFO. The actor process applies this rule to the calls it is
delivered (actorbox._admission), and the router applies it to its mirror of the
actor's slots (scheduler._router), so both agree on which call holds a slot.
"""

from __future__ import annotations


def starts_at_once(active: int, max_concurrency: int, reentrant: bool) -> bool:
    """Whether a call delivered to an actor running ``active`` calls takes a slot now
    (else it waits in the actor's FIFO)."""
    return reentrant or active < max_concurrency


def slot_passes_on(active: int, max_concurrency: int, waiting: int) -> bool:
    """Whether the slot of a call that ended passes to the oldest of ``waiting`` calls
    (else it is freed). Not while re-entrant calls hold the actor past its limit."""
    return waiting > 0 and active <= max_concurrency
