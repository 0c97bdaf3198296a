"""Actors for the capability tests: one holds a secret, others try to reach it with and without a handle."""

from __future__ import annotations

import actorbox
from actorbox._context import process_caller


async def _attempt(awaitable):
    """["ok", value] or ["error", type name, message]: the outcome as seen inside the actor,
    whatever the host makes of an error an actor raises."""
    try:
        return ["ok", await awaitable]
    except actorbox.ActorboxError as exc:
        return ["error", type(exc).__name__, str(exc)]


@actorbox.actor
class Secret:
    """An unnamed actor nobody should reach without its handle."""

    def reveal(self):
        return "the secret"


@actorbox.actor
class Holder:
    """Reaches other actors only through handles that reached it (constructor, argument, result, name)."""

    def __init__(self, given=None):
        self.kept = given

    def keep(self, handle):
        self.kept = handle

    def give(self):
        return self.kept

    async def call_kept(self, method):
        return await getattr(self.kept, method)()

    async def call_handle(self, handle, method):
        return await getattr(handle, method)()

    async def call_in_list(self, handles, method):
        return [await getattr(h, method)() for h in handles]

    async def by_name(self, name, method, *args):
        return await getattr(actorbox.get_actor(name), method)(*args)

    async def via(self, other, method):
        """Ask ``other`` for the handle it keeps (a result forwarded from another actor) and call it."""
        handle = await other.give()
        return await _attempt(getattr(handle, method)())

    async def read(self, refs):
        """Read an ObjectRef through the store's service (nested: a top-level one arrives as its value)."""
        return await refs[0]

    async def from_resident(self, name, method, then):
        """Get a handle as the result of a host-resident object's method, and call ``then`` on it."""
        handle = await getattr(actorbox.get_actor(name), method)()
        return await getattr(handle, then)()

    async def try_call(self, name, method, *args):
        return await _attempt(getattr(actorbox.get_actor(name), method)(*args))


@actorbox.actor
class Guesser:
    """A hostile actor: calls actor ids it was never given, without a token or with a made-up one."""

    def __init__(self, target_id=None):
        self.target_id = target_id

    async def guess(self, actor_id, method, token=b""):
        handle = actorbox.ActorHandle(process_caller.get(), actor_id, None, "guessed", token)
        return await _attempt(getattr(handle, method)())

    async def steal(self, handle, method):
        """Keep the id of a handle it was given, drop its token: the id alone is no reference."""
        return await self.guess(actorbox.info(handle).actor_id, method)

    def forge(self, actor_id):
        """A handle with a made-up token, returned as a result (to the host or to an actor)."""
        return actorbox.ActorHandle(process_caller.get(), actor_id, None, "forged", b"\x00" * 16)

    def give(self):
        """What a Holder asks for in ``via``: here a forged handle to ``target_id``."""
        return self.forge(self.target_id)

    def token_length(self, handle):
        return len(handle._token)
