"""actorbox's pytest plugin (entry point ``pytest11``): log options, a Runtime fixture, leak checks.

Options: ``--debug-actorbox`` shows actorbox's debug events (the ``call.*`` events
included: it sets ``ACTORBOX_LOG_CALLS=1`` for the session);
``--actorbox-log-file=PATH`` writes every structlog event as one JSON object per
line (``python -m actorbox trace`` reads it). Either option configures structlog
for the session and restores the previous configuration when the session ends.

Fixtures: ``actorbox_runtime`` yields a started ``Runtime`` (an anyio test, asyncio
or trio) and checks for leaks when it exits; ``actorbox_leak_check`` fails a test
that leaves actor processes, actorbox's sockets or shared-memory segments, or
pending calls behind. Both fail at teardown (pytest reports an error there).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
import traceback
import weakref
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import IO, Any

import anyio
import pytest
import structlog

from ._leaks import LeakCheck
from ._runtime import Runtime

_LOG_CALLS = "ACTORBOX_LOG_CALLS"
# Level of each structlog method name; "exception" logs at error level.
_METHOD_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "msg": logging.INFO, "warning": logging.WARNING,
                  "warn": logging.WARNING, "error": logging.ERROR, "exception": logging.ERROR,
                  "critical": logging.CRITICAL, "fatal": logging.CRITICAL}
# Keys the log file writes itself; an event field of the same name is kept as ``field_<name>``
# (the convention of ACTORBOX_TRACE_FILE's recorder, which ``python -m actorbox trace`` also reads).
_OWN_KEYS = frozenset({"ts", "event", "logger", "level"})
# A call still in flight when the test ends may be finishing (a cancellation on its way to
# the actor): it counts as left behind only if it is still there after this long.
PENDING_GRACE_S = 1.0


# -- options and logging ----------------------------------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("actorbox")
    group.addoption("--debug-actorbox", action="store_true", default=False,
                    help="show actorbox's debug-level events, call.* events included (sets ACTORBOX_LOG_CALLS=1); "
                         "pytest captures them, so they show only for failing tests unless you also pass "
                         "-s (as they happen) or -rA (every test's captured output)")
    group.addoption("--actorbox-log-file", metavar="PATH", default=None,
                    help="write every structlog event (call.* included) to PATH, one JSON object per line")
    parser.addini("actorbox_sandbox", "sandbox mode of the actorbox_runtime fixture: required (default) or disabled",
                  default="required")


@dataclass(slots=True)
class _Session:
    """What the options changed, to undo at the end of the session."""

    wrapper_class: Any
    logger_factory: Any
    log_calls: str | None  # ACTORBOX_LOG_CALLS before the session (None: unset)
    sink: _JsonLines | None


_SESSION = pytest.StashKey[_Session]()


@pytest.hookimpl(trylast=True)  # after conftests that configure structlog: this wraps their config
def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "actorbox(**options): keyword arguments for the Runtime of the actorbox_runtime fixture")
    debug: bool = config.getoption("debug_actorbox")
    path: str | None = config.getoption("actorbox_log_file")
    if not debug and not path:
        return
    sink = None
    if path:
        path = os.path.abspath(os.path.expanduser(path))
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            sink = _JsonLines(open(path, "w", encoding="utf-8", buffering=1))  # closed at unconfigure
        except OSError as exc:
            raise pytest.UsageError(f"--actorbox-log-file: cannot write {path}: {exc.strerror}") from None
    cfg = structlog.get_config()
    state = _Session(cfg["wrapper_class"], cfg["logger_factory"], os.environ.get(_LOG_CALLS), sink)
    # Read by every Runtime created without log_calls=...; the call.* events are the trace.
    os.environ[_LOG_CALLS] = "1"
    names: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()
    factory = state.logger_factory
    if sink is not None and not isinstance(factory, structlog.stdlib.LoggerFactory):
        # stdlib loggers carry their name; other loggers are tagged with the name they were asked for.
        # (stdlib's factory is left alone: it guesses a missing name from its caller's frame.)
        structlog.configure(logger_factory=_NamingFactory(factory, names))
    structlog.configure(wrapper_class=_tee_class(state.wrapper_class, sink, names, debug))
    config.stash[_SESSION] = state


@pytest.hookimpl(tryfirst=True)  # undone before the conftests that configured structlog undo theirs
def pytest_unconfigure(config: pytest.Config) -> None:
    state = config.stash.get(_SESSION, None)
    if state is None:
        return
    del config.stash[_SESSION]
    structlog.configure(wrapper_class=state.wrapper_class, logger_factory=state.logger_factory)
    if state.log_calls is None:
        os.environ.pop(_LOG_CALLS, None)
    else:
        os.environ[_LOG_CALLS] = state.log_calls
    if state.sink is not None:
        state.sink.close()


class _NamingFactory:
    """Wraps a structlog logger factory: remembers the name each logger was created for."""

    def __init__(self, inner: Callable[..., Any], names: weakref.WeakKeyDictionary[Any, str]) -> None:
        self.inner = inner
        self.names = names

    def __call__(self, *args: Any) -> Any:
        logger = self.inner(*args)
        if args and isinstance(args[0], str):
            try:
                self.names[logger] = args[0]
            except TypeError:  # not weakly referenceable: its events go without a logger name
                pass
        return logger


def _filtering_level(wrapper_class: Any) -> int | None:
    """The level of a ``structlog.make_filtering_bound_logger`` class, None for other classes."""
    for level in (logging.NOTSET, logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR, logging.CRITICAL):
        if structlog.make_filtering_bound_logger(level) is wrapper_class:
            return level
    return None


def _tee_class(current: Any, sink: _JsonLines | None, names: weakref.WeakKeyDictionary[Any, str],
               debug: bool) -> Any:
    """A bound-logger class that writes each event to ``sink`` before its processors run.

    Teeing before the processor chain keeps the file complete while a test swaps the
    processors (``structlog.testing.capture_logs``). The console keeps the configured
    level unless ``debug``; the file gets every level.
    """
    level = _filtering_level(current)
    base: Any
    if level is not None:
        # A level-filtering class drops events below its level before any hook: filter here instead.
        base = structlog.make_filtering_bound_logger(logging.NOTSET)
        console_level = logging.NOTSET if debug else level
    else:
        # Another class (structlog.stdlib.BoundLogger, say) is kept: its level filter is a
        # processor, which runs after the tee (and which --debug-actorbox leaves to its owner).
        base = current
        console_level = logging.NOTSET
    proxy = base._proxy_to_logger

    def _proxy_to_logger(self: Any, method_name: str, event: str | None = None, **event_kw: Any) -> Any:
        if sink is not None:
            logger = self._logger
            name = getattr(logger, "name", None) if isinstance(logger, logging.Logger) else names.get(logger)
            sink.write(method_name, event, name, self._context, event_kw)
        if _METHOD_LEVELS.get(method_name, logging.INFO) < console_level:
            return None
        return proxy(self, method_name, event, **event_kw)

    return type(f"Actorbox{base.__name__}", (base,), {"_proxy_to_logger": _proxy_to_logger})


class _JsonLines:
    """The ``--actorbox-log-file`` writer: one JSON object per event, flushed line by line."""

    def __init__(self, file: IO[str]) -> None:
        self._file: IO[str] | None = file
        self._lock = threading.Lock()  # events come from worker threads too

    def write(self, method_name: str, event: str | None, logger: str | None, context: Any,
              event_kw: dict[str, Any]) -> None:
        fields = {**structlog.contextvars.get_contextvars(), **context, **event_kw}
        if event is None:
            event = fields.pop("event", None)
        rec: dict[str, Any] = {"ts": time.time(), "event": event}
        if logger is not None:
            rec["logger"] = logger
        rec["level"] = logging.getLevelName(_METHOD_LEVELS.get(method_name, logging.INFO)).lower()
        exc_info = fields.pop("exc_info", None)
        for k, v in fields.items():
            rec[f"field_{k}" if k in _OWN_KEYS else k] = v
        if exc_info:
            rec["exception"] = _format_exc_info(exc_info)
        try:
            line = json.dumps(rec, default=repr)
        except (TypeError, ValueError):  # e.g. a dict with non-string keys inside a field
            line = json.dumps({k: v if isinstance(v, (str, int, float, bool, type(None))) else repr(v)
                               for k, v in rec.items()})
        with self._lock:
            if self._file is not None:  # events logged after the session ended are dropped
                self._file.write(line + "\n")

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None


def _format_exc_info(exc_info: Any) -> str:
    if isinstance(exc_info, BaseException):
        return "".join(traceback.format_exception(exc_info))
    if isinstance(exc_info, tuple) and len(exc_info) == 3 and exc_info[1] is not None:
        return "".join(traceback.format_exception(exc_info[1]))
    exc = sys.exc_info()[1]
    return "".join(traceback.format_exception(exc)) if exc is not None else ""


def _fail_on_leaks(check: LeakCheck, nodeid: str) -> None:
    leaks = check.leaks()
    if not leaks:
        return
    killed = check.kill_leaked_processes()
    lines = [f"actorbox leak check: {nodeid} left resources behind:"] + [f"  - {leak}" for leak in leaks]
    if killed:
        lines.append(f"  (actorbox killed the leaked processes {', '.join(map(str, killed))} so later tests "
                     "start clean)")
    pytest.fail("\n".join(lines), pytrace=False)


@pytest.fixture
def actorbox_leak_check(request: pytest.FixtureRequest) -> Iterator[LeakCheck]:
    """Fails the test at teardown if it left actor processes, sockets, segments or pending calls behind.

    Snapshots the process when set up; request it before fixtures that start Runtimes.
    ``actorbox_leak_check.watch(rt)`` adds a Runtime's pending calls to the check.
    """
    check = LeakCheck()
    yield check
    _fail_on_leaks(check, request.node.nodeid)


@pytest.fixture
async def actorbox_runtime(anyio_backend: Any, request: pytest.FixtureRequest,
                           actorbox_leak_check: LeakCheck) -> AsyncIterator[Runtime]:
    """A started ``actorbox.Runtime`` (anyio: asyncio or trio), exited and leak-checked at teardown.

    Its keyword arguments: ``sandbox`` from the ``actorbox_sandbox`` ini option
    (default "required"), then those of the test's ``@pytest.mark.actorbox(...)``.
    """
    options: dict[str, Any] = {"sandbox": request.config.getini("actorbox_sandbox")}
    marker = request.node.get_closest_marker("actorbox")
    if marker is not None:
        if marker.args:
            raise pytest.UsageError("@pytest.mark.actorbox takes keyword arguments only (those of actorbox.Runtime)")
        options.update(marker.kwargs)
    async with Runtime(**options) as rt:
        actorbox_leak_check.watch(rt)
        yield rt
        with anyio.move_on_after(PENDING_GRACE_S):
            while rt.pending_calls():
                await anyio.sleep(0.02)
        actorbox_leak_check.note_pending(rt)
