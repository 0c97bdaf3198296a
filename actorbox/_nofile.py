"""Raising the host's soft limit of open files to its hard limit when a Runtime starts.

The host holds a few descriptors per actor (its socket, a pidfd, two output pipes)
plus the segments of tensors in flight and held; with many actors the usual soft limit
of 1024 runs out long before the hard one (issue 17: 200 actors alive at once). The
soft limit may be raised up to the hard one without any privilege, so the Runtime does
it once, says so in an event, and leaves the hard limit (and anything above it) alone.
"""

from __future__ import annotations

import resource
from typing import Any

# What the kernel allows a process at most (fs.nr_open) when the hard limit is "unlimited":
# RLIM_INFINITY itself is refused as a soft limit of open files.
_NR_OPEN = "/proc/sys/fs/nr_open"


def raise_nofile_limit(log: Any) -> None:
    """Set RLIMIT_NOFILE's soft limit to its hard limit; event ``runtime.nofile_raised`` when it changed."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard
    if hard == resource.RLIM_INFINITY:
        try:
            with open(_NR_OPEN) as f:
                target = int(f.read())
        except (OSError, ValueError):
            target = 1 << 20
    if soft != resource.RLIM_INFINITY and soft >= target:
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (OSError, ValueError) as exc:
        log.warning("runtime.nofile_unchanged", soft=soft, hard=hard, reason=str(exc),
                    consequence=f"the host can hold at most {soft} open files (about {soft // 5} actors)")
        return
    log.info("runtime.nofile_raised", before=soft, after=target, hard=hard)
