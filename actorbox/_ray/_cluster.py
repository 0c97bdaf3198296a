"""The Ray cluster a RayRuntime uses: starting or joining it, what it has, environments.

A local Ray (``address=None``) binds to 127.0.0.1 only, without a dashboard, with usage
statistics off and worker logs kept off the driver's terminal. Ray's state is per process
(``ray.init``), so a Runtime that finds Ray already initialised in this process (a test
session's Ray, an application's own) uses it and leaves it running.
"""

from __future__ import annotations

import concurrent.futures
import os
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import anyio.to_thread
import psutil
import ray

from sandbox import validate_requirements

from .._errors import InfeasibleResourcesError, UsageError

LOOPBACK = "127.0.0.1"
_ray: Any = ray  # (Ray's functions are untyped)
# Keys of ray.cluster_resources() that are Ray's bookkeeping, not what tasks ask for.
_INTERNAL = ("node:", "accelerator_type:")
_INTERNAL_KEYS = frozenset({"memory", "object_store_memory"})


def ray_env() -> None:
    """What every Ray this process starts or joins gets: no usage statistics sent anywhere."""
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")


def connect(address: str | None, namespace: str, num_cpus: float | None, num_gpus: int | None,
            resources: dict[str, float] | None) -> bool:
    """Start (``address=None``) or join a Ray; True when this call started one (to shut down at exit)."""
    ray_env()
    if ray.is_initialized():
        if address is not None or num_cpus is not None or num_gpus is not None or resources:
            raise UsageError("Ray is already initialised in this process: Runtime(backend='ray') uses it as it is; "
                             "give address=, num_cpus=, num_gpus= or resources= only when it starts Ray")
        return False
    opts: dict[str, Any] = dict(include_dashboard=False, log_to_driver=False, logging_level="WARNING",
                                configure_logging=False)
    if address is None:  # "local": a new Ray, never one ray.init would find on this machine (ray start, RAY_ADDRESS)
        address = "local"
        opts.update(_node_ip_address=LOOPBACK, num_cpus=num_cpus, num_gpus=num_gpus, resources=resources)
    elif num_cpus is not None or num_gpus is not None or resources:
        raise UsageError("num_cpus=, num_gpus= and resources= describe a Ray this Runtime starts; a cluster "
                         f"joined at {address!r} has its own")
    ray.init(address=address, namespace=namespace, **opts)
    return True


def shutdown() -> None:
    """Stop the Ray this process started, and every process of it (its agents outlived it here)."""
    procs: list[psutil.Process] = []
    node = getattr(getattr(ray, "_private", None), "worker", None)
    node = getattr(node, "_global_node", None)
    for infos in (getattr(node, "all_processes", None) or {}).values():
        for info in infos:
            try:
                p = psutil.Process(info.process.pid)
                procs += [p, *p.children(recursive=True)]
            except (psutil.Error, AttributeError):
                pass
    ray.shutdown()
    for p in procs:
        try:
            p.terminate()
        except psutil.Error:
            pass
    _gone, alive = psutil.wait_procs(procs, timeout=3)
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass


class RayThread:
    """The thread a Runtime starts and stops its local Ray on, alive as long as that Ray is.

    Ray starts its raylet, monitor and log monitor with ``PR_SET_PDEATHSIG``, which fires
    when the *thread* that started them ends, not the process. Started on a pool's worker
    thread (``anyio.to_thread``), Ray's raylet was killed when the pool retired that thread
    after 10 s idle, and the raylet's agents were left behind (orphans, after the Runtime).
    """

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[tuple[Callable[..., Any], tuple[Any, ...], concurrent.futures.Future[Any]]
                                      | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name="actorbox-ray-owner", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while (job := self._jobs.get()) is not None:
            fn, args, fut = job
            if fut.set_running_or_notify_cancel():
                try:
                    fut.set_result(fn(*args))
                except BaseException as exc:
                    fut.set_exception(exc)

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` on this thread, awaited (the awaiting side waits on a pool thread)."""
        fut: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._jobs.put((fn, args, fut))
        return await anyio.to_thread.run_sync(fut.result)

    def close(self) -> None:
        """The thread ends after the jobs already given (call once its Ray is shut down, or was never started)."""
        self._jobs.put(None)


class Capacity:
    """What each node of the cluster has (refreshed at most once a second): a request no
    node could ever hold fails at once with InfeasibleResourcesError instead of waiting."""

    def __init__(self) -> None:
        self._nodes: list[dict[str, float]] = []
        self._at = 0.0

    def nodes(self) -> list[dict[str, float]]:
        now = time.monotonic()
        if not self._nodes or now - self._at > 1.0:
            self._nodes = [dict(n.get("Resources", {})) for n in _ray.nodes() if n.get("Alive")]
            self._at = now
        return self._nodes

    def check(self, demand: dict[str, float], who: str) -> None:
        demand = {k: v for k, v in demand.items() if v}
        if not demand or any(all(n.get(k, 0.0) >= v for k, v in demand.items()) for n in self.nodes()):
            return
        self._at = 0.0  # look again next time: a node may join
        for key, want in demand.items():
            best = max((n.get(key, 0.0) for n in self.nodes()), default=0.0)
            if best < want:
                raise InfeasibleResourcesError(
                    f"{who} asks for {want:g} {key}, but no node of the Ray cluster has more than {best:g}; ask for "
                    "less, or add a node that has it (ray start --resources)", resource=key, requested=want,
                    available=best)
        raise InfeasibleResourcesError(f"{who} asks for {demand}, which no single node of the Ray cluster has",
                                       resource=next(iter(demand)), requested=None, available=None)


def public(resources: dict[str, float]) -> dict[str, float]:
    return {k: float(v) for k, v in sorted(resources.items())
            if k not in _INTERNAL_KEYS and not k.startswith(_INTERNAL)}


def runtime_env(dependencies: tuple[str, ...], working_dir: str | None = None) -> dict[str, Any] | None:
    """Ray's runtime_env for an actor's or task's dependencies (and an extension's folder).

    ``pip``: Ray builds a virtualenv on top of the driver's Python with its site-packages
    visible, so torch (dropped from the requirements, as on the local backend) always comes
    from the host's environment and is never reinstalled.
    """
    env: dict[str, Any] = {}
    if dependencies:
        reqs, _ignored = validate_requirements(dependencies)
        if reqs:
            env["pip"] = {"packages": list(reqs), "pip_check": False}
    if working_dir is not None:  # (Ray uploads a local working_dir only for a whole job: the folder goes on
        env["env_vars"] = {"PYTHONPATH": working_dir}  # the path, so a node must see it: this machine, shared fs)
    return env or None
