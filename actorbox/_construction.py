"""An actor's construction, from INIT to READY: the spec is unpickled (INIT comes from
the host over the actor's own socket: trusted), the process configured, and the
instance constructed where its calls will run."""

from __future__ import annotations

import asyncio
import contextvars
import importlib
import inspect
import pickle
import sys
import time
from typing import Any

import msgpack
import structlog

from scheduler import Connection, envelope

from ._actor_logging import configure_logging
from ._calls import Calls, no_thread_error
from ._codec import Codec
from ._decode_limits import DecodeLimits
from ._outbox import Outbox


class Construction:
    """Constructs the actor's instance and hands it to ``calls``; answers INIT with READY
    (with the error, if construction failed)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, conn: Connection, codec: Codec, outbox: Outbox,
                 calls: Calls) -> None:
        self._loop = loop
        self._conn = conn
        self._codec = codec
        self._outbox = outbox
        self._calls = calls
        self._deferred: tuple[envelope.Init, bytes] | None = None

    def begin(self, init: envelope.Init) -> None:
        """INIT arrived (during a read)."""
        paths, pickled = msgpack.unpackb(init.payload)
        for p in reversed(paths):
            if p not in sys.path:
                sys.path.insert(0, p)
        # Constructed after this read, with the read lock released (like an inline call):
        # the class decides where. An actor whose calls will run inline on this thread is
        # constructed here too, so __init__ and its calls share one thread (sqlite
        # connections, thread-locals, torch's grad mode); any other on a worker thread,
        # where its sync calls run.
        self._deferred = (init, pickled)
        if not self._conn.loop_reading:
            self._loop.call_soon(self.run_deferred)

    def run_deferred(self) -> None:
        """After the loop's read: unpickle the spec, as an inline run (a watchdog sees STOP
        meanwhile), then construct here or hand the construction to a worker thread."""
        deferred, self._deferred = self._deferred, None
        if deferred is None:
            return
        inline = self._calls.inline
        watched = inline.watchdog.start()
        inline.begin_run()
        try:
            inline.call_hidden(contextvars.copy_context(), self._construct, *deferred, watched)
        finally:
            inline.end_run()

    def _construct(self, init: envelope.Init, pickled: bytes, watched: bool) -> None:
        calls = self._calls
        try:
            spec = pickle.loads(pickled)  # INIT only ever arrives from the host: trusted
            calls.label = spec["label"]
            calls.admission.max_concurrency = spec["max_concurrency"]
            if spec.get("retention") is not None:  # how long CUDA tensors shared by IPC are held
                self._codec.cuda_keepalive.retention = spec["retention"]
            if spec.get("decode_limits") is not None:  # the Runtime's, for what other actors send here
                self._codec.limits = DecodeLimits(*spec["decode_limits"])
            configure_logging(self._outbox.send)
            preload(spec.get("preload", ()))
            cls = spec["cls"] if "cls" in spec else _load_entry(*spec["entry"])
        except BaseException as exc:  # the host's to report: sent back in READY
            self._outbox.send_ready(exc)
            return
        if watched and calls.admission.max_concurrency == 1 and not _has_async_methods(cls):
            self._instantiate(cls, spec, True)
        else:
            try:
                calls.workers.submit(contextvars.copy_context().run, self._instantiate, cls, spec, False)
            except Exception as exc:  # no thread to construct it on: the start fails, saying why
                self._outbox.send_ready(no_thread_error("__init__", exc, serving=False))

    def _instantiate(self, cls: type, spec: dict[str, Any], inline: bool) -> None:
        try:
            instance = cls(*spec["args"], **spec["kwargs"])
            self._calls.inline.ok = inline and not _has_async_methods(instance)
            self._calls.instance = instance
        except BaseException as exc:  # the host's to report: sent back in READY
            self._outbox.send_ready(exc)
            return
        self._outbox.send_ready()


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


def preload(modules: tuple[str, ...]) -> None:
    """Import the actor's ``preload`` modules (validated names), so its first call doesn't pay for them.

    Runs before the extension's class is imported and constructed; a module that fails
    stops the start with an ImportError naming it and this environment.
    """
    if not modules:
        return
    t0 = time.perf_counter()
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as exc:
            raise ImportError(
                f"preloading module {name!r} failed in the actor's environment {sys.prefix}: "
                f"{type(exc).__name__}: {exc}; install it in that environment (the actor's dependencies) "
                "or take it out of preload", name=name) from None
    structlog.get_logger("actorbox").info("actor.preloaded", modules=list(modules),
                                          duration_ms=round((time.perf_counter() - t0) * 1000, 1))


def _load_entry(module: str, qualname: str) -> type:
    """An extension's class, by import path (only ever imported here, in the actor)."""
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    if not isinstance(obj, type):
        raise TypeError(f"extension entry {module}:{qualname} is a {type(obj).__name__}, not a class")
    return obj
