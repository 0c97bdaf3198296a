"""Compare the RPC (or task) benchmark of this working tree with an earlier revision, in one sitting.

Run: ``python benchmarks/compare_revisions.py --rev <commit> [--pairs 3] [--n 3000] [--bench rpc|tasks]
[--this-rev <commit>]``

A small VM drifts by tens of microseconds within minutes, so two benchmark runs an
hour apart say little about a change. This script checks the other revision out
into a temporary git worktree and runs ``benchmarks/rpc.py`` (``--bench tasks``:
``benchmarks/tasks.py``, without Ray) from the two trees alternately (base, this,
base, this, ...); ``--this-rev`` checks that revision out in place of this working
tree (so changes not committed, anyone's, stay out of it). Each run is a fresh process whose
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


def _run(tree: str, bench: str, args: list[str]) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": tree}
    out = subprocess.run([sys.executable, os.path.join(tree, "benchmarks", f"{bench}.py"), *args],
                         cwd=tree, env=env, capture_output=True, text=True, check=True).stdout
    rows: dict[str, float] = {}
    for line in out.splitlines():
        m = _ROW.match(line)
        if not m or set(line) <= {"|", "-"}:
            continue
        cells = [c.strip() for c in m.group("cells").split("|")]
        if cells[0] in ("placement", "measurement"):
            continue
        if bench == "tasks":  # "| measurement | actorbox | ray |": the actorbox column
            rows[cells[0]] = float(cells[1].rstrip("x").replace(",", ""))
        elif cells[0] in ("one CPU", "two CPUs", "unpinned"):  # latency: p50 in µs
            rows[f"{cells[0]}: {cells[1].strip()} (p50 µs)"] = float(cells[2])
        else:  # pipelined rate
            rows[f"{cells[0]} (calls/s)"] = float(cells[1].replace(",", ""))
    return rows


def _num(v: float) -> str:
    return f"{v:,.1f}" if abs(v) >= 10 else f"{v:.3f}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--rev", required=True, help="the revision to compare against (e.g. the commit before a change)")
    p.add_argument("--pairs", type=int, default=3, help="alternating runs of each tree (default 3)")
    p.add_argument("--this-rev", help="compare this revision instead of the working tree")
    p.add_argument("--bench", choices=("rpc", "tasks"), default="rpc",
                   help="benchmarks/rpc.py (default) or benchmarks/tasks.py (Ray left out)")
    p.add_argument("--n", type=int, default=None,
                   help="rpc: round trips per latency row per run (default 3000); tasks: no-op tasks at once (1000)")
    p.add_argument("--backend", choices=("asyncio", "trio"), default="asyncio")
    args = p.parse_args()
    if args.bench == "rpc":
        n = 3000 if args.n is None else args.n
        bench_args = ["--n", str(n), "--backend", args.backend]
        what = f"benchmarks/rpc.py, {args.pairs} alternating runs per tree, {n} round trips per latency row"
    else:
        n = 1000 if args.n is None else args.n
        bench_args = ["--n", str(n), "--backend", args.backend, "--ray-python", ""]
        what = f"benchmarks/tasks.py, {args.pairs} alternating runs per tree, {n} no-op tasks at once"
    with tempfile.TemporaryDirectory(prefix="actorbox-rev-") as tmp:
        base = os.path.join(tmp, "base")
        trees = [("base", base, args.rev)]
        this = _ROOT
        if args.this_rev:
            this = os.path.join(tmp, "this")
            trees.append(("this", this, args.this_rev))
        for _, path, rev in trees:
            subprocess.run(["git", "-C", _ROOT, "worktree", "add", "--detach", "-q", path, rev], check=True)
        try:
            runs: dict[str, dict[str, list[float]]] = {"base": defaultdict(list), "this": defaultdict(list)}
            for i in range(args.pairs):
                for name, tree in (("base", base), ("this", this)):
                    print(f"run {i + 1}/{args.pairs}: {name}", file=sys.stderr, flush=True)
                    for k, v in _run(tree, args.bench, bench_args).items():
                        runs[name][k].append(v)
        finally:
            for _, path, _ in trees:
                subprocess.run(["git", "-C", _ROOT, "worktree", "remove", "--force", path], check=False)
    rev, this_rev = (subprocess.run(["git", "-C", _ROOT, "rev-parse", "--short", r], capture_output=True, text=True,
                                    check=False).stdout.strip() or r for r in (args.rev, args.this_rev or "HEAD"))
    rows = []
    for key in runs["this"]:
        if key not in runs["base"]:
            continue
        b, t = statistics.median(runs["base"][key]), statistics.median(runs["this"][key])
        rows.append((key, _num(b), _num(t), f"{(t - b) / b * 100:+.1f}%"))
    print(f"{what}, backend {args.backend}; medians over runs")
    print()
    print_table(("row", f"base ({rev})", f"this ({this_rev})" if args.this_rev else "this tree", "change"), rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
