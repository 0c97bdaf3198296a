"""Resources (issue 18, item 3): what a Runtime has, what tasks and actors hold, and CUDA_VISIBLE_DEVICES."""

from __future__ import annotations

import anyio
import pytest

import actorbox
from actorbox._resources import Demand, Resources

from .task_plugins import OneGpu, TwoCpus, double, visible_gpus

pytestmark = pytest.mark.anyio


@pytest.mark.slow
async def test_gpu_tasks_see_only_the_devices_they_hold() -> None:
    """A one-GPU task started while another holds GPU 0 sees only GPU 1 of the Runtime's two."""
    async with actorbox.Runtime(num_cpus=2, num_gpus=2) as rt:
        first = rt.submit(visible_gpus, 60.0)
        with anyio.fail_after(30):
            while rt.resources().free["GPU"] != 1.0:  # the first holds GPU 0 now, for a minute
                await anyio.sleep(0.02)
            assert await rt.submit(visible_gpus, 0.0) == "1"
            first.cancel()  # its worker is killed a second later, and GPU 0 comes back
            while rt.resources().free["GPU"] != 2.0:
                await anyio.sleep(0.02)


async def test_an_actor_holds_its_resources_for_its_life() -> None:
    """An actor's num_cpus are taken while it lives: a task waits for them until the actor is stopped."""
    async with actorbox.Runtime(num_cpus=2) as rt:
        h = await rt.start(TwoCpus)
        assert rt.resources().free["CPU"] == 0.0 and await h.ping() == "pong"
        fut = rt.submit(double, 5)
        await anyio.sleep(0.3)
        assert not fut.done()
        await rt.stop(h)
        with anyio.fail_after(20):
            assert await fut == 10
        assert rt.resources().free["CPU"] == 2.0


async def test_a_gpu_actor_sees_its_device_and_an_infeasible_one_fails_at_once() -> None:
    """@actor(num_gpus=1) gets CUDA_VISIBLE_DEVICES of its GPU; asking a GPU-less Runtime fails before any start."""
    async with actorbox.Runtime(num_gpus=1) as rt:
        h = await rt.start(OneGpu)
        assert await h.visible() == "0"
        assert rt.resources().free["GPU"] == 0.0
    async with actorbox.Runtime(num_gpus=0) as rt:
        with pytest.raises(actorbox.InfeasibleResourcesError) as info:
            await rt.start(OneGpu)
        assert (info.value.resource, info.value.requested, info.value.available) == ("GPU", 1.0, 0.0)
        assert "actor OneGpu asks for 1 GPU" in str(info.value) and "Runtime(num_gpus=...)" in str(info.value)
        assert rt.actors() == []


def test_fractional_amounts_come_back_whole() -> None:
    """Ten tenth-CPU grants fill one CPU exactly, and giving them back frees it again (no float drift)."""
    res = Resources(1, 0, {"db": 2})
    tenth = Demand(cpus=0.1)
    grants = [res.acquire(tenth) for _ in range(10) if res.fits(tenth)]
    assert len(grants) == 10 and not res.fits(tenth)
    for g in grants:
        res.release(g)
        res.release(g)  # idempotent
    assert res.info().free == {"CPU": 1.0, "GPU": 0.0, "db": 2.0}


def test_bad_resource_settings_are_refused() -> None:
    """Runtime(resources=) may not name CPU or GPU, and amounts must be numbers >= 0."""
    with pytest.raises(actorbox.UsageError, match="num_cpus= and num_gpus="):
        actorbox.Runtime(resources={"GPU": 1})
    with pytest.raises(actorbox.UsageError, match="must be a number"):
        actorbox.Runtime(resources={"db": "many"})
    with pytest.raises(actorbox.UsageError, match="whole number"):
        actorbox.actor(num_gpus=1.5)
    with pytest.raises(actorbox.UsageError, match="not an @actor option"):
        actorbox.actor(gpu_ids=(0,))
