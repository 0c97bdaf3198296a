"""What ``rt.actors()`` and ``python -m actorbox ps`` show: resource use, snapshots, tables.

``ProcessSampler`` measures actor processes (RSS, CPU, threads with psutil; open
descriptors and the limits on them from /proc); ``snapshot``
gathers a Runtime's actors, calls in flight, named actors and object store into
one JSON-able document (what the control socket answers); ``format_snapshot``
prints it as the tables ``ps`` shows.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import psutil

from sandbox import escape_controls

if TYPE_CHECKING:
    from scheduler import CallInfo, Scheduler

    from ._objects import ObjectStore
    from ._residents import Resident
    from ._resources import ResourceInfo
    from ._supervisor import ActorSupervisor
    from ._zygotes import Zygote

# Samples closer together than this reuse the last CPU figure (a shorter delta is noise).
_MIN_CPU_INTERVAL_S = 0.1


@dataclass(frozen=True, slots=True)
class ActorInfo:
    """A snapshot of one actor, task worker or zygote (``Runtime.actors()``)."""

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
    threads: int | None = None  # OS threads of its process now (psutil); None when not an alive process
    # Descriptors its process has open now (entries of /proc/PID/fd, read by the host), and
    # the hard limits it runs under (RLIMIT_NOFILE, RLIMIT_NPROC: processes and threads of its
    # uid), which it cannot raise. None when not an alive process, unreadable, or unlimited.
    fds: int | None = None
    max_fds: int | None = None
    max_threads: int | None = None
    # What the row is: "actor" (one of yours, or a host-resident object), "task worker" (a
    # process rt.submit's tasks run on) or "zygote" (a prepared process actors of one
    # environment are forked from; actor_id negative, no handle: it exits with the Runtime).
    kind: str = "actor"
    forked: int | None = None  # a zygote's actors that are alive now; None for other kinds


class Inspectable(Protocol):
    """What a snapshot reads of a Runtime (the control socket holds one of these, not the Runtime)."""

    @property
    def sandbox(self) -> str: ...
    @property
    def trace_file(self) -> str | None: ...
    @property
    def object_store(self) -> ObjectStore: ...
    def actors(self) -> list[ActorInfo]: ...
    def pending_calls(self) -> list[CallInfo]: ...
    def named_actors(self) -> dict[str, int]: ...
    def resources(self) -> ResourceInfo: ...


class ProcessSampler:
    """RSS, CPU % and thread count of processes by pid; CPU is measured between successive samples.

    The first sample of a process reports its average since it started, so a single
    ``ps`` says something; later ones the use since the previous sample.
    """

    def __init__(self) -> None:
        # pid -> (process, cpu seconds at the last sample, wall time then, the figure then)
        self._seen: dict[int, tuple[psutil.Process, float, float, float]] = {}

    def sample(self, pid: int | None) -> tuple[int | None, float | None, int | None]:
        """(RSS bytes, CPU %, threads) of ``pid``, or Nones when it cannot be read (gone, not ours)."""
        if pid is None:
            return None, None, None
        now = time.monotonic()
        try:
            seen = self._seen.get(pid)
            proc = seen[0] if seen is not None and seen[0].is_running() else psutil.Process(pid)
            with proc.oneshot():
                rss = proc.memory_info().rss
                threads = proc.num_threads()
                t = proc.cpu_times()
                cpu = t.user + t.system
                if seen is None or seen[0] is not proc:
                    age = max(time.time() - proc.create_time(), 1e-3)
                    pct = cpu / age * 100
                elif now - seen[2] < _MIN_CPU_INTERVAL_S:
                    return rss, seen[3], threads
                else:
                    pct = max(cpu - seen[1], 0.0) / (now - seen[2]) * 100
        except (psutil.Error, OSError):
            self._seen.pop(pid, None)
            return None, None, None
        pct = round(pct, 1)
        self._seen[pid] = (proc, cpu, now, pct)
        return rss, pct, threads

    def budget(self, pid: int | None) -> tuple[int | None, int | None, int | None]:
        """(open descriptors, hard RLIMIT_NOFILE, hard RLIMIT_NPROC) of ``pid``, each None when unreadable.

        Read from /proc, never asked of the actor. Listing /proc/PID/fd
        costs about 0.4 us per descriptor (1.5 ms at the default policy's 4096), and an
        actor can hold no more than its RLIMIT_NOFILE, so one actor cannot make it dear.
        """
        if pid is None:
            return None, None, None
        try:
            fds: int | None = len(os.listdir(f"/proc/{pid}/fd"))
        except OSError:
            fds = None
        return (fds, *_hard_limits(pid))

    def forget_except(self, pids: set[int]) -> None:
        """Drop what is remembered of processes no longer listed."""
        for pid in [p for p in self._seen if p not in pids]:
            del self._seen[pid]


def _hard_limits(pid: int) -> tuple[int | None, int | None]:
    """Hard (RLIMIT_NOFILE, RLIMIT_NPROC) of ``pid`` from /proc/PID/limits, None where unlimited or unreadable.

    The kernel writes that file, and any process may read it; prlimit(2) would need
    the target's uid or CAP_SYS_RESOURCE in its user namespace (EPERM on a sandboxed actor).
    """
    found: dict[str, int | None] = {}
    try:
        with open(f"/proc/{pid}/limits") as f:
            for line in f:
                for key in ("Max open files", "Max processes"):
                    if line.startswith(key):
                        hard = line[len(key):].split()[1]  # soft, hard, units
                        found[key] = int(hard) if hard.isdigit() else None
    except (OSError, IndexError):  # gone, or not the layout this reads
        return None, None
    return found.get("Max open files"), found.get("Max processes")


# Task workers are started unnamed from this stem (``_task_workers``); an actor's label
# stem is its class name, which cannot contain "-".
_TASK_WORKER_PREFIX = "task-worker#"


def _kind(sup: ActorSupervisor) -> str:
    return "task worker" if sup.name is None and sup.label.startswith(_TASK_WORKER_PREFIX) else "actor"


def actor_infos(scheduler: Scheduler, supervisors: Mapping[int, ActorSupervisor],
                residents: Mapping[int, Resident], sampler: ProcessSampler,
                zygotes: Iterable[Zygote] = ()) -> list[ActorInfo]:
    """One row per actor the scheduler knows: processes (with RSS and CPU) and host-resident objects,
    then one per live zygote."""
    out = []
    alive: set[int] = set()
    for aid, a in scheduler.actors.items():
        sup = supervisors.get(aid)
        if sup is not None:
            # Only an alive actor's pid is surely still its own process.
            pid = sup.pid if sup.state == "alive" else None
            rss, cpu, threads = sampler.sample(pid)
            fds, max_fds, max_threads = sampler.budget(pid)
            if pid is not None:
                alive.add(pid)
            out.append(ActorInfo(aid, sup.name, sup.label, sup.cls_name, sup.pid, sup.state,
                                 sup.restarts, a.max_concurrency, len(a.queue) + len(a.unstarted),
                                 len(a.running) - len(a.unstarted), rss=rss, cpu_percent=cpu,
                                 running_calls=tuple(c for c, e in a.running.items() if e.began),
                                 open_fds=None if sup.endpoint is None else sup.endpoint.held_fds(),
                                 threads=threads, fds=fds, max_fds=max_fds, max_threads=max_threads,
                                 kind=_kind(sup)))
        elif aid in residents:
            obj = residents[aid].obj
            out.append(ActorInfo(aid, a.name, a.label, type(obj).__qualname__, None, "resident", 0,
                                 a.max_concurrency, len(a.queue), len(a.running),
                                 running_calls=tuple(a.running)))  # never delivered ahead
    for z in zygotes:
        if z.state not in ("starting", "ready", "retired"):  # retired: forks no more, holds its actors
            continue
        pid = z.pid if z.state != "starting" else None  # the launcher's until then
        rss, cpu, threads = sampler.sample(pid)
        fds, max_fds, max_threads = sampler.budget(pid)
        if pid is not None:
            alive.add(pid)
        out.append(ActorInfo(-z.number, None, zygote_label(z), "zygote", pid, z.state, z.restarts, 0, 0, 0,
                             rss=rss, cpu_percent=cpu, threads=threads, fds=fds, max_fds=max_fds,
                             max_threads=max_threads, kind="zygote", forked=z.forked_alive))
    sampler.forget_except(alive)
    return out


def zygote_label(z: Zygote) -> str:
    """``zygote (host env)``, ``zygote (env 04d8a3610f9b40968c9f)`` (an environment's fingerprint), plus
    ``, unsandboxed`` and what it preloads beyond torch when that is so."""
    env = "host env" if z.spec.python == sys.executable else f"env {os.path.basename(z.spec.venv_path or '?')}"
    extra = [p for p in z.preload if p != "torch"]
    return (f"zygote ({env}" + ("" if z.spec.sandboxed else ", unsandboxed")
            + (f", preload {' '.join(extra)}" if extra else "") + ")")


def snapshot(rt: Inspectable) -> dict[str, Any]:
    """The Runtime's state as one JSON-able document (what ``ps --json`` prints per Runtime)."""
    return {
        "runtime": {"pid": os.getpid(), "program": " ".join(sys.argv) or sys.executable,
                    "sandbox": rt.sandbox, "trace_file": rt.trace_file},
        "actors": [dataclasses.asdict(a) for a in rt.actors()],
        "calls": [dataclasses.asdict(c) for c in rt.pending_calls()],
        "names": rt.named_actors(),
        "object_store": rt.object_store.stats(),
        "resources": dataclasses.asdict(rt.resources()),
    }


def _table(headers: list[str], rows: list[list[str]], right: set[int]) -> list[str]:
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths,
                                                                                                strict=True))).rstrip()

    return [line(headers)] + [line(r) for r in rows]


def _dash(v: Any) -> str:
    return "-" if v is None else _text(v)


def _text(v: Any) -> str:
    # Labels, class and method names come from actors' extensions (and the snapshot from
    # another process): escaped, so no cell can carry a terminal escape sequence.
    return escape_controls(str(v))


def _num(v: Any) -> str:
    return f"{v:g}" if isinstance(v, (int, float)) else _text(v)


def format_snapshot(snap: dict[str, Any]) -> str:
    """A Runtime's snapshot as text: a header line, the actors table and the calls table."""
    rt = snap.get("runtime", {})
    store = snap.get("object_store") or {}
    head = f"Runtime pid {_text(rt.get('pid'))}: {_text(rt.get('program', '?'))}"
    mib = (store.get("bytes") or 0) / (1 << 20)
    head += f"\n  object store: {_text(store.get('objects', 0))} object(s), {mib:.1f} MiB"
    if rt.get("trace_file"):
        head += f"; recording events to {_text(rt['trace_file'])}"
    res = snap.get("resources") or {}
    if res.get("total"):
        free = res.get("free") or {}
        head += "\n  resources (free/total): " + ", ".join(
            f"{_text(k)} {_num(free.get(k, 0))}/{_num(v)}" for k, v in sorted(res["total"].items()))
    tasks = [c for c in snap.get("calls") or [] if c.get("actor") == "actorbox.tasks"]
    workers = [a for a in snap.get("actors") or [] if a.get("kind") == "task worker"]
    if tasks or workers:
        head += f"\n  tasks: {len(tasks)} unfinished, {len(workers)} worker(s)"
    zygotes = [a for a in snap.get("actors") or [] if a.get("kind") == "zygote"]
    if zygotes:
        head += (f"\n  zygotes: {len(zygotes)} (prepared processes actors fork from), "
                 f"{sum(z.get('forked') or 0 for z in zygotes)} actor(s) forked from them alive")
    names = snap.get("names") or {}
    if names:
        head += "\n  named actors: " + ", ".join(sorted(_text(n) for n in names))
    out = [head, ""]
    actors = snap.get("actors") or []
    rows = []
    for a in actors:
        rss = a.get("rss")
        zygote = a.get("kind") == "zygote"  # takes no calls (its NAME says "zygote (...)", its CLASS "zygote")
        rows.append([_text(a.get("actor_id")), _text(a.get("label")), _text(a.get("cls")), _dash(a.get("pid")),
                     _text(a.get("state")), _text(a.get("restarts")),
                     "-" if rss is None else f"{rss / (1 << 20):.1f}", _dash(a.get("cpu_percent")),
                     _dash(a.get("threads")), _dash(a.get("fds")), "-" if zygote else _text(a.get("queued")),
                     "-" if zygote else _text(a.get("running"))])
    out += ["  " + line for line in _table(["ID", "NAME", "CLASS", "PID", "STATE", "RESTARTS", "RSS MiB", "CPU %",
                                            "THREADS", "FDS", "QUEUED", "RUNNING"], rows,
                                           {0, 3, 5, 6, 7, 8, 9, 10, 11})]
    if not actors:
        out.append("  (no actors)")
    out.append("")
    calls = snap.get("calls") or []
    rows = [[_text(c.get("call_id")), _text(c.get("actor")), _text(c.get("method")), _text(c.get("caller")),
             _dash(c.get("parent_call_id")), _text(c.get("state")), f"{c.get('age_s', 0):.3f}s"] for c in calls]
    if calls:
        out += ["  " + line for line in _table(["CALL", "ACTOR", "METHOD", "CALLER", "PARENT", "STATE", "AGE"],
                                               rows, {0, 4, 6})]
    else:
        out.append("  no calls in flight")
    return "\n".join(out)
