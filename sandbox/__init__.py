"""Where and how an actor process runs: launch specs, commands, supervision.

This package knows nothing about actorbox's API or the scheduler.
"""

from ._launcher import ENV_ALLOWLIST as ENV_ALLOWLIST
from ._launcher import LaunchSpec as LaunchSpec
from ._launcher import OutputTail as OutputTail
from ._launcher import build_command as build_command
from ._launcher import child_environment as child_environment
from ._launcher import kill_group as kill_group
from ._launcher import launch as launch

__all__ = [
    "ENV_ALLOWLIST",
    "LaunchSpec",
    "OutputTail",
    "build_command",
    "child_environment",
    "kill_group",
    "launch",
]
