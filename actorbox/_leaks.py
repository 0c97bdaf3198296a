"""``LeakCheck``: what a test (or any code) left behind since a snapshot.

Actor processes still running, Unix sockets, actorbox's shared-memory segments and
the pending calls of watched Runtimes. The pytest plugin's ``actorbox_leak_check``
fixture yields one; it lives apart from the plugin so that ``actorbox`` exports it
without importing pytest.
"""

from __future__ import annotations

import gc
import os
import time
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING

import psutil

if TYPE_CHECKING:
    from ._runtime import Runtime

# Actor processes of an exited Runtime are reaped before it returns; this only absorbs a
# sandbox's inner processes still being torn down by the kernel.
_PROCESS_GRACE_S = 1.0
_ACTOR_MODULE = "actorbox._child"
_ZYGOTE_MODULE = "actorbox._zygote"


@dataclass(frozen=True, slots=True)
class _Snapshot:
    """What this process holds that a Runtime could leave behind."""

    children: frozenset[tuple[int, float]]  # (pid, create time) of every descendant process
    fds: frozenset[tuple[int, str, int]]  # (fd, "socket" or "memfd", inode) of Unix sockets and actorbox memfds
    shm: frozenset[str]  # /dev/shm entries naming actorbox


def _snapshot() -> _Snapshot:
    return _Snapshot(frozenset(_children()), frozenset(_tracked_fds()), frozenset(_shm_names()))


def _children() -> dict[tuple[int, float], psutil.Process]:
    out = {}
    for p in psutil.Process().children(recursive=True):
        try:
            out[(p.pid, p.create_time())] = p
        except psutil.Error:  # gone meanwhile
            pass
    return out


def _unix_inodes() -> set[str]:
    try:
        with open("/proc/net/unix", encoding="ascii", errors="replace") as f:
            next(f, None)  # header: Num RefCount Protocol Flags Type St Inode Path
            return {cols[6] for line in f if len(cols := line.split()) > 6}
    except OSError:
        return set()


def _tracked_fds() -> set[tuple[int, str, int]]:
    """This process's Unix sockets and actorbox memfds, as (fd, kind, inode)."""
    try:
        entries = os.listdir("/proc/self/fd")
    except OSError:  # not Linux: nothing to compare
        return set()
    unix = _unix_inodes()
    out = set()
    for name in entries:
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
            if target.startswith("/memfd:actorbox"):
                # A mapping holds two fds of its segment (mmap keeps a dup): the inode tells segments apart.
                out.add((int(name), "memfd", os.stat(f"/proc/self/fd/{name}").st_ino))
            elif target.startswith("socket:[") and target[len("socket:["):-1] in unix:
                out.add((int(name), "socket", int(target[len("socket:["):-1])))
        except (OSError, ValueError):  # closed meanwhile (the listing's own fd, for one)
            continue
    return out


def _shm_names() -> set[str]:
    # actorbox's segments are memfds and never appear here; this guards against one that does.
    try:
        return {n for n in os.listdir("/dev/shm") if "actorbox" in n}
    except OSError:
        return set()


def _is_actor(p: psutil.Process) -> bool:
    """Whether ``p``'s command line runs an actor (a sandbox's launchers name it too), or ``p`` was
    forked by a zygote: an actor or its reaper, with the command line of the process that forked
    it (the zygote itself, started by its sandbox's launcher, is no actor)."""
    try:
        cmd = p.cmdline()
        if _ACTOR_MODULE in cmd:
            return True
        parent = p.parent()
        return (_ZYGOTE_MODULE in cmd and parent is not None and parent.cmdline() == cmd
                and "bwrap" not in p.name())  # (bubblewrap's own two processes share a command line too)
    except psutil.Error:
        return False


def _descendants(p: psutil.Process) -> list[psutil.Process]:
    try:
        return p.children(recursive=True)
    except psutil.Error:
        return []


def _describe_process(p: psutil.Process) -> str:
    try:
        cmd = " ".join(p.cmdline())
    except psutil.Error:
        cmd = "?"
    return f"pid {p.pid} ({cmd[:120]})"


class LeakCheck:
    """Compares what the process holds now with a snapshot taken when it was created.

    ``leaks()`` lists, in words, what appeared since: actor processes (and their
    descendants) still running, Unix sockets, actorbox shared-memory segments, and
    the pending calls of watched Runtimes (``watch(rt)``), plus any watched Runtime
    that was entered and not exited. Compare with the event loop in the state it was
    in at the snapshot: a loop started since holds Unix sockets of its own.
    """

    def __init__(self) -> None:
        self._before = _snapshot()
        self._runtimes: weakref.WeakSet[Runtime] = weakref.WeakSet()
        self._pending: list[str] = []

    def watch(self, rt: Runtime) -> Runtime:
        """Also report ``rt``'s pending calls, and ``rt`` itself if it is still running at the check."""
        self._runtimes.add(rt)
        return rt

    def note_pending(self, rt: Runtime) -> None:
        """Record ``rt``'s pending calls now (before it exits: exiting fails them all)."""
        self._pending += _describe_calls(rt)

    def leaked_processes(self) -> list[psutil.Process]:
        """Actor processes started since the snapshot and still running, with their descendants."""
        found: dict[int, psutil.Process] = {}
        for key, p in _children().items():
            if key in self._before.children or p.pid in found:
                continue
            try:
                if p.status() == psutil.STATUS_ZOMBIE or not _is_actor(p):
                    continue
            except psutil.Error:  # exited meanwhile
                continue
            found[p.pid] = p
            for d in _descendants(p):
                found.setdefault(d.pid, d)
        return list(found.values())

    def leaks(self) -> list[str]:
        """What was left behind, one line (problem, then remedy) per kind; empty when nothing."""
        out: list[str] = []
        pending = list(self._pending)
        for rt in list(self._runtimes):
            if getattr(rt, "_live", None) is not None and not rt.closing:
                out.append("a Runtime is still running (entered and never exited): leave its 'async with "
                           "actorbox.Runtime()' block (or await rt.__aexit__(None, None, None)) before the test ends")
                pending += _describe_calls(rt)
        if pending:
            out.append(f"{len(pending)} pending call(s): {'; '.join(pending)}. Await each call's "
                       "Future (or cancel the task awaiting it) before the test ends; a cancelled sync method "
                       "keeps running in its thread until it returns")
        procs = self.leaked_processes()
        deadline = time.monotonic() + _PROCESS_GRACE_S
        while procs and time.monotonic() < deadline:
            time.sleep(0.05)
            procs = self.leaked_processes()
        if procs:
            actors = [p for p in procs if _is_actor(p) and not any(_is_actor(c) for c in _descendants(p))]
            others = [p for p in procs if p not in actors]
            extra = (f", with {len(others)} process(es) of their sandboxes or started by them "
                     f"(pid {', '.join(str(p.pid) for p in others)})" if others else "")
            out.append(f"{len(actors)} actor process(es) still running: "
                       f"{', '.join(_describe_process(p) for p in actors)}{extra}. Exit every Runtime (or stop "
                       "the actors: await rt.stop(handle)) before the test ends; a Runtime of a wider-scoped "
                       "fixture must not keep actors a test started")
        # Spare segments a live Runtime keeps ready for fresh copies are a bounded cache, not a leak.
        spares = {fd for rt in list(self._runtimes) for fd in rt.codec.segments.spares.held_fds()}
        fds = {f for f in _tracked_fds() - self._before.fds if f[0] not in spares}
        if fds:
            gc.collect()  # objects in reference cycles may still hold the last reference
            fds = {f for f in _tracked_fds() - self._before.fds if f[0] not in spares}
        sockets = sorted(fd for fd, kind, _ in fds if kind == "socket")
        segments = sorted(fd for fd, kind, _ in fds if kind == "memfd")
        if sockets:
            out.append(f"{len(sockets)} Unix socket(s) still open (fd {', '.join(map(str, sockets))}): each actor's "
                       "connection is closed when its Runtime exits; a Runtime that was not exited keeps them")
        if segments:
            n = len({ino for _, kind, ino in fds if kind == "memfd"})
            out.append(f"{n} shared-memory segment(s) still open (memfd fd "
                       f"{', '.join(map(str, segments))}): tensors or arrays that crossed to or from an actor "
                       "(or ObjectRefs) are still referenced, or a Runtime was not exited; drop them (module "
                       "globals, caches, fixtures of wider scope) before the test ends")
        shm = sorted(_shm_names() - self._before.shm)
        if shm:
            out.append(f"/dev/shm entries left: {', '.join(shm)}; remove them")
        return out

    def kill_leaked_processes(self) -> list[int]:
        """SIGKILL the actor processes ``leaked_processes`` finds (so later tests start clean); their pids."""
        procs = self.leaked_processes()
        for p in procs:
            try:
                p.kill()  # not waited for here: their owner (a Runtime) reaps its children
            except psutil.Error:
                pass
        return [p.pid for p in procs]


def _describe_calls(rt: Runtime) -> list[str]:
    return [f"{f'task {c.method}' if c.actor == 'actorbox.tasks' else f'{c.actor}.{c.method}'}() "
            f"call_id={c.call_id} ({c.state}, {c.age_s:.1f} s old, called by {c.caller})" for c in rt.pending_calls()]
