"""An actor process's structlog events, routed to the host as LOG envelopes (the actor
process owns its structlog configuration; library code elsewhere never configures it)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn

import structlog

from scheduler import envelope

from ._caller import current_call

if TYPE_CHECKING:
    from structlog.typing import EventDict, WrappedLogger


def _plain(v: Any) -> Any:
    if v is None or type(v) in (bool, int, float, str):
        return v
    return repr(v)


def configure_logging(send: Callable[[envelope.Message], None]) -> None:
    """Route this process's structlog events to the host through ``send``."""

    def add_call(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
        cid = current_call.get()
        if cid is not None:
            event_dict.setdefault("call_id", cid)
        return event_dict

    def forward(_: WrappedLogger, method: str, event_dict: EventDict) -> NoReturn:
        event = str(event_dict.pop("event", ""))
        level = str(event_dict.pop("level", method))
        fields = {str(k): _plain(v) for k, v in event_dict.items()}
        send(envelope.log_event(level, event, fields))  # trimmed to what the host accepts
        raise structlog.DropEvent

    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars, structlog.processors.add_log_level, add_call, forward],
        cache_logger_on_first_use=False,
    )
