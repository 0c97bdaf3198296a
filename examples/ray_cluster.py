"""The main demo's extensions and a task fan-out on Ray: ``actorbox.Runtime(backend="ray")``.

The same calls as ``examples/extension_host.py`` (the extension folders in
``examples/extensions``, a host-registered ``registry`` they call back by name, a
``@actorbox.task`` fanned out over bands of an image), with only the Runtime's arguments
changed. On Ray each extension's ``dependencies`` become its ``runtime_env`` (pip, on top
of the driver's environment: torch is dropped from the requirements and never
reinstalled), each actor runs in a Ray worker process, and tensors travel through Ray's
object store (copies: there is no shared memory between the host and Ray's workers, so
an extension's in-place edit stays in its copy; the demo uses what the calls return).
The registry is a Ray named actor serving a copy of the host's object.

Run: ``python examples/ray_cluster.py`` (a local Ray on 127.0.0.1, started and stopped
here), ``--address HOST:PORT`` to join a running cluster, ``--small`` for a small image.
"""

from __future__ import annotations

import os
import sys
import time

import anyio
import torch

import actorbox

HERE = os.path.dirname(os.path.abspath(__file__))


@actorbox.task
def tile_range(tile: torch.Tensor) -> tuple[float, float]:
    """One step as a task: a tile's range, on a Ray worker."""
    return float(tile.min()), float(tile.max())


class Registry:
    """Registered as "registry": the extensions report their work here."""

    def __init__(self) -> None:
        self.reports: list[tuple[str, str, int]] = []

    def report(self, extension: str, numpy_version: str, pixels: int) -> None:
        self.reports.append((extension, numpy_version, pixels))

    def reported(self) -> list[tuple[str, str, int]]:
        return self.reports


async def main(address: str | None, side: int) -> int:
    t0 = time.monotonic()
    async with actorbox.Runtime(backend="ray", address=address) as rt:
        rt.register("registry", Registry())
        t1 = time.monotonic()
        loaded = await rt.load_extensions(os.path.join(HERE, "extensions"))
        print(f"loaded {sum(x.ok for x in loaded)} of {len(loaded)} extensions on Ray in {time.monotonic() - t1:.1f} s "
              "(a first run builds their pip runtime_envs)")
        for x in loaded:
            if not x.ok:
                print(f"  {os.path.basename(x.path)} failed: {type(x.error).__name__}: {x.error}")
        if not all(x.ok for x in loaded):
            return 1
        legacy, modern = rt.get_actor("legacy-stats"), rt.get_actor("modern-stats")
        versions = await actorbox.gather(legacy.versions("/nonexistent"), modern.versions("/nonexistent"))
        for label, v in zip(("legacy-stats", "modern-stats"), versions, strict=True):
            print(f"{label}: numpy {v['numpy']}, torch {v['torch']} (host: torch {torch.__version__})")

        image = torch.linspace(-3.0, 5.0, side * side).reshape(side, side)
        stats = await legacy.normalize(image)
        g = await modern.gamma(image.sub(stats["min"]).div(stats["max"] - stats["min"]), 2.0)
        print(f"legacy-stats: the image was [{stats['min']:.1f}, {stats['max']:.1f}]; modern-stats: gamma 2 over "
              f"{g['rows']} rows, mean {g['mean']:.4f}")
        bands = [image[i * (side // 16):(i + 1) * (side // 16)] for i in range(16)]
        ranges = await actorbox.gather(*(rt.submit(tile_range, band) for band in bands))
        lo, hi = min(r[0] for r in ranges), max(r[1] for r in ranges)
        tasks_ok = (lo, hi) == (float(image.min()), float(image.max()))
        print(f"16 tile_range tasks on Ray: range [{lo:.4f}, {hi:.4f}], host sees "
              f"[{float(image.min()):.4f}, {float(image.max()):.4f}]")
        reports = await rt.get_actor("registry").reported()
        print(f"registry callbacks: {sorted(r[0] for r in reports)}")
        distinct = len({v["numpy"] for v in versions}) == 2
        same_torch = all(v["torch"] == torch.__version__ for v in versions)
        print(f"two numpy versions side by side: {'yes' if distinct else 'NO'}; every actor on the host's torch: "
              f"{'yes' if same_torch else 'NO'}; tasks saw the image: {'yes' if tasks_ok else 'NO'}")
    print(f"done in {time.monotonic() - t0:.1f} s")
    return 0 if distinct and same_torch and tasks_ok and len(reports) == 2 else 1


if __name__ == "__main__":
    address = sys.argv[sys.argv.index("--address") + 1] if "--address" in sys.argv else None
    sys.exit(anyio.run(main, address, 256 if "--small" in sys.argv else 2048))
