"""Where and how an actor process runs: restriction-model detection, bubblewrap
command building, sandbox policy, per-actor Python environments (built with uv),
process launching and supervision.

This package knows nothing about actorbox's API or the scheduler.
"""

from ._bwrap import build_bwrap_command as build_bwrap_command
from ._detect import Restriction as Restriction
from ._detect import RestrictionModel as RestrictionModel
from ._detect import detect_restriction_model as detect_restriction_model
from ._detect import read_kernel_setting as read_kernel_setting
from ._env import HOST_PACKAGES_VAR as HOST_PACKAGES_VAR
from ._env import EnvBuildError as EnvBuildError
from ._env import Environment as Environment
from ._env import EnvironmentManager as EnvironmentManager
from ._env import RequirementError as RequirementError
from ._env import validate_requirements as validate_requirements
from ._late_reap import pending as late_reaps
from ._late_reap import reap_later as reap_later
from ._launcher import ENV_ALLOWLIST as ENV_ALLOWLIST
from ._launcher import ActorProcess as ActorProcess
from ._launcher import LaunchSpec as LaunchSpec
from ._launcher import OutputTail as OutputTail
from ._launcher import SandboxUnavailable as SandboxUnavailable
from ._launcher import build_command as build_command
from ._launcher import child_environment as child_environment
from ._launcher import decode_exit as decode_exit
from ._launcher import find_actor_pid as find_actor_pid
from ._launcher import kill_group as kill_group
from ._launcher import launch as launch
from ._policy import PolicyError as PolicyError
from ._policy import SandboxPolicy as SandboxPolicy
from ._policy import validate_path as validate_path
from ._text import escape_controls as escape_controls
from ._uids import UidLease as UidLease
from ._uids import lease_uid as lease_uid

__all__ = [
    "ENV_ALLOWLIST",
    "HOST_PACKAGES_VAR",
    "ActorProcess",
    "EnvBuildError",
    "Environment",
    "EnvironmentManager",
    "LaunchSpec",
    "OutputTail",
    "PolicyError",
    "RequirementError",
    "Restriction",
    "RestrictionModel",
    "SandboxPolicy",
    "SandboxUnavailable",
    "UidLease",
    "build_bwrap_command",
    "build_command",
    "child_environment",
    "decode_exit",
    "detect_restriction_model",
    "escape_controls",
    "find_actor_pid",
    "kill_group",
    "late_reaps",
    "launch",
    "lease_uid",
    "read_kernel_setting",
    "reap_later",
    "validate_path",
    "validate_requirements",
]
