"""``Directory``: a running Runtime's handles: by name, from a decoded reference, and host-resident names.

Every handle the host gives out calls through the host's caller and carries the
reference token the scheduler issued for its actor; a handle decoded from what an
actor sent is honoured only with that token.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from scheduler import Scheduler, envelope

from ._errors import ActorNotFoundError, NameTakenError, SerializationError, UsageError
from ._handle import ActorHandle
from ._inspect import ActorInfo
from ._residents import Resident, exposed_methods

if TYPE_CHECKING:
    from ._actors import ActorTable
    from ._host_caller import HostCaller
    from ._residents import ResidentServer
    from ._trace import TraceRecorder


class Directory:
    """Looks actors up and registers host-resident ones (the Runtime's name-facing methods)."""

    def __init__(self, scheduler: Scheduler, caller: HostCaller, residents: ResidentServer, actors: ActorTable,
                 recorder: TraceRecorder | None) -> None:
        self.scheduler = scheduler
        self.caller = caller
        self.residents = residents.residents
        self.actors = actors
        self.recorder = recorder

    def get_actor(self, name: str) -> ActorHandle:
        aid = self.scheduler.names.get(name)
        if aid is None:
            known = ", ".join(sorted(self.scheduler.names)) or "none"
            raise ActorNotFoundError(
                f"no actor named {name!r} (named actors: {known}); start it with "
                f"rt.start(Cls, name={name!r}) or register one with rt.register({name!r}, obj) first",
                name=name)
        a = self.scheduler.actors[aid]
        return ActorHandle(self.caller, aid, name, a.label, a.token)

    async def stop(self, handle: ActorHandle) -> None:
        """``rt.stop(handle)``: stop the actor process ``handle`` reaches (a no-op while the Runtime exits:
        it stops them all); UsageError for anything else (not a handle, another Runtime's, a resident's)."""
        if isinstance(handle, ActorInfo) and handle.kind == "zygote":
            raise UsageError(f"rt.stop(): {handle.label!r} is a zygote (a prepared process actors are forked "
                             "from), not an actor: it has no handle and exits with the Runtime (to run without "
                             "zygotes, set ACTORBOX_ZYGOTES=0)")
        if isinstance(handle, ActorInfo):
            raise UsageError(f"rt.stop() takes an actor handle, not the ActorInfo of {handle.label!r}: pass the "
                             "handle rt.start returned, or rt.get_actor(name) for a named actor")
        if not isinstance(handle, ActorHandle):
            raise UsageError(f"rt.stop() takes an actor handle, got {type(handle).__name__}")
        if handle._caller is not self.caller:
            raise UsageError(f"rt.stop(): {handle!r} belongs to another Runtime; stop it with that one")
        if handle._actor_id in self.residents:
            raise UsageError(f"rt.stop(): {handle._label!r} is a host-resident actor, not a process; "
                             f"remove it with rt.unregister({handle._label!r})")
        if not self.actors.services.closing():
            await self.actors.stop(handle._actor_id)

    def verified_handle(self, actor_id: int, name: str | None, label: str, token: bytes) -> ActorHandle:
        """A handle decoded from what an actor sent, if the scheduler issued its token."""
        # The host's calls are trusted, so a handle it decodes must be one the scheduler
        # issued: else an actor could make the host call an actor it was never given.
        a = self.scheduler.actors.get(actor_id)
        if a is None or not hmac.compare_digest(token, a.token):
            raise SerializationError(
                f"an actor handle ({label!r}, id {actor_id}) that is not a valid reference arrived: only handles "
                "an actor was given (as an argument, a result or by name) can be passed on, never made up")
        return ActorHandle(self.caller, actor_id, name, label, a.token)

    def register(self, name: str, obj: Any, max_concurrency: int, methods: Iterable[str] | None) -> ActorHandle:
        """Serve ``obj`` under ``name`` (checked by the caller: reserved names are the Runtime's own)."""
        exposed = exposed_methods(obj, methods, name)
        try:
            entry = self.scheduler.add_actor(name, name, max_concurrency)
        except KeyError:
            raise NameTakenError(f"an actor named {name!r} already exists; choose another name",
                                 name=name) from None
        self.residents[entry.actor_id] = Resident(name, obj, exposed)
        if self.recorder is not None:  # only the trace needs to know which tracks live in the host
            self.recorder.record("actorbox", "debug", "actor.registered",
                                 {"actor": name, "cls": type(obj).__qualname__})
        self.scheduler.attach(entry.actor_id, self.caller.endpoint)
        self.actors.broadcast_names()
        return ActorHandle(self.caller, entry.actor_id, name, name, entry.token)

    def unregister(self, name: str) -> None:
        aid = self.scheduler.names.get(name)
        if aid is None or aid not in self.residents:
            raise ActorNotFoundError(f"no host-resident actor named {name!r}", name=name)
        self.scheduler.detach(aid, envelope.Status.STOPPED, {"message": f"{name!r} was unregistered"},
                              keep_queue=False)
        self.scheduler.remove_actor(aid)
        del self.residents[aid]
        self.actors.broadcast_names()
