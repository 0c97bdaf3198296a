"""The Ray backend on a two-node cluster on this machine (ray.cluster_utils, loopback only)."""

from __future__ import annotations

from typing import Any

import pytest

import actorbox

from .conftest import runtime
from .plugins import OnNode2, node_of_task

pytestmark = [pytest.mark.anyio, pytest.mark.ray, pytest.mark.timeout(180)]


async def test_custom_resource_places_actor_and_task_on_the_second_node(ray_cluster: Any) -> None:
    second = ray_cluster.node_id
    async with runtime("ray") as rt:
        assert rt.resources().total.get("node2") == 1.0
        a = await rt.start(OnNode2)
        assert await a.node() == second
        assert rt.node_of(a) == second
        await rt.stop(a)  # frees node2 for the task
        assert await rt.submit(node_of_task) == second


async def test_events_carry_ray_actor_and_node_ids(ray_cluster: Any) -> None:
    from structlog.testing import capture_logs

    with capture_logs() as logs:
        async with runtime("ray") as rt:
            a = await rt.start(OnNode2, name="placed")
            await rt.stop(a)
    started = [e for e in logs if e["event"] == "actor.started"]
    stopped = [e for e in logs if e["event"] == "actor.stopped"]
    assert started and started[0]["node_id"] == ray_cluster.node_id and started[0]["ray_actor_id"]
    assert stopped and stopped[0]["actor"] == "placed"


async def test_missing_ray_is_a_typed_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(actorbox.BackendUnavailableError, match=r"pip install 'actorbox\[ray\]'"):
        actorbox.Runtime(backend="ray")
