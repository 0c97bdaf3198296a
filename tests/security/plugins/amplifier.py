"""A hostile actor whose small frames decode to something huge or slow.

Maps of integer keys that all collide in CPython's hash (as a result, and as the
argument of a call to a host-resident object or to another actor), and megabytes of
empty containers (one byte each, ~60 bytes once built) in a reply, in a LOG frame
and in a frame of a kind that does not exist: frames written by hand with
saboteur.py's own msgpack writer, so nothing in actorbox shapes them on the way out.
"""

from __future__ import annotations

import struct
import time

import msgpack

import actorbox
from actorbox._caller import current_call

from .saboteur import LOG, OK, REPLY, frame, pack, send_body, send_raw

EXT_BIGINT = 5
HASH_MODULUS = 2**61 - 1  # CPython hashes an int k to k mod this: k * M + c all hash alike


def colliding_keys(n):
    """A dict that the actor's own codec sends as a map of ``n`` integer keys with one hash value: each
    key is a raw extension value (type 5, a big integer's digits) that the receiver decodes to
    ``k * M + 7``. Here they are distinct ExtType tuples, cheap to build."""
    return {msgpack.ExtType(EXT_BIGINT, str(k * HASH_MODULUS + 7).encode()): 0 for k in range(1, n + 1)}


def empty_maps(nbytes):
    """About ``nbytes`` of empty maps, in arrays of 500,000 (short enough that no cap on one array's
    length refuses them at once: the attack is what the maps cost to build)."""
    per = 500_000
    chunk = b"\xdd" + struct.pack(">I", per) + b"\x80" * per
    return b"\xdd" + struct.pack(">I", nbytes // per) + chunk * (nbytes // per)


def _answer(payload):
    """Reply to the call being served with ``payload``, before its genuine reply (which is then ignored)."""
    send_body(pack([REPLY, current_call.get(), OK, payload, None, False, 0]))
    return "the genuine reply (must be ignored: the call already has its answer)"


@actorbox.actor
class Amplifier:
    """Sends payloads that are small on the wire and huge or slow to decode."""

    def ping(self):
        return "pong"

    def reply_colliding_keys(self, n):
        """Return a map of ``n`` colliding integer keys."""
        return colliding_keys(n)

    def reply_empty_maps(self, nbytes):
        """Answer this call with ``nbytes`` of empty maps."""
        return _answer(empty_maps(nbytes))

    async def call_colliding_keys(self, name_or_handle, method, n):
        """Call a host-resident actor (by name) or another actor with a map of ``n`` colliding keys as its
        argument; say how it ended and how long it took."""
        h = name_or_handle if isinstance(name_or_handle, actorbox.ActorHandle) else actorbox.get_actor(name_or_handle)
        keys = colliding_keys(n)
        t0 = time.monotonic()
        try:
            value = await getattr(h, method)(keys)
        except Exception as exc:
            return {"error": type(exc).__name__, "message": str(exc), "seconds": time.monotonic() - t0}
        return {"value": repr(value)[:100], "seconds": time.monotonic() - t0}

    def log_empty_maps(self, nbytes):
        """Send a LOG frame whose one field holds ``nbytes`` of empty maps."""
        body = b"\x94" + pack(LOG) + pack("info") + pack("amplified") + b"\x81" + pack("x") + empty_maps(nbytes)
        send_raw(frame(body))
        return "not reached: the host hangs up on a frame like that"

    def unknown_kind_empty_maps(self, nbytes):
        """Send a frame of a kind that does not exist, holding ``nbytes`` of empty maps."""
        send_raw(frame(b"\x92\x63" + empty_maps(nbytes)))  # [99, maps...]
        return "not reached: the host hangs up on a frame like that"


@actorbox.actor
class Sizes:
    """Well-behaved: returns, and passes to another actor, a list of ``n`` numbers (over 8 KiB from a few
    thousand on, so its decoding is metered)."""

    def numbers(self, n):
        return list(range(n))

    async def pass_on(self, other, n):
        try:
            return await other.take(list(range(n)))
        except actorbox.SerializationError as exc:
            return f"SerializationError: {exc}"
