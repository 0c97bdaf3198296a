"""The main demo: two extensions with conflicting dependencies, loaded side by side.

``examples/extensions/legacy_stats`` pins ``numpy<2`` (it still calls
``np.product``, removed in NumPy 2) and ``examples/extensions/modern_stats`` needs
``numpy>=2`` (``np.unstack``). Each gets its own environment, built with uv on the
first run and cached afterwards, and runs sandboxed in its own process; both use
the host's torch. The host hands each the same image tensor without copying (both
edit it in place through NumPy), and each calls back into a host-resident named
actor, ``registry``. A stateless step then fans out as tasks (``@actorbox.task``) over
bands of the same image, on pooled sandboxed workers.

Run: ``python examples/extension_host.py`` (``bash scripts/setup.sh demo`` does it).
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import anyio
import numpy as np
import psutil
import torch

import actorbox

HERE = os.path.dirname(os.path.abspath(__file__))


@actorbox.task
def tile_range(tile: torch.Tensor) -> tuple[float, float]:
    """One step as a task: a tile's range, on a sandboxed worker (the tile travels as shared memory)."""
    return float(tile.min()), float(tile.max())


class Registry:
    """Host-resident, registered as "registry": the extensions report their work here."""

    def __init__(self) -> None:
        self.reports: list[tuple[str, str, int]] = []

    def report(self, extension: str, numpy_version: str, pixels: int) -> None:
        self.reports.append((extension, numpy_version, pixels))


async def main() -> int:
    t0 = time.monotonic()
    async with actorbox.Runtime() as rt:
        registry = Registry()
        rt.register("registry", registry)

        print(f"loading the extensions in {os.path.join(HERE, 'extensions')} "
              f"(environments cached in {rt.environments.root}) ...")
        t1 = time.monotonic()
        loaded = await rt.load_extensions(os.path.join(HERE, "extensions"))
        print(f"loaded {sum(x.ok for x in loaded)} of {len(loaded)} in {time.monotonic() - t1:.2f} s")
        for x in loaded:
            if not x.ok:
                print(f"  {os.path.basename(x.path)} failed: {type(x.error).__name__}: {x.error}")
        if not all(x.ok for x in loaded):
            return 1
        legacy, modern = rt.get_actor("legacy-stats"), rt.get_actor("modern-stats")

        # The host's own numpy: not importable in an actor, and not even visible in its sandbox.
        host_numpy = os.path.dirname(np.__file__)
        # Both at once: each actor imports torch on this first call (about a second), in parallel.
        versions: dict[str, dict[str, Any]] = {}

        async def ask(h: actorbox.ActorHandle) -> None:
            versions[actorbox.info(h).label] = await h.versions(host_numpy)

        async with anyio.create_task_group() as tg:
            for h in (legacy, modern):
                tg.start_soon(ask, h)
        print(f"\nhost: numpy {np.__version__}, torch {torch.__version__}")
        for label, v in sorted(versions.items()):
            print(f"{label}: numpy {v['numpy']} from {os.path.dirname(os.path.dirname(v['numpy_from']))}, "
                  f"torch {v['torch']}")

        # One 16 MB image in shared memory: both extensions work on these very pages.
        image = actorbox.shared_empty(2048, 2048)
        image.copy_(torch.linspace(-3.0, 5.0, image.numel()).reshape(image.shape))
        stats = await legacy.normalize(image)
        print(f"\nlegacy-stats normalized the image in place: it was [{stats['min']:.1f}, {stats['max']:.1f}], "
              f"the host now sees [{float(image.min()):.1f}, {float(image.max()):.1f}]")
        g = await modern.gamma(image, 2.0)
        print(f"modern-stats applied gamma 2 in place over {g['rows']} rows: mean {g['mean']:.4f}, "
              f"host sees {float(image.mean()):.4f}")
        # A stateless step fans out as tasks: 16 row bands of the same pages, on pooled workers.
        bands = [image[i * 128:(i + 1) * 128] for i in range(16)]
        ranges = await actorbox.gather(*(rt.submit(tile_range, band) for band in bands))
        lo, hi = min(r[0] for r in ranges), max(r[1] for r in ranges)
        print(f"16 tile_range tasks on {sum(a.kind == 'task worker' for a in rt.actors())} worker(s): "
              f"range [{lo:.4f}, {hi:.4f}], host sees [{float(image.min()):.4f}, {float(image.max()):.4f}]")
        tasks_ok = (lo, hi) == (float(image.min()), float(image.max()))

        print("\nsummary")
        print(f"  {'extension':<14} {'numpy':<8} {'torch':<12} {'pid':>7} {'uid':>7}  {'sees host numpy':<16} "
              "callbacks")
        for info in rt.actors():
            if info.pid is None or info.label not in versions:  # a host-resident actor, a task worker
                continue
            v = versions[info.label]
            calls = sum(1 for r in registry.reports if r[0] == info.label)
            print(f"  {info.label:<14} {v['numpy']:<8} {v['torch']:<12} {info.pid:>7} {v['uid']:>7}  "
                  f"{'yes' if v['sees_host_numpy'] else 'no':<16} {calls}")
        same_torch = all(v["torch"] == torch.__version__ for v in versions.values())
        distinct = len({v["numpy"] for v in versions.values()}) == 2
        isolated = not any(v["sees_host_numpy"] for v in versions.values())
        print(f"  tasks saw the image the host sees: {'yes' if tasks_ok else 'NO'}")
        print(f"  two numpy versions side by side: {'yes' if distinct else 'NO'}; "
              f"every actor on the host's torch: {'yes' if same_torch else 'NO'}; "
              f"host's numpy hidden: {'yes' if isolated else 'NO'}")
    left = psutil.Process().children(recursive=True)
    print(f"done in {time.monotonic() - t0:.2f} s; child processes left: {len(left)}")
    return 0 if distinct and same_torch and isolated and tasks_ok and not left else 1


if __name__ == "__main__":
    # The host runs on asyncio or trio alike: python examples/extension_host.py --backend trio
    backend = sys.argv[sys.argv.index("--backend") + 1] if "--backend" in sys.argv else "asyncio"
    sys.exit(anyio.run(main, backend=backend))
