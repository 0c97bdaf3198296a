"""Ctrl-C under trio: the KeyboardInterrupt goes to the user's code, not into actorbox's tasks.

trio raises KeyboardInterrupt in whatever frame runs when SIGINT arrives, unless that
frame (or one it was called from, up to its task's first) is marked protected; then it
raises it in the main task at its next checkpoint. Most of a busy host's time in
actorbox goes to reading its actors' connections: a KeyboardInterrupt raised there
ended the program in an exception group five task groups deep instead of a plain
KeyboardInterrupt (about one Ctrl-C in twelve of a loop of calls). asyncio never
raises it inside a task (``asyncio.run`` cancels the main task instead).
"""

from __future__ import annotations

import sys

from scheduler import Connection


def protect_connections() -> None:
    """Mark the connection reader as KeyboardInterrupt-protected for trio (when trio runs).

    trio keeps the mark per code object, once for the process: marking again is a no-op.
    """
    trio = sys.modules.get("trio")
    if trio is not None:
        trio.lowlevel.enable_ki_protection(Connection.run)
