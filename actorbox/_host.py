"""``HostEndpoint``: the host as the scheduler sees it: one endpoint, two roles behind it.

Replies to the host's own calls go to the host's caller (``_host_caller.py``); calls to
host-resident actors go to the resident server (``_residents.py``), each as a task in
the Runtime's task group, and its reply back to the scheduler from here.
"""

from __future__ import annotations

from collections.abc import Callable

import anyio.abc

from scheduler import Endpoint, Scheduler, envelope

from ._residents import ResidentServer


class HostEndpoint(Endpoint):
    """The host's endpoint in the scheduler: trusted, routes what it is delivered."""

    label = "host"
    trusted = True

    def __init__(self, scheduler: Scheduler, tg: anyio.abc.TaskGroup, residents: ResidentServer) -> None:
        Endpoint.__init__(self)
        self.scheduler = scheduler
        self.tg = tg
        self.residents = residents
        # Where replies to the host's calls go: its caller, which needs this endpoint to exist first.
        self.on_reply: Callable[[envelope.Reply], None] | None = None

    def deliver_reply(self, reply: envelope.Reply) -> None:
        assert self.on_reply is not None, "the host's caller is created with its endpoint"
        self.on_reply(reply)

    def deliver_call(self, call: envelope.Call) -> None:
        self.tg.start_soon(self._serve, call)

    def deliver_cancel(self, call_id: int) -> None:
        self.residents.cancel(call_id)

    async def _serve(self, call: envelope.Call) -> None:
        self.scheduler.reply(self, await self.residents.serve(call))
