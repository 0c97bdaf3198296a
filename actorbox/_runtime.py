"""``Runtime``: the API and lifetime of a set of actors; its parts do the work.

The scheduler routes every call; the actor table (``_actors``) starts and stops the
actor processes, each under its supervisor; the host's caller, endpoint and resident
server (``_host_caller``, ``_host``, ``_residents``) are the host's side of calls; the
directory (``_directory``) hands out handles. Those parts receive narrow services
objects (``_services``), never the Runtime, so none of them imports this module.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import anyio
import anyio.abc
import anyio.to_thread
import psutil
import structlog

from sandbox import EnvironmentManager, SandboxPolicy, validate_requirements
from sandbox import late_reaps as sandbox_late_reaps
from scheduler import DEFAULT_MAX_FRAME, CallInfo, Scheduler

from ._actor_launch import CODE_PATHS
from ._actor_resources import start_holding
from ._actors import ActorTable, StartRequest
from ._backends import other_backend
from ._codec import Codec
from ._context import process_caller
from ._control import ControlServer
from ._ctrl_c import protect_connections
from ._decode_limits import DEFAULT_MAX_DECODED_ITEMS, DEFAULT_MAX_MAP_KEYS, DecodeLimits
from ._directory import Directory
from ._errors import ActorboxError, UsageError
from ._extensions import LoadedExtension, extension_folders, load_all, read_extension, sandbox_for
from ._future import Future
from ._handle import ActorHandle
from ._host import HostEndpoint
from ._host_caller import HostCaller
from ._host_loop import HostLoop
from ._import_paths import import_paths
from ._inspect import ActorInfo, ProcessSampler, actor_infos
from ._nofile import raise_nofile_limit
from ._objects import SERVICE_NAME, ObjectRef, ObjectService, ObjectStore, check_retention
from ._options import ActorOptions, check_name, options_of
from ._prepare import ZygoteInfo, prepare
from ._residents import ResidentServer
from ._resources import ResourceInfo, Resources
from ._services import ActorServices, HostServices
from ._submit import TASKS_NAME
from ._tasks import DEFAULT_IDLE_S, TaskPool, check_task_settings
from ._trace import FLUSH_INTERVAL_S, EventTee, TraceRecorder
from ._zygotes import Zygotes

log = structlog.get_logger("actorbox")
actor_log = structlog.get_logger("actorbox.actor")  # events logged inside actors, forwarded
# Seconds a Runtime's exit waits for killed processes the kernel is still tearing down.
_LATE_REAP_S = 3.0

@dataclass(frozen=True, slots=True)
class _Live:
    """What exists only while the Runtime runs (from __aenter__ to __aexit__)."""

    tg: anyio.abc.TaskGroup  # the Runtime's own tasks: host-resident calls, expiry, control socket
    tg_cm: Any  # the task group's context manager, exited by __aexit__
    spawner: ThreadPoolExecutor  # forks every actor process: must live as long as the actors
    supervision: anyio.abc.TaskGroup  # where supervisors run (shielded; see _supervise_actors)
    actors: ActorTable
    loop: HostLoop
    residents: ResidentServer
    caller: HostCaller  # the host's caller: handles made here call through it
    directory: Directory  # handles by name and by reference; host-resident names
    ctx_token: Any  # process_caller's, reset on exit
    tasks: TaskPool  # rt.submit's tasks and their worker actors


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _retention(value: float | str | None) -> float | None:
    """Runtime(object_retention=...) checked; "default" is ACTORBOX_OBJECT_RETENTION, else 30 s."""
    if value != "default":
        return check_retention(value, "Runtime(object_retention=...)")
    env_value = os.environ.get("ACTORBOX_OBJECT_RETENTION")
    try:
        seconds = float(env_value) if env_value else 30.0
    except ValueError:
        raise UsageError(f"ACTORBOX_OBJECT_RETENTION must be a number of seconds, not {env_value!r}; "
                         "set it to one (e.g. 30) or unset it") from None
    return check_retention(seconds, "ACTORBOX_OBJECT_RETENTION")

class Runtime:
    """Runs actors: ``async with actorbox.Runtime() as rt: h = await rt.start(Cls)``.

    ``sandbox``: ``"required"`` (default: every actor runs in bubblewrap, and a machine
    that can't sandbox is an error carrying the remedy) or ``"disabled"`` (explicitly
    unsandboxed, warned about on every actor start); an actor's own ``sandbox=`` option
    wins. ``sandbox_policy``: the default SandboxPolicy (network, paths, limits).
    ``object_retention``: seconds a put object is kept unless released (default 30, or
    ``ACTORBOX_OBJECT_RETENTION``; None keeps objects until released).
    ``object_store_capacity``: bytes the object store may hold (default: half the RAM).
    ``grace_period``: seconds a stopping actor gets before it is killed.
    ``log_calls``: emit ``call.*`` trace events (default: ``ACTORBOX_LOG_CALLS=1``).
    ``ACTORBOX_TRACE_FILE=path``: append every event, call events included, to ``path``
    as JSON lines (``python -m actorbox trace`` draws them).
    ``max_frame_size``: the largest frame accepted from or sent to an actor, in bytes; a call
    whose arguments or result would go over it fails alone (the actor lives on).
    ``env_root``: where actors' environments are built and cached (default:
    ``ACTORBOX_ENV_ROOT``, else ``~/.cache/actorbox/envs``). ``allow_source_builds``:
    let environments build packages that ship no wheel (off: a build runs the
    package's code on the host, unsandboxed).
    ``max_decoded_items`` (default 1,000,000) and ``max_map_keys`` (default 100,000):
    how much one message from an actor (a result, a host-resident call's arguments, an
    error, and in an actor what another actor sent it) may decode to, checked as it is
    decoded: values in all (each element, key and value; a container counts a few more,
    a tuple, set or exception 16), and non-string keys in one map (members in one set).
    Over either, that call fails with SerializationError naming the knob (the actor
    lives on): decoding stays well under a second and ~100 MB whatever an actor sends.
    Big data travels as numpy arrays or torch tensors, one value however large.
    ``zygotes``: False starts every actor in an interpreter of its own instead of forking it from
    a prepared process of its environment (default: on, unless ``ACTORBOX_ZYGOTES=0``).
    """

    def __new__(cls, *, backend: str = "local", **options: Any) -> Any:
        """``backend="ray"`` (``address=``, ``namespace=``) is a ``_ray.RayRuntime``; see README "Ray backend"."""
        return object.__new__(cls) if backend == "local" else other_backend(backend, options)

    def __init__(self, *, backend: str = "local", sandbox: str = "required",
                 sandbox_policy: SandboxPolicy | None = None, grace_period: float = 5.0, log_calls: bool | None = None,
                 max_frame_size: int = DEFAULT_MAX_FRAME, object_retention: float | str | None = "default",
                 object_store_capacity: int | None = None, env_root: str | os.PathLike[str] | None = None,
                 allow_source_builds: bool = False, max_decoded_items: int = DEFAULT_MAX_DECODED_ITEMS,
                 max_map_keys: int = DEFAULT_MAX_MAP_KEYS, num_cpus: float | None = None,
                 num_gpus: int | None = None, resources: dict[str, float] | None = None,
                 max_pending_tasks: int | None = None, task_worker_idle_s: float = DEFAULT_IDLE_S,
                 zygotes: bool | None = None) -> None:
        if sandbox not in ("required", "disabled"):
            raise UsageError(f"sandbox must be 'required' or 'disabled', got {sandbox!r}")
        self.sandbox = sandbox
        self.sandbox_policy = sandbox_policy or SandboxPolicy()
        self.grace_period = grace_period
        self.max_frame_size = max_frame_size
        self.debug_rpc = _env_flag("ACTORBOX_DEBUG_RPC")
        self._log_calls = _env_flag("ACTORBOX_LOG_CALLS") if log_calls is None else log_calls
        self.trace_file = os.environ.get("ACTORBOX_TRACE_FILE") or None
        # A trace needs the call events even when the application's logs don't want them.
        self.scheduler = Scheduler(log_calls=self._log_calls or self.trace_file is not None)
        # Where the Runtime's own events go (the scheduler's and the supervisors'): the
        # structlog loggers, or tees that also record them while tracing.
        self.log: Any = log
        self.actor_log: Any = actor_log
        self._recorder: TraceRecorder | None = None
        self._control: ControlServer | None = None
        self._sampler = ProcessSampler()
        self.codec = Codec(allow_pickle=True, make_handle=self._make_handle,
                           make_ref=lambda object_id: ObjectRef(self._require_running().caller, object_id))
        retention = _retention(object_retention)
        capacity = object_store_capacity if object_store_capacity is not None else psutil.virtual_memory().total // 2
        self.object_store = ObjectStore(self.codec, retention=retention, capacity=capacity)
        if retention is not None:  # CUDA IPC sources too (None: the 30 s default)
            self.codec.cuda_keepalive.retention = retention
        self.closing = False
        self._entered = False
        self._live: _Live | None = None  # while running
        self.env_root = os.fspath(env_root) if env_root is not None else None
        self._environments: EnvironmentManager | None = None
        self.allow_source_builds = allow_source_builds
        self.codec.limits = DecodeLimits(max_decoded_items, max_map_keys)  # its actors get them in INIT
        self._resources = Resources(num_cpus, num_gpus, resources)
        self._task_settings = check_task_settings(max_pending_tasks, task_worker_idle_s)
        self.zygotes = zygotes  # None: ACTORBOX_ZYGOTES decides (on unless "0")

    # -- lifetime ------------------------------------------------------------------

    async def __aenter__(self) -> Runtime:
        if self._entered:  # (closing: set by __aexit__, so this one ran and is over)
            raise ActorboxError(f"this Runtime {'has already exited' if self.closing else 'is already running'}; "
                                "create a new Runtime() for each 'async with'")
        self._entered = True
        protect_connections()  # (trio only)
        if self.trace_file is not None:
            self._start_recording(self.trace_file)
        raise_nofile_limit(self.log)  # many actors need many descriptors in the host
        tg_cm = anyio.create_task_group()
        tg = await tg_cm.__aenter__()
        # Forks every actor process: must live as long as the actors (see sandbox.launch).
        spawner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="actorbox-spawn")
        with anyio.CancelScope(shield=True):  # (it starts at once) so __aexit__ always finds it
            supervision = await tg.start(_supervise_actors)
        actors = ActorTable(ActorServices(
            self.scheduler, self.codec, self.log, self.actor_log, self.max_frame_size, self.debug_rpc,
            self.grace_period, spawner, supervision, self._sandbox_for, lambda: self.environments,
            lambda: self.closing, Zygotes(self.log, spawner, supervision, self.zygotes)))
        loop = HostLoop()
        residents = ResidentServer(self.codec, loop, self.grace_period)
        endpoint = HostEndpoint(self.scheduler, tg, residents)
        caller = HostCaller(HostServices(self.scheduler, self.codec, self.object_store, self.get_actor,
                                         actors.cuda_ipc_reaches), loop, endpoint)
        endpoint.on_reply = caller.on_reply
        directory = Directory(self.scheduler, caller, residents, actors, self._recorder)
        tasks = TaskPool(self.scheduler, self.codec, actors, tg, self._resources, self.log, *self._task_settings,
                         closing=lambda: self.closing)
        self._live = _Live(tg, tg_cm, spawner, supervision, actors, loop, residents, caller, directory,
                           process_caller.set(caller), tasks)
        tg.start_soon(tasks.run)
        caller.submit_task = functools.partial(tasks.submit, caller)
        tg.start_soon(_expire_objects, self.object_store, self.codec)
        if self._recorder is not None:
            tg.start_soon(_flush_trace, self._recorder)
        try:
            self._control = ControlServer(self)
        except (OSError, ActorboxError) as exc:
            log.warning("control.unavailable", reason=str(exc),
                        consequence="python -m actorbox ps cannot see this Runtime")
        else:
            tg.start_soon(self._control.serve)
        return self

    def _start_recording(self, path: str) -> None:
        try:
            rec = self._recorder = TraceRecorder(path)
        except OSError as exc:
            raise ActorboxError(f"ACTORBOX_TRACE_FILE={path}: cannot record events there: {exc}") from exc
        self.log = EventTee(log, "actorbox", rec, quiet=() if self._log_calls else ("call.",))
        self.actor_log = EventTee(actor_log, "actorbox.actor", rec)
        self.scheduler.log = self.log

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> bool | None:
        self.closing = True
        live = self._live
        assert live is not None, "__aexit__ without __aenter__"
        try:
            suppress: bool | None = None
            try:
                await live.actors.stop_all()  # shielded and bounded: the grace period plus 1 s
                live.tasks.close()
                live.tg.cancel_scope.cancel()
            finally:
                # Supervisors still running now belong to starts that failed or to stops that
                # gave up: they kill and reap what is left when cancelled.
                live.supervision.cancel_scope.cancel()
                # The task group is exited even if stopping the actors failed; that failure
                # then propagates (no return in this finally, so it is never swallowed).
                live.tg.cancel_scope.cancel()
                live.caller.fail_pending()  # nothing will answer them now
                if e is not None and not isinstance(e, anyio.get_cancelled_exc_class()):
                    # The body's own exception propagates as itself, not in an ExceptionGroup.
                    await _exit_group(live, None, None, None)
                else:
                    suppress = await _exit_group(live, et, e, tb)
            return suppress
        finally:
            await _release(self, live)

    # -- actors ----------------------------------------------------------------------

    def _sandbox_for(self, opts: ActorOptions) -> tuple[str, SandboxPolicy]:
        if isinstance(opts.sandbox, SandboxPolicy):
            return "required", opts.sandbox
        return opts.sandbox or self.sandbox, self.sandbox_policy

    def _make_handle(self, actor_id: int, name: str | None, label: str, token: bytes) -> ActorHandle:
        return self._require_running().directory.verified_handle(actor_id, name, label, token)

    def _require_running(self) -> _Live:
        if self._live is None or self.closing:
            raise ActorboxError("the Runtime is not running; use it inside 'async with actorbox.Runtime() as rt:'")
        return self._live

    async def start(self, cls: type[Any], /, *args: Any, name: str | None = None, **kwargs: Any) -> ActorHandle:
        """Start ``cls(*args, **kwargs)`` as an actor in its own process; returns its handle.

        An actor class with ``dependencies`` runs in its own environment (built with uv
        on first use, then cached). Raises ActorStartError when the process cannot
        start or the constructor raises (EnvironmentBuildError when uv fails).
        """
        self._require_running()
        return await self._start_actor(_class_request(self, cls, args, kwargs, name, "rt.start(Cls, *args, **kwargs)"))

    async def load_extension(self, path: str | os.PathLike[str], /, *args: Any, name: str | None = None,
                             sandbox: str | SandboxPolicy | None = None, **kwargs: Any) -> ActorHandle:
        """Start the actor an extension folder describes (its pyproject.toml); returns its handle.

        The folder's ``[project] dependencies`` get their own environment and its
        ``[tool.actorbox]`` table names the class (``entry = "module:Class"``) and the
        actor's options; the actor is named after the project unless ``name`` (or the
        table) says otherwise. The host never imports the extension's code.
        ``sandbox``: the host's choice for this extension ("required", "disabled" or a
        SandboxPolicy; default: the Runtime's); the extension may only tighten it.
        Raises ExtensionError, InvalidRequirementError or ActorStartError.
        """
        self._require_running()
        return await self._start_actor(await _extension_request(self, path, args, kwargs, name, sandbox))

    async def prepare(self, target: type[Any] | str | os.PathLike[str], /, *,
                      sandbox: str | SandboxPolicy | None = None) -> ZygoteInfo | None:
        """Make the zygote actors of ``target`` (a class, or an extension folder and its ``sandbox`` as for
        load_extension) fork from ready now; its ZygoteInfo, or None (an event says why). See README "Zygotes"."""
        live = self._require_running()
        req = await _extension_request(self, target, (), {}, None, sandbox) if isinstance(target, (str, os.PathLike)) \
            else _class_request(self, target, (), {}, None, "rt.prepare(Cls)")
        return await prepare(live.actors.services, req, sandbox)

    async def load_extensions(self, directory: str | os.PathLike[str], *,
                              sandbox: str | SandboxPolicy | None = None) -> list[LoadedExtension]:
        """Load every extension folder in ``directory`` at once; a failure is reported, never fatal.

        Returns one LoadedExtension per folder holding a pyproject.toml (sorted by
        folder name), with its handle or the error that stopped it. ``sandbox``: as
        for load_extension, for all of them.
        """
        self._require_running()
        return await load_all(extension_folders(os.fspath(directory)),
                              lambda folder: self.load_extension(folder, sandbox=sandbox))

    @property
    def environments(self) -> EnvironmentManager:
        """Builds and caches the actors' environments (under ``env_root``)."""
        if self._environments is None:
            self._environments = EnvironmentManager(self.env_root, code_dirs=CODE_PATHS,
                                                    allow_source_builds=self.allow_source_builds)
        return self._environments

    async def _start_actor(self, req: StartRequest) -> ActorHandle:
        live = self._require_running()
        entry = await start_holding(self._resources, live.actors, req)  # once its resources are free
        return ActorHandle(live.caller, entry.actor_id, req.name, entry.label, entry.token)

    async def put(self, obj: Any, *, retention: float | str | None = "default") -> ObjectRef:
        """Store ``obj`` (its tensors and arrays in shared memory) for any actor; returns its ObjectRef.

        The object is kept ``retention`` seconds (the Runtime's default unless given;
        None: until released). Raises ObjectStoreFullError past the store's capacity.
        """
        live = self._require_running()
        if SERVICE_NAME not in self.scheduler.names:
            live.directory.register(SERVICE_NAME, ObjectService(self.object_store), 64, None)
        return ObjectRef(live.caller, self.object_store.put(obj, retention))

    def register(self, name: str, obj: Any, *, max_concurrency: int = 1,
                 methods: Iterable[str] | None = None) -> ActorHandle:
        """Register ``obj`` as a host-resident named actor (a singleton actors reach by name).

        ``methods``: the names callers may call, exactly; by default the public methods
        ``obj``'s class defines itself or inherits from classes outside the standard
        library (so a ``UserDict`` subclass does not answer ``pop`` or ``clear``).
        Raises NameTakenError for a name in use or reserved (``actorbox.`` prefix) and
        MethodNotFoundError (PrivateMethodError) for a listed name that is no public method.
        """
        check_name(name, "name")
        return self._require_running().directory.register(name, obj, max_concurrency, methods)

    def unregister(self, name: str) -> None:
        """Remove a host-resident named actor; pending calls to it fail."""
        self._require_running().directory.unregister(name)

    def get_actor(self, name: str) -> ActorHandle:
        """The handle of the actor (or host-resident object) registered under ``name``."""
        return self._require_running().directory.get_actor(name)

    async def stop(self, handle: ActorHandle, /) -> None:
        """Stop the actor ``handle`` reaches (idempotent); ``handle.stop()`` is the actor's own method."""
        await (self._live if self.closing and self._live else self._require_running()).directory.stop(handle)

    # -- inspection ------------------------------------------------------------------

    def actors(self) -> list[ActorInfo]:
        """Every actor this Runtime knows (processes, host-resident objects), then its zygotes, with RSS and CPU."""
        if (live := self._live) is None:
            return []
        return actor_infos(self.scheduler, live.actors.supervisors, live.residents.residents, self._sampler,
                           live.actors.services.zygotes.live())  # (retired ones while they hold actors)

    def named_actors(self) -> dict[str, int]:
        """Registered names (actors started with a name, host-resident actors) and their actor ids."""
        return dict(sorted((n, a) for n, a in self.scheduler.names.items() if n != TASKS_NAME))  # not the pool

    def pending_calls(self) -> list[CallInfo]:
        """Calls in flight: id, actor, method, caller, parent call, state and age."""
        return self.scheduler.pending_calls()

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        """Run ``fn(*args, **kwargs)`` as a task on a sandboxed worker (see ``@actorbox.task``); its Future."""
        return (live := self._require_running()).tasks.submit(live.caller, fn, args, kwargs)

    def resources(self) -> ResourceInfo:
        """Each resource's total and what is free now (CPU, GPU, custom)."""
        return self._resources.info()


def _class_request(rt: Runtime, cls: Any, args: tuple[Any, ...], kwargs: dict[str, Any], name: str | None,
                   call: str) -> StartRequest:
    """What rt.start(cls, ...) starts; UsageError for what is not a class."""
    if not isinstance(cls, type):
        raise UsageError(f"{call} takes a class, got {type(cls).__name__}")
    opts: ActorOptions = options_of(cls)
    # Checked when the class was decorated; here only torch's exclusion is reported.
    requirements = _requirements(opts.dependencies, cls.__qualname__, rt) if opts.dependencies else None
    paths, module_paths = _import_paths(cls)
    return StartRequest({"cls": cls}, cls.__qualname__, cls.__name__, args, kwargs,
                        name if name is not None else opts.name, opts, paths, module_paths, requirements)


async def _extension_request(rt: Runtime, path: str | os.PathLike[str], args: tuple[Any, ...],
                             kwargs: dict[str, Any], name: str | None,
                             sandbox: str | SandboxPolicy | None) -> StartRequest:
    """What rt.load_extension(path, ...) starts; ExtensionError or InvalidRequirementError for a bad folder."""
    # In a worker thread: parsing an extension's pyproject (up to 1 MiB) can take seconds.
    ext = await anyio.to_thread.run_sync(read_extension, os.fspath(path))
    _warn_ignored(ext.ignored, ext.name, rt)
    mode, policy = rt._sandbox_for(ActorOptions(sandbox=sandbox))
    opts = dataclasses.replace(ext.options, sandbox=sandbox_for(ext, policy) if mode == "required" else mode)
    return StartRequest({"entry": (ext.module, ext.cls)}, f"{ext.module}:{ext.cls}", ext.cls, args, kwargs,
                        name if name is not None else ext.name, opts, [ext.path], [ext.path], ext.requirements)


def _import_paths(cls: type) -> tuple[list[str], list[str]]:
    """Where ``cls``'s module is imported from in the actor, and the files to expose for it."""
    return import_paths(cls.__module__)


async def _exit_group(live: _Live, et: type[BaseException] | None, e: BaseException | None,
                      tb: TracebackType | None) -> bool | None:
    """Exit the Runtime's task group. A Ctrl-C that trio delivered inside one of its tasks (an
    actor or worker starting, say) surfaces as KeyboardInterrupt, as it would anywhere else,
    not inside an exception group (where it would end the program with status 1)."""
    try:
        suppress: bool | None = await live.tg_cm.__aexit__(et, e, tb)
        return suppress
    except BaseExceptionGroup as group:
        if group.subgroup(KeyboardInterrupt) is None:
            raise
        raise KeyboardInterrupt from group


async def _release(rt: Runtime, live: _Live) -> None:
    """What outlives a Runtime's actors until the very end: sockets, files, memory, threads (shielded)."""
    if rt._control is not None:
        rt._control.close()  # also when its task never ran: no socket file is left
    if rt._recorder is not None:
        rt._recorder.close()
    rt.object_store.close()
    rt.codec.cuda_keepalive.clear()  # the actors are gone: nobody can open these any more
    rt.codec.segments.drain_pool()
    # Waited for without blocking the loop: a fork finishing now wakes its (cancelled)
    # launch through the loop, and blocking it here would deadlock.
    live.spawner.shutdown(wait=False)
    with anyio.CancelScope(shield=True):
        while any(t.is_alive() for t in getattr(live.spawner, "_threads", ())):
            await anyio.sleep(0.005)
        # Killed processes the kernel was still tearing down when their supervisors stopped
        # waiting (sandbox.reap_later): a few more seconds, then they are left to its thread.
        with anyio.move_on_after(_LATE_REAP_S):
            while sandbox_late_reaps():
                await anyio.sleep(0.02)
    if left := sandbox_late_reaps():
        log.error("runtime.unreaped", pids=left,
                  reason=f"killed actor processes were not gone {_LATE_REAP_S:g} s after the Runtime stopped them "
                         "(the kernel holds them); they are reaped, and their uids released, once gone")
    live.residents.close(rt.grace_period)
    try:
        process_caller.reset(live.ctx_token)
    except ValueError:
        process_caller.set(None)  # exited from another context


async def _supervise_actors(*, task_status: anyio.abc.TaskStatus[anyio.abc.TaskGroup]) -> None:
    """Hold the task group the actors' supervisors run in, until __aexit__ cancels it.

    Shielded: whatever cancels the scope around ``async with Runtime()`` (a deadline,
    a task-group cancel, Ctrl-C) must not cut supervision short, or the actors would
    be left unreaped and stop() would wait for them for ever. __aexit__ stops every
    actor first (bounded: grace period, kill, reap), then cancels this group.
    """
    with anyio.CancelScope(shield=True):
        async with anyio.create_task_group() as tg:
            task_status.started(tg)
            await anyio.sleep_forever()


async def _flush_trace(recorder: TraceRecorder) -> None:
    while True:
        await anyio.sleep(FLUSH_INTERVAL_S)
        recorder.flush()

async def _expire_objects(store: ObjectStore, codec: Codec) -> None:
    while True:
        retention = store.retention
        await anyio.sleep(1.0 if retention is None else max(0.05, min(1.0, retention / 4)))
        store.expire()
        codec.cuda_keepalive.expire()


def _requirements(dependencies: tuple[str, ...], who: str, rt: Runtime) -> tuple[str, ...]:
    reqs, ignored = validate_requirements(dependencies)
    _warn_ignored(ignored, who, rt)
    return reqs


def _warn_ignored(ignored: tuple[str, ...], who: str, rt: Runtime) -> None:
    for req in ignored:
        log.warning("env.requirement_ignored", actor=who, requirement=req,
                    reason="torch always comes from the host, so shared memory and CUDA IPC see the same "
                           f"version ({rt.environments.host.version_of('torch') or 'not installed'})")
