"""An actor class that declares dependencies: it runs in an environment with six."""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

import actorbox


@actorbox.actor(dependencies=["six==1.16.0"])
class SixUser:
    def six(self) -> tuple[str, str]:
        import six

        return six.__version__, six.__file__

    def importable(self, name: str) -> bool:
        try:
            importlib.import_module(name)
        except ImportError:
            return False
        return True

    def torch(self) -> dict[str, Any]:
        import torch

        return {"version": torch.__version__, "file": os.path.realpath(torch.__file__)}

    def prefix(self) -> str:
        return sys.prefix

    def exists(self, path: str) -> bool:
        return os.path.exists(path)

    def write_into(self, directory: str) -> str:
        try:
            with open(os.path.join(directory, "planted.py"), "w") as f:
                f.write("print('planted')")
        except OSError as exc:
            return type(exc).__name__
        return "written"

    def fill(self, tensor: Any, value: float) -> None:
        tensor.fill_(value)

