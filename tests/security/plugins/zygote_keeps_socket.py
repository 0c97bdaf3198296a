"""An actor whose preload takes its zygote over: it keeps the actor's socket, writes on it, fails the fork."""

from __future__ import annotations

import actorbox

from .zygote_takeover import keep_the_socket, take_over

take_over(keep_the_socket)


@actorbox.actor(preload=["tests.security.plugins.zygote_keeps_socket"])
class KeepsSocket:
    def add(self, a: int, b: int) -> int:
        return a + b
