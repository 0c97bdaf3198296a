"""An actor that, on the Ray backend, makes its own shell return what it chooses instead of actorbox's encoding."""

from __future__ import annotations

from typing import Any


class Liar:
    def lie(self, wire: Any) -> Any:
        """The next result of this actor's shell is ``wire`` itself (then the shell encodes again)."""
        import actorbox._ray._shell as shell

        real = shell.encode_outcome

        def once(codec: Any, value: Any, *, raised: bool = False) -> Any:
            shell.encode_outcome = real
            return wire

        shell.encode_outcome = once
        return None

    def ping(self) -> str:
        return "pong"
