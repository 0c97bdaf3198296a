"""The actor-process entry point: ``python -m actorbox._child FD``.

The process talks to the host over the inherited Unix socket FD only. It waits
for INIT (its class and constructor arguments, sent by the host and therefore
trusted), constructs the instance in a worker thread and then serves calls: sync
methods on worker threads (each reply is written straight from the worker, so a
sync call costs one thread hand-off), async methods as tasks on the loop, which
stays free for cancellations, nested calls and their replies.

Inline calls. An actor whose class has no async methods and runs one call at a
time needs its loop for nothing but reading frames, so its sync calls run on the
loop thread itself when nothing else is running: no thread hand-off, about 20 us
less per call on this class of machine. Three things keep that from ever blocking
or showing: a nested call waited for with ``Future.result()`` reads frames itself
until its reply comes (the pump); a watchdog thread starts reading frames and
writing what waits to be sent once inline calls have kept the loop busy for a
whole interval, so cancellations, further calls and STOP are seen meanwhile; and
the user's code sees no running event loop (``asyncio.run()`` works, as on a
worker thread). Frames are read under ``Connection.read_lock``, by one thread at a
time, in order.
"""

from __future__ import annotations

import asyncio
import contextvars
import faulthandler
import importlib
import inspect
import os
import pickle
import queue
import select
import socket
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple, NoReturn

import msgpack
import structlog

from scheduler import Connection, ConnectionClosed, too_many_fds
from scheduler import envelope as env

from ._caller import Caller, current_call
from ._codec import Codec
from ._context import process_caller
from ._decode_limits import DecodeLimits
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


# The watchdog looks at the loop this often; inline calls still running (one, or
# several back to back) after a whole interval get a reader and a writer beside
# them. It parks after this long without inline calls.
_WATCH_INTERVAL = 0.005
# CUDA IPC tensors are taken from the host only, and only outside a sandbox: inside one,
# the driver can't open them (it needs the sender's /dev/shm and user), and its
# counter-file protocol has no business with an untrusted process.
_IPC_IN = os.environ.get("ACTORBOX_SANDBOXED") != "1"
_WATCH_PARK_AFTER = 0.05


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
                           make_handle=lambda aid, name, label, token: ActorHandle(self, aid, name, label, token),
                           make_ref=lambda object_id: ObjectRef(self, object_id))
        self.names: dict[str, tuple[int, bytes]] = {}  # name -> (actor id, reference token)
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
        # Inline calls (see the module docstring). inline_ok: decided once the instance
        # exists; inline_token: a new object per run of inline calls, None between runs.
        self.inline_ok = False
        self.inline_depth = 0
        self.inline_token: object | None = None
        self._base_ctx = contextvars.copy_context()  # each call's context copies this (set again in serve())
        self._deferred: tuple[_Job, _SyncCall] | None = None  # to run inline once the read is over
        self._deferred_init: tuple[env.Init, bytes] | None = None
        self.conn.after_read = self._run_deferred
        self._watch_wake = threading.Event()
        self._watch_parked = False
        self._watch_thread: threading.Thread | None = None

    # -- Caller ------------------------------------------------------------------

    def _send(self, msg: env.Message) -> None:
        fds: tuple[int, ...] = getattr(msg, "fds", ())
        try:
            if self.stopped.is_set() and type(msg) is env.Reply:
                return  # stopping: the host fails these calls as stopped, not cancelled
            body, send_fds = env.encode(msg), fds
            too_many = too_many_fds(len(fds), "a call's arguments" if type(msg) is env.Call else "the result")
            if too_many is not None or len(body) > self.conn.max_frame:
                # The host would refuse the frame and hang up: fail this message alone.
                exc = SerializationError(too_many or (
                    f"{'a call' if type(msg) is env.Call else 'the result'} encodes to {len(body)} bytes, over "
                    f"the host's frame limit of {self.conn.max_frame} bytes; pass big data as torch tensors or "
                    "numpy arrays (they travel in shared memory, not in the frame), or raise "
                    "Runtime(max_frame_size=...)"))
                t = type(msg)
                if t is env.Reply:
                    body = env.encode(env.Reply(msg.call_id, env.Status.ERROR, self._encode_exc(exc)))  # type: ignore[union-attr]
                elif t is env.Ready:  # a constructor error too big to send: say so, briefly
                    body = env.encode(env.Ready(os.getpid(), self.codec.dumps(SerializationError(
                        f"the constructor raised an error that encodes to {len(body)} bytes, over the host's "
                        f"frame limit of {self.conn.max_frame} bytes; raise a shorter one"))))
                elif t is env.Log:  # a log event is never worth failing the code that logged it
                    print(f"actorbox: a log event of {len(body)} bytes is over the frame limit; dropped",
                          file=sys.stderr)
                    return
                else:
                    raise exc
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

    def soon_on_loop(self, func: Callable[[], None]) -> None:
        try:
            self.loop.call_soon_threadsafe(func)
        except RuntimeError:
            pass  # the loop has closed: the process is exiting and nothing awaits there

    def get_actor(self, name: str) -> ActorHandle:
        ref = self.names.get(name)
        if ref is None:
            known = ", ".join(sorted(self.names)) or "none"
            raise ActorNotFoundError(
                f"no actor named {name!r} is registered with the host (registered: {known}); "
                f"register it first (a name registered later reaches running actors too): "
                f"rt.register({name!r}, obj) or "
                f"rt.start(Cls, name={name!r})", name=name)
        return ActorHandle(self, ref[0], name, name, ref[1])

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
            if self.inline_depth or threading.get_ident() != self.loop_thread:
                _exit_now()  # a call runs inline on the loop: it could not see this until it returns
            self.stopped.set()

    def _init(self, init: env.Init) -> None:
        self.names = init.names
        paths, pickled = msgpack.unpackb(init.payload)
        for p in reversed(paths):
            if p not in sys.path:
                sys.path.insert(0, p)
        # Constructed after this read, with the read lock released (like an inline call):
        # the class decides where. An actor whose calls will run inline on this thread is
        # constructed here too, so __init__ and its calls share one thread (sqlite
        # connections, thread-locals, torch's grad mode); any other on a worker thread,
        # where its sync calls run.
        self._deferred_init = (init, pickled)
        if not self.conn.loop_reading:
            self.loop.call_soon(self._run_deferred)

    def _construct_inline(self, init: env.Init, pickled: bytes) -> None:
        """Unpickle the spec here, as an inline run (a watchdog sees STOP meanwhile), then
        construct here or hand the construction to a worker thread."""
        watched = self._start_watchdog()
        ctx = contextvars.copy_context()
        self.inline_depth += 1
        self.inline_token = object()
        asyncio.events._set_running_loop(None)
        try:
            ctx.run(self._construct, init, pickled, watched)
        finally:
            asyncio.events._set_running_loop(self.loop)
            self.inline_token = None
            self.inline_depth -= 1

    def _construct(self, init: env.Init, pickled: bytes, watched: bool) -> None:
        try:
            # INIT only ever arrives from the host over our own socket: trusted.
            spec = pickle.loads(pickled)
            self.label = spec["label"]
            self.max_concurrency = spec["max_concurrency"]
            if spec.get("retention") is not None:  # how long CUDA tensors shared by IPC are held
                self.codec.cuda_keepalive.retention = spec["retention"]
            if spec.get("decode_limits") is not None:  # the Runtime's, for what other actors send here
                self.codec.limits = DecodeLimits(*spec["decode_limits"])
            _configure_logging(self, spec["label"])
            cls = spec["cls"] if "cls" in spec else _load_entry(*spec["entry"])
        except BaseException as exc:
            self._send(env.Ready(os.getpid(), self._encode_exc(exc)))
            return
        if watched and self.max_concurrency == 1 and not _has_async_methods(cls):
            self._instantiate(cls, spec, inline=True)
        else:
            ctx = contextvars.copy_context()
            self.executor.submit(ctx.run, self._instantiate, cls, spec, False)

    def _instantiate(self, cls: type, spec: dict[str, Any], inline: bool) -> None:
        try:
            self.instance = cls(*spec["args"], **spec["kwargs"])
            self.inline_ok = inline and not _has_async_methods(self.instance)
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
        # Each call runs in its own copy of the process's base context, wherever it runs
        # (frames read by a pump run inside the waiting call's context: not that one).
        ctx = self._base_ctx.copy()
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
        """Start an admitted call (loop thread, or a thread reading while the loop runs a call)."""
        cid = job.call.call_id
        on_loop = threading.get_ident() == self.loop_thread
        if job.is_async:
            self.inline_ok = False  # the loop must stay free for it (and for any like it)
            if on_loop:
                self._start_task(job)
            else:
                self.loop.call_soon_threadsafe(self._launch, job)
            return
        if self.inline_ok and not on_loop and not job.call.reentrant:
            # Read by the watchdog as an inline run ends: run it on the loop thread too, so an
            # inline actor's calls keep to one thread. Not a re-entrant call: the inline call
            # under the loop waits for its chain, so it runs on a worker now (as one a pump
            # reads does), or never.
            self.loop.call_soon_threadsafe(self._launch, job)
            return
        token = self._token(cid)
        if self.inline_ok and on_loop and not self.inline_depth and len(self.running) == 1:
            # Not now: this runs under the connection's read lock, which the call must not
            # hold (its nested calls and the watchdog read frames while it runs).
            self._deferred = (job, token)
            if not self.conn.loop_reading:  # not launched from the loop's read after all
                self.loop.call_soon(self._run_deferred)
        else:
            self.executor.submit(self._sync_worker, job, token)

    def _token(self, cid: int) -> _SyncCall:
        """The running entry of a sync call about to run: the one _next() made, which a
        cancel may have marked on the call's way here, or a new one."""
        token = self.running.get(cid)
        if not isinstance(token, _SyncCall):
            token = self.running[cid] = _SyncCall()
        return token

    def _start_task(self, job: _Job) -> None:
        """Start an async call's task (loop thread)."""
        cid = job.call.call_id
        handed = self.running.get(cid)
        if isinstance(handed, _SyncCall) and handed.cancelled:  # cancelled on its way here
            self.cancelled_early.add(cid)
        self.running[cid] = job.ctx.run(self.loop.create_task, self._run_async(job))

    def _run_deferred(self) -> None:
        init, self._deferred_init = self._deferred_init, None
        if init is not None and not self.stopped.is_set():
            self._construct_inline(*init)
        deferred, self._deferred = self._deferred, None
        if deferred is not None and not self.stopped.is_set():  # stopping: start nothing more
            self._run_inline(*deferred)

    def _run_inline(self, job: _Job, token: _SyncCall) -> None:
        """Run sync calls on the loop thread, back to back while the queue holds them.

        The user's code must not see the loop as running: asyncio.run() (or anyio.run())
        inside a sync method works on a worker thread and must work here too."""
        self.inline_depth += 1
        self.inline_token = object()
        if self._watch_parked:
            self._wake_watchdog()
        try:
            while True:
                asyncio.events._set_running_loop(None)
                try:
                    job.ctx.run(self._run_sync, job, token)
                finally:
                    asyncio.events._set_running_loop(self.loop)
                nxt = self._next()
                if nxt is None:
                    return
                if nxt.is_async:
                    self.inline_ok = False
                    self._start_task(nxt)
                    return
                job = nxt
                token = self._token(job.call.call_id)
        finally:
            self.inline_token = None
            self.inline_depth -= 1

    def _start_watchdog(self) -> bool:
        """Start the watchdog thread (at INIT); False when no thread can be had (a process
        limit): then nothing runs inline."""
        if self._watch_thread is None:
            ctx = contextvars.copy_context()  # frames it dispatches need this process's context
            thread = threading.Thread(target=ctx.run, args=(self._watch,), name="actorbox-inline-watch", daemon=True)
            try:
                thread.start()
            except RuntimeError:
                return False
            self._watch_thread = thread
        return True

    def _wake_watchdog(self) -> None:
        self._watch_parked = False
        self._watch_wake.set()

    def _watch(self) -> None:
        """Read frames, and write what waits to be sent, while inline calls have kept the
        loop busy for longer than an interval."""
        seen: object | None = None
        idle_since = time.monotonic()
        fd = self.conn.sock.fileno()
        poller = select.poll()
        while True:
            try:
                seen, idle_since = self._watch_once(seen, idle_since, fd, poller)
            except Exception:  # it must outlive any one failure: inline calls rely on it
                traceback.print_exc()
                time.sleep(_WATCH_INTERVAL)

    def _watch_once(self, seen: object | None, idle_since: float, fd: int,
                    poller: select.poll) -> tuple[object | None, float]:
        """One look at the loop (and, during a long inline run, the reading it needs)."""
        time.sleep(_WATCH_INTERVAL)
        token = self.inline_token
        if token is None:
            if time.monotonic() - idle_since > _WATCH_PARK_AFTER:
                self._watch_parked = True
                if self.inline_token is None:  # (set before the loop checks _watch_parked)
                    self._watch_wake.wait()
                self._watch_wake.clear()
                self._watch_parked = False
                idle_since = time.monotonic()
            return seen, idle_since
        idle_since = time.monotonic()
        if token is not seen:  # inline calls that started since the last look: give them an interval
            return token, idle_since
        while self.inline_token is token:
            if self._read_for_loop() is False:
                _exit_now()  # the host closed the connection
            # Sends that did not fit wait for the loop's writer, which can't run now.
            unsent = not self.conn.flush()
            if unsent or self.pending:  # replies awaited (or output): act as soon as the socket allows
                poller.register(fd, select.POLLIN | (select.POLLOUT if unsent else 0))
                poller.poll(_WATCH_INTERVAL * 1000)
            else:  # else read in batches: a frame-by-frame reader would fight the loop for the GIL
                time.sleep(_WATCH_INTERVAL)
        return seen, time.monotonic()

    def _read_for_loop(self, *, wait: bool = True) -> bool | None:
        try:
            return self.conn.read_now(wait=wait)
        except Exception as exc:  # what serve() would report, had the loop been reading
            print(f"actorbox: connection to the host failed: {exc!r}", file=sys.stderr)
            _exit_now()
            raise  # not reached

    def pumps_here(self) -> bool:
        return bool(self.inline_depth) and threading.get_ident() == self.loop_thread

    def pump(self, fut: Any, timeout: float | None) -> bool:
        """``fut.result()`` inside an inline call: read frames here until its reply comes."""
        if not self.inline_depth or threading.get_ident() != self.loop_thread:
            return False
        deadline = None if timeout is None else time.monotonic() + timeout
        poller = select.poll()
        poller.register(self.conn.sock.fileno(), select.POLLIN)
        while not fut.done():
            self.conn.flush()  # our own call may still sit in the send buffer
            got = self._read_for_loop(wait=False)
            if got is False:
                _exit_now()  # the host closed the connection
            if fut.done():
                break
            wait = _WATCH_INTERVAL if deadline is None else min(_WATCH_INTERVAL, deadline - time.monotonic())
            if wait <= 0:
                break
            if got is None:  # the watchdog is reading: it resolves the future
                time.sleep(min(wait, 0.0005))
            else:
                poller.poll(wait * 1000)
        return True

    def _next(self) -> _Job | None:
        """A call finished: the next queued call to run in its slot, if any. It is in
        ``running`` from here on, so a cancel finds it on its way to a thread."""
        with self.lock:
            if self.waiting and self.active <= self.max_concurrency:
                job = self.waiting.popleft()
                self.running[job.call.call_id] = _SyncCall()
                return job
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
            if nxt.is_async or (self.inline_ok and not nxt.call.reentrant):
                # An inline actor's call queued behind a re-entrant one (run here, on a
                # worker) still runs on the loop thread, where its other calls run.
                self.loop.call_soon_threadsafe(self._launch, nxt)
                return
            job = nxt
            token = self._token(job.call.call_id)

    def _run_sync(self, job: _Job, token: _SyncCall) -> None:
        call = job.call
        if token.cancelled:  # cancelled before it started: it never does
            self.running.pop(call.call_id, None)
            _close_all(call.fds)
            self._send(env.Reply(call.call_id, env.Status.CANCELLED))
            return
        try:
            args, kwargs = self.codec.decode_call(call.payload, call.trusted, call.fds, call.resolved,
                                                     ipc=call.trusted and _IPC_IN)
            result = job.func(*args, **kwargs)
            payload, out = (b"", ()) if result is None else self.codec.dumps_fds(result, ipc=call.trusted)
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
                args, kwargs = self.codec.decode_call(call.payload, call.trusted, call.fds, call.resolved,
                                                     ipc=call.trusted and _IPC_IN)
                result = await job.func(*args, **kwargs)
                payload, out = (b"", ()) if result is None else self.codec.dumps_fds(result, ipc=call.trusted)
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
        self._base_ctx = contextvars.copy_context()  # process_caller is set by now
        reader = asyncio.ensure_future(self.conn.run())
        stop = asyncio.ensure_future(self.stopped.wait())
        await asyncio.wait([reader, stop], return_when=asyncio.FIRST_COMPLETED)
        for job in list(self.running.values()):
            if isinstance(job, asyncio.Task):
                job.cancel()
        if reader.done() and not reader.cancelled() and reader.exception() is not None:
            print(f"actorbox: connection to the host failed: {reader.exception()!r}", file=sys.stderr)


def _has_async_methods(target: Any) -> bool:
    """Whether a call on ``target`` (a class, before any instance, or an instance) could
    run a coroutine, then the loop must stay free: the methods resolve_method can reach,
    tested as it tests them."""
    cls = target if isinstance(target, type) else type(target)
    for name in dir(cls):
        if name.startswith("_"):
            continue
        attr = inspect.getattr_static(cls, name, None)
        if (inspect.isfunction(attr) or isinstance(attr, (staticmethod, classmethod))) and \
                inspect.iscoroutinefunction(getattr(target, name, None)):
            return True
    return False


def _exit_now() -> NoReturn:
    """Leave at once, as main() does after serve() (calls in other threads are abandoned)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


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


async def _main(fd: int, max_frame: int | None = None) -> None:
    sock = socket.socket(fileno=fd)
    os.set_inheritable(fd, False)
    proc = ActorProcess(sock)
    if max_frame is not None:  # the Runtime's limit, both ways, from INIT on
        proc.conn.max_frame = max_frame
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
    if len(sys.argv) not in (2, 3) or not all(a.isdigit() for a in sys.argv[1:]):
        print("usage: python -m actorbox._child FD [MAX_FRAME]  (started by actorbox.Runtime, not by hand)",
              file=sys.stderr)
        sys.exit(2)
    asyncio.run(_main(*(int(a) for a in sys.argv[1:])))
    sys.stdout.flush()
    sys.stderr.flush()
    # Worker threads may still be inside user code; don't wait for them.
    os._exit(0)


if __name__ == "__main__":
    main()

