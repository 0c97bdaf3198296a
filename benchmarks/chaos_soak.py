"""Long runs of the fuzz, chaos and soak suites (tests/security), with a table of figures.

    python benchmarks/chaos_soak.py --fuzz-minutes 60 --calls 1000000 --chaos-calls 200000

Fuzz: the unit properties of tests/security/test_fuzz_frames.py (hostile frame streams
through FrameDecoder -> envelope.decode -> the untrusted payload decoder, with real
descriptors), run in batches until the time is up, then hypothesis frames written by a
real sandboxed actor at the host. Chaos: random SIGKILLs of 5 actors under 1,000 calls
in flight. Soak: calls 100 in flight over two actors, host RSS and descriptors before
and after. Figures, not assertions: a property that fails is reported with its input
and the run exits non-zero.
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import signal
import sys
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import anyio  # noqa: E402
import psutil  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import actorbox  # noqa: E402
from tests import strategies as s  # noqa: E402
from tests.security import test_chaos as chaos  # noqa: E402
from tests.security import test_fuzz_frames as fuzz  # noqa: E402
from tests.security.plugins.frame_sender import FrameSender  # noqa: E402
from tests.security.plugins.healthy import Healthy  # noqa: E402
from tests.security.plugins.workers import Worker  # noqa: E402


def _rss_mib() -> float:
    gc.collect()
    return psutil.Process().memory_info().rss / 2**20


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


# -- fuzz ----------------------------------------------------------------------------

_PROPERTIES = [
    ("decoder chain (host)", fuzz.test_decoder_chain_raises_only_typed_errors_and_keeps_no_descriptor,
     {"side": "host"}, {"reads": s.frame_streams()}),
    ("decoder chain (actor)", fuzz.test_decoder_chain_raises_only_typed_errors_and_keeps_no_descriptor,
     {"side": "actor"}, {"reads": s.frame_streams()}),
    ("call payloads (host)", fuzz.test_untrusted_call_payload_raises_only_serialization_error_and_closes_descriptors,
     {"side": "host"}, {"payload": s.hostile_payloads(), "nfds": st.integers(0, 4),
                        "resolved": st.lists(st.tuples(st.integers(0, 7), s.hostile_payloads(), st.just(False),
                                                       st.integers(0, 2)), max_size=2)}),
    ("reply payloads (host)", fuzz.test_untrusted_reply_payload_raises_only_serialization_error_and_closes_descriptors,
     {"side": "host"}, {"payload": s.hostile_payloads(), "nfds": st.integers(0, 4)}),
    ("reply payloads (actor)", fuzz.test_untrusted_reply_payload_raises_only_serialization_error_and_closes_descriptors,
     {"side": "actor"}, {"payload": s.hostile_payloads(), "nfds": st.integers(0, 4)}),
]


def _counted(test: Any, fixed: dict[str, Any], name: str, tried: dict[str, int]) -> Any:
    """The property of ``test`` (without its settings), counting the inputs it is given."""
    inner = test.hypothesis.inner_test

    def run(**drawn: Any) -> None:
        tried[name] += 1
        inner(**fixed, **drawn)

    return run


def fuzz_units(seconds: float, rows: list[tuple[str, str]]) -> bool:
    """Run each unit property in batches until ``seconds`` are spent; True if none failed."""
    end = time.monotonic() + seconds
    tried = {name: 0 for name, *_ in _PROPERTIES}
    ok = True
    while time.monotonic() < end and ok:
        for name, test, fixed, strategies in _PROPERTIES:
            batch = settings(max_examples=300, deadline=None, database=None, suppress_health_check=list(HealthCheck))
            prop = batch(given(**strategies)(_counted(test, fixed, name, tried)))
            try:
                prop()
            except Exception as exc:  # the property failed: hypothesis has printed the input
                print(f"FAILED {name}: {exc!r}", file=sys.stderr)
                ok = False
                break
    for name, n in tried.items():
        rows.append((f"fuzz inputs: {name}", f"{n:,}"))
    rows.append(("fuzz inputs, unit level", f"{sum(tried.values()):,}"))
    return ok


async def fuzz_end_to_end(seconds: float, rows: list[tuple[str, str]]) -> bool:
    """Hypothesis frames written by a sandboxed actor at the host for ``seconds``."""
    batch: list[Any] = []

    @settings(max_examples=200, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(frames=st.lists(s.hostile_frames(), min_size=1, max_size=4))
    def draw(frames: Any) -> None:
        batch.append(frames)

    sent = untyped = left_waiting = 0
    end = time.monotonic() + seconds
    async with actorbox.Runtime() as rt:
        healthy, sender = await rt.start(Healthy), await rt.start(FrameSender)
        fds0 = _fds()
        while time.monotonic() < end:
            batch.clear()
            draw()
            for frames in batch:
                if time.monotonic() >= end:
                    break
                try:
                    with anyio.fail_after(fuzz.SENDER_TIMEOUT):
                        await sender.send(frames)
                except TimeoutError:
                    left_waiting += 1  # it broke its own stream mid-frame; until_alive kills it
                except Exception as exc:
                    untyped += not fuzz._remote(exc)
                sent += len(frames)
                await fuzz.until_alive(rt, sender, healthy)
            with anyio.fail_after(15):
                assert await healthy.add(2, 3) == 5
        restarts = next(a.restarts for a in rt.actors() if a.label == actorbox.info(sender).label)
        with anyio.fail_after(15):
            while rt.pending_calls() or _fds() > fds0:
                await anyio.sleep(0.05)
        fds1 = _fds()
    rows += [("fuzz frames sent by an actor", f"{sent:,}"), ("  its disconnects (restarts)", f"{restarts:,}"),
             ("  untyped errors at the caller", str(untyped)),
             ("  own calls left unanswered (killed)", str(left_waiting)),
             ("  host fds before -> after", f"{fds0} -> {fds1}")]
    return untyped == 0


# -- chaos and soak --------------------------------------------------------------------

async def run_chaos(calls: int, rows: list[tuple[str, str]]) -> bool:
    rng = random.Random(int(time.time()))
    tally = chaos.Tally()
    async with actorbox.Runtime() as rt:
        handles = [await rt.start(Worker) for _ in range(chaos.ACTORS)]
        fds0, rss0 = _fds(), _rss_mib()
        stop = anyio.Event()
        todo = iter(range(calls))

        async def caller() -> None:
            for x in todo:
                await chaos._call(handles[x % len(handles)], x, tally)

        t0 = time.monotonic()
        async with anyio.create_task_group() as tg:
            tg.start_soon(chaos._killer, rt, rng, tally, stop)
            async with anyio.create_task_group() as callers:
                for _ in range(chaos.IN_FLIGHT):
                    callers.start_soon(caller)
            stop.set()
        dt = time.monotonic() - t0
        restarts = sum(a.restarts for a in rt.actors() if a.kind == "actor")
        with anyio.fail_after(30):
            while any(a.state != "alive" for a in rt.actors() if a.kind == "actor"):
                await anyio.sleep(0.05)
        pending = len(rt.pending_calls())
        fds1, rss1 = _fds(), _rss_mib()
    typed = sum(tally.typed.values())
    rows += [("chaos calls (1,000 in flight, 5 actors)", f"{tally.issued:,} in {dt:.1f} s"),
             ("  answered with their own value", f"{tally.ok:,}"), ("  typed failures", f"{typed:,} {tally.typed}"),
             ("  untyped / hung / wrong value", f"{len(tally.untyped)} / {tally.hung} / {tally.wrong}"),
             ("  SIGKILLs / restarts", f"{tally.kills} / {restarts}"), ("  pending after", str(pending)),
             ("  host fds before -> after", f"{fds0} -> {fds1}"),
             ("  host RSS MiB before -> after", f"{rss0:.0f} -> {rss1:.0f}")]
    return not tally.untyped and not tally.hung and not tally.wrong and tally.ok + typed == calls and not pending


async def run_soak(calls: int, rows: list[tuple[str, str]]) -> bool:
    from tests.security import test_soak as soak

    async with actorbox.Runtime() as rt:
        handles = [await rt.start(Worker), await rt.start(Worker)]
        await soak._run(handles, soak.WARM_UP)
        fds0, rss0 = _fds(), _rss_mib()
        t0 = time.monotonic()
        ok = await soak._run(handles, calls)
        dt = time.monotonic() - t0
        fds1, rss1 = _fds(), _rss_mib()
        pending = len(rt.pending_calls())
    rows += [(f"soak calls ({soak.IN_FLIGHT} in flight, 2 actors)", f"{calls:,} in {dt:.1f} s ({calls / dt:,.0f}/s)"),
             ("  answered right", f"{ok:,}"), ("  pending after", str(pending)),
             ("  host RSS MiB after warm-up -> end", f"{rss0:.0f} -> {rss1:.0f}"),
             ("  host fds after warm-up -> end", f"{fds0} -> {fds1}")]
    return ok == calls and not pending and rss1 - rss0 < 30 and abs(fds1 - fds0) <= 2


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fuzz-minutes", type=float, default=5.0, help="unit-level fuzzing time (default 5)")
    p.add_argument("--e2e-minutes", type=float, default=1.0, help="actor-frames-at-the-host fuzzing time (default 1)")
    p.add_argument("--calls", type=int, default=1_000_000, help="soak calls (default 1,000,000)")
    p.add_argument("--chaos-calls", type=int, default=100_000, help="calls under random SIGKILLs (default 100,000)")
    p.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    args = p.parse_args()
    rows: list[tuple[str, str]] = [("backend", args.backend)]
    t0 = time.monotonic()
    ok = True
    if args.fuzz_minutes > 0:
        ok &= fuzz_units(args.fuzz_minutes * 60, rows)
    if args.e2e_minutes > 0:
        ok &= anyio.run(fuzz_end_to_end, args.e2e_minutes * 60, rows, backend=args.backend)
    if args.chaos_calls > 0:
        ok &= anyio.run(run_chaos, args.chaos_calls, rows, backend=args.backend)
    if args.calls > 0:
        ok &= anyio.run(run_soak, args.calls, rows, backend=args.backend)
    rows.append(("wall time", f"{time.monotonic() - t0:.0f} s"))
    rows.append(("outcome", "all held" if ok else "FAILED (see above)"))
    width = max(len(k) for k, _ in rows)
    print()
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    return 0 if ok else 1


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.exit(main())
