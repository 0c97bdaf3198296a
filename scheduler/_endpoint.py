"""Endpoint: what the scheduler delivers calls, replies and cancellations to.

The host is one endpoint (it originates calls and serves host-resident named
actors, actorbox._host); every actor process is another (``ConnectionEndpoint``,
scheduler._actor_endpoint). The scheduler knows endpoints only through this class.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from . import _envelope as envelope


class Endpoint(ABC):
    """Something the scheduler delivers calls, replies and cancellations to.

    ``trusted`` is true only for the host: payloads produced by a trusted endpoint
    may carry host-encoded (pickled) values; everything else is decoded with the
    safe decoder. The flag travels with each delivered envelope.
    """

    label: str = "?"
    trusted: bool = False
    # True when the endpoint keeps its own FIFO and enforces max_concurrency itself,
    # so the scheduler may deliver calls ahead of time (pipelining).
    queues_calls: bool = False

    def __init__(self) -> None:
        # local call id (as the endpoint numbered it) -> global call id
        self.outgoing: dict[int, int] = {}
        self.alive = True

    @abstractmethod
    def deliver_call(self, call: envelope.Call) -> None:
        """Run ``call`` (its ``call_id`` is the scheduler's); answer with ``Scheduler.reply``."""

    @abstractmethod
    def deliver_reply(self, reply: envelope.Reply) -> None:
        """The result of a call this endpoint routed (``call_id`` is the endpoint's own local id)."""

    @abstractmethod
    def deliver_cancel(self, call_id: int) -> None:
        """The caller of the delivered call ``call_id`` no longer wants it; acknowledge with a reply."""
