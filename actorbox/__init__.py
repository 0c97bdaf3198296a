"""actorbox: run plugin classes as actors, each in its own sandboxed process."""

from scheduler import CallInfo as CallInfo

from ._context import get_actor as get_actor
from ._context import share as share
from ._context import shared_empty as shared_empty
from ._errors import ActorboxError as ActorboxError
from ._errors import ActorDiedError as ActorDiedError
from ._errors import ActorNotFoundError as ActorNotFoundError
from ._errors import ActorStartError as ActorStartError
from ._errors import ActorStoppedError as ActorStoppedError
from ._errors import BackendUnavailableError as BackendUnavailableError
from ._errors import CallCancelledError as CallCancelledError
from ._errors import CallError as CallError
from ._errors import CallRefusedError as CallRefusedError
from ._errors import CallTimeoutError as CallTimeoutError
from ._errors import DeadlockError as DeadlockError
from ._errors import DependencyFailedError as DependencyFailedError
from ._errors import EnvironmentBuildError as EnvironmentBuildError
from ._errors import ExtensionError as ExtensionError
from ._errors import InfeasibleResourcesError as InfeasibleResourcesError
from ._errors import InvalidPreloadError as InvalidPreloadError
from ._errors import InvalidRequirementError as InvalidRequirementError
from ._errors import MethodNotFoundError as MethodNotFoundError
from ._errors import NameTakenError as NameTakenError
from ._errors import ObjectNotFoundError as ObjectNotFoundError
from ._errors import ObjectStoreFullError as ObjectStoreFullError
from ._errors import PendingCallsLimitError as PendingCallsLimitError
from ._errors import PolicyError as PolicyError
from ._errors import PrivateMethodError as PrivateMethodError
from ._errors import ProtocolError as ProtocolError
from ._errors import RemoteError as RemoteError
from ._errors import SandboxUnavailableError as SandboxUnavailableError
from ._errors import SerializationError as SerializationError
from ._errors import TaskFailedError as TaskFailedError
from ._errors import UsageError as UsageError
from ._extensions import LoadedExtension as LoadedExtension
from ._future import Future as Future
from ._handle import ActorHandle as ActorHandle
from ._handle import HandleInfo as HandleInfo
from ._handle import info as info
from ._inspect import ActorInfo as ActorInfo
from ._leaks import LeakCheck as LeakCheck
from ._objects import ObjectRef as ObjectRef
from ._options import ActorOptions as ActorOptions
from ._options import actor as actor
from ._policy import SandboxPolicy as SandboxPolicy
from ._prepare import ZygoteInfo as ZygoteInfo
from ._resources import ResourceInfo as ResourceInfo
from ._runtime import Runtime as Runtime
from ._submit import submit as submit
from ._task_options import TaskOptions as TaskOptions
from ._task_options import task as task
from ._waiting import as_completed as as_completed
from ._waiting import gather as gather
from ._waiting import wait as wait

__all__ = [
    "ActorDiedError",
    "ActorHandle",
    "ActorInfo",
    "ActorNotFoundError",
    "ActorOptions",
    "ActorStartError",
    "ActorStoppedError",
    "ActorboxError",
    "BackendUnavailableError",
    "CallCancelledError",
    "CallError",
    "CallInfo",
    "CallRefusedError",
    "CallTimeoutError",
    "DeadlockError",
    "DependencyFailedError",
    "EnvironmentBuildError",
    "ExtensionError",
    "Future",
    "HandleInfo",
    "InfeasibleResourcesError",
    "InvalidPreloadError",
    "InvalidRequirementError",
    "LeakCheck",
    "LoadedExtension",
    "MethodNotFoundError",
    "NameTakenError",
    "ObjectNotFoundError",
    "ObjectRef",
    "ObjectStoreFullError",
    "PendingCallsLimitError",
    "PolicyError",
    "PrivateMethodError",
    "ProtocolError",
    "RemoteError",
    "ResourceInfo",
    "Runtime",
    "SandboxPolicy",
    "SandboxUnavailableError",
    "SerializationError",
    "TaskFailedError",
    "TaskOptions",
    "UsageError",
    "ZygoteInfo",
    "actor",
    "as_completed",
    "gather",
    "get_actor",
    "info",
    "share",
    "shared_empty",
    "submit",
    "task",
    "wait",
]
