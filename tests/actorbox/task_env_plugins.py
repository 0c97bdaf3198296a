"""A task with dependencies, alone in its module: its workers import only this (and actorbox)."""

from __future__ import annotations

import actorbox


@actorbox.task(dependencies=["six==1.16.0"])
def six_version() -> tuple[str, str]:
    import sys

    import six

    return six.__version__, sys.prefix
