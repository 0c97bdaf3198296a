"""A node that needs NumPy 2: it uses ``np.unstack``, new in NumPy 2.1."""

from __future__ import annotations

import os
import sys
from typing import Any

import numpy as np

import actorbox


class Stats:
    def versions(self, host_numpy: str) -> dict[str, Any]:
        import torch

        return {"numpy": np.__version__, "numpy_from": np.__file__, "torch": torch.__version__,
                "python": sys.version.split()[0], "uid": os.getuid(),
                "sees_host_numpy": os.path.exists(host_numpy)}

    async def gamma(self, image: Any, g: float) -> dict[str, Any]:
        """Apply a gamma curve to the host's image in place (values in [0, 1])."""
        pixels = image.numpy()  # no copy: NumPy 2 reads the shared-memory tensor directly
        np.power(pixels, g, out=pixels)
        rows = np.unstack(pixels)  # NumPy >= 2.1 only
        registry = actorbox.get_actor("registry")
        await registry.report("modern-stats", np.__version__, pixels.size)
        return {"rows": len(rows), "mean": float(pixels.mean())}
