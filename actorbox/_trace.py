"""Recording a Runtime's events to a JSONL file (``ACTORBOX_TRACE_FILE``).

The library never configures structlog, so the Runtime cannot add a processor to
capture its own events. Instead it hands its emit points (the scheduler, the
supervisors) an ``EventTee`` in place of their structlog logger: the tee writes
each event to the file and passes it on to structlog unchanged. Without
``ACTORBOX_TRACE_FILE`` the emit points hold the plain structlog logger, so
tracing costs nothing when it is off.

One line per event: ``{"ts": <epoch seconds>, "event": ..., "logger": ...,
"level": ..., "runtime": ..., "host_pid": ..., <the event's fields>}``.
``python -m actorbox trace`` turns such a file into a Chrome trace or an HTML timeline.
"""

from __future__ import annotations

import json
import os
import threading
import time
from typing import IO, Any

# Keys the recorder writes itself; an event field of the same name is kept as ``field_<name>``.
_OWN_KEYS = ("ts", "event", "logger", "level", "runtime", "host_pid")
# How often buffered lines reach the file while the Runtime runs (it is also flushed on exit).
FLUSH_INTERVAL_S = 0.25


class TraceRecorder:
    """Appends one JSON line per event to ``path`` (several Runtimes may share one file).

    Lines are buffered and written out every ``FLUSH_INTERVAL_S`` and on ``close``;
    each line goes out in one ``write`` on a file opened for appending, so Runtimes
    in different processes appending to one file do not interleave within a line.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.host_pid = os.getpid()
        self.started = time.time()
        # Tells Runtimes apart when one file holds several (their call ids all start at 1).
        self.runtime = f"{self.host_pid}@{self.started:.6f}"
        self._file: IO[str] | None = open(path, "a", encoding="utf-8", buffering=1 << 16)
        self._lock = threading.Lock()  # events may come from worker threads too

    def record(self, logger: str, level: str, event: str, fields: dict[str, Any]) -> None:
        rec: dict[str, Any] = {"ts": time.time(), "event": event, "logger": logger, "level": level,
                               "runtime": self.runtime, "host_pid": self.host_pid}
        for k, v in fields.items():
            rec[f"field_{k}" if k in _OWN_KEYS else k] = v
        line = json.dumps(rec, default=str, separators=(",", ":")) + "\n"
        with self._lock:
            if self._file is not None:
                self._file.write(line)

    def flush(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.flush()

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None


class EventTee:
    """Stands in for a structlog logger: records each event, then logs it as before.

    Events whose name starts with one of ``quiet`` are recorded but not passed on
    (call events that tracing switched on although the application did not ask
    for them in its logs).
    """

    def __init__(self, logger: Any, name: str, recorder: TraceRecorder, quiet: tuple[str, ...] = ()) -> None:
        self._logger = logger
        self._name = name
        self._recorder = recorder
        self._quiet = quiet

    def _emit(self, level: str, event: str, fields: dict[str, Any]) -> None:
        self._recorder.record(self._name, level, event, fields)
        if not (self._quiet and event.startswith(self._quiet)):
            getattr(self._logger, level)(event, **fields)

    def debug(self, event: str, **fields: Any) -> None:
        self._emit("debug", event, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._emit("info", event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._emit("warning", event, fields)

    def error(self, event: str, **fields: Any) -> None:
        self._emit("error", event, fields)

    def critical(self, event: str, **fields: Any) -> None:
        self._emit("critical", event, fields)
