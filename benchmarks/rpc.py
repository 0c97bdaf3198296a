"""RPC benchmark: actorbox call latency and throughput next to a raw Unix-socket floor.

Run: ``python benchmarks/rpc.py [--n 5000] [--backend asyncio|trio] [--sandbox required|disabled] [--check]``

In one run it measures

(a) the floor: an 8-byte ping-pong between two asyncio processes over a Unix
    socketpair (default-loop asyncio streams on both sides);
(b) actorbox sequential round trips of a no-arg call to a sync and to an async
    method (p50, p99);
(c) pipelined throughput: 1,000 calls in flight to one actor, repeated;
(d) p50 / floor and pass/fail against the targets of issue 2 (p50 within 2x the
    floor, at least 20,000 calls/s pipelined).

Numbers are informational: nothing here is a test. ``--check`` exits 1 when a
target is missed, for use by hand.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass

import anyio
import structlog

import actorbox

MSG = b"pingpong"  # 8 bytes
PIPELINE_DEPTH = 1000
TARGET_RATIO = 2.0
TARGET_CALLS_PER_S = 20_000


# Module level so they travel by value (cloudpickle) to the actor process.
@actorbox.actor
class Echo:
    """A no-op actor: the benchmark measures the call path only."""

    def ping(self) -> None:
        return None

    async def aping(self) -> None:
        return None


@dataclass(frozen=True)
class Latency:
    p50_us: float
    p99_us: float
    n: int


def latency(samples_ns: list[int]) -> Latency:
    s = sorted(samples_ns)
    return Latency(s[len(s) // 2] / 1000, s[min(len(s) - 1, int(len(s) * 0.99))] / 1000, len(s))


# -- (a) the floor ----------------------------------------------------------------------


async def _echo_asyncio(sock: socket.socket) -> None:
    reader, writer = await asyncio.open_unix_connection(sock=sock)
    try:
        while True:
            data = await reader.readexactly(len(MSG))
            writer.write(data)
            await writer.drain()
    except asyncio.IncompleteReadError:
        pass
    finally:
        writer.close()


def _echo_blocking(sock: socket.socket) -> None:
    while data := sock.recv(len(MSG)):
        sock.sendall(data)


def echo_child(fd: int, mode: str) -> None:
    """The floor's other process: echo 8-byte messages until EOF."""
    sock = socket.socket(fileno=fd)
    if mode == "asyncio":
        asyncio.run(_echo_asyncio(sock))
    else:
        _echo_blocking(sock)


async def _ping_asyncio(sock: socket.socket, n: int, warmup: int) -> list[int]:
    reader, writer = await asyncio.open_unix_connection(sock=sock)
    samples: list[int] = []
    clock = time.perf_counter_ns
    try:
        for i in range(warmup + n):
            t0 = clock()
            writer.write(MSG)
            await writer.drain()
            await reader.readexactly(len(MSG))
            if i >= warmup:
                samples.append(clock() - t0)
    finally:
        writer.close()
        await writer.wait_closed()
    return samples


def _ping_blocking(sock: socket.socket, n: int, warmup: int) -> list[int]:
    samples: list[int] = []
    clock = time.perf_counter_ns
    for i in range(warmup + n):
        t0 = clock()
        sock.sendall(MSG)
        got = 0
        while got < len(MSG):
            chunk = sock.recv(len(MSG) - got)
            if not chunk:
                raise RuntimeError("the echo process closed the socket")
            got += len(chunk)
        if i >= warmup:
            samples.append(clock() - t0)
    return samples


def measure_floor(mode: str, n: int, warmup: int) -> Latency:
    """Round trips between this process and a freshly spawned echo process.

    ``asyncio``: default-loop asyncio streams on both sides (the target's basis);
    ``blocking``: blocking sockets on both sides (the lowest this machine does).
    """
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    proc = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "--echo-fd", str(child.fileno()), "--echo-mode", mode],
        pass_fds=(child.fileno(),))
    child.close()
    try:
        if mode == "asyncio":
            samples = asyncio.run(_ping_asyncio(parent, n, warmup))
        else:
            samples = _ping_blocking(parent, n, warmup)
    finally:
        parent.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc.returncode != 0:
        raise RuntimeError(f"the echo process exited with code {proc.returncode}")
    return latency(samples)


# -- (b), (c) actorbox ------------------------------------------------------------------


@dataclass(frozen=True)
class ActorboxResult:
    sync: Latency
    async_: Latency
    rates: list[float]  # calls/s, one per repeat


async def _sequential(call: object, n: int, warmup: int) -> Latency:
    samples: list[int] = []
    clock = time.perf_counter_ns
    for _ in range(warmup):
        await call()  # type: ignore[operator]
    for _ in range(n):
        t0 = clock()
        await call()  # type: ignore[operator]
        samples.append(clock() - t0)
    return latency(samples)


async def _pipelined(h: actorbox.ActorHandle, repeats: int) -> list[float]:
    rates = []
    for i in range(repeats + 1):
        t0 = time.perf_counter()
        futs = [h.ping() for _ in range(PIPELINE_DEPTH)]
        for f in futs:
            await f
        dt = time.perf_counter() - t0
        if i:  # the first round is a warm-up
            rates.append(PIPELINE_DEPTH / dt)
    return rates


async def measure_actorbox(n: int, warmup: int, repeats: int, sandbox: str) -> ActorboxResult:
    async with actorbox.Runtime(sandbox=sandbox) as rt:
        h = await rt.start(Echo)
        sync = await _sequential(h.ping, n, warmup)
        async_ = await _sequential(h.aping, n, warmup)
        rates = await _pipelined(h, repeats)
        await h.stop()
    return ActorboxResult(sync, async_, rates)


# -- (d) report -------------------------------------------------------------------------


@dataclass(frozen=True)
class Floors:
    before: Latency  # asyncio streams, measured before the actorbox rows
    after: Latency  # the same, measured after them
    blocking: Latency  # blocking sockets: reference only

    @property
    def basis_us(self) -> float:
        """The faster of the two asyncio floors: the stricter reading of the target."""
        return min(self.before.p50_us, self.after.p50_us)


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: tuple[str, ...]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    print(line(header))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print(line(r))


def report(floors: Floors, res: ActorboxResult, backend: str, sandbox: str, n: int) -> bool:
    basis = floors.basis_us
    ok = True
    rows: list[tuple[str, ...]] = []
    for label, lat in (("(a) floor: asyncio streams, 8 B ping-pong (before)", floors.before),
                       ("(a) floor: asyncio streams, 8 B ping-pong (after)", floors.after)):
        rows.append((label, f"{lat.p50_us:.1f}", f"{lat.p99_us:.1f}", f"{lat.p50_us / basis:.2f}x", ""))
    rows.append(("    reference: blocking sockets, 8 B ping-pong", f"{floors.blocking.p50_us:.1f}",
                 f"{floors.blocking.p99_us:.1f}", f"{floors.blocking.p50_us / basis:.2f}x", "(not a target)"))
    for label, lat in (("(b) actorbox: sync method, no args", res.sync),
                       ("(b) actorbox: async method, no args", res.async_)):
        ratio = lat.p50_us / basis
        good = ratio <= TARGET_RATIO
        ok &= good
        rows.append((label, f"{lat.p50_us:.1f}", f"{lat.p99_us:.1f}", f"{ratio:.2f}x",
                     f"{_verdict(good)} (p50 <= {TARGET_RATIO:g}x floor)"))

    rate_med = statistics.median(res.rates)
    good = rate_med >= TARGET_CALLS_PER_S
    ok &= good
    rrows = [(f"(c) pipelined: {PIPELINE_DEPTH:,} sync calls in flight, {len(res.rates)} rounds", f"{rate_med:,.0f}",
              f"{min(res.rates):,.0f}", f"{max(res.rates):,.0f}",
              f"{_verdict(good)} (median >= {TARGET_CALLS_PER_S:,})")]

    print(f"actorbox RPC benchmark: host backend {backend}, sandbox {sandbox}, Python {platform.python_version()}, "
          f"{os.cpu_count()} CPUs, {n} timed round trips per latency row")
    print()
    _table(("measurement", "p50 µs", "p99 µs", "p50/floor", "target"), rows)
    print()
    _table(("measurement", "median calls/s", "min calls/s", "max calls/s", "target"), rrows)
    print()
    print(f"(d) floor = the faster asyncio floor ({basis:.1f} µs p50); overall: {_verdict(ok)}")
    return ok


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--n", type=int, default=5000, help="timed round trips per latency row (default 5000)")
    p.add_argument("--warmup", type=int, default=500, help="untimed round trips before each row (default 500)")
    p.add_argument("--repeats", type=int, default=5, help="pipelined rounds of 1,000 calls (default 5)")
    p.add_argument("--backend", choices=("asyncio", "trio"), default="asyncio",
                   help="the host's event loop for the actorbox rows (the floor is always asyncio)")
    p.add_argument("--sandbox", choices=("required", "disabled"), default="required",
                   help="run the actor in bubblewrap (default) or explicitly unsandboxed")
    p.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    # Internal: run as the floor's echo process.
    p.add_argument("--echo-fd", type=int, help=argparse.SUPPRESS)
    p.add_argument("--echo-mode", choices=("asyncio", "blocking"), default="asyncio", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.echo_fd is not None:
        echo_child(args.echo_fd, args.echo_mode)
        return 0
    if args.n < 1 or args.warmup < 0 or args.repeats < 1:
        p.error("--n and --repeats must be >= 1, --warmup >= 0")

    # The application (this script) owns logging: keep actor.started & co. out of the table.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    # This machine's latencies drift by tens of µs between runs, so the floor is
    # measured on both sides of the actorbox rows.
    before = measure_floor("asyncio", args.n, args.warmup)
    res = anyio.run(measure_actorbox, args.n, args.warmup, args.repeats, args.sandbox, backend=args.backend)
    after = measure_floor("asyncio", args.n, args.warmup)
    blocking = measure_floor("blocking", args.n, args.warmup)
    ok = report(Floors(before, after, blocking), res, args.backend, args.sandbox, args.n)
    return 0 if ok or not args.check else 1


if __name__ == "__main__":
    sys.exit(main())
