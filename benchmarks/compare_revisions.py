"""Compare the RPC benchmark of this working tree with an earlier revision, in one sitting.

Run: ``python benchmarks/compare_revisions.py --rev <commit> [--pairs 3] [--n 3000]``

A small VM drifts by tens of microseconds within minutes, so two benchmark runs an
hour apart say little about a change. This script checks the other revision out
into a temporary git worktree and runs ``benchmarks/rpc.py`` from the two trees
alternately (base, this, base, this, ...), each in a fresh process whose
``actorbox`` is imported from its own tree (actors follow: the child's package
path comes from the host's ``actorbox.__file__``). It prints one table with the
median of each row over the runs, side by side, and the change in percent.
Numbers, not assertions.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from collections import defaultdict

from _common import print_table

_HERE = os.path.dirname(os.path.abspath(__file__))
_ROOT = os.path.dirname(_HERE)
# A latency row: "| placement | measurement | p50 | p99 | ratio | target |"; a rate row:
# "| measurement | median | min | max | target |". Both are read by their numbers.
_ROW = re.compile(r"^\|\s*(?P<cells>.+?)\s*\|$")


def _run(tree: str, args: list[str]) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": tree}
    out = subprocess.run([sys.executable, os.path.join(tree, "benchmarks", "rpc.py"), *args],
                         cwd=tree, env=env, capture_output=True, text=True, check=True).stdout
    rows: dict[str, float] = {}
    for line in out.splitlines():
        m = _ROW.match(line)
        if not m or set(line) <= {"|", "-"}:
            continue
        cells = [c.strip() for c in m.group("cells").split("|")]
        if cells[0] in ("placement", "measurement"):
            continue
        if cells[0] in ("one CPU", "two CPUs", "unpinned"):  # latency: p50 in µs
            rows[f"{cells[0]}: {cells[1].strip()} (p50 µs)"] = float(cells[2])
        else:  # pipelined rate
            rows[f"{cells[0]} (calls/s)"] = float(cells[1].replace(",", ""))
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--rev", required=True, help="the revision to compare against (e.g. the commit before a change)")
    p.add_argument("--pairs", type=int, default=3, help="alternating runs of each tree (default 3)")
    p.add_argument("--n", type=int, default=3000, help="round trips per latency row per run (default 3000)")
    p.add_argument("--backend", choices=("asyncio", "trio"), default="asyncio")
    args = p.parse_args()
    bench_args = ["--n", str(args.n), "--backend", args.backend]
    with tempfile.TemporaryDirectory(prefix="actorbox-rev-") as tmp:
        base = os.path.join(tmp, "base")
        subprocess.run(["git", "-C", _ROOT, "worktree", "add", "--detach", "-q", base, args.rev], check=True)
        try:
            runs: dict[str, dict[str, list[float]]] = {"base": defaultdict(list), "this": defaultdict(list)}
            for i in range(args.pairs):
                for name, tree in (("base", base), ("this", _ROOT)):
                    print(f"run {i + 1}/{args.pairs}: {name}", file=sys.stderr, flush=True)
                    for k, v in _run(tree, bench_args).items():
                        runs[name][k].append(v)
        finally:
            subprocess.run(["git", "-C", _ROOT, "worktree", "remove", "--force", base], check=False)
    rev = subprocess.run(["git", "-C", _ROOT, "rev-parse", "--short", args.rev], capture_output=True, text=True,
                         check=False).stdout.strip() or args.rev
    rows = []
    for key in runs["this"]:
        if key not in runs["base"]:
            continue
        b, t = statistics.median(runs["base"][key]), statistics.median(runs["this"][key])
        rows.append((key, f"{b:,.1f}", f"{t:,.1f}", f"{(t - b) / b * 100:+.1f}%"))
    print(f"benchmarks/rpc.py, {args.pairs} alternating runs per tree, {args.n} round trips per latency row, "
          f"backend {args.backend}; medians over runs")
    print()
    print_table(("row", f"base ({rev})", "this tree", "change"), rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
