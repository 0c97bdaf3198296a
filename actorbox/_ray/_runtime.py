"""``RayRuntime``: ``actorbox.Runtime(backend="ray")``, the same actors and tasks on a Ray cluster.

Actors are Ray actors running an ``ActorShell`` (``_shell``), named actors Ray named actors
in the Runtime's namespace, tasks Ray remote functions; every call returns an
``actorbox.Future`` over the call's ObjectRef (``_caller``), whose result the host decodes
with actorbox's codec (``_wire``). See README "Ray backend" for the mapping and its
differences, docs/security.md for what holds and what does not.
"""

from __future__ import annotations

import itertools
import os
import uuid
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any

import anyio
import anyio.to_thread
import ray
import structlog

from scheduler import CallInfo

from .._codec import Codec
from .._errors import (
    ActorboxError,
    ActorNotFoundError,
    ActorStartError,
    NameTakenError,
    PendingCallsLimitError,
    SandboxUnavailableError,
    SerializationError,
    UsageError,
)
from .._extensions import LoadedExtension, extension_folders, load_all, read_extension
from .._future import Future
from .._handle import ActorHandle
from .._host_loop import HostLoop
from .._inspect import ActorInfo
from .._options import ActorOptions, check_name, options_of
from .._policy import SandboxPolicy
from .._process import process_caller
from .._residents import exposed_methods
from .._resources import ResourceInfo
from .._task_options import task_options
from ._caller import RayCaller, Target
from ._cluster import Capacity, RayThread, connect, public, runtime_env, shutdown
from ._events import CallEvents, actor_rows, event_log
from ._shell import META, ActorShell, ThreadedShell, has_async_methods, run_task
from ._wire import HandleRef, decode_outcome

log = structlog.get_logger("actorbox")
_ray: Any = ray  # (Ray's functions are untyped)
_SUPPORTED = frozenset({"sandbox", "log_calls", "grace_period", "num_cpus", "num_gpus", "resources",
                        "max_pending_tasks"})
_SANDBOX_WHY = ("Ray starts its workers itself, outside actorbox's bubblewrap sandbox, so sandbox='required' "
                "can't be enforced on the Ray backend; run untrusted code on the local backend, or pass "
                "sandbox='disabled' to run on Ray unsandboxed")


def _refuse_sandbox(mode: object, who: str) -> None:
    if mode == "required" or isinstance(mode, SandboxPolicy):
        raise SandboxUnavailableError(f"{who}: {_SANDBOX_WHY}")


class RayRuntime:
    """Runs actors and tasks on Ray: ``async with actorbox.Runtime(backend="ray") as rt``.

    ``address``: None starts a local Ray on 127.0.0.1 for the Runtime's lifetime (or uses
    the one this process already initialised); ``"host:port"`` or ``"auto"`` joins a
    cluster, which is left running. ``namespace``: the Ray namespace of its named actors
    (default: one of its own). ``sandbox``: only ``"disabled"`` (the default here).
    """

    def __init__(self, *, backend: str = "ray", address: str | None = None, namespace: str | None = None,
                 **options: Any) -> None:
        unknown = sorted(set(options) - _SUPPORTED)
        if unknown:
            raise UsageError(f"Runtime(backend='ray') does not take {', '.join(unknown)}; it takes "
                             f"address, namespace, {', '.join(sorted(_SUPPORTED))}")
        self.sandbox = options.get("sandbox", "disabled")
        if self.sandbox not in ("required", "disabled"):
            raise UsageError(f"sandbox must be 'required' or 'disabled', got {self.sandbox!r}")
        _refuse_sandbox(self.sandbox, "Runtime(backend='ray', sandbox='required')")
        self.address = address
        self.namespace = namespace or f"actorbox-{uuid.uuid4().hex[:12]}"
        self.grace_period = float(options.get("grace_period", 5.0))
        self._log_calls = bool(options.get("log_calls") or os.environ.get("ACTORBOX_LOG_CALLS") == "1")
        self._cluster_opts = (options.get("num_cpus"), options.get("num_gpus"), options.get("resources"))
        self._max_pending_tasks: int | None = options.get("max_pending_tasks")
        self._ids = itertools.count(1)
        self._targets: dict[int, Target] = {}
        self._names: dict[str, int] = {}
        self._meta: dict[int, dict[str, Any]] = {}
        self._capacity = Capacity()
        self._started_ray = False
        self.log: Any = log
        self._recorder: Any = None
        self._owner: RayThread | None = None
        self._caller: RayCaller | None = None
        self._token: Any = None
        self.closing = False
        self._shell = _ray.remote(concurrency_groups={META: 2})(ActorShell)
        self._threaded = _ray.remote(concurrency_groups={META: 2})(ThreadedShell)  # classes with sync methods only
        self._task = ray.remote(run_task)

    # -- lifetime ------------------------------------------------------------------

    async def __aenter__(self) -> RayRuntime:
        if self._caller is not None or self.closing:
            raise ActorboxError("this Runtime has already run; create a new Runtime() for each 'async with'")
        owner = self._owner = RayThread()  # Ray's processes live as long as the thread that starts them
        try:
            self._started_ray = await owner.run(connect, self.address, self.namespace, *self._cluster_opts)
        finally:
            if not self._started_ray:
                owner.close()
        codec = Codec(allow_pickle=False, make_handle=self._make_handle)
        self._caller = RayCaller(codec, HostLoop(), self._targets.get)
        self.log, self._recorder, calls_on = event_log(self._log_calls)
        self._caller.events = CallEvents(self.log) if calls_on else None
        self._caller.get_actor_fn = self.get_actor
        self._token = process_caller.set(self._caller)
        self.log.info("ray.connected", namespace=self.namespace, started=self._started_ray,
                 address=self.address or "local")
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        self.closing = True
        with anyio.CancelScope(shield=True):
            for target in list(self._targets.values()):
                self._kill(target)
            if self._caller is not None:
                for fut in [c.fut for c in self._caller.pending.values()]:
                    self._caller.cancel(fut)
            if self._started_ray and self._owner is not None:
                try:
                    await self._owner.run(shutdown)
                finally:
                    self._owner.close()
        if self._recorder is not None:
            self._recorder.close()
        try:
            process_caller.reset(self._token)
        except ValueError:
            process_caller.set(None)

    def _live(self) -> RayCaller:
        if self._caller is None or self.closing:
            raise ActorboxError("the Runtime is not running; use it inside 'async with actorbox.Runtime() as rt:'")
        return self._caller

    def _make_handle(self, actor_id: int, name: str | None, label: str, token: bytes) -> ActorHandle:
        if actor_id not in self._targets:
            raise SerializationError(f"a result names actor {label!r} (id {actor_id}), which this Runtime "
                                     "did not start")
        return ActorHandle(self._live(), actor_id, name, label)

    # -- actors ----------------------------------------------------------------------

    async def start(self, cls: type[Any], /, *args: Any, name: str | None = None, **kwargs: Any) -> ActorHandle:
        """Start ``cls(*args, **kwargs)`` as a Ray actor; returns its handle (ActorStartError if it fails)."""
        self._live()
        if not isinstance(cls, type):
            raise UsageError(f"rt.start(Cls, *args, **kwargs) takes a class, got {type(cls).__name__}")
        opts = options_of(cls)
        return await self._start({"cls": cls}, cls.__qualname__, cls.__name__, args, kwargs,
                                 name if name is not None else opts.name, opts, runtime_env(opts.dependencies))

    async def load_extension(self, path: str | os.PathLike[str], /, *args: Any, name: str | None = None,
                             sandbox: str | SandboxPolicy | None = None, **kwargs: Any) -> ActorHandle:
        """Start the actor an extension folder describes; its folder and dependencies become a runtime_env."""
        self._live()
        _refuse_sandbox(sandbox, "load_extension(sandbox=...)")
        ext = await anyio.to_thread.run_sync(read_extension, os.fspath(path))
        return await self._start({"entry": (ext.module, ext.cls)}, f"{ext.module}:{ext.cls}", ext.cls, args, kwargs,
                                 name if name is not None else ext.name, ext.options,
                                 runtime_env(ext.requirements, ext.path))

    async def load_extensions(self, directory: str | os.PathLike[str], *,
                              sandbox: str | SandboxPolicy | None = None) -> list[LoadedExtension]:
        """Load every extension folder in ``directory`` at once; a failure is reported, never fatal."""
        self._live()
        return await load_all(extension_folders(os.fspath(directory)),
                              lambda folder: self.load_extension(folder, sandbox=sandbox))

    async def _start(self, spec: dict[str, Any], cls_name: str, short: str, args: tuple[Any, ...],
                     kwargs: dict[str, Any], name: str | None, opts: ActorOptions,
                     env: dict[str, Any] | None) -> ActorHandle:
        caller = self._live()
        _refuse_sandbox(opts.sandbox, f"actor {cls_name}")
        actor_id = next(self._ids)
        label = name if name is not None else f"{short}#{actor_id}"
        if name is not None:
            check_name(name, "name")
            if name in self._names:
                raise NameTakenError(f"an actor named {name!r} already exists; choose another name", name=name)
        self._capacity.check({"CPU": opts.num_cpus, "GPU": opts.num_gpus, **dict(opts.resources)}, f"actor {label}")
        info = {"actor_id": actor_id, "label": label, "namespace": self.namespace,
                "max_concurrency": opts.max_concurrency}
        options: dict[str, Any] = dict(
            name=name, namespace=self.namespace, max_concurrency=opts.max_concurrency,
            max_restarts=opts.max_restarts, max_task_retries=0, num_cpus=opts.num_cpus, num_gpus=opts.num_gpus,
            resources=dict(opts.resources), max_pending_calls=opts.max_pending_calls or -1,
            runtime_env=env)
        a, kw = (tuple(caller._arg(v, i, []) for i, v in enumerate(args)),
                 {k: caller._arg(v, k, []) for k, v in kwargs.items()})
        try:
            shell = self._threaded if "cls" in spec and not has_async_methods(spec["cls"]) else self._shell
            ray_handle = shell.options(**options).remote(spec, a, kw, info)
        except ValueError as exc:
            if "already taken" in str(exc):
                raise NameTakenError(f"an actor named {name!r} already exists in Ray namespace "
                                     f"{self.namespace!r}; choose another name", name=name) from None
            raise
        if name is not None:
            self._names[name] = actor_id
        target = self._targets[actor_id] = Target(actor_id, name, label, ray_handle)
        try:
            error, node_id, pid, ray_id = await _wait_ref(ray_handle.ready.remote())
            if error is not None:
                _, raised = decode_outcome(caller.codec, error)
                raise ActorStartError(f"{label}: {cls_name}.__init__ raised {type(raised).__name__}: {raised}",
                                      actor=label, cls=cls_name, pid=pid) from raised
        except BaseException as exc:
            self._forget(target)
            if isinstance(exc, ActorboxError) or not isinstance(exc, Exception):
                raise
            raise ActorStartError(f"{label}: Ray could not start the actor: {type(exc).__name__}: "
                                  f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}",
                                  actor=label, cls=cls_name) from exc
        self._meta[actor_id] = {"cls": cls_name, "pid": pid, "node_id": node_id, "ray_actor_id": ray_id,
                                "max_concurrency": opts.max_concurrency}
        target.ray_actor_id, target.node_id = ray_id, node_id
        self.log.info("actor.started", actor=label, cls=cls_name, pid=pid, ray_actor_id=ray_id, node_id=node_id)
        return ActorHandle(caller, actor_id, name, label)

    def _kill(self, target: Target) -> None:
        target.stopped = True
        try:
            ray.kill(target.ray_handle, no_restart=True)
        except Exception:
            pass

    def _forget(self, target: Target) -> None:
        self._kill(target)
        self._targets.pop(target.actor_id, None)
        self._meta.pop(target.actor_id, None)
        if target.name is not None and self._names.get(target.name) == target.actor_id:
            del self._names[target.name]

    def register(self, name: str, obj: Any, *, max_concurrency: int = 1,
                 methods: Iterable[str] | None = None) -> ActorHandle:
        """Serve a copy of ``obj`` (pickled by the host) as a Ray named actor: its state lives there."""
        caller = self._live()
        check_name(name, "name")
        if name in self._names:
            raise NameTakenError(f"an actor named {name!r} already exists; choose another name", name=name)
        exposed = sorted(exposed_methods(obj, methods, name))
        actor_id = next(self._ids)
        options = dict(name=name, namespace=self.namespace, max_concurrency=max_concurrency, num_cpus=0)
        try:
            shell = self._shell if has_async_methods(type(obj)) else self._threaded
            ray_handle = shell.options(**options).remote(
                {"obj": obj, "methods": exposed}, (), {},
                {"actor_id": actor_id, "label": name, "namespace": self.namespace, "max_concurrency": max_concurrency})
        except ValueError as exc:
            if "already taken" not in str(exc):
                raise
            raise NameTakenError(f"an actor named {name!r} already exists in Ray namespace {self.namespace!r}; "
                                 "choose another name", name=name) from None
        self._names[name] = actor_id
        self._targets[actor_id] = Target(actor_id, name, name, ray_handle)
        self._meta[actor_id] = {"cls": type(obj).__qualname__, "pid": None, "max_concurrency": max_concurrency}
        self.log.info("actor.registered", actor=name, cls=type(obj).__qualname__)
        return ActorHandle(caller, actor_id, name, name)

    def unregister(self, name: str) -> None:
        """Stop serving the named object registered with ``register``; pending calls to it fail."""
        aid = self._names.get(name)
        if aid is None or self._meta[aid].get("pid", 0) is not None:
            raise ActorNotFoundError(f"no registered (host-resident) actor named {name!r}", name=name)
        self._forget(self._targets[aid])

    def get_actor(self, name: str) -> ActorHandle:
        """The handle of the actor named ``name`` (this Runtime's, or another driver's in its namespace)."""
        caller = self._live()
        aid = self._names.get(name)
        if aid is None:
            try:
                ray_handle = ray.get_actor(name, namespace=self.namespace)
            except ValueError:
                raise ActorNotFoundError(f"no actor named {name!r} (Ray namespace {self.namespace!r})",
                                         name=name) from None
            aid = next(self._ids)
            self._targets[aid] = Target(aid, name, name, ray_handle)
            self._names[name] = aid
            self._meta[aid] = {"cls": "?", "pid": None, "max_concurrency": 0, "foreign": True}
        target = self._targets[aid]
        return ActorHandle(caller, aid, name, target.label)

    async def stop(self, handle: ActorHandle, /) -> None:
        """Stop the actor ``handle`` reaches (idempotent): its Ray actor is killed, not restarted."""
        target = self._targets.get(handle._actor_id)
        if target is None or target.stopped:
            return
        self._kill(target)
        if target.name is not None:
            self._names.pop(target.name, None)
        self.log.info("actor.stopped", actor=target.label, ray_actor_id=self._meta.get(target.actor_id, {}).get(
            "ray_actor_id"), node_id=self._meta.get(target.actor_id, {}).get("node_id"))

    # -- tasks -----------------------------------------------------------------------

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        """Run ``fn(*args, **kwargs)`` as a Ray task with its ``@actorbox.task`` options; its Future."""
        caller = self._live()
        opts = task_options(fn)
        who = f"task {getattr(fn, '__qualname__', fn)}"
        _refuse_sandbox(opts.sandbox, who)
        self._capacity.check({"CPU": opts.num_cpus, "GPU": opts.num_gpus, **dict(opts.resources)}, who)
        limit = self._max_pending_tasks
        if limit is not None and sum(c.target is None for c in caller.pending.values()) >= limit:
            raise PendingCallsLimitError(f"{who} was refused: {limit} tasks are unfinished "
                                         "(Runtime(max_pending_tasks=...)); await some first", limit=limit)
        remote = self._task.options(num_cpus=opts.num_cpus, num_gpus=opts.num_gpus, resources=dict(opts.resources),
                                    max_retries=opts.max_retries, retry_exceptions=False,
                                    runtime_env=runtime_env(opts.dependencies))
        tries = 1 + opts.max_retries if opts.retry_exceptions else 1
        return caller.remote(remote.remote, (fn, self.namespace, tries), "actorbox.tasks",
                             getattr(fn, "__qualname__", "task"), args, kwargs, None)

    async def put(self, obj: Any, *, retention: float | str | None = "default") -> Any:
        raise UsageError("rt.put() is not on the Ray backend: pass the value itself (Ray puts large arguments "
                         "in its object store once per call), or pass a call's Future, which stays an ObjectRef")

    # -- inspection ------------------------------------------------------------------

    def actors(self) -> list[ActorInfo]:
        """This Runtime's actors: state, restarts and pid from Ray's actor table (else as seen at their start)."""
        return actor_rows(self._targets, self._meta, list(self._caller.pending.values()) if self._caller else [])

    def named_actors(self) -> dict[str, int]:
        return dict(sorted(self._names.items()))

    def pending_calls(self) -> list[CallInfo]:
        return self._caller.infos() if self._caller is not None else []

    def resources(self) -> ResourceInfo:
        """Ray's view: the cluster's resources and what is free now (CPU, GPU, custom)."""
        self._live()
        return ResourceInfo(public(_ray.cluster_resources()), public(_ray.available_resources()))

    def node_of(self, handle: ActorHandle) -> str | None:
        """The Ray node id the actor runs on."""
        node: str | None = self._meta.get(handle._actor_id, {}).get("node_id")
        return node


async def _wait_ref(ref: Any) -> Any:
    """The value of ``ref``, awaited on this loop (asyncio or trio); cancellable."""
    loop = HostLoop()
    done = anyio.Event()
    box: list[Any] = []

    def ready(cf: Any) -> None:
        box.append(cf)
        try:
            loop.soon(done.set)
        except RuntimeError:
            pass

    ref.future().add_done_callback(ready)
    try:
        await done.wait()
    except BaseException:
        ray.cancel(ref)
        raise
    return box[0].result()


__all__ = ["HandleRef", "RayRuntime"]
