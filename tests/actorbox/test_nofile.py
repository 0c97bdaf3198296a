"""The Runtime raises the host's soft limit of open files to its hard limit when it starts."""

from __future__ import annotations

import resource
from collections.abc import Iterator

import pytest
from structlog.testing import capture_logs

import actorbox

pytestmark = pytest.mark.anyio


@pytest.fixture
def nofile() -> Iterator[tuple[int, int]]:
    """This process's (soft, hard) RLIMIT_NOFILE, restored after the test."""
    limits = resource.getrlimit(resource.RLIMIT_NOFILE)
    yield limits
    resource.setrlimit(resource.RLIMIT_NOFILE, limits)


async def test_a_low_soft_limit_is_raised_to_the_hard_one_with_an_event(nofile: tuple[int, int]) -> None:
    """A soft limit below the hard one is raised to it at Runtime start, and runtime.nofile_raised says from what."""
    _, hard = nofile
    if hard == resource.RLIM_INFINITY or hard <= 512:
        pytest.skip(f"needs a finite hard limit of open files above 512 (here {hard})")
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
    with capture_logs() as logs:
        async with actorbox.Runtime():
            assert resource.getrlimit(resource.RLIMIT_NOFILE) == (hard, hard)
    (event,) = [e for e in logs if e["event"] == "runtime.nofile_raised"]
    assert (event["before"], event["after"], event["hard"]) == (256, hard, hard)


async def test_no_event_when_the_soft_limit_already_is_the_hard_one(nofile: tuple[int, int]) -> None:
    """With soft == hard the Runtime changes nothing and logs no nofile event."""
    _, hard = nofile
    if hard == resource.RLIM_INFINITY:
        pytest.skip("the hard limit of open files is unlimited here")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    with capture_logs() as logs:
        async with actorbox.Runtime():
            pass
    assert resource.getrlimit(resource.RLIMIT_NOFILE) == (hard, hard)
    assert not [e for e in logs if e["event"].startswith("runtime.nofile")]
