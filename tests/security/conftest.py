"""Fixtures of the security suite: host-side secrets and markers an actor must never reach or create."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest


@pytest.fixture
def host_home_secret() -> Iterator[str]:
    """A secret file in the host user's home directory (removed afterwards)."""
    path = os.path.join(os.path.expanduser("~"), f".actorbox-test-secret-{uuid.uuid4().hex}")
    with open(path, "w") as f:
        f.write("host secret: an actor must never read this\n")
    os.chmod(path, 0o644)  # readable by anyone who can reach it: only the sandbox may stop the actor
    try:
        yield path
    finally:
        os.unlink(path)


@pytest.fixture
def host_marker() -> Iterator[str]:
    """A path in the host's /tmp that an attack would create; it must still not exist at the end."""
    path = f"/tmp/PWNED-{uuid.uuid4().hex}"
    try:
        yield path
    finally:
        if os.path.exists(path):
            os.unlink(path)
