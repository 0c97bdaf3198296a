"""Tests for sandbox/_uids.py: machine-wide uid leases for the actors of a root host."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from sandbox._uids import UID_BASE, lease_uid


def test_live_leases_differ_and_a_released_uid_is_reused(tmp_path: Path) -> None:
    """Two live leases never share a uid; the lowest released one is leased again."""
    d = str(tmp_path / "uids")
    a, b = lease_uid(d), lease_uid(d)
    assert (a.uid, b.uid) == (UID_BASE + 1, UID_BASE + 2)
    a.release()
    a.release()  # idempotent
    c = lease_uid(d)
    assert c.uid == UID_BASE + 1
    assert lease_uid(d).uid == UID_BASE + 3  # dropped at once: released by its finalizer
    assert lease_uid(d).uid == UID_BASE + 3
    b.release()
    c.release()
    assert oct(os.stat(d).st_mode & 0o777) == "0o700"


def test_a_uid_another_process_holds_is_skipped_until_that_process_ends(tmp_path: Path) -> None:
    """A lease held by another host process is never given out here; once that process exits, it is free again."""
    d = str(tmp_path / "uids")
    holder = subprocess.Popen(
        [sys.executable, "-c", f"import sys; from sandbox._uids import lease_uid; l = lease_uid({d!r}); "
                               "print(l.uid, flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    try:
        assert holder.stdout is not None
        theirs = int(holder.stdout.readline())
        mine = lease_uid(d)
        assert theirs == UID_BASE + 1 and mine.uid == UID_BASE + 2
    finally:
        holder.kill()  # killed, not released: the kernel drops its lock
        holder.communicate()  # reaps it and closes the pipes
    assert lease_uid(d).uid == UID_BASE + 1
    mine.release()


def test_a_lock_dir_others_can_reach_is_refused(tmp_path: Path) -> None:
    """A lock directory open to others (mode 0777) is refused: anyone could hold its uids."""
    d = tmp_path / "uids"
    d.mkdir(mode=0o777)
    os.chmod(d, 0o777)
    with pytest.raises(OSError, match="mode 0700"):
        lease_uid(str(d))
