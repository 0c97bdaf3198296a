"""Resources: what a Runtime has (CPUs, GPUs, custom amounts), what tasks and actors hold, and admission.

One ``Resources`` per Runtime. A task holds its demand while it runs on a worker; an
actor holds its demand for its whole life (from start to stop or death). A demand
larger than the Runtime's total is refused at once (``InfeasibleResourcesError``),
never left waiting: it could never start.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import anyio

from ._errors import InfeasibleResourcesError, UsageError

CPU = "CPU"
GPU = "GPU"
# Sums of fractional amounts (0.1 + 0.2 ...) are compared with this slack, so what was
# given back always fits again.
_EPS = 1e-9


def check_amount(value: object, what: str, *, integral: bool = False) -> float:
    """``value`` as a non-negative amount; UsageError naming ``what`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise UsageError(f"{what} must be a number >= 0, got {value!r}")
    if integral and value != int(value):
        raise UsageError(f"{what} must be a whole number (a GPU is held whole), got {value!r}")
    return float(value)


def check_custom(resources: object, what: str) -> tuple[tuple[str, float], ...]:
    """A ``resources={"name": amount}`` option as sorted pairs; UsageError otherwise."""
    if resources is None:
        return ()
    if not isinstance(resources, Mapping):
        raise UsageError(f"{what} must be a dict of resource name to amount, e.g. {{'db': 1}}, got {resources!r}")
    out = []
    for name, amount in resources.items():
        if not isinstance(name, str) or not name or name in (CPU, GPU):
            raise UsageError(f"{what}: {name!r} is not a custom resource name; use num_cpus= and num_gpus= "
                             "for CPUs and GPUs, and non-empty strings for the others")
        out.append((name, check_amount(amount, f"{what}[{name!r}]")))
    return tuple(sorted(out))


@dataclass(frozen=True, slots=True)
class Demand:
    """What one task or actor asks for: CPUs, whole GPUs and custom amounts."""

    cpus: float = 0.0
    gpus: int = 0
    custom: tuple[tuple[str, float], ...] = ()
    # The non-zero amounts by resource name, computed once (admission reads them per task).
    _items: tuple[tuple[str, float], ...] = field(default=(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        amounts = [(CPU, float(self.cpus)), (GPU, float(self.gpus)), *self.custom]
        object.__setattr__(self, "_items", tuple((k, v) for k, v in amounts if v > 0))

    def items(self) -> tuple[tuple[str, float], ...]:
        return self._items


@dataclass(slots=True)
class Grant:
    """What was given for one demand: the amounts and the GPU ids (to set CUDA_VISIBLE_DEVICES)."""

    demand: Demand
    gpu_ids: tuple[int, ...] = ()
    released: bool = False


@dataclass(frozen=True, slots=True)
class ResourceInfo:
    """``rt.resources()``: each resource's total and what is free now."""

    total: dict[str, float] = field(default_factory=dict)
    free: dict[str, float] = field(default_factory=dict)


def machine_cpus() -> int:
    """The CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def machine_gpus() -> int:
    """The GPUs torch sees, without importing torch for it (~1 s) when it is not loaded yet."""
    torch: Any = sys.modules.get("torch")
    if torch is not None:
        try:
            return int(torch.cuda.device_count())
        except Exception:  # a broken CUDA install: no GPUs for actorbox
            return 0
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    try:
        return len(os.listdir("/proc/driver/nvidia/gpus"))
    except OSError:
        return 0


class Resources:
    """A Runtime's resources: totals, what is free, and who waits for them."""

    def __init__(self, num_cpus: float | None, num_gpus: int | None,
                 custom: Mapping[str, float] | None) -> None:
        cpus = machine_cpus() if num_cpus is None else check_amount(num_cpus, "Runtime(num_cpus=...)")
        gpus = machine_gpus() if num_gpus is None else int(check_amount(num_gpus, "Runtime(num_gpus=...)",
                                                                        integral=True))
        self.total: dict[str, float] = {CPU: float(cpus), GPU: float(gpus),
                                        **dict(check_custom(custom, "Runtime(resources=...)"))}
        self.free = dict(self.total)
        self._free_gpus = list(range(gpus))
        self._changed = anyio.Event()  # set (and replaced) whenever something is given back
        self.listeners: list[Callable[[], None]] = []  # called whenever something is given back
        self._waiting = 0  # starts waiting in acquire_waiting

    def check_feasible(self, demand: Demand, who: str) -> None:
        """Raise InfeasibleResourcesError if ``demand`` is more than this Runtime has at all."""
        for name, amount in demand.items():
            there = self.total.get(name, 0.0)
            if amount > there + _EPS:
                raise InfeasibleResourcesError(
                    f"{who} asks for {_fmt(amount)} {name} but this Runtime has {_fmt(there)} in all, so it "
                    f"could never start; ask for at most {_fmt(there)} or give the Runtime more "
                    f"({_option_for(name)})", resource=name, requested=amount, available=there)

    def fits(self, demand: Demand) -> bool:
        free = self.free
        for name, amount in demand._items:
            if amount > free.get(name, 0.0) + _EPS:
                return False
        return True

    def acquire(self, demand: Demand) -> Grant:
        """Take ``demand`` (which fits: see ``fits``)."""
        for name, amount in demand._items:
            self.free[name] -= amount
        if not demand.gpus:
            return Grant(demand)
        gpu_ids = tuple(self._free_gpus[:demand.gpus])
        del self._free_gpus[:demand.gpus]
        return Grant(demand, gpu_ids)

    def release(self, grant: Grant | None, *, wake: bool = True) -> None:
        """Give back what ``grant`` holds (idempotent; None: nothing); ``wake``: tell those who wait for
        resources (the task pool need not be told of its own)."""
        if grant is None or grant.released:
            return
        grant.released = True
        for name, amount in grant.demand._items:
            self.free[name] = min(self.total[name], self.free[name] + amount)
        if grant.gpu_ids:
            self._free_gpus = sorted({*self._free_gpus, *grant.gpu_ids})
        if self._waiting:  # an actor's start
            self._changed.set()
            self._changed = anyio.Event()
        if wake:
            for listener in self.listeners:
                listener()

    def peek_gpus(self, n: int) -> tuple[int, ...]:
        """The GPU ids ``acquire`` would give a demand of ``n`` GPUs now."""
        return tuple(self._free_gpus[:n])

    async def acquire_waiting(self, demand: Demand) -> Grant:
        """Wait until ``demand`` fits, then take it (for actors: their start waits for resources)."""
        while not self.fits(demand):
            self._waiting += 1
            try:
                await self._changed.wait()
            finally:
                self._waiting -= 1
        return self.acquire(demand)

    def info(self) -> ResourceInfo:
        return ResourceInfo({k: _num(v) for k, v in self.total.items()},
                            {k: _num(max(0.0, v)) for k, v in self.free.items()})


def _num(v: float) -> float:
    return round(v, 6)


def _fmt(v: float) -> str:
    return f"{v:g}"


def _option_for(name: str) -> str:
    if name == CPU:
        return "Runtime(num_cpus=...)"
    if name == GPU:
        return "Runtime(num_gpus=...)"
    return f"Runtime(resources={{{name!r}: ...}})"
