"""The actor-process entry point: ``python -m actorbox._child FD``.

The process talks to the host over the inherited Unix socket FD only. It waits
for INIT (its class and constructor arguments, sent by the host and therefore
trusted), constructs the instance in a worker thread and then serves calls: sync
methods on worker threads (each reply is written straight from the worker, so a
sync call costs one thread hand-off), async methods as tasks on the loop, which
stays free for cancellations, nested calls and their replies.
"""

from __future__ import annotations

import asyncio
import contextvars
import faulthandler
import importlib
import os
import pickle
import queue
import socket
import sys
import threading
import traceback
from collections import deque
from typing import TYPE_CHECKING, Any, NamedTuple, NoReturn

import msgpack
import structlog

from scheduler import Connection, ConnectionClosed
from scheduler import envelope as env

from ._caller import Caller, current_call
from ._codec import Codec
from ._context import process_caller
from ._dispatch import resolve_method
from ._errors import ActorboxError, ActorNotFoundError, SerializationError
from ._handle import ActorHandle
from ._objects import ObjectRef

if TYPE_CHECKING:
    from structlog.typing import EventDict, WrappedLogger

class _Job(NamedTuple):
    call: env.Call
    func: Any  # the bound method
    is_async: bool
    ctx: contextvars.Context


class _SyncCall:
    __slots__ = ("cancelled",)

    def __init__(self) -> None:
        self.cancelled = False


class _Workers:
    """Threads that run submitted jobs: ThreadPoolExecutor's job, minus its per-job
    Future and bookkeeping (this is every sync call's path). Grows to ``max_workers``
    threads while none is idle; threads live as long as the process."""

    def __init__(self, max_workers: int, name: str) -> None:
        self._jobs: queue.SimpleQueue[tuple[Any, tuple[Any, ...]]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0  # threads waiting for a job and not yet promised one
        self._threads = 0
        self._max = max_workers
        self._name = name

    def submit(self, fn: Any, *args: Any) -> None:
        with self._lock:
            spawn = self._idle == 0 and self._threads < self._max
            if spawn:
                self._threads += 1
            elif self._idle:
                self._idle -= 1
        self._jobs.put((fn, args))
        if spawn:
            threading.Thread(target=self._work, name=f"{self._name}-{self._threads}", daemon=True).start()

    def _work(self) -> None:
        get = self._jobs.get
        while True:
            fn, args = get()
            try:
                fn(*args)
            except BaseException:  # jobs report their own failures; this is a bug in one
                traceback.print_exc()
            with self._lock:
                self._idle += 1


class ActorProcess(Caller):
    """The state of one actor process: its instance, its calls in and out."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__()
        self.loop = asyncio.get_running_loop()
        self.loop_thread = threading.get_ident()
        self.conn = Connection(sock, self._on_frame)
        self.codec = Codec(allow_pickle=False, handle_type=ActorHandle,
                           make_handle=lambda aid, name, label: ActorHandle(self, aid, name, label),
                           make_ref=lambda object_id: ObjectRef(self, object_id))
        self.names: dict[str, int] = {}
        self.label = "actor"
        self.instance: Any = None
        # Resolved (bound method, is_async) by name; only successful lookups are kept.
        self.methods: dict[str, tuple[Any, bool]] = {}
        self.running: dict[int, asyncio.Task[None] | _SyncCall] = {}
        self.executor = _Workers(256, "actorbox-call")
        self.stopped = asyncio.Event()
        # Local admission (the scheduler delivers calls ahead, see scheduler._router).
        # Invariant: active == calls admitted and not finished; waiting is FIFO.
        self.lock = threading.Lock()
        self.max_concurrency = 1
        self.active = 0
        self.waiting: deque[_Job] = deque()
        self.begun: set[int] = set()  # async calls whose coroutine has started
        self.cancelled_early: set[int] = set()  # async calls cancelled before they started

    # -- Caller ------------------------------------------------------------------

    def _send(self, msg: env.Message) -> None:
        fds: tuple[int, ...] = getattr(msg, "fds", ())
        try:
            if self.stopped.is_set() and type(msg) is env.Reply:
                return  # stopping: the host fails these calls as stopped, not cancelled
            body, send_fds = env.encode(msg), fds
            if len(body) > self.conn.max_frame:
                # The host would refuse the frame and hang up: fail this message alone.
                exc = SerializationError(
                    f"{'a call' if type(msg) is env.Call else 'the result'} encodes to {len(body)} bytes, over "
                    f"the host's frame limit of {self.conn.max_frame} bytes; pass big data as torch tensors or "
                    "numpy arrays (they travel in shared memory, not in the frame), or raise "
                    "Runtime(max_frame_size=...)")
                if type(msg) is not env.Reply:
                    raise exc
                body = env.encode(env.Reply(msg.call_id, env.Status.ERROR, self._encode_exc(exc)))  # type: ignore[union-attr]
                send_fds = ()
            self.conn.send(body, send_fds)
        except ConnectionClosed:
            pass  # the host is gone; the reader sees EOF and we exit
        finally:
            for fd in fds:  # the kernel duplicated them into the message
                os.close(fd)

    def _send_call(self, call: env.Call) -> None:
        self._send(call)

    def _send_cancel(self, local_id: int) -> None:
        self._send(env.Cancel(local_id))

    def on_loop_thread(self) -> bool:
        return threading.get_ident() == self.loop_thread

    def get_actor(self, name: str) -> ActorHandle:
        aid = self.names.get(name)
        if aid is None:
            known = ", ".join(sorted(self.names)) or "none"
            raise ActorNotFoundError(
                f"no actor named {name!r} is registered with the host (registered: {known}); "
                f"register it first (a name registered later reaches running actors too): "
                f"rt.register({name!r}, obj) or "
                f"rt.start(Cls, name={name!r})", name=name)
        return ActorHandle(self, aid, name, name)

    async def stop_actor(self, actor_id: int) -> None:
        raise ActorboxError("only the host can stop actors; return a value and let the host call handle.stop()")

    # -- incoming frames -----------------------------------------------------------

    def _on_frame(self, body: bytes, fds: list[int]) -> None:
        msg = env.decode(body, fds)
        t = type(msg)
        if t is env.Call:
            self._start_call(msg)  # type: ignore[arg-type]
        elif t is env.Reply:
            self.on_reply(msg)  # type: ignore[arg-type]
        elif t is env.Cancel:
            self._cancel(msg.call_id)  # type: ignore[union-attr]
        elif t is env.Names:
            self.names = msg.names  # type: ignore[union-attr]
        elif t is env.Init:
            self._init(msg)  # type: ignore[arg-type]
        elif t is env.Stop:
            self.stopped.set()

    def _init(self, init: env.Init) -> None:
        self.names = init.names
        paths, pickled = msgpack.unpackb(init.payload)
        for p in reversed(paths):
            if p not in sys.path:
                sys.path.insert(0, p)
        ctx = contextvars.copy_context()
        self.executor.submit(ctx.run, self._construct, init, pickled)

    def _construct(self, init: env.Init, pickled: bytes) -> None:
        try:
            # INIT only ever arrives from the host over our own socket: trusted.
            spec = pickle.loads(pickled)
            self.label = spec["label"]
            self.max_concurrency = spec["max_concurrency"]
            self.conn.max_frame = spec.get("max_frame", self.conn.max_frame)  # the host's limit, both ways
            _configure_logging(self, spec["label"])
            cls = spec["cls"] if "cls" in spec else _load_entry(*spec["entry"])
            self.instance = cls(*spec["args"], **spec["kwargs"])
        except BaseException as exc:
            self._send(env.Ready(os.getpid(), self._encode_exc(exc)))
            return
        self._send(env.Ready(os.getpid()))

    def _encode_exc(self, exc: BaseException) -> bytes:
        try:
            return self.codec.dumps(exc)
        except Exception:
            return self.codec.dumps(RuntimeError(f"{type(exc).__qualname__}: {exc}"))

    def _start_call(self, call: env.Call) -> None:
        """A call arrived (loop thread): run it now or queue it behind max_concurrency."""
        try:
            if self.instance is None:
                raise ActorboxError(f"{self.label} is not constructed yet")
            resolved = self.methods.get(call.method)
            if resolved is None:
                resolved = resolve_method(self.instance, call.method, self.label, call.call_id)
                self.methods[call.method] = resolved
        except ActorboxError as exc:
            _close_all(call.fds)
            self._send(env.Reply(call.call_id, env.Status.ERROR, self._encode_exc(exc)))
            return
        # Each call runs in its own copy of the loop's context, wherever it runs.
        ctx = contextvars.copy_context()
        ctx.run(current_call.set, call.call_id)
        job = _Job(call, resolved[0], resolved[1], ctx)
        with self.lock:
            if call.reentrant or self.active < self.max_concurrency:
                self.active += 1
            else:
                self.waiting.append(job)
                return
        self._launch(job)

    def _launch(self, job: _Job) -> None:
        """Start an admitted call (loop thread)."""
        cid = job.call.call_id
        if job.is_async:
            self.running[cid] = job.ctx.run(self.loop.create_task, self._run_async(job))
        else:
            token = self.running[cid] = _SyncCall()
            self.executor.submit(self._sync_worker, job, token)

    def _next(self) -> _Job | None:
        """A call finished: the next queued call to run in its slot, if any."""
        with self.lock:
            if self.waiting and self.active <= self.max_concurrency:
                return self.waiting.popleft()
            self.active -= 1
            return None

    def _sync_worker(self, job: _Job, token: _SyncCall) -> None:
        # Runs calls back to back in this worker thread while the queue holds sync
        # calls: no hand-off to the loop between them.
        while True:
            job.ctx.run(self._run_sync, job, token)
            nxt = self._next()
            if nxt is None:
                return
            if nxt.is_async:
                self.loop.call_soon_threadsafe(self._launch, nxt)
                return
            job = nxt
            token = self.running[job.call.call_id] = _SyncCall()

    def _run_sync(self, job: _Job, token: _SyncCall) -> None:
        call = job.call
        try:
            args, kwargs = self.codec.decode_call(call.payload, call.trusted, call.fds, call.resolved)
            result = job.func(*args, **kwargs)
            payload, out = (b"", ()) if result is None else self.codec.dumps_fds(result)
            reply = env.Reply(call.call_id, env.Status.OK, payload, fds=out)
        except BaseException as exc:
            reply = env.Reply(call.call_id, env.Status.ERROR, self._encode_exc(exc))
        self.running.pop(call.call_id, None)
        if token.cancelled:
            _close_all(reply.fds)
            reply = env.Reply(call.call_id, env.Status.CANCELLED)  # result discarded
        self._send(reply)

    async def _run_async(self, job: _Job) -> None:
        call = job.call
        cid = call.call_id
        if cid in self.cancelled_early:
            # Cancelled before the task first ran: the coroutine never started.
            self.cancelled_early.discard(cid)
            _close_all(call.fds)
            reply = env.Reply(cid, env.Status.CANCELLED)
        else:
            self.begun.add(cid)
            try:
                args, kwargs = self.codec.decode_call(call.payload, call.trusted, call.fds, call.resolved)
                result = await job.func(*args, **kwargs)
                payload, out = (b"", ()) if result is None else self.codec.dumps_fds(result)
                reply = env.Reply(cid, env.Status.OK, payload, fds=out)
            except asyncio.CancelledError:
                reply = env.Reply(cid, env.Status.CANCELLED)
            except BaseException as exc:
                reply = env.Reply(cid, env.Status.ERROR, self._encode_exc(exc))
            finally:
                self.begun.discard(cid)
        self.running.pop(cid, None)
        self._send(reply)
        nxt = self._next()
        if nxt is not None:
            self._launch(nxt)

    def _cancel(self, call_id: int) -> None:
        with self.lock:
            for queued in self.waiting:
                if queued.call.call_id == call_id:
                    self.waiting.remove(queued)
                    _close_all(queued.call.fds)
                    self._send(env.Reply(call_id, env.Status.CANCELLED))
                    return
        job = self.running.get(call_id)
        if isinstance(job, asyncio.Task):
            if call_id in self.begun:
                job.cancel()
            else:
                # Task.cancel() before the first step would skip _run_async's own
                # handling (no reply, slot never freed): let it see the flag instead.
                self.cancelled_early.add(call_id)
        elif job is not None:
            job.cancelled = True

    async def serve(self) -> None:
        reader = asyncio.ensure_future(self.conn.run())
        stop = asyncio.ensure_future(self.stopped.wait())
        await asyncio.wait([reader, stop], return_when=asyncio.FIRST_COMPLETED)
        for job in list(self.running.values()):
            if isinstance(job, asyncio.Task):
                job.cancel()
        if reader.done() and not reader.cancelled() and reader.exception() is not None:
            print(f"actorbox: connection to the host failed: {reader.exception()!r}", file=sys.stderr)


def _close_all(fds: tuple[int, ...]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def _plain(v: Any) -> Any:
    if v is None or type(v) in (bool, int, float, str):
        return v
    return repr(v)


def _configure_logging(proc: ActorProcess, label: str) -> None:
    """Route this process's structlog events to the host (we own this process's config)."""

    def add_call(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
        cid = current_call.get()
        if cid is not None:
            event_dict.setdefault("call_id", cid)
        return event_dict

    def forward(_: WrappedLogger, method: str, event_dict: EventDict) -> NoReturn:
        event = str(event_dict.pop("event", ""))
        level = str(event_dict.pop("level", method))
        fields = {str(k): _plain(v) for k, v in event_dict.items()}
        proc._send(env.Log(level, event, fields))
        raise structlog.DropEvent

    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars, structlog.processors.add_log_level, add_call, forward],
        cache_logger_on_first_use=False,
    )


async def _main(fd: int) -> None:
    sock = socket.socket(fileno=fd)
    os.set_inheritable(fd, False)
    proc = ActorProcess(sock)
    process_caller.set(proc)
    await proc.serve()


def _load_entry(module: str, qualname: str) -> type:
    """An extension's class, by import path (only ever imported here, in the actor)."""
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    if not isinstance(obj, type):
        raise TypeError(f"extension entry {module}:{qualname} is a {type(obj).__name__}, not a class")
    return obj


def main() -> None:
    faulthandler.enable()
    if len(sys.argv) != 2 or not sys.argv[1].isdigit():
        print("usage: python -m actorbox._child FD  (started by actorbox.Runtime, not by hand)", file=sys.stderr)
        sys.exit(2)
    asyncio.run(_main(int(sys.argv[1])))
    sys.stdout.flush()
    sys.stderr.flush()
    # Worker threads may still be inside user code; don't wait for them.
    os._exit(0)


if __name__ == "__main__":
    main()

