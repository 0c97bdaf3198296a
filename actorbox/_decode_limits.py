"""Decoding budgets: how much one message from an actor may decode to.

msgpack builds whatever the bytes describe. One byte is an empty map (a 64-byte
dict), an extension value re-enters the decoder, and integer keys that collide in
CPython's integer hash (it is not randomized: ``k * (2**61 - 1) + c`` all hash
alike) make each insert walk every earlier key. A message under the frame limit
could so take gigabytes of the host's memory and minutes of its event loop.

A ``Meter`` is one message's budget. Its hooks go to ``msgpack.unpackb``: each
container is charged as msgpack completes it, and refused before it is kept;
each extension value is charged before it is decoded; a map's keys are checked
before the dict is built (msgpack hands over its pairs, not a dict). Over the
budget, decoding stops with a ``SerializationError`` naming the limit and the
``Runtime`` knob that raises it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from operator import itemgetter
from typing import Any, TypedDict

from ._errors import SerializationError, UsageError

# The budget is in values: each element, key and value counts one, and what costs
# more to build counts more (below), so that a budget costs about the same worst-case
# time whatever the payload's shape: ~0.1-0.3 s of one core per million on this
# project's 2-core box (measured in tests/security/test_decoding_budgets.py), and
# ~70 MB. An ordinary result is far smaller: big data travels as arrays or tensors,
# one value each (their bytes are in shared memory, never decoded item by item).
DEFAULT_MAX_DECODED_ITEMS = 1_000_000
# Non-string keys per map (members per set). String and bytes hashes are randomized
# per process; other keys can be made to collide (equal hashes are refused below),
# and this bounds what keys that nearly collide could cost.
DEFAULT_MAX_MAP_KEYS = 100_000
# Payloads up to this size decode without hooks (the fast path of every small call):
# whatever they hold costs at most a few ms and ~0.5 MB (800 colliding keys, 2,700
# extension values, 8,192 empty containers).
UNMETERED_BYTES = 8 * 1024
# A container beyond its elements: its allocation and the hook call that counts it.
CONTAINER_COST = 3
# An extension value (tuple, set, exception, handle...) re-enters the decoder: ~1-2 µs.
EXT_COST = 16
# Maps (sets) with more non-string keys than this are checked for hash collisions; in
# a smaller one they cost at most 8 key comparisons per key, which its charge covers.
CHECKED_MAP = 16
# Pairs of keys with equal hashes per message. Inserting n keys that share a hash
# compares each with every earlier one: ~5 ns * n**2 / 2 (40,000 keys: 13 s). Ordinary
# data has a pair now and then (hash(-1) == hash(-2)); an attack needs thousands.
MAX_COLLIDING_PAIRS = 1024

_SAFE_KEYS = frozenset((str, bytes))  # hashed with a per-process random key
_first = itemgetter(0)


class UnpackOptions(TypedDict):
    """The keyword arguments of ``msgpack.unpackb`` that cap one container's length."""

    max_array_len: int
    max_map_len: int


@dataclass(frozen=True, slots=True)
class DecodeLimits:
    """What one message from an actor may decode to (see ``Runtime(max_decoded_items=...)``)."""

    max_items: int = DEFAULT_MAX_DECODED_ITEMS
    max_map_keys: int = DEFAULT_MAX_MAP_KEYS

    def __post_init__(self) -> None:
        for knob, value in (("max_decoded_items", self.max_items), ("max_map_keys", self.max_map_keys)):
            if type(value) is not int or value < 1:
                raise UsageError(f"Runtime({knob}=...) must be a positive integer, got {value!r}")

    def unpack_options(self) -> UnpackOptions:
        """msgpack's own per-container caps: checked on a container's header, before it is
        allocated (a container is charged only once complete)."""
        return {"max_array_len": self.max_items, "max_map_len": max(1, self.max_items // 2)}


class Meter:
    """The budget of one message being decoded; ``on_list``/``on_map`` are msgpack's hooks."""

    __slots__ = ("collisions", "left", "limits")

    def __init__(self, limits: DecodeLimits) -> None:
        self.limits = limits
        self.left = limits.max_items
        self.collisions = MAX_COLLIDING_PAIRS

    def charge(self, n: int) -> None:
        self.left -= n
        if self.left < 0:
            raise self.over()

    def on_list(self, value: list[Any]) -> list[Any]:
        self.left -= len(value) + CONTAINER_COST
        if self.left < 0:
            raise self.over()
        return value

    def on_map(self, pairs: list[tuple[Any, Any]]) -> dict[Any, Any]:
        n = len(pairs)
        self.left -= 2 * n + CONTAINER_COST
        if self.left < 0:
            raise self.over()
        if n > CHECKED_MAP:
            self.check_keys(list(map(_first, pairs)), "map", "keys")
        return dict(pairs)

    def check_keys(self, keys: Any, what: str, noun: str) -> None:
        """Refuse a map's keys (a set's members) that would make building it slow:
        too many that are not strings, or many whose hashes are equal."""
        if len(keys) <= CHECKED_MAP:
            return
        types = set(map(type, keys))
        if types <= _SAFE_KEYS:
            return
        if types & _SAFE_KEYS:
            keys = [k for k in keys if type(k) not in _SAFE_KEYS]
        if len(keys) > self.limits.max_map_keys:
            raise SerializationError(
                f"a {what} in the payload from an actor has {len(keys)} non-string {noun}, over the limit of "
                f"{self.limits.max_map_keys} (Runtime(max_map_keys={self.limits.max_map_keys})); use string "
                "keys or send them as a list, or raise Runtime(max_map_keys=...)")
        try:
            if len(set(map(hash, keys))) == len(keys):
                return
        except TypeError as exc:  # an unhashable key (a list): what building it would say
            raise SerializationError(f"undecodable payload: {exc}") from None
        hashes = map(hash, keys)
        self.collisions -= sum(g * (g - 1) // 2 for g in Counter(hashes).values())
        if self.collisions < 0:
            raise SerializationError(
                f"refused a payload from an actor whose {what} {noun} collide in hash (over "
                f"{MAX_COLLIDING_PAIRS} pairs share a hash value): building it would take time quadratic in "
                "their number, which is how a hash-flooding attack stalls a process")

    def over(self) -> SerializationError:
        n = self.limits.max_items
        return SerializationError(
            f"the payload from an actor decodes to more than {n} values (the limit is "
            f"Runtime(max_decoded_items={n})); send big data as a numpy array or torch tensor (shared memory, "
            "one value however large) or as bytes, or raise Runtime(max_decoded_items=...)")
