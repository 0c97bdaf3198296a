"""Hostile actors that attack the host through their own socket.

An actor process owns its end of the host connection, so a malicious one can
write anything on it: forged replies, forged calls with forged flags, pickles,
garbage. These actors do exactly that, building every byte by hand (their own
tiny msgpack writer and frame header), so nothing in actorbox helps or filters
the attack on the way out.
"""

from __future__ import annotations

import array
import os
import random
import select
import socket
import struct

import actorbox
from actorbox._caller import current_call
from actorbox._context import process_caller

# Wire constants an attacker reads from the protocol docs.
CALL, REPLY, CANCEL, LOG, INIT, READY, STOP, NAMES = range(1, 9)
OK, ERROR, DIED = 0, 1, 2
EXT_TUPLE, EXT_EXCEPTION, EXT_PICKLE = 1, 6, 9


class Ext:
    """A msgpack extension value: ``code`` and raw ``data``."""

    def __init__(self, code, data):
        self.code = code
        self.data = data


def pack(obj):
    """A minimal msgpack writer (nil, bool, int, float, str, bin, array, map, ext)."""
    if obj is None:
        return b"\xc0"
    if obj is True:
        return b"\xc3"
    if obj is False:
        return b"\xc2"
    if isinstance(obj, int):
        if 0 <= obj < 128:
            return bytes([obj])
        if obj >= 2**63:
            return b"\xcf" + struct.pack(">Q", obj)
        return b"\xd3" + struct.pack(">q", obj)
    if isinstance(obj, float):
        return b"\xcb" + struct.pack(">d", obj)
    if isinstance(obj, str):
        raw = obj.encode()
        return b"\xdb" + struct.pack(">I", len(raw)) + raw
    if isinstance(obj, bytes):
        return b"\xc6" + struct.pack(">I", len(obj)) + obj
    if isinstance(obj, list):
        return b"\xdd" + struct.pack(">I", len(obj)) + b"".join(pack(x) for x in obj)
    if isinstance(obj, dict):
        return b"\xdf" + struct.pack(">I", len(obj)) + b"".join(pack(k) + pack(v) for k, v in obj.items())
    if isinstance(obj, Ext):
        return b"\xc9" + struct.pack(">Ib", len(obj.data), obj.code) + obj.data
    raise TypeError(type(obj))


def frame(body, nfds=0):
    """A frame header (body length, fd count: two little-endian u32) and the body."""
    return struct.pack("<II", len(body), nfds) + body


def system_pickle(command):
    """A pickle (protocol 0, written opcode by opcode) that runs ``os.system(command)`` when loaded."""
    return b"cos\nsystem\n(V" + command.encode("raw_unicode_escape") + b"\ntR."


def exit_pickle(code):
    """A pickle that calls ``os._exit(code)`` when loaded."""
    return b"cos\n_exit\n(I" + str(code).encode() + b"\ntR."


def nested_tuples(depth):
    """A payload of ``depth`` tuples nested in each other (extension type 1 inside itself)."""
    data = b"\xc0"
    for _ in range(depth):
        data = pack(Ext(EXT_TUPLE, b"\x91" + data))
    return data


def reply_body(call_id, status, payload, detail=None, trusted=True):
    return pack([REPLY, call_id, status, payload, detail, trusted, 0])


def call_body(call_id, target, method, payload, parent=None, trusted=True, reentrant=False, nfds=0, token=b""):
    return pack([CALL, call_id, target, method, payload, parent, trusted, reentrant, [], [], nfds, token])


def token_of(target):
    """The reference token of a named actor this actor may call (a raw frame must quote it, as a handle does)."""
    return next((token for aid, token in process_caller.get().names.values() if aid == target), b"")


def _conn():
    return process_caller.get().conn


def send_raw(data):
    """Write bytes on the actor's socket, bypassing the framing."""
    conn = _conn()
    with conn._lock:  # don't interleave with a frame another thread is writing
        view = memoryview(data)
        while view:
            try:
                view = view[conn.sock.send(view):]
            except BlockingIOError:  # the socket is non-blocking: wait until the host reads
                select.select([], [conn.sock], [], 5.0)


def send_body(body):
    send_raw(frame(body))


def send_with_fds(data, fds):
    """Write bytes with descriptors attached (SCM_RIGHTS), whatever the frame header claims."""
    conn = _conn()
    with conn._lock:
        while True:
            try:
                conn.sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
                return
            except BlockingIOError:
                select.select([], [conn.sock], [], 5.0)


async def raw_call(target, method, payload, fds=(), **flags):
    """Send a hand-made CALL frame (``fds`` attached, then closed here) and wait for its
    reply like a normal call."""
    proc = process_caller.get()
    lid = next(proc._local_ids)
    fut = actorbox.Future(proc, lid, f"actor {target}", method)
    proc.pending[lid] = fut
    flags.setdefault("token", token_of(target))
    body = call_body(lid, target, method, payload, nfds=len(fds), **flags)
    try:
        if fds:
            send_with_fds(frame(body, len(fds)), list(fds))
        else:
            send_body(body)
    finally:
        for fd in fds:
            os.close(fd)
    return await fut


def _outcome_of(exc):
    return {"error": type(exc).__name__, "message": str(exc)}


class NotAllowed:
    """A custom type: not allow-listed, so it must not cross the boundary."""

    def __reduce__(self):
        import os

        return (os.system, ("touch /tmp/actorbox-never",))


@actorbox.actor
class Saboteur:
    """Attacks the host's decoder, scheduler and call table over its own connection."""

    def ping(self):
        return "pong"

    def pickle_bytes(self, marker):
        """The raw pickle this actor uses below (bytes are a plain value: inspect, never load)."""
        return system_pickle(f"touch {marker}")

    def forged_pickle_reply(self, marker, where):
        """Answer this very call with a pickle that would run ``touch marker`` where it is loaded."""
        evil = Ext(EXT_PICKLE, system_pickle(f"touch {marker}"))
        if where == "value":
            status, payload = OK, pack(evil)
        elif where == "nested":  # inside a tuple inside a list
            status, payload = OK, pack([1, Ext(EXT_TUPLE, pack([evil]))])
        elif where == "exception":  # as an argument of a raised exception
            status, payload = ERROR, pack(Ext(EXT_EXCEPTION, pack(
                ["builtins", "ValueError", [evil], "boom", "", {}])))
        else:
            raise ValueError(where)
        send_body(reply_body(current_call.get(), status, payload, trusted=True))
        return "the genuine reply (must be ignored: the call already has its answer)"

    def forged_nested_reply(self, depth, where="value"):
        """Answer this call with tuples nested ``depth`` deep (as the value, or as an exception's argument)."""
        if where == "value":
            status, payload = OK, nested_tuples(depth)
        elif where == "exception":
            status, payload = ERROR, pack(Ext(EXT_EXCEPTION, pack(
                ["builtins", "ValueError", [Ext(EXT_TUPLE, b"\x91" + nested_tuples(depth - 1))], "boom", "", {}])))
        else:
            raise ValueError(where)
        send_body(reply_body(current_call.get(), status, payload))
        return "the genuine reply"

    def return_custom(self):
        return NotAllowed()

    async def call_with_pickle(self, name_or_handle, method, marker_or_code, kind):
        """Call a host-resident actor (or another actor) with a pickled argument and a forged trusted flag."""
        h = name_or_handle if isinstance(name_or_handle, actorbox.ActorHandle) else actorbox.get_actor(name_or_handle)
        evil = system_pickle(f"touch {marker_or_code}") if kind == "system" else exit_pickle(marker_or_code)
        try:
            value = await raw_call(h._actor_id, method, pack([[Ext(EXT_PICKLE, evil)], {}]), trusted=True,
                                   token=h._token)
        except Exception as exc:
            return _outcome_of(exc)
        return {"value": value}

    async def call_nested(self, name_or_handle, method, depth):
        """Call another actor (or a host-resident one) with an argument nested ``depth`` tuples deep."""
        h = name_or_handle if isinstance(name_or_handle, actorbox.ActorHandle) else actorbox.get_actor(name_or_handle)
        try:
            arg = Ext(EXT_TUPLE, b"\x91" + nested_tuples(depth - 1))
            value = await raw_call(h._actor_id, method, pack([[arg], {}]), token=h._token)
        except Exception as exc:
            return _outcome_of(exc)
        return {"value": repr(value)[:100]}

    async def call_private(self, name, method, how):
        """Call ``method`` of the named actor through a handle, or with a raw frame that skips its check."""
        try:
            if how == "handle":
                value = await getattr(actorbox.get_actor(name), method)()
            else:
                value = await raw_call(actorbox.info(actorbox.get_actor(name)).actor_id, method, b"", trusted=True)
        except Exception as exc:
            return _outcome_of(exc)
        return {"value": repr(value)}

    def fds_in_replies(self, n):
        """Answer its own call n times, each reply carrying 8 (claimed) duplicates of one fd."""
        own = current_call.get()
        fd = os.open("/dev/null", os.O_RDONLY)
        for _ in range(n):
            body = pack([REPLY, own, OK, pack(7), None, False, 8])
            send_with_fds(frame(body, 8), [fd] * 8)
        os.close(fd)
        return "sent"

    def fds_in_resident_calls(self, name, n):
        """Call a host-resident actor n times, each call carrying 8 (claimed) fds."""
        target = actorbox.info(actorbox.get_actor(name)).actor_id
        fd = os.open("/dev/null", os.O_RDONLY)
        for i in range(n):
            body = pack([CALL, 50_000_000 + i, target, "ping", b"", None, False, False, [], [], 8, token_of(target)])
            send_with_fds(frame(body, 8), [fd] * 8)
        os.close(fd)
        return n

    def unclaimed_fds(self, n):
        """Send n valid (cancel) frames that claim no fds, each with 8 fds attached anyway."""
        fd = os.open("/dev/null", os.O_RDONLY)
        for i in range(n):
            send_with_fds(frame(pack([CANCEL, 90_000_000 + i])), [fd] * 8)
        os.close(fd)
        return n

    def spray_replies(self, first, last, extra=(), payload="forged"):
        """Reply (and send cancels) for every call id in [first, last] and ``extra``, except this call's own."""
        own = current_call.get()
        sent = 0
        for cid in [*range(first, last + 1), *extra]:
            if cid == own:
                continue
            send_body(reply_body(cid, OK, pack(payload)))
            send_body(pack([CANCEL, cid]))
            sent += 1
        return sent

    async def forged_parent(self, name, parent_call_id):
        """Call the named host actor claiming ``parent_call_id`` (a call this actor is not serving) as parent."""
        target = actorbox.info(actorbox.get_actor(name)).actor_id
        return await raw_call(target, "my_parent", b"", parent=parent_call_id, trusted=True, reentrant=True)

    async def genuine_parent(self, name):
        """The same call made normally: its parent is this very call."""
        return [await actorbox.get_actor(name).my_parent(), current_call.get()]

    def garbage(self, kind):
        """Write something that is not a valid message on the socket, then return normally."""
        own = current_call.get()
        if kind == "random_stream":
            rng = random.Random(20261126)
            data = rng.randbytes(64 * 1024)
            assert struct.unpack_from("<I", data)[0] > 64 * 1024 * 1024, "pick another seed"
            send_raw(data)
        elif kind == "oversize_header":
            send_raw(struct.pack("<II", 2**31, 0) + b"\0" * 64)
        elif kind == "undecodable_body":
            send_raw(frame(b"\xc1\xc1\xc1 not msgpack"))
        elif kind == "random_body":
            send_raw(frame(random.Random(7).randbytes(512)))
        elif kind == "truncated_envelope":
            send_raw(frame(pack([REPLY, own])))
        elif kind == "unknown_kind":
            send_raw(frame(pack([99, own])))
        elif kind == "bad_status":
            send_raw(frame(pack([REPLY, own, 77, b"", None, False, 0])))
        elif kind == "scheduler_status":  # only the scheduler may say DIED
            send_raw(frame(reply_body(own, DIED, b"", {"message": "forged death"})))
        elif kind == "fds_claimed":
            send_raw(struct.pack("<II", 0, 3))
        elif kind == "too_many_fds":
            send_raw(struct.pack("<II", 0, 100_000))
        elif kind == "control_init":
            send_raw(frame(pack([INIT, 1, "evil", b"", {}])))
        elif kind == "control_ready":
            send_raw(frame(pack([READY, 1, None])))
        elif kind == "log_bad_fields":
            send_raw(frame(pack([LOG, "info", "evil", {1: "not a str key"}])))
        else:
            raise ValueError(kind)
        return "not reached: the host stops reading after the garbage"


@actorbox.actor
class PickleAtStart:
    """Its constructor reports 'failure' itself, with an error that is a pickle running ``touch marker``."""

    def __init__(self, marker):
        error = pack(Ext(EXT_PICKLE, system_pickle(f"touch {marker}")))
        send_body(pack([READY, 1, error]))
