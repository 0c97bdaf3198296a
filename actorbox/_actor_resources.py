"""Actors that hold resources (``@actor(num_cpus=, num_gpus=, resources=)``) for their life."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import anyio

from ._resources import Grant, Resources

if TYPE_CHECKING:
    from scheduler import ActorEntry

    from ._actors import ActorTable, StartRequest


async def start_holding(resources: Resources, actors: ActorTable, req: StartRequest) -> ActorEntry:
    """Start the actor ``req`` describes once its resources are free; they are held until it is
    stopped or dead for good (restarts keep them). An actor asking for more than the Runtime
    has fails at once with InfeasibleResourcesError; one asking for nothing starts at once."""
    demand = req.options.demand()
    if not demand.items():
        return await actors.start(req)
    resources.check_feasible(demand, f"actor {req.name or req.cls_name}")
    grant = await resources.acquire_waiting(demand)
    try:
        if grant.gpu_ids:
            req = dataclasses.replace(req, options=dataclasses.replace(req.options, gpu_ids=grant.gpu_ids))
        entry = await actors.start(req)
    except BaseException:
        resources.release(grant)
        raise
    sup = actors.supervisors[entry.actor_id]
    actors.services.supervision.start_soon(_release_when_finished, sup.finished, resources, grant)
    return entry


async def _release_when_finished(finished: anyio.Event, resources: Resources, grant: Grant) -> None:
    try:
        await finished.wait()
    finally:
        resources.release(grant)
