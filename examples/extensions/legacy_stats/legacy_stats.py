"""A node pinned to NumPy 1.x: it still uses ``np.float_`` and ``np.NaN``, which NumPy 2 removed."""

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

    async def normalize(self, image: Any) -> dict[str, Any]:
        """Rescale the host's image to [0, 1] in place, through a NumPy view of the same memory."""
        pixels = image.numpy()  # no copy: NumPy 1.x reads the shared-memory tensor directly
        lo, hi = float(np.nanmin(np.where(np.isfinite(pixels), pixels, np.NaN))), float(pixels.max())
        pixels -= lo
        pixels /= (hi - lo) or 1.0
        registry = actorbox.get_actor("registry")  # a host-resident named actor
        await registry.report("legacy-stats", np.__version__, int(np.float_(pixels.size)))
        return {"min": lo, "max": hi}
