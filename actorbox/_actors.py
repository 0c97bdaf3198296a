"""``ActorTable``: a Runtime's actor processes by id: starting, stopping, and telling them the names.

Each actor process has an ``ActorSupervisor``; the table creates it (after checking
the actor's name and the size of what it must construct), forgets it when its start
fails, stops one or all of them within their bounds, and sends every actor the name
table when a name comes or goes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import anyio

from scheduler import ActorEntry, envelope

from . import _host_pickle
from ._actor_launch import INIT_ENVELOPE, init_payload
from ._errors import NameTakenError, SerializationError
from ._options import ActorOptions, check_name
from ._services import ActorServices
from ._supervisor import ActorSupervisor


@dataclass(frozen=True, slots=True)
class StartRequest:
    """What to start: the class (or an extension's entry point), its arguments and options."""

    what: dict[str, Any]  # {"cls": cls} or {"entry": (module, class name)}
    cls_name: str  # shown in errors and `ps`
    short: str  # the label's stem when the actor has no name
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    name: str | None
    options: ActorOptions
    paths: list[str]  # sys.path roots in the actor
    module_paths: list[str]  # bound read-only into its sandbox
    requirements: tuple[str, ...] | None  # its own environment's, or None for the host's


def _unsendable_argument(req: StartRequest, label: str, exc: Exception) -> SerializationError:
    """The error for constructor arguments that could not be pickled, naming the first
    argument that can't be (pickled again alone: this is the failure path only)."""
    named = [(f"positional argument {i}", v) for i, v in enumerate(req.args, 1)]
    named += [(f"keyword argument {k!r}", v) for k, v in req.kwargs.items()]
    for which, value in named:
        try:
            _host_pickle.dumps(value)
        except Exception as arg_exc:  # any pickling failure names this argument
            t = type(value)
            if isinstance(arg_exc, SerializationError):  # a host resource: says what to send instead
                return SerializationError(f"cannot start {label!r}: its {which} can't be sent: {arg_exc}")
            return SerializationError(
                f"cannot start {label!r}: its {which} ({t.__module__}.{t.__qualname__}) can't be pickled to "
                f"send it to the actor ({type(arg_exc).__name__}: {arg_exc}); pass plain data, tensors or "
                "arrays, and create such objects in the actor's __init__ instead")
    return SerializationError(f"cannot start {label!r}: its class or arguments can't be pickled to send them "
                              f"to the actor ({type(exc).__name__}: {exc})")


class ActorTable:
    """The supervisors of a Runtime's actor processes, by actor id."""

    def __init__(self, services: ActorServices) -> None:
        self.services = services
        self.supervisors: dict[int, ActorSupervisor] = {}

    async def start(self, req: StartRequest) -> ActorEntry:
        """Register the actor with the scheduler and start its process; its entry once it serves.

        Raises NameTakenError, SerializationError (a constructor argument that can't be
        pickled or is a handle to a host resource, or arguments over the frame limit) or
        what the start raised (ActorStartError and its kind); on failure the
        actor is forgotten and calls already queued for it fail.
        """
        sched = self.services.scheduler
        if req.name is not None:
            check_name(req.name, "actor name")
        try:
            entry = sched.add_actor(req.name, req.name or f"{req.short}#?", req.options.max_concurrency,
                                    req.options.max_pending_calls)
        except KeyError:
            raise NameTakenError(
                f"an actor named {req.name!r} already exists; stop it first (await "
                f"rt.stop(rt.get_actor({req.name!r}))) or choose another name", name=req.name) from None
        label = entry.label = req.name or f"{req.short}#{entry.actor_id}"
        try:
            payload = self._payload(req, label)
        except SerializationError:
            self._forget(entry.actor_id, f"actor {label!r} failed to start: its constructor arguments can't be sent")
            raise
        max_frame = self.services.max_frame_size
        if len(payload) + INIT_ENVELOPE > max_frame:
            self._forget(entry.actor_id, f"actor {label!r} failed to start: constructor arguments too big")
            raise SerializationError(
                f"cannot start {label!r}: its constructor arguments take {len(payload)} bytes, over the frame "
                f"limit of {max_frame} bytes; pass big data as torch tensors or numpy arrays (shared "
                "memory), or raise Runtime(max_frame_size=...)")
        sup = ActorSupervisor(self.services, entry.actor_id, label, req.name, req.cls_name, payload,
                              tuple(req.module_paths), req.options, req.requirements)
        self.supervisors[entry.actor_id] = sup
        try:
            await sup.spawn()
        except BaseException as exc:
            del self.supervisors[entry.actor_id]
            # Calls already queued for it (by name, from elsewhere) fail rather than wait.
            self._forget(entry.actor_id, f"actor {label!r} failed to start: {exc}")
            raise
        if req.name is not None:
            self.broadcast_names()
        return entry

    def _payload(self, req: StartRequest, label: str) -> bytes:
        codec = self.services.codec
        spec = {**req.what, "args": req.args, "kwargs": req.kwargs, "label": label,
                "max_concurrency": req.options.max_concurrency, "retention": codec.cuda_keepalive.retention,
                "decode_limits": (codec.limits.max_items, codec.limits.max_map_keys),
                "preload": req.options.preload}
        try:
            # As method arguments are: cloudpickled, refusing handles to the host's resources.
            pickled = _host_pickle.dumps(spec)
        except Exception as exc:
            raise _unsendable_argument(req, label, exc) from exc
        return init_payload(req.paths, pickled)

    def _forget(self, actor_id: int, message: str) -> None:
        sched = self.services.scheduler
        sched.detach(actor_id, envelope.Status.STOPPED, {"message": message}, keep_queue=False)
        sched.remove_actor(actor_id)

    async def stop(self, actor_id: int) -> None:
        """Stop one actor (within the grace period plus 1 s) and free its name; no-op if unknown."""
        sup = self.supervisors.get(actor_id)
        if sup is None:
            return
        await sup.stop(self.services.grace_period)
        names = self.services.scheduler.names
        if sup.name is not None and names.get(sup.name) == actor_id:
            del names[sup.name]
            self.broadcast_names()

    async def stop_all(self) -> None:
        """Stop every actor at once; shielded and bounded: returns within the grace period plus 1 s."""
        with anyio.CancelScope(shield=True):
            async with anyio.create_task_group() as tg:
                for sup in list(self.supervisors.values()):
                    tg.start_soon(sup.stop, self.services.grace_period)
            self.services.zygotes.close()  # after their actors: none is forked any more

    def broadcast_names(self) -> None:
        """Send every actor the current name table (after a name came or went)."""
        for sup in self.supervisors.values():
            sup.encode_names()

    def cuda_ipc_reaches(self, actor_id: int) -> bool:
        """Whether actor ``actor_id`` can open the host's CUDA IPC handles.

        The CUDA driver hands an IPC handle over through a file in the exporter's
        /dev/shm that only its user can open. A sandboxed actor has its own /dev/shm
        and uid, so CUDA tensors reach it through CPU shared memory instead; a
        host-resident actor is this process, which can't open its own handles.
        """
        sup = self.supervisors.get(actor_id)
        return sup is not None and not sup.sandboxed
