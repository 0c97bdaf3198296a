"""Calls given Futures as arguments: they wait in the table (WAITING) for those calls' results.

A call that names the caller's own calls in flight (``Call.deps``) is not queued on its
actor until each of them has finished. Then it is either failed with the first failure
(``DEP_FAILED``, the chain of failed calls described by scheduler._dependency) or
admitted with their results attached (``Call.resolved``, their descriptors after the
call's own). A failure passed down a chain of Futures releases each link in turn, never
a call deeper in the stack.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from . import _envelope as envelope
from ._call_table import QUEUED, WAITING, ActorEntry, CallEntry, DepResult
from ._dependency import DependencyFailure, FailedCall
from ._endpoint import Endpoint
from ._fds import dup_all


class FutureArgs:
    """The Futures-as-arguments bookkeeping of one Scheduler, which it calls back to end
    (``finish``) or admit (``admit``) a call once its arguments' calls have all finished."""

    __slots__ = ("_actors", "_admit", "_calls", "_finish", "_releasing", "_to_release")

    def __init__(self, calls: dict[int, CallEntry], actors: dict[int, ActorEntry],
                 finish: Callable[[CallEntry, envelope.Reply, bool | None], None],
                 admit: Callable[[CallEntry], None]) -> None:
        self._calls = calls
        self._actors = actors
        self._finish = finish
        self._admit = admit
        # Calls whose dependencies have all finished, to release one after another.
        self._to_release: deque[CallEntry] = deque()
        self._releasing = False

    def wait(self, entry: CallEntry, caller: Endpoint, local_ids: tuple[int, ...]) -> None:
        """``entry`` (in the table) needs the results of ``caller``'s calls ``local_ids``:
        it waits for them, or is refused when one is not a call of the caller's in flight."""
        deps: list[int] = []
        for lid in local_ids:
            gid = caller.outgoing.get(lid)
            if gid is None or gid == entry.call_id or gid not in self._calls:
                self._finish(entry, envelope.Reply(entry.call_id, envelope.Status.REFUSED, b"", {
                    "message": "an argument is a Future of a call that is not in flight from this caller; "
                               "await it and pass its value"}), None)
                return
            deps.append(gid)
        entry.state = WAITING
        entry.deps = deps
        entry.results = {}
        for gid in dict.fromkeys(deps):
            dep = self._calls[gid]
            if dep.dependents is None:
                dep.dependents = []
            dep.dependents.append(entry.call_id)

    def finished(self, dep: CallEntry, reply: envelope.Reply, trusted: bool) -> None:
        """``dep`` finished: hand its result to the calls that wait for it."""
        for gid in dep.dependents or ():
            d = self._calls.get(gid)
            if d is None or d.state != WAITING or d.results is None or d.deps is None:
                continue
            a = self._actors.get(dep.actor_id)
            who = FailedCall(a.label if a else str(dep.actor_id), dep.method, dep.caller_local_id, "")
            try:
                fds = dup_all(reply.fds)
            except OSError as exc:  # out of descriptors: this dependent fails, the reply goes on
                d.results[dep.call_id] = DepResult(envelope.Status.REFUSED, b"", {"message": (
                    f"the host could not hand this result on ({exc.strerror}); close files it holds or "
                    "raise its descriptor limit (ulimit -n)")}, True, (), who)
            else:
                d.results[dep.call_id] = DepResult(reply.status, reply.payload, reply.detail, trusted, fds, who)
            if all(g in d.results for g in d.deps):
                self._to_release.append(d)
        if self._releasing:
            return  # the release loop below, further up this stack, takes them
        self._releasing = True
        try:
            while self._to_release:
                self._release(self._to_release.popleft())
        finally:
            self._releasing = False

    def _release(self, d: CallEntry) -> None:
        """All of ``d``'s dependencies finished: fail it with the first failure, or admit it."""
        assert d.results is not None and d.deps is not None and d.call is not None
        results = [d.results[g] for g in d.deps]
        failed = next((r for r in results if r.status != envelope.Status.OK), None)
        if failed is not None:
            # The first failure down the chain, as a structured value (see _dependency): its
            # error payload travels on unchanged, decoded by the caller with its producer's trust.
            dep = FailedCall(failed.producer.actor, failed.producer.method, failed.producer.caller_call_id,
                             failed.status.name)
            info = DependencyFailure.of(dep, failed.detail).to_detail()
            self._finish(d, envelope.Reply(d.call_id, envelope.Status.DEP_FAILED, failed.payload, info),
                         failed.trusted)
            return
        call = d.call
        # A Future passed twice shares one result: each later use gets its own descriptors,
        # so every fd in the call is distinct and closed exactly once.
        seen: set[int] = set()
        fdsets: list[tuple[int, ...]] = []
        for g, r in zip(d.deps, results, strict=True):
            fdsets.append(dup_all(r.fds) if g in seen else r.fds)
            seen.add(g)
        d.call = envelope.Call(call.call_id, call.target, call.method, call.payload, call.parent_call_id,
                               trusted=call.trusted,
                               resolved=tuple((int(r.status), r.payload, r.trusted, len(f))
                                              for r, f in zip(results, fdsets, strict=True)),
                               fds=call.fds + tuple(fd for f in fdsets for fd in f))
        d.results = None
        d.state = QUEUED
        self._admit(d)
