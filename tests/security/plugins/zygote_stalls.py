"""An actor whose preload takes its zygote over and never answers a fork request."""

from __future__ import annotations

import actorbox

from .zygote_takeover import stall, take_over

take_over(stall)


@actorbox.actor(preload=["tests.security.plugins.zygote_stalls"])
class StalledFork:
    def add(self, a: int, b: int) -> int:
        return a + b
