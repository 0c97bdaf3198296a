"""Actor uids are unique across the Runtimes of one machine, so per-uid limits are per actor (issue 14, finding 10).

The first actor of every Runtime used to run as uid 200001: an actor holding threads up
to its process limit kept another Runtime's actor from starting.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import anyio
import pytest

import actorbox
from sandbox import SandboxPolicy

from ._support import CALL_TIMEOUT
from .plugins.uid_holder import UidHolder

pytestmark = [pytest.mark.anyio,
              pytest.mark.skipif(os.geteuid() != 0, reason="actors get uids of their own when the host runs as root")]

POLICY = SandboxPolicy(max_processes=16)

OTHER_HOST = textwrap.dedent("""
    import anyio, actorbox
    from sandbox import SandboxPolicy
    from tests.security.plugins.uid_holder import UidHolder

    async def main():
        async with actorbox.Runtime(sandbox_policy=SandboxPolicy(max_processes=16)) as rt:
            h = await rt.start(UidHolder)
            print("UID", await h.uid(), flush=True)

    anyio.run(main)
""")


@pytest.mark.slow
async def test_an_actor_at_its_process_limit_does_not_keep_another_runtimes_actor_from_starting():
    """Two Runtimes in two host processes give their actors different uids; one at its limit doesn't stop the other."""
    async with actorbox.Runtime(sandbox_policy=POLICY) as rt:
        holder = await rt.start(UidHolder)
        with anyio.fail_after(CALL_TIMEOUT):
            mine = await holder.uid()
            assert await holder.hold_threads() > 0  # this uid is now at its process limit
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        other = await anyio.to_thread.run_sync(lambda: subprocess.run(
            [sys.executable, "-c", OTHER_HOST], cwd=root, capture_output=True, text=True, timeout=CALL_TIMEOUT * 2))
        assert other.returncode == 0, other.stderr[-3000:]
        theirs = int(other.stdout.split("UID")[1].split()[0])
        assert mine >= 200_001 and theirs >= 200_001 and theirs != mine
        with anyio.fail_after(CALL_TIMEOUT):
            second = await rt.start(UidHolder)  # and in this Runtime, too
            assert await second.uid() not in (mine, 0)
