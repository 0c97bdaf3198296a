"""``actorbox.SandboxPolicy``: the sandbox package's policy, failing with actorbox's ``PolicyError``.

``sandbox`` knows nothing of actorbox, so its ``PolicyError`` is a plain
``ValueError``; an actorbox user's bad policy must still raise an
``ActorboxError``. This subclass validates exactly as ``sandbox.SandboxPolicy``
does and re-raises the failure as ``actorbox.PolicyError`` (a subclass of both).
"""

from __future__ import annotations

import dataclasses

import sandbox

from ._errors import PolicyError


class SandboxPolicy(sandbox.SandboxPolicy):
    """Resources and extra paths of a sandboxed actor; bad values raise ``actorbox.PolicyError``.

    Equal to (and hashed like) a ``sandbox.SandboxPolicy`` with the same fields.
    """

    __slots__ = ()

    def __post_init__(self) -> None:
        try:
            super().__post_init__()
        except sandbox.PolicyError as exc:
            raise PolicyError(str(exc)) from None

    def __eq__(self, other: object) -> bool:
        # The dataclass's own __eq__ wants the very same class; a policy is its fields.
        if not isinstance(other, sandbox.SandboxPolicy):
            return NotImplemented
        return _values(self) == _values(other)

    __hash__ = sandbox.SandboxPolicy.__hash__


def _values(policy: sandbox.SandboxPolicy) -> tuple[object, ...]:
    return tuple(getattr(policy, f.name) for f in dataclasses.fields(policy))
