"""``Runtime``: owns the scheduler, the actors' processes and the host endpoint."""

from __future__ import annotations

import dataclasses
import hmac
import os
import sys
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar

import anyio
import anyio.abc
import anyio.to_thread
import cloudpickle
import psutil
import structlog

from sandbox import EnvironmentManager, SandboxPolicy, validate_requirements
from scheduler import DEFAULT_MAX_FRAME, CallInfo, Scheduler
from scheduler import envelope as env

from ._codec import Codec
from ._context import process_caller
from ._control import ControlServer
from ._decode_limits import DEFAULT_MAX_DECODED_ITEMS, DEFAULT_MAX_MAP_KEYS, DecodeLimits
from ._errors import ActorboxError, ActorNotFoundError, NameTakenError, SerializationError
from ._extensions import LoadedExtension, extension_folders, read_extension, sandbox_for
from ._handle import ActorHandle
from ._host import HostEndpoint, Resident, exposed_methods
from ._inspect import ProcessSampler
from ._objects import SERVICE_NAME, ObjectRef, ObjectService, ObjectStore, check_retention
from ._options import ActorOptions, check_name, options_of
from ._supervisor import _CODE_PATHS, ActorSupervisor, init_payload
from ._trace import FLUSH_INTERVAL_S, EventTee, TraceRecorder

log = structlog.get_logger("actorbox")
actor_log = structlog.get_logger("actorbox.actor")  # events logged inside actors, forwarded

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class ActorInfo:
    """A snapshot of one actor (``Runtime.actors()``)."""

    actor_id: int
    name: str | None
    label: str
    cls: str
    pid: int | None  # None for host-resident actors
    state: str  # starting | alive | restarting | dead | stopped | resident
    restarts: int
    max_concurrency: int
    queued: int  # waiting for a slot: in the scheduler's queue or delivered ahead into the actor's
    running: int  # running now (re-entrant calls may take it past max_concurrency)
    rss: int | None = None  # resident memory in bytes (psutil); None when not an alive process
    cpu_percent: float | None = None  # since the previous actors() (the first time: since it started)
    running_calls: tuple[int, ...] = ()  # ids of the calls running now
    # Descriptors (tensors, arrays) received from it that the host holds open now; None for
    # host-resident actors and between processes. Bounded per actor (over it, calls fail).
    open_fds: int | None = None


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


# Bytes an INIT frame adds to its payload (kind, ids, the name table): generous.
_INIT_ENVELOPE = 64 << 10

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
    """

    def __init__(self, *, sandbox: str = "required", sandbox_policy: SandboxPolicy | None = None,
                 grace_period: float = 5.0, log_calls: bool | None = None,
                 max_frame_size: int = DEFAULT_MAX_FRAME, object_retention: float | str | None = "default",
                 object_store_capacity: int | None = None, env_root: str | os.PathLike[str] | None = None,
                 allow_source_builds: bool = False, max_decoded_items: int = DEFAULT_MAX_DECODED_ITEMS,
                 max_map_keys: int = DEFAULT_MAX_MAP_KEYS) -> None:
        if sandbox not in ("required", "disabled"):
            raise ValueError(f"sandbox must be 'required' or 'disabled', got {sandbox!r}")
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
        self.codec = Codec(allow_pickle=True, handle_type=ActorHandle, make_handle=self._make_handle,
                           make_ref=lambda object_id: ObjectRef(self._host, object_id))
        if object_retention == "default":
            env_value = os.environ.get("ACTORBOX_OBJECT_RETENTION")
            try:
                object_retention = float(env_value) if env_value else 30.0
            except ValueError:
                raise ValueError(f"ACTORBOX_OBJECT_RETENTION must be a number of seconds, not {env_value!r}; "
                                 "set it to one (e.g. 30) or unset it") from None
            object_retention = check_retention(object_retention, "ACTORBOX_OBJECT_RETENTION")
        else:
            object_retention = check_retention(object_retention, "Runtime(object_retention=...)")
        capacity = object_store_capacity if object_store_capacity is not None else psutil.virtual_memory().total // 2
        self.object_store = ObjectStore(self.codec, retention=object_retention,  # type: ignore[arg-type]
                                        capacity=capacity)
        if isinstance(object_retention, (int, float)):  # CUDA IPC sources too (None: the 30 s default)
            self.codec.cuda_keepalive.retention = float(object_retention)
        self.closing = False
        self._supervisors: dict[int, ActorSupervisor] = {}
        self._supervision: anyio.abc.TaskGroup | None = None  # where supervisors run (__aenter__)
        self._host: HostEndpoint | None = None
        self._tg: anyio.abc.TaskGroup = None  # type: ignore[assignment]
        self._tg_cm: Any = None
        self._ctx_token: Any = None
        self.env_root = os.fspath(env_root) if env_root is not None else None
        self._environments: EnvironmentManager | None = None
        self.allow_source_builds = allow_source_builds
        self.codec.limits = DecodeLimits(max_decoded_items, max_map_keys)  # its actors get them in INIT

    # -- lifetime ------------------------------------------------------------------

    async def __aenter__(self) -> Runtime:
        if self._tg_cm is not None:
            raise ActorboxError("this Runtime is already running; create a new Runtime() for each 'async with'")
        if self.trace_file is not None:
            self._start_recording(self.trace_file)
        self._tg_cm = anyio.create_task_group()
        self._tg = await self._tg_cm.__aenter__()
        # Forks every actor process: must live as long as the actors (see sandbox.launch).
        self._spawner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="actorbox-spawn")
        with anyio.CancelScope(shield=True):  # (it starts at once) so __aexit__ always finds it
            self._supervision = await self._tg.start(self._supervise_actors)
        self._host = HostEndpoint(self, self.scheduler, self._tg)
        self._ctx_token = process_caller.set(self._host)
        self._tg.start_soon(self._expire_objects)
        if self._recorder is not None:
            self._tg.start_soon(self._flush_trace, self._recorder)
        try:
            self._control = ControlServer(self)
        except (OSError, ActorboxError) as exc:
            log.warning("control.unavailable", reason=str(exc),
                        consequence="python -m actorbox ps cannot see this Runtime")
        else:
            self._tg.start_soon(self._control.serve)
        return self

    async def _supervise_actors(self, *, task_status: anyio.abc.TaskStatus[anyio.abc.TaskGroup]) -> None:
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

    def _start_recording(self, path: str) -> None:
        try:
            rec = self._recorder = TraceRecorder(path)
        except OSError as exc:
            raise ActorboxError(f"ACTORBOX_TRACE_FILE={path}: cannot record events there: {exc}") from exc
        self.log = EventTee(log, "actorbox", rec, quiet=() if self._log_calls else ("call.",))
        self.actor_log = EventTee(actor_log, "actorbox.actor", rec)
        self.scheduler.log = self.log

    async def _flush_trace(self, recorder: TraceRecorder) -> None:
        while True:
            await anyio.sleep(FLUSH_INTERVAL_S)
            recorder.flush()

    def cuda_ipc_reaches(self, actor_id: int) -> bool:
        """Whether actor ``actor_id`` can open the host's CUDA IPC handles.

        The CUDA driver hands an IPC handle over through a file in the exporter's
        /dev/shm that only its user can open. A sandboxed actor has its own /dev/shm
        and uid, so CUDA tensors reach it through CPU shared memory instead; a
        host-resident actor is this process, which can't open its own handles.
        """
        sup = self._supervisors.get(actor_id)
        return sup is not None and not sup.sandboxed

    async def _expire_objects(self) -> None:
        store = self.object_store
        while True:
            retention = store.retention
            await anyio.sleep(1.0 if retention is None else max(0.05, min(1.0, retention / 4)))
            store.expire()
            self.codec.cuda_keepalive.expire()

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> bool | None:
        self.closing = True
        try:
            suppress: bool | None = None
            try:
                # Shielded and bounded: each stop() returns within the grace period plus 1 s.
                with anyio.CancelScope(shield=True):
                    async with anyio.create_task_group() as tg:
                        for sup in list(self._supervisors.values()):
                            tg.start_soon(sup.stop, self.grace_period)
                    self._tg.cancel_scope.cancel()
            finally:
                # Supervisors still running now belong to starts that failed or to stops that
                # gave up: they kill and reap what is left when cancelled.
                if self._supervision is not None:
                    self._supervision.cancel_scope.cancel()
                # The task group is exited even if stopping the actors failed; that failure
                # then propagates (no return in this finally, so it is never swallowed).
                self._tg.cancel_scope.cancel()
                if self._host is not None:
                    self._host.fail_pending()  # nothing will answer them now
                if e is not None and not isinstance(e, anyio.get_cancelled_exc_class()):
                    # The body's own exception propagates as itself, not in an ExceptionGroup.
                    await self._tg_cm.__aexit__(None, None, None)
                else:
                    suppress = await self._tg_cm.__aexit__(et, e, tb)
            return suppress
        finally:
            if self._control is not None:
                self._control.close()  # also when its task never ran: no socket file is left
            if self._recorder is not None:
                self._recorder.close()
            self.object_store.close()
            self.codec.cuda_keepalive.clear()  # the actors are gone: nobody can open these any more
            self.codec.segments.drain_pool()
            # Waited for without blocking the loop: a fork finishing now wakes its (cancelled)
            # launch through the loop, and blocking it here would deadlock.
            self._spawner.shutdown(wait=False)
            with anyio.CancelScope(shield=True):
                while any(t.is_alive() for t in getattr(self._spawner, "_threads", ())):
                    await anyio.sleep(0.005)
            if self._host is not None:
                self._host.close(self.grace_period)
            try:
                process_caller.reset(self._ctx_token)
            except ValueError:
                process_caller.set(None)  # exited from another context

    # -- actors ----------------------------------------------------------------------

    def _sandbox_for(self, opts: ActorOptions) -> tuple[str, SandboxPolicy]:
        if isinstance(opts.sandbox, SandboxPolicy):
            return "required", opts.sandbox
        return opts.sandbox or self.sandbox, self.sandbox_policy

    def _make_handle(self, actor_id: int, name: str | None, label: str, token: bytes) -> ActorHandle:
        assert self._host is not None
        # The host's calls are trusted, so a handle it decodes must be one the scheduler
        # issued: else an actor could make the host call an actor it was never given.
        a = self.scheduler.actors.get(actor_id)
        if a is None or not hmac.compare_digest(token, a.token):
            raise SerializationError(
                f"an actor handle ({label!r}, id {actor_id}) that is not a valid reference arrived: only handles "
                "an actor was given (as an argument, a result or by name) can be passed on, never made up")
        return ActorHandle(self._host, actor_id, name, label, a.token)

    def _require_running(self) -> HostEndpoint:
        if self._host is None or self.closing:
            raise ActorboxError("the Runtime is not running; use it inside 'async with actorbox.Runtime() as rt:'")
        return self._host

    async def start(self, cls: type[Any], /, *args: Any, name: str | None = None, **kwargs: Any) -> ActorHandle:
        """Start ``cls(*args, **kwargs)`` as an actor in its own process; returns its handle.

        An actor class with ``dependencies`` runs in its own environment (built with uv
        on first use, then cached). Raises ActorStartError when the process cannot
        start or the constructor raises (EnvironmentBuildError when uv fails).
        """
        self._require_running()
        if not isinstance(cls, type):
            raise TypeError(f"rt.start() takes a class, got {type(cls).__name__}")
        opts: ActorOptions = options_of(cls)
        # Checked when the class was decorated; here only torch's exclusion is reported.
        requirements = self._requirements(opts.dependencies, cls.__qualname__) if opts.dependencies else None
        paths, module_paths = _import_paths(cls)
        return await self._start_actor({"cls": cls}, cls.__qualname__, cls.__name__, args, kwargs,
                                       name if name is not None else opts.name, opts, paths, module_paths,
                                       requirements)

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
        # In a worker thread: parsing an extension's pyproject (up to 1 MiB) can take seconds.
        ext = await anyio.to_thread.run_sync(read_extension, os.fspath(path))
        self._warn_ignored(ext.ignored, ext.name)
        mode, policy = self._sandbox_for(ActorOptions(sandbox=sandbox))
        opts = dataclasses.replace(ext.options, sandbox=sandbox_for(ext, policy) if mode == "required" else mode)
        return await self._start_actor({"entry": (ext.module, ext.cls)}, f"{ext.module}:{ext.cls}", ext.cls,
                                       args, kwargs, name if name is not None else ext.name, opts,
                                       [ext.path], [ext.path], ext.requirements)

    async def load_extensions(self, directory: str | os.PathLike[str], *,
                              sandbox: str | SandboxPolicy | None = None) -> list[LoadedExtension]:
        """Load every extension folder in ``directory`` at once; a failure is reported, never fatal.

        Returns one LoadedExtension per folder holding a pyproject.toml (sorted by
        folder name), with its handle or the error that stopped it. ``sandbox``: as
        for load_extension, for all of them.
        """
        self._require_running()
        folders = extension_folders(os.fspath(directory))
        results: dict[str, LoadedExtension] = {}

        async def load(folder: str) -> None:
            try:
                handle = await self.load_extension(folder, sandbox=sandbox)
                results[folder] = LoadedExtension(folder, handle.name, handle, None)
            except Exception as exc:
                log.error("extension.failed", path=folder, error=f"{type(exc).__name__}: {exc}")
                results[folder] = LoadedExtension(folder, getattr(exc, "actor", None), None, exc)

        async with anyio.create_task_group() as tg:
            for folder in folders:
                tg.start_soon(load, folder)
        return [results[f] for f in folders]

    def _requirements(self, dependencies: tuple[str, ...], who: str) -> tuple[str, ...]:
        reqs, ignored = validate_requirements(dependencies)
        self._warn_ignored(ignored, who)
        return reqs

    def _warn_ignored(self, ignored: tuple[str, ...], who: str) -> None:
        for req in ignored:
            log.warning("env.requirement_ignored", actor=who, requirement=req,
                        reason="torch always comes from the host, so shared memory and CUDA IPC see the same "
                               f"version ({self.environments.host.version_of('torch') or 'not installed'})")

    @property
    def environments(self) -> EnvironmentManager:
        """Builds and caches the actors' environments (under ``env_root``)."""
        if self._environments is None:
            self._environments = EnvironmentManager(self.env_root, code_dirs=_CODE_PATHS,
                                                    allow_source_builds=self.allow_source_builds)
        return self._environments

    async def _start_actor(self, what: dict[str, Any], cls_name: str, short: str, args: tuple[Any, ...],
                           kwargs: dict[str, Any], name: str | None, opts: ActorOptions, paths: list[str],
                           module_paths: list[str], requirements: tuple[str, ...] | None) -> ActorHandle:
        if name is not None:
            check_name(name, "actor name")
        try:
            entry = self.scheduler.add_actor(name, name or f"{short}#?", opts.max_concurrency)
        except KeyError:
            raise NameTakenError(
                f"an actor named {name!r} already exists; stop it first (await rt.get_actor({name!r}).stop()) "
                "or choose another name", name=name) from None
        label = name or f"{short}#{entry.actor_id}"
        entry.label = label
        spec = cloudpickle.dumps({**what, "args": args, "kwargs": kwargs, "label": label,
                                 "max_concurrency": opts.max_concurrency,
                                 "retention": self.codec.cuda_keepalive.retention,
                                 "decode_limits": (self.codec.limits.max_items, self.codec.limits.max_map_keys)})
        payload = init_payload(paths, spec)
        if len(payload) + _INIT_ENVELOPE > self.max_frame_size:
            self.scheduler.detach(entry.actor_id, env.Status.STOPPED,
                                  {"message": f"actor {label!r} failed to start: constructor arguments too big"},
                                  keep_queue=False)
            self.scheduler.remove_actor(entry.actor_id)
            raise SerializationError(
                f"cannot start {label!r}: its constructor arguments take {len(payload)} bytes, over the frame "
                f"limit of {self.max_frame_size} bytes; pass big data as torch tensors or numpy arrays (shared "
                "memory), or raise Runtime(max_frame_size=...)")
        sup = ActorSupervisor(self, entry.actor_id, label, name, cls_name, payload,
                              tuple(module_paths), opts, requirements)
        self._supervisors[entry.actor_id] = sup
        try:
            await sup.spawn()
        except BaseException as exc:
            del self._supervisors[entry.actor_id]
            # Calls already queued for it (by name, from elsewhere) fail rather than wait.
            self.scheduler.detach(entry.actor_id, env.Status.STOPPED,
                                  {"message": f"actor {label!r} failed to start: {exc}"}, keep_queue=False)
            self.scheduler.remove_actor(entry.actor_id)
            raise
        if name is not None:
            self._broadcast_names()
        return ActorHandle(self._host, entry.actor_id, name, label, entry.token)  # type: ignore[arg-type]

    async def put(self, obj: Any, *, retention: float | str | None = "default") -> ObjectRef:
        """Store ``obj`` (its tensors and arrays in shared memory) for any actor; returns its ObjectRef.

        The object is kept ``retention`` seconds (the Runtime's default unless given;
        None: until released). Raises ObjectStoreFullError past the store's capacity.
        """
        host = self._require_running()
        if SERVICE_NAME not in self.scheduler.names:
            self._register(SERVICE_NAME, ObjectService(self.object_store), 64, None)
        return ObjectRef(host, self.object_store.put(obj, retention))

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
        return self._register(name, obj, max_concurrency, methods)

    def _register(self, name: str, obj: Any, max_concurrency: int, methods: Iterable[str] | None) -> ActorHandle:
        host = self._require_running()
        exposed = exposed_methods(obj, methods, name)
        try:
            entry = self.scheduler.add_actor(name, name, max_concurrency)
        except KeyError:
            raise NameTakenError(f"an actor named {name!r} already exists; choose another name",
                                 name=name) from None
        host.residents[entry.actor_id] = Resident(name, obj, exposed)
        if self._recorder is not None:  # only the trace needs to know which tracks live in the host
            self._recorder.record("actorbox", "debug", "actor.registered",
                                  {"actor": name, "cls": type(obj).__qualname__})
        self.scheduler.attach(entry.actor_id, host)
        self._broadcast_names()
        return ActorHandle(host, entry.actor_id, name, name, entry.token)

    def unregister(self, name: str) -> None:
        """Remove a host-resident named actor; pending calls to it fail."""
        host = self._require_running()
        aid = self.scheduler.names.get(name)
        if aid is None or aid not in host.residents:
            raise ActorNotFoundError(f"no host-resident actor named {name!r}", name=name)
        self.scheduler.detach(aid, env.Status.STOPPED, {"message": f"{name!r} was unregistered"}, keep_queue=False)
        self.scheduler.remove_actor(aid)
        del host.residents[aid]
        self._broadcast_names()

    def _broadcast_names(self) -> None:
        for sup in self._supervisors.values():
            sup.encode_names()

    def get_actor(self, name: str) -> ActorHandle:
        """The handle of the actor (or host-resident object) registered under ``name``."""
        host = self._require_running()
        aid = self.scheduler.names.get(name)
        if aid is None:
            known = ", ".join(sorted(self.scheduler.names)) or "none"
            raise ActorNotFoundError(
                f"no actor named {name!r} (named actors: {known}); start it with "
                f"rt.start(Cls, name={name!r}) or register one with rt.register({name!r}, obj) first",
                name=name)
        a = self.scheduler.actors[aid]
        return ActorHandle(host, aid, name, a.label, a.token)

    async def _stop_actor(self, actor_id: int) -> None:
        sup = self._supervisors.get(actor_id)
        if sup is None:
            return
        await sup.stop(self.grace_period)
        if sup.name is not None and self.scheduler.names.get(sup.name) == actor_id:
            del self.scheduler.names[sup.name]
            self._broadcast_names()

    # -- inspection ------------------------------------------------------------------

    def actors(self) -> list[ActorInfo]:
        """Every actor this Runtime knows: processes and host-resident objects, with RSS and CPU."""
        out = []
        host = self._host
        alive: set[int] = set()
        for aid, a in self.scheduler.actors.items():
            sup = self._supervisors.get(aid)
            if sup is not None:
                # Only an alive actor's pid is surely still its own process.
                pid = sup.pid if sup.state == "alive" else None
                rss, cpu = self._sampler.sample(pid)
                if pid is not None:
                    alive.add(pid)
                out.append(ActorInfo(aid, sup.name, sup.label, sup.cls_name, sup.pid, sup.state,
                                     sup.restarts, a.max_concurrency, len(a.queue) + len(a.unstarted),
                                     len(a.running) - len(a.unstarted), rss=rss, cpu_percent=cpu,
                                     running_calls=tuple(c for c, e in a.running.items() if e.began),
                                     open_fds=None if sup.endpoint is None else sup.endpoint.held_fds()))
            elif host is not None and aid in host.residents:
                obj = host.residents[aid].obj
                out.append(ActorInfo(aid, a.name, a.label, type(obj).__qualname__, None, "resident", 0,
                                     a.max_concurrency, len(a.queue), len(a.running),
                                     running_calls=tuple(a.running)))  # never delivered ahead
        self._sampler.forget_except(alive)
        return out

    def named_actors(self) -> dict[str, int]:
        """Registered names (actors started with a name, host-resident actors) and their actor ids."""
        return dict(sorted(self.scheduler.names.items()))

    def pending_calls(self) -> list[CallInfo]:
        """Calls in flight: id, actor, method, caller, parent call, state and age."""
        return self.scheduler.pending_calls()


def _import_paths(cls: type) -> tuple[list[str], list[str]]:
    """Where ``cls``'s module is imported from in the actor, and the files to expose for it.

    Returns (sys.path roots, paths to bind read-only): the module's own package
    directory (or the module file itself when it is top-level) plus the
    ``__init__.py`` of each enclosing package, and nothing else of the project.
    """
    module = sys.modules.get(cls.__module__)
    f = getattr(module, "__file__", None)
    if module is None or not f or cls.__module__ == "__main__":
        return [], []
    path = os.path.abspath(f)
    is_pkg = os.path.basename(path) == "__init__.py"
    depth = cls.__module__.count(".") + (1 if is_pkg else 0)
    root = os.path.dirname(path)
    for _ in range(depth):
        root = os.path.dirname(root)
    if depth == 0:
        return [root], [path]
    own = os.path.dirname(path)
    binds = [own]
    d = os.path.dirname(own)
    while len(d) > len(root):
        init = os.path.join(d, "__init__.py")
        if os.path.exists(init):
            binds.append(init)
        d = os.path.dirname(d)
    return [root], binds
