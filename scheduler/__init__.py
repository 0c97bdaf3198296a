"""The central router of actorbox: framing, envelopes, endpoints and the call table.

This package knows nothing about payloads, actors' classes or sandboxes.
"""

from . import _envelope as envelope
from ._actor_endpoint import ConnectionEndpoint as ConnectionEndpoint
from ._admission import slot_passes_on as slot_passes_on
from ._admission import starts_at_once as starts_at_once
from ._call_table import ActorEntry as ActorEntry
from ._call_table import CallInfo as CallInfo
from ._connection import Connection as Connection
from ._connection import ConnectionClosed as ConnectionClosed
from ._dependency import DependencyFailure as DependencyFailure
from ._dependency import FailedCall as FailedCall
from ._endpoint import Endpoint as Endpoint
from ._fds import MAX_FDS_PER_FRAME as MAX_FDS_PER_FRAME
from ._fds import close_fds as close_fds
from ._fds import dup_all as dup_all
from ._fds import too_many_fds as too_many_fds
from ._framing import DEFAULT_MAX_FRAME as DEFAULT_MAX_FRAME
from ._framing import FrameDecoder as FrameDecoder
from ._framing import FrameError as FrameError
from ._router import Scheduler as Scheduler

__all__ = [
    "DEFAULT_MAX_FRAME",
    "MAX_FDS_PER_FRAME",
    "ActorEntry",
    "CallInfo",
    "Connection",
    "ConnectionClosed",
    "ConnectionEndpoint",
    "DependencyFailure",
    "Endpoint",
    "FailedCall",
    "FrameDecoder",
    "FrameError",
    "Scheduler",
    "close_fds",
    "dup_all",
    "envelope",
    "slot_passes_on",
    "starts_at_once",
    "too_many_fds",
]
