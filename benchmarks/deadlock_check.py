"""What the scheduler's deadlock check costs the host's loop (scheduler/_deadlock.py).

Run: ``python benchmarks/deadlock_check.py``

A check runs when a nested call must wait for a slot. Here actor A's running call calls
B, whose running call has N calls out to a third actor Z (busy with a call that waits
for nothing): each check visits about N calls and finds no cycle, the worst shape for
its size. Rows: the time per check and per visited call for a few N, then a flood of
such nested calls for one second with the budget on (what an actor doing this all the
time gets: checks past the budget are skipped) next to the same with no check, as
calls routed per second. Numbers, not assertions.
"""

from __future__ import annotations

import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import structlog  # noqa: E402

from scheduler import Endpoint, Scheduler, envelope  # noqa: E402


class _Sink(Endpoint):
    """An endpoint that keeps the calls delivered to it (what the benchmark needs) and drops the rest."""

    def __init__(self, label: str, trusted: bool = False) -> None:
        super().__init__()
        self.label = label
        self.trusted = trusted
        self.calls: list[envelope.Call] = []
        self._ids = iter(range(1, 1 << 62))

    def deliver_call(self, call: envelope.Call) -> None:
        self.calls.append(call)

    def deliver_reply(self, reply: envelope.Reply) -> None:
        pass

    def deliver_cancel(self, call_id: int) -> None:
        pass

    def call(self, sched: Scheduler, target: int, method: str, parent: int | None = None) -> None:
        token = b"" if self.trusted else sched.actors[target].token
        sched.route(self, envelope.Call(next(self._ids), target, method, b"", parent, token=token))


def _build(n: int) -> tuple[Scheduler, _Sink, int, int]:
    sched = Scheduler(prefetch=0, max_outgoing=1 << 30)
    host = _Sink("host", trusted=True)
    ids, eps = {}, {}
    for name in "ABZ":
        a = sched.add_actor(name, name, 1)
        eps[name] = _Sink(name)
        sched.attach(a.actor_id, eps[name])
        ids[name] = a.actor_id
        host.call(sched, a.actor_id, "run")
    held = eps["B"].calls[0]
    for _ in range(n):
        eps["B"].call(sched, ids["Z"], "child", held.call_id)
    return sched, eps["A"], ids["B"], eps["A"].calls[0].call_id


def main() -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))  # the skipped-check events
    print("| calls visited | ms per check | µs per visited call |")
    print("|---|---|---|")
    for n in (100, 1000, 4990):
        sched, a, b, parent = _build(n)
        t0, k = time.perf_counter(), 0
        while time.perf_counter() - t0 < 0.5:
            sched._deadlocks._tokens = 1e12  # no budget: every check runs in full
            a.call(sched, b, "c", parent)
            k += 1
        dt = (time.perf_counter() - t0) / k
        print(f"| {n + 3} | {dt * 1e3:.3f} | {dt / (n + 3) * 1e6:.2f} |")
    rates = []
    for detect in (True, False):
        sched, a, b, parent = _build(4990)
        if not detect:
            sched._deadlocks.cycle = lambda new, actor: None  # type: ignore[method-assign]
        t0, k = time.perf_counter(), 0
        while time.perf_counter() - t0 < 1.0:
            a.call(sched, b, "c", parent)
            k += 1
        rates.append(k / (time.perf_counter() - t0))
    print(f"\nflood of such nested calls for 1 s, the budget on: {rates[0]:,.0f} routed/s "
          f"({rates[1]:,.0f}/s with no check: {(1 / rates[0] - 1 / rates[1]) * 1e6:.1f} µs more per call)")

if __name__ == "__main__":
    main()
