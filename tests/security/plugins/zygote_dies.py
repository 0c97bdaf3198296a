"""An actor whose preload takes its zygote over and exits at the first fork request."""

from __future__ import annotations

import actorbox

from .zygote_takeover import die, take_over

take_over(die)


@actorbox.actor(preload=["tests.security.plugins.zygote_dies"])
class DiesMidFork:
    def add(self, a: int, b: int) -> int:
        return a + b
