"""Why a call that waited for its Future arguments was not run: the chain of failed dependencies.

A call ``c`` given a Future ``f`` waits for ``f``'s call; if that failed, ``c`` fails
with ``DEP_FAILED`` instead of running. ``f``'s call may itself have been one that was not
run for one of *its* arguments, and so on: the reply names every hop down to the first
call that really failed, whose error payload (if any) the reply carries unchanged.

On the wire the chain is a plain map under the reply's ``detail`` (a REPLY's detail must be
msgpack), one entry per hop in a list: no nesting, so a long chain costs a flat list.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

_KEY = "dependency_failure"
# Hops kept: the caller reports the first failure and how many calls waited in between,
# so a chain longer than this (calls fed one by one through a loop) keeps its last hops.
MAX_HOPS = 64


@dataclass(frozen=True, slots=True)
class FailedCall:
    """One call in the chain: who ran it and how it ended."""

    actor: str  # the callee's label
    method: str
    caller_call_id: int  # the id its caller knows it by
    status: str  # an envelope Status name: ERROR, DIED, ... or DEP_FAILED for a hop in between


@dataclass(frozen=True, slots=True)
class DependencyFailure:
    """The arguments' calls a ``DEP_FAILED`` call waited on, nearest first, down to the first
    real failure (``cause``), with that failure's own detail (DIED: pid, exit code ...)."""

    chain: tuple[FailedCall, ...]
    detail: dict[str, Any] | None = None
    hops: int = 0  # calls that waited in between, counting any the chain dropped (MAX_HOPS)

    @property
    def cause(self) -> FailedCall:
        """The first call down the chain that failed (not for an argument of its own)."""
        return self.chain[-1]

    @classmethod
    def of(cls, dep: FailedCall, detail: dict[str, Any] | None) -> DependencyFailure:
        """The failure of a call whose argument ``dep`` ended with ``detail``: when ``dep``
        itself was not run for its arguments, its chain continues this one."""
        inner = cls.from_detail(detail) if dep.status == "DEP_FAILED" else None
        if inner is None:
            return cls((dep,), detail, 0)
        chain = (dep, *inner.chain)
        if len(chain) > MAX_HOPS:
            chain = chain[:1] + chain[len(chain) - MAX_HOPS + 1:]
        return cls(chain, inner.detail, inner.hops + 1)

    def to_detail(self) -> dict[str, Any]:
        """The reply's ``detail`` for this failure."""
        return {_KEY: {"chain": [[c.actor, c.method, c.caller_call_id, c.status] for c in self.chain],
                       "detail": self.detail, "hops": self.hops}}

    @classmethod
    def from_detail(cls, detail: dict[str, Any] | None) -> DependencyFailure | None:
        """The failure a reply's ``detail`` describes; None when it describes none (or not in this shape)."""
        raw = (detail or {}).get(_KEY)
        if type(raw) is not dict:
            return None
        chain, inner, hops = raw.get("chain"), raw.get("detail"), raw.get("hops")
        if type(chain) is not list or not chain or type(hops) is not int or not (inner is None or type(inner) is dict):
            return None
        calls: list[FailedCall] = []
        for c in chain:
            if not (type(c) is list and len(c) == 4 and type(c[0]) is str and type(c[1]) is str
                    and type(c[2]) is int and type(c[3]) is str):
                return None
            calls.append(FailedCall(c[0], c[1], c[2], c[3]))
        return cls(tuple(calls), inner, hops)
