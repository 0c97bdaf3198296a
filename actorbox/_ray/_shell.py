"""The Ray worker's side: ``ActorShell`` (the Ray actor an actorbox actor runs in) and ``run_task``.

The shell constructs the user's instance (its class by reference or by value, an
extension's entry, or a registered object) and serves ``call(method, ...)``: public
methods only (``_dispatch``). A class with async methods (and an extension, whose class
the host does not import) gets ``ActorShell``, a Ray async actor: async methods on the
actor's event loop, sync ones on a pool of ``max_concurrency`` threads. A class with sync
methods only gets ``ThreadedShell``, a threaded Ray actor: Ray runs each call on one of its
``max_concurrency`` threads directly, with no event loop and no hop between threads (the
fast path). Every result, and every exception, goes back encoded by
actorbox's codec (``_wire``). Inside, ``actorbox.get_actor(name)`` and handles that arrived
as arguments call other actors through a ``RayCaller`` of the worker's own.
"""

from __future__ import annotations

import asyncio
import contextvars
import importlib
import inspect
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import ray

from .._codec import Codec
from .._dispatch import resolve_method
from .._errors import MethodNotFoundError
from .._handle import ActorHandle
from .._process import process_caller
from ._caller import RayCaller, Target
from ._wire import OK, HandleRef, decode_outcome, encode_outcome, swap

META = "actorbox_meta"  # the shell's own methods' concurrency group: never behind the user's calls


class _WorkerLoop:
    """The worker's event loop as its caller reaches it (captured at the first call)."""

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread = -1

    def capture(self) -> None:
        if self.loop is None:
            self.loop = asyncio.get_running_loop()
            self.thread = threading.get_ident()

    def on_loop_thread(self) -> bool:
        return threading.get_ident() == self.thread

    def soon(self, func: Callable[[], None]) -> None:
        if self.loop is None:
            func()
        else:
            self.loop.call_soon_threadsafe(func)


class _Worker:
    """This worker process's caller and what it knows of other actors (one per process)."""

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        self.targets: dict[int, Target] = {}
        self.by_name: dict[str, Target] = {}
        self.loop = _WorkerLoop()
        self.codec = Codec(allow_pickle=False, make_handle=self._make_handle)
        self.caller = RayCaller(self.codec, self.loop, self.targets.get, self._learn)
        self.caller.get_actor_fn = self.get_actor

    def _learn(self, ref: HandleRef) -> Target:
        target = self.targets.get(ref.actor_id)
        if target is None:
            target = self.targets[ref.actor_id] = Target(ref.actor_id, ref.name, ref.label, ref.ray_handle)
        return target

    def _make_handle(self, actor_id: int, name: str | None, label: str, token: bytes) -> ActorHandle:
        if actor_id not in self.targets and name is not None:
            self.get_actor(name)
        return ActorHandle(self.caller, actor_id, name, label)

    def get_actor(self, name: str) -> ActorHandle:
        target = self.by_name.get(name)
        if target is None:
            try:
                h = ray.get_actor(name, namespace=self.namespace)
            except ValueError:
                from .._errors import ActorNotFoundError

                raise ActorNotFoundError(f"no actor named {name!r} in Ray namespace {self.namespace!r}",
                                         name=name) from None
            ident: list[Any] = ray.get(h.identity.remote())
            actor_id: int = ident[0]
            label: str = ident[1]
            target = self.by_name[name] = self._learn(HandleRef(actor_id, name, label, h))
        return ActorHandle(self.caller, target.actor_id, target.name, target.label)

    def arguments(self, deps: list[Any], args: tuple[Any, ...], kwargs: dict[str, Any]
                  ) -> tuple[list[Any] | None, list[Any], dict[str, Any]]:
        """The call's arguments as the user's code gets them; first, a failed Future argument's result."""
        a = [swap(v, self.caller.handle_in) for v in args]
        kw = {k: swap(v, self.caller.handle_in) for k, v in kwargs.items()}
        for where in deps:
            wire = a[where] if type(where) is int else kw[where]
            if type(wire) in (list, tuple) and len(wire) == 3 and wire[0] != OK:
                return list(wire), a, kw  # forwarded as is: the host reports the dependency
            _, value = decode_outcome(self.codec, wire)
            if type(where) is int:
                a[where] = value
            else:
                kw[where] = value
        return None, a, kw


_worker: _Worker | None = None


def worker(namespace: str) -> _Worker:
    global _worker
    if _worker is None:
        _worker = _Worker(namespace)
    return _worker


def _construct(spec: dict[str, Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if "obj" in spec:
        return spec["obj"]
    if "entry" in spec:
        module, name = spec["entry"]
        return getattr(importlib.import_module(module), name)(*args, **kwargs)
    return spec["cls"](*args, **kwargs)


def has_async_methods(cls: type[Any]) -> bool:
    """Whether any public method of ``cls`` is async (then it needs ``ActorShell``'s event loop)."""
    for name in dir(cls):
        if name.startswith("_"):
            continue
        attr = inspect.getattr_static(cls, name, None)
        if isinstance(attr, (staticmethod, classmethod)):
            attr = attr.__func__
        if inspect.iscoroutinefunction(attr) or inspect.isasyncgenfunction(attr):
            return True
    return False


class _Shell:
    """What both shells share: the instance, its construction error, and resolving a call."""

    def __init__(self, spec: dict[str, Any], args: tuple[Any, ...], kwargs: dict[str, Any], info: dict[str, Any]
                 ) -> None:
        self._info = info
        self._w = worker(info["namespace"])
        self._methods: frozenset[str] | None = frozenset(spec["methods"]) if spec.get("methods") else None
        self._bound: dict[str, tuple[Any, bool]] = {}  # method name -> (bound method, is async)
        self._error: list[Any] | None = None
        token = process_caller.set(self._w.caller)
        try:
            _, a, kw = self._w.arguments([], args, kwargs)
            self._obj = _construct(spec, tuple(a), kw)
        except BaseException as exc:
            self._obj = None
            self._error = encode_outcome(self._w.codec, exc, raised=True)
        finally:
            process_caller.reset(token)

    def _ready(self) -> list[Any]:
        ctx = ray.get_runtime_context()
        return [self._error, ctx.get_node_id(), os.getpid(), ctx.get_actor_id()]

    def _method(self, method: str) -> tuple[Any, bool]:
        """``(bound method, is async)`` of a method callers may call (looked up once per name)."""
        found = self._bound.get(method)
        if found is None:
            if self._methods is not None and method not in self._methods:
                raise MethodNotFoundError(f"{self._info['label']} has no method {method!r} callers may call; "
                                          f"it answers: {', '.join(sorted(self._methods))}",
                                          actor=self._info["label"], method=method, call_id=None)
            found = self._bound[method] = resolve_method(self._obj, method, self._info["label"], None)
        return found


class ActorShell(_Shell):
    """One actorbox actor on Ray as an async Ray actor (made a Ray actor class by the host, with the actor's
    options): async methods run on its event loop, sync ones on a pool of ``max_concurrency`` threads."""

    def __init__(self, spec: dict[str, Any], args: tuple[Any, ...], kwargs: dict[str, Any], info: dict[str, Any]
                 ) -> None:
        super().__init__(spec, args, kwargs, info)
        self._pool = ThreadPoolExecutor(max_workers=info["max_concurrency"], thread_name_prefix="actorbox-call")

    @ray.method(concurrency_group=META)
    async def ready(self) -> list[Any]:
        return self._ready()

    @ray.method(concurrency_group=META)
    async def identity(self) -> list[Any]:
        return [self._info["actor_id"], self._info["label"]]

    async def call(self, method: str, deps: list[Any], *args: Any, **kwargs: Any) -> list[Any]:
        w = self._w
        w.loop.capture()
        process_caller.set(w.caller)
        codec = w.codec
        try:
            forwarded, a, kw = w.arguments(deps, args, kwargs)
            if forwarded is not None:
                return forwarded
            bound, is_async = self._method(method)
            if is_async:
                value = await bound(*a, **kw)
            else:
                ctx = contextvars.copy_context()
                value = await asyncio.get_running_loop().run_in_executor(self._pool, lambda: ctx.run(bound, *a, **kw))
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            return encode_outcome(codec, exc, raised=True)
        return encode_outcome(codec, value)


class ThreadedShell(_Shell):
    """One actorbox actor whose class has sync methods only, as a threaded Ray actor: Ray runs each
    call on one of its ``max_concurrency`` threads, which runs the method there and then."""

    @ray.method(concurrency_group=META)
    def ready(self) -> list[Any]:
        return self._ready()

    @ray.method(concurrency_group=META)
    def identity(self) -> list[Any]:
        return [self._info["actor_id"], self._info["label"]]

    def call(self, method: str, deps: list[Any], *args: Any, **kwargs: Any) -> list[Any]:
        w = self._w
        process_caller.set(w.caller)
        try:
            if deps or args or kwargs:
                forwarded, a, kw = w.arguments(deps, args, kwargs)
                if forwarded is not None:
                    return forwarded
            else:
                a, kw = [], {}
            bound, is_async = self._method(method)
            value = bound(*a, **kw)
            if is_async:  # (an instance may differ from its class: run it here, on a loop of its own)
                value = asyncio.run(value)
        except BaseException as exc:
            return encode_outcome(w.codec, exc, raised=True)
        return encode_outcome(w.codec, value)


def run_task(fn: Any, namespace: str, tries: int, deps: list[Any], *args: Any, **kwargs: Any) -> list[Any]:
    """A task on a Ray worker: ``fn(*args, **kwargs)``, tried ``tries`` times when it raises."""
    w = worker(namespace)
    process_caller.set(w.caller)
    try:
        forwarded, a, kw = w.arguments(deps, args, kwargs)
    except BaseException as exc:
        return encode_outcome(w.codec, exc, raised=True)
    if forwarded is not None:
        return forwarded
    for attempt in range(tries):
        try:
            value = fn(*a, **kw)
            if inspect.iscoroutine(value):
                value = asyncio.run(value)
        except BaseException as exc:
            if attempt + 1 < tries and isinstance(exc, Exception):
                continue
            return encode_outcome(w.codec, exc, raised=True)
        return encode_outcome(w.codec, value)
    raise AssertionError("unreachable")
