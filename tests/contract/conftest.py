"""The contract tests' backends: the local one, and Ray (a two-node cluster on 127.0.0.1,
started once per test session: its second node alone has the custom resource ``node2``)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

import actorbox


def _ray_or_skip() -> Any:
    try:
        import ray
    except ImportError:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("Ray is not installed, but CI must run the Ray contract tests: pip install -e '.[test]'")
        pytest.skip("Ray is not installed (pip install 'actorbox[ray]')")
    return ray


# Package scope: the cluster stops once tests/contract is done, so the process checks of the tests
# after it (test_chaos, the leak checks) see no Ray process.
@pytest.fixture(scope="package")
def ray_cluster() -> Iterator[Any]:
    """Two Ray nodes on this machine (loopback only, no dashboard, usage statistics off); the driver joins."""
    ray = _ray_or_skip()
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    from ray.cluster_utils import Cluster

    node = {"node_ip_address": "127.0.0.1", "include_dashboard": False}
    cluster = Cluster(initialize_head=True, head_node_args={**node, "num_cpus": 2})
    second = cluster.add_node(**node, num_cpus=1, resources={"node2": 1})
    try:
        cluster.wait_for_nodes()
        # ray.init turns a loopback address into this machine's address before connecting (it
        # asks ray_constants.ENABLE_RAY_CLUSTER whether to); the nodes listen on 127.0.0.1 only.
        from ray._private import ray_constants

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(ray_constants, "ENABLE_RAY_CLUSTER", False)
            ray.init(address=cluster.address, _node_ip_address="127.0.0.1", log_to_driver=False,
                     logging_level="WARNING", configure_logging=False)
        yield second
    finally:
        ray.shutdown()
        cluster.shutdown()


@pytest.fixture(params=["local", pytest.param("ray", marks=pytest.mark.ray)])
def backend(request: pytest.FixtureRequest) -> str:
    """Each contract test runs on both backends; a documented difference is marked where it is tested."""
    if request.param == "ray":
        request.getfixturevalue("ray_cluster")
    return str(request.param)


def runtime(backend: str, **options: Any) -> Any:
    """A Runtime of ``backend`` (the Ray one uses the session's cluster, which outlives it)."""
    if backend == "ray":
        return actorbox.Runtime(backend="ray", **options)
    return actorbox.Runtime(**options)
