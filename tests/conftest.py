"""Suite-wide configuration: anyio tests run under both backends; hypothesis keeps no database."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

# No example database: the suite leaves nothing behind in the working tree.
# Deadlines are off because timing on a loaded 2-core CI machine is noisy; a
# hang is caught by pytest-timeout (pyproject: timeout = 60) instead.
settings.register_profile(
    "actorbox",
    database=None,
    deadline=None,
    max_examples=200,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("thorough", parent=settings.get_profile("actorbox"), max_examples=5000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "actorbox"))


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Every ``@pytest.mark.anyio`` test runs once under asyncio and once under trio."""
    return request.param  # type: ignore[no-any-return]
