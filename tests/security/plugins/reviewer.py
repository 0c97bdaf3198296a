"""Actors of the attack review of issue 14's fixes: what those fixes missed.

A msgpack Timestamp (extension type -1, which msgpack decodes itself, past the
codec's allow-list), log events an honest actor makes too long, LOG frames a hostile
one makes too long by hand, and exceptions whose text is tens of megabytes.
"""

from __future__ import annotations

import msgpack
import structlog

import actorbox
from actorbox._caller import current_call

from .saboteur import ERROR, LOG, REPLY, Ext, frame, pack, send_raw

EXT_EXCEPTION = 6


@actorbox.actor
class Reviewer:
    def ping(self):
        return "pong"

    def timestamp(self, where):
        """A msgpack Timestamp as the result, or inside a list, a map key or a map value."""
        ts = msgpack.Timestamp(1, 2)
        return {"value": ts, "list": [1, ts], "key": {ts: 1}, "map": {"k": ts}}[where]

    async def timestamp_to(self, name):
        """Call the named host-resident object with a Timestamp argument; what came back."""
        try:
            return {"value": await actorbox.get_actor(name).lookup(msgpack.Timestamp(1, 2))}
        except Exception as exc:
            return {"error": type(exc).__name__, "message": str(exc)}

    def log_long(self, n):
        """An honest event: its name, a field's name and its value each ``n`` characters long, and 2,000
        more fields of 1,000 characters (1 MiB of log text for one event)."""
        fields = {"v" * n: "x" * n, **{f"f{i}": "y" * 1000 for i in range(2000)}}
        structlog.get_logger().info("e" * n, **fields)
        return "logged"

    def raw_log(self, event_len, value_len, nfields=1):
        """A hand-made LOG frame (not trimmed by actorbox's forwarder)."""
        send_raw(frame(pack([LOG, "info", "e" * event_len, {f"k{i}": "v" * value_len for i in range(nfields)}])))
        return "sent"

    def huge_error(self, n):
        """Answer this call with an exception whose traceback, message and type name are ``n`` escape
        sequences each (an actor's own encoder would cut the traceback; this one is hand-made)."""
        esc = "\x1b[2J" * n
        fields = ["evil" + "m" * n, "Forged" + "Q" * n, [], esc, esc, {}]
        send_raw(frame(pack([REPLY, current_call.get(), ERROR, pack(Ext(EXT_EXCEPTION, pack(fields))), None,
                             False, 0])))
        return "the genuine reply (ignored: the call has its answer)"
