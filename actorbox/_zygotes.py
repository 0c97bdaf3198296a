"""The host's side of zygotes (issue 17): one prepared process per (environment, sandbox, preload) key.

A zygote (``_zygote.py``) is launched exactly as an actor of its key would be, then
forks actors on request: an actor start then costs a fork and its own sandbox's setup
instead of an interpreter start and every import. ``Zygotes`` starts one at the first
actor of its key (or at ``rt.prepare``), replaces it when it died, and kills them all
when the Runtime exits. ``ForkedProcess`` is what a supervisor drives for a forked actor
(the interface of ``sandbox.ActorProcess``).

Everything a zygote sends is untrusted (it imported third-party packages): messages are
bounded, msgpack only, type-checked, a descriptor must be a pidfd of one of its own
children; anything else kills that zygote (``zygote.misbehaved``) and actors start
without it. Whenever a zygote cannot fork an actor, the actor starts as before
(``launch`` returns None and the caller launches it plainly).
"""

from __future__ import annotations

import array
import dataclasses
import itertools
import os
import resource
import select
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator
from concurrent.futures import Executor
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
import msgpack
import psutil

import sandbox

# The zygote's protocol (see _zygote.py): the largest message either side sends, and the
# argument that names what a zygote forks, so its command line says so: an actor forked from
# it keeps the zygote's command line. Not the bare module name, which is what the pytest
# plugin's leak check looks for to find actor processes.
MAX_MESSAGE = 4096
CHILD_MARKER = "--forks=actorbox._child"

# Seconds a zygote may take to import what it preloads (torch: ~1-2 s; more on a busy
# machine) and to answer a fork (milliseconds); over either, it is killed and the actor
# starts without it.
READY_TIMEOUT_S = 120.0
FORK_TIMEOUT_S = 15.0
# Zygotes of one key retired because a child could not build its sandbox: past this, that key's
# actors start without a zygote (each fresh zygote costs an import of torch, each to no avail).
MAX_UNFIT = 3
# A zygote's limits count for all its actors together: its process limit counts all their
# processes and threads (one uid), and it holds a pidfd per live actor. Each actor's own
# limits, the policy's, are set in its own user namespace (sandbox._nest). A zygote out
# of either fails that fork and the actor starts without it.
_ZYGOTE_LIMIT_FACTOR = 1024


class ZygoteError(Exception):
    """A zygote broke its protocol or could not fork; the actor starts without it."""


class ForkedProcess:
    """An actor forked by a zygote, awaitable on any anyio backend (exit seen through its pidfd)."""

    def __init__(self, zygote: Zygote, rid: int, pidfd: int, pid: int, out: int, err: int,
                 lease: Any) -> None:
        self._zygote = zygote
        self.rid = rid
        self._pidfd = pidfd
        self.pid = pid  # host pid of what the zygote forked (sandboxed: the reaper of the actor)
        self._out, self._err = out, err
        self._lease = lease  # the uid the actor sees (root host), held until it is reaped
        self._status: int | None = None
        self._reported = anyio.Event()
        self._wait_lock = anyio.Lock()
        self.stdout = _chunks(out)
        self.stderr = _chunks(err)

    @property
    def returncode(self) -> int | None:
        return self._status

    def exited(self) -> bool:
        """Whether the process has exited (its pidfd is readable), as the kernel, not the zygote, says."""
        if self._pidfd < 0:
            return True
        poller = select.poll()  # (not select.select: the host's descriptors go past 1024)
        poller.register(self._pidfd, select.POLLIN)
        return bool(poller.poll(0))

    def report(self, status: int) -> None:
        """The zygote reaped it (or died, taking it along: ``-SIGKILL``)."""
        if self._status is None:
            self._status = status
        self._reported.set()

    def actor_pid(self) -> int:
        """Host pid of the actor's Python process (when it nests: reaper -> its pid namespace's init -> actor)."""
        if not self._zygote.nested:
            return self.pid
        try:
            kids = psutil.Process(self.pid).children()
            kids = kids[0].children() if len(kids) == 1 else []
        except psutil.Error:
            return self.pid
        return kids[0].pid if len(kids) == 1 else self.pid

    def kill(self) -> None:
        """SIGKILL through the pidfd (never a reused pid); the reaper's death kills the actor's namespace."""
        if self._pidfd < 0 or self._status is not None:
            return
        if not self._zygote.nested and not self.exited():
            # No pid namespace: its session's processes go too. Only while the pidfd says it has not
            # exited: its pid (the session's id) is then still its own, never a reused one. Once it
            # exited, its zygote kills that session before it reaps it (_zygote.serve).
            sandbox.kill_group(self.pid)
        try:
            signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)
        except (ProcessLookupError, OSError):
            pass

    async def wait(self) -> int:
        async with self._wait_lock:
            if self._status is None:
                await anyio.wait_readable(self._pidfd)  # readable once it exited
                # Its status comes from the zygote, which reaps it at once; a zygote that
                # cannot say (gone, or stuck) leaves it as killed.
                if self._zygote.state in ("ready", "retired"):
                    with anyio.move_on_after(2.0):
                        await self._reported.wait()
                self.report(-signal.SIGKILL)
            assert self._status is not None
            return self._status

    async def aclose(self) -> None:
        """Close the pipes and the pidfd (the process must have exited, or be killed first)."""
        gone = self._status is not None or self.exited()
        for fd in (self._out, self._err, self._pidfd if gone else -1):
            if fd >= 0:
                os.close(fd)
        pidfd, lease = self._pidfd, self._lease
        self._out = self._err = self._pidfd = -1
        self._lease = None
        if not gone:
            # Killed but not gone yet: its uid is released (and its pidfd closed) as soon as it is
            # (its zygote reaps it).
            sandbox.reap_later(pidfd, self.pid, lease.release if lease is not None else lambda: None)
        elif lease is not None:
            lease.release()


async def _chunks(fd: int) -> AsyncIterator[bytes]:
    """What a pipe delivers, chunk by chunk, until EOF (or until it is closed)."""
    os.set_blocking(fd, False)
    while True:
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            try:
                await anyio.wait_readable(fd)
            except (OSError, ValueError):
                return
            continue
        except (OSError, ValueError):
            return
        if not data:
            return
        yield data


class Zygote:
    """One zygote process: its socket, its pending forks and the actors it forked."""

    def __init__(self, owner: Zygotes, key: tuple[Any, ...], spec: sandbox.LaunchSpec,
                 preload: tuple[str, ...]) -> None:
        self.services = owner
        self.log = owner.log
        self.key = key
        self.spec = spec  # the launch spec of an actor of this key
        self.preload = preload
        self.nested = spec.sandboxed
        self.state = "starting"  # starting | ready | unavailable | retired (forks no more) | dead
        self.reason = ""
        # What each path its sandbox binds was at its launch: a path rebuilt since (an environment
        # deleted and built again) is another directory, which its binds do not show (see fit()).
        self.bound = bound_identity(spec)
        self.unfit = ""  # why a child it forked could not build its sandbox ("unfit"): it is retired
        self.ready = anyio.Event()
        self.proc: sandbox.ActorProcess | None = None
        self.pid: int | None = None  # host pid of the zygote's Python process
        self.started = time.monotonic()
        self.forks = 0
        self.number = next(owner.numbers)  # rt.actors() shows it as actor id -number
        self.restarts = 0  # how many zygotes of its key it replaced
        self._sock: socket.socket | None = None
        self._ids = itertools.count(1)
        self._pending: dict[int, tuple[anyio.Event, list[Any]]] = {}
        self._children: dict[int, ForkedProcess] = {}
        # Forks whose start was cancelled in flight: what the zygote forks for one is killed on
        # arrival (killing the zygote instead would kill every sibling it forked). True once it
        # came: each id then takes its exit message only (no message is valid twice).
        self._abandoned: dict[int, bool] = {}
        self._tail = sandbox.OutputTail(f"(zygote {spec.label})", sys.stderr)
        self._pidfd = -1  # of the zygote's Python process, inside its sandbox

    @property
    def forked_alive(self) -> int:
        """How many actors it forked are alive now (not yet reported exited)."""
        return len(self._children)

    async def start(self) -> None:
        """Launch the zygote as an actor of its key would be launched; its reader runs under supervision."""
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        policy = self.spec.policy
        zspec = dataclasses.replace(
            self.spec, module="actorbox._zygote", pass_fds=(child.fileno(),),
            args=(str(child.fileno()), "nested" if self.nested else "plain", CHILD_MARKER, *self.preload),
            policy=dataclasses.replace(policy, max_processes=_zygote_nproc(policy.max_processes),
                                       max_open_files=policy.max_open_files * _ZYGOTE_LIMIT_FACTOR),
            label=f"zygote:{self.spec.label}")
        try:
            self.proc = await sandbox.launch(zspec, self.services.spawner)
        except BaseException:
            parent.close()
            raise
        finally:
            child.close()
        parent.setblocking(False)
        self._sock = parent
        self.pid = self.proc.pid  # the launcher until it is ready (then the Python inside)
        self.services.supervision.start_soon(self._run)

    async def _run(self) -> None:
        """Read the zygote's messages until it goes; then kill and reap it, and settle its actors."""
        proc, sock = self.proc, self._sock
        assert proc is not None and sock is not None
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._tail.pump, proc.stderr)
                tg.start_soon(_drain, proc.stdout)
                try:
                    await self._read(sock)
                except ZygoteError as exc:
                    self.log.error("zygote.misbehaved", zygote=self.spec.label, pid=self.pid,
                                            reason=str(exc), consequence="it is killed; actors start without it")
                finally:
                    tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await self._end(proc, sock)

    async def _read(self, sock: socket.socket) -> None:
        while True:
            try:
                data, anc, flags, _ = sock.recvmsg(MAX_MESSAGE + 1, socket.CMSG_SPACE(4))
            except BlockingIOError:
                await anyio.wait_readable(sock)
                continue
            except OSError:
                return
            fds = _fds(anc)
            try:
                if not data:
                    return
                if len(data) > MAX_MESSAGE or flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
                    raise ZygoteError(f"a message over {MAX_MESSAGE} bytes, or with too many descriptors")
                self._on_message(_decode(data), fds)
                fds = []
            finally:
                for fd in fds:
                    os.close(fd)
            await anyio.lowlevel.checkpoint()  # a zygote that floods the socket never holds the loop

    def _on_message(self, msg: list[Any], fds: list[int]) -> None:
        match msg:
            case ["ready", bool(ok), str(reason)] if self.state == "starting" and not fds:
                self.state, self.reason = ("ready", "") if ok else ("unavailable", reason[:1000])
                if self.nested and self.proc is not None:
                    self.pid = sandbox.find_actor_pid(self.proc.pid, "actorbox._zygote") or self.proc.pid
                    try:  # killed through it at the end: bwrap's pid namespace dies a moment after bwrap
                        self._pidfd = os.pidfd_open(self.pid)
                    except OSError:
                        pass
                self.ready.set()
            case ["forked", int(rid)] if rid in self._pending and len(fds) == 1:
                self._check_pidfd(fds[0])
                event, slot = self._pending.pop(rid)
                slot.append(fds[0])
                event.set()
            case ["forked", int(rid)] if self._abandoned.get(rid) is False and len(fds) == 1:
                self._check_pidfd(fds[0])
                _pidfd_kill(fds[0])
                os.close(fds.pop())  # (taken: the reader closes only what is left in fds)
                self._abandoned[rid] = True  # its exit message ends the entry
            case ["failed", int(rid), str()] if self._abandoned.get(rid) is False and not fds:
                del self._abandoned[rid]
            case ["unfit", int(rid), str(reason)] if self._abandoned.get(rid) is False and not fds:
                del self._abandoned[rid]
                self.unfit = reason[:1000]
            case ["exit", int(rid), int()] if self._abandoned.get(rid) is True and not fds:
                del self._abandoned[rid]
            case ["failed" | "unfit" as kind, int(rid), str(reason)] if rid in self._pending and not fds:
                if kind == "unfit":
                    self.unfit = reason[:1000]
                event, slot = self._pending.pop(rid)
                slot.append(reason[:1000])
                event.set()
            case ["exit", int(rid), int(status)] if rid in self._children and not fds:
                if not self._children[rid].exited():  # else the host would skip killing it, and reuse its uid
                    raise ZygoteError("an exit status for an actor that is still running")
                self._children.pop(rid).report(status)
                self.end_if_idle()
            case _:
                raise ZygoteError(f"an unexpected message {str(msg)[:200]!r} with {len(fds)} descriptor(s)")

    def _check_pidfd(self, fd: int) -> None:
        """The descriptor must be a pidfd of a child of this zygote's process."""
        pid = pidfd_pid(fd)
        try:  # (not reaped yet: the zygote reports an exit only after this)
            ok = pid is not None and psutil.Process(pid).ppid() == self.pid
        except psutil.Error:
            ok = False
        if not ok:
            raise ZygoteError("a descriptor that is no pidfd of one of its own children")

    async def _end(self, proc: sandbox.ActorProcess, sock: socket.socket) -> None:
        """Kill and reap the zygote; its pending forks fail, its actors are reported killed (bounded)."""
        if self.state in ("starting", "ready", "retired"):
            self.state = "dead"
        self.services.retired.discard(self)
        self.ready.set()
        sock.close()
        for event, slot in self._pending.values():
            slot.append("the zygote exited")
            event.set()
        self._pending.clear()
        sandbox.kill_group(proc.pid)
        with anyio.move_on_after(0.5):
            await proc.wait()
            if self._pidfd >= 0:  # gone when this returns: no zygote outlives its Runtime
                try:
                    signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                await anyio.wait_readable(self._pidfd)
        if self._pidfd >= 0:
            os.close(self._pidfd)
            self._pidfd = -1
        await proc.aclose()
        for child in self._children.values():
            child.report(-signal.SIGKILL)  # its pid namespace died with it
        self._children.clear()

    def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            sandbox.kill_group(self.proc.pid)

    def unfit_reason(self, spec: sandbox.LaunchSpec) -> str:
        """Why this ready zygote must fork no more actors of ``spec`` (its key's), or "".

        A path its sandbox binds that is another file or directory now (its environment
        was deleted and built again, an extension folder replaced): the bind still shows
        the old one, deleted, and a child would fail to build its sandbox (or see stale
        code). A bind holds the old directory, so its inode number is not reused meanwhile.
        """
        if self.unfit:
            return self.unfit
        now = bound_identity(spec)
        changed = [p[0] for p, q in zip(self.bound, now, strict=False) if p != q]
        if changed or len(now) != len(self.bound):
            return f"{(changed or ['a path it binds'])[0]} is not the one it was launched with (rebuilt or replaced)"
        return ""

    def end_if_idle(self) -> None:
        """A retired zygote goes once the last actor it forked is gone (they die with it)."""
        if self.state == "retired" and not self._children and not self._pending:
            self.kill()

    async def fork(self, sock: socket.socket, nest: list[Any], lease: Any) -> ForkedProcess:
        """Have the zygote fork an actor on ``sock`` (the actor's end); raises ZygoteError."""
        zsock = self._sock
        if self.state != "ready" or zsock is None:
            raise ZygoteError(f"the zygote is {self.state}")
        rid = next(self._ids)
        out_r, out_w, err_r, err_w = _output_pipes()
        event, slot = anyio.Event(), list[Any]()
        self._pending[rid] = (event, slot)
        try:
            try:
                data = msgpack.packb(["fork", rid, *nest], use_bin_type=True)
                zsock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                        array.array("i", [sock.fileno(), out_w, err_w]).tobytes())])
            except OSError as exc:
                self._pending.pop(rid, None)  # never asked: nothing to abandon
                raise ZygoteError(f"could not ask it to fork: {exc}") from exc
            finally:
                os.close(out_w)
                os.close(err_w)
            with anyio.move_on_after(FORK_TIMEOUT_S):
                await event.wait()
        except BaseException:
            # Cancelled mid-fork: what it forked must not live on, but its siblings must.
            if self._pending.pop(rid, None) is not None:
                self._abandoned[rid] = False  # killed when the zygote's answer comes (_on_message)
            elif slot and isinstance(slot[0], int):  # answered already: killed now, its exit still due
                _pidfd_kill(slot[0])
                self._abandoned[rid] = True
            for fd in (out_r, err_r, *[x for x in slot if isinstance(x, int)]):
                os.close(fd)
            raise
        if not slot or not isinstance(slot[0], int):
            os.close(out_r)
            os.close(err_r)
            if not slot:
                self.kill()
            self.end_if_idle()
            raise ZygoteError(str(slot[0]) if slot else f"no answer within {FORK_TIMEOUT_S} s")
        pidfd = slot[0]
        pid = pidfd_pid(pidfd)
        assert pid is not None  # checked when it arrived
        forked = ForkedProcess(self, rid, pidfd, pid, out_r, err_r, lease)
        self._children[rid] = forked
        self.forks += 1
        return forked


def bound_identity(spec: sandbox.LaunchSpec) -> tuple[tuple[str, int, int], ...]:
    """(path, device, inode) of each path an actor's sandbox binds or imports from ((path, -1, -1): missing)."""
    out = []
    for path in (*((spec.venv_path,) if spec.venv_path else ()), *spec.code_paths, *spec.module_paths,
                 *spec.import_paths):
        try:
            st = os.stat(path)
            out.append((path, st.st_dev, st.st_ino))
        except OSError:
            out.append((path, -1, -1))
    return tuple(out)


def _output_pipes() -> tuple[int, int, int, int]:
    """The actor's stdout and stderr pipes (read, write, read, write); ZygoteError, with none left open,
    when the host is out of descriptors (the plain launch then reports it, if it fails too)."""
    fds: list[int] = []
    try:
        for _ in range(2):
            fds.extend(os.pipe())
    except OSError as exc:
        for fd in fds:
            os.close(fd)
        raise ZygoteError(f"no descriptors for the actor's output pipes: {exc}") from exc
    out_r, out_w, err_r, err_w = fds
    return out_r, out_w, err_r, err_w


def _pidfd_kill(fd: int) -> None:
    try:
        signal.pidfd_send_signal(fd, signal.SIGKILL)
    except ProcessLookupError:  # reaped already
        pass


def pidfd_pid(fd: int) -> int | None:
    """The host pid a pidfd refers to (its fdinfo's ``Pid:``), or None if ``fd`` is no live pidfd."""
    try:
        with open(f"/proc/self/fdinfo/{fd}") as f:
            for line in f:
                if line.startswith("Pid:"):
                    pid = int(line.split()[1])
                    return pid if pid > 0 else None
    except (OSError, ValueError, IndexError):
        pass
    return None


def _fds(anc: list[tuple[int, int, bytes]]) -> list[int]:
    fds: list[int] = []
    for level, kind, payload in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.extend(array.array("i", payload[: len(payload) - len(payload) % 4]))
    return fds


def _decode(data: bytes) -> list[Any]:
    try:
        msg = msgpack.unpackb(data, raw=False, strict_map_key=True, max_str_len=MAX_MESSAGE, max_bin_len=0,
                              max_array_len=8, max_map_len=0, max_ext_len=0)
    except Exception as exc:  # any decoding failure is the zygote's protocol error
        raise ZygoteError(f"an undecodable message ({type(exc).__name__})") from None
    if not isinstance(msg, list):
        raise ZygoteError("a message that is no list")
    return msg


async def _drain(stream: AsyncIterator[bytes] | None) -> None:
    if stream is not None:
        async for _ in stream:
            pass


class Zygotes:
    """A Runtime's zygotes by key; ``launch`` forks an actor from the one of its key, or returns None."""

    def __init__(self, log: Any, spawner: Executor, supervision: anyio.abc.TaskGroup,
                 enabled: bool | None = None) -> None:
        self.log = log
        self.spawner = spawner  # forks the zygotes, as every actor process (see sandbox.launch)
        self.supervision = supervision  # where their readers run (shielded)
        # Runtime(zygotes=False), else ACTORBOX_ZYGOTES=0, turns them off: every actor then starts its own
        # interpreter.
        self.enabled = enabled if enabled is not None else \
            os.environ.get("ACTORBOX_ZYGOTES", "1").strip().lower() not in ("0", "false", "no", "off")
        self.off_by = "Runtime(zygotes=False)" if enabled is not None else "ACTORBOX_ZYGOTES=0"
        self.by_key: dict[tuple[Any, ...], Zygote] = {}
        # Zygotes that fork no more (their key has a fresh one) but still hold actors they forked.
        self.retired: set[Zygote] = set()
        self._unfit: dict[tuple[Any, ...], int] = {}  # zygotes of a key retired for children that could not nest
        self._starting: dict[tuple[Any, ...], anyio.Event] = {}
        self.numbers = itertools.count(1)  # each zygote's, never reused in this Runtime
        self._closed = False
        self._said_off = False

    def key_of(self, spec: sandbox.LaunchSpec, preload: tuple[str, ...]) -> tuple[Any, ...]:
        """What an actor's zygote must share with it: interpreter, environment, binds, variables, sandbox."""
        env = tuple(sorted(sandbox.child_environment(spec).items()))
        return (spec.python, spec.venv_path, spec.import_paths, spec.code_paths, spec.module_paths, env,
                spec.sandboxed, spec.policy if spec.sandboxed else None, preload)

    def live(self) -> list[Zygote]:
        """Every zygote process of this Runtime: one per key, and retired ones that still hold actors."""
        return [*self.by_key.values(), *self.retired]

    async def zygote_for(self, spec: sandbox.LaunchSpec, preload: tuple[str, ...], *,
                         say: bool = False) -> Zygote | None:
        """The ready zygote of this key, started (or replaced) as needed; None where none can serve.

        Why there is none is said once (zygote.unavailable); with ``say`` (rt.prepare) every time.
        """
        z, why = await self._find(spec, preload)
        if z is None and say and why:
            self.log.info("zygote.unavailable", zygote=spec.label, reason=why,
                          consequence="its actors start their own interpreter")
        return z

    async def _find(self, spec: sandbox.LaunchSpec, preload: tuple[str, ...]) -> tuple[Zygote | None, str]:
        """(the zygote, "") or (None, why: "" when an event said so already)."""
        if not self.enabled:
            why = f"turned off ({self.off_by})"
            if not self._said_off:
                self._said_off = True
                self.log.info("zygote.unavailable", reason=why, consequence="every actor starts its own interpreter")
                return None, ""
            return None, why
        if self._closed:
            return None, "the Runtime is exiting"
        key = self.key_of(spec, preload)
        while True:
            if self._unfit.get(key, 0) >= MAX_UNFIT:
                return None, f"{MAX_UNFIT} of its zygotes forked children that could not build their own sandbox"
            z = self.by_key.get(key)
            if z is not None and z.state == "starting":
                with anyio.move_on_after(READY_TIMEOUT_S):
                    await z.ready.wait()
                if z.state == "starting":
                    self._give_up(z, f"not ready within {READY_TIMEOUT_S} s")
                    return None, ""
            if z is not None and z.state == "ready":
                if why := z.unfit_reason(spec):
                    self._retire(z, why)
                    continue
                return z, ""
            if z is not None and z.state == "unavailable":
                return None, z.reason
            starting = self._starting.get(key)
            if starting is not None:  # another start is launching it
                await starting.wait()
                continue
            return await self._start(key, spec, preload), ""

    def _retire(self, z: Zygote, reason: str) -> None:
        """``z`` forks no more: a fresh zygote of its key forks the next actor; it exits after its last actor."""
        if self.by_key.get(z.key) is z:
            del self.by_key[z.key]
        z.state = "retired"
        self.retired.add(z)
        if z.unfit:
            self._unfit[z.key] = self._unfit.get(z.key, 0) + 1
        (self.log.warning if z.unfit else self.log.info)(
            "zygote.retired", zygote=z.spec.label, pid=z.pid, reason=reason, actors=len(z._children),
            consequence="a fresh zygote forks the next actor of its kind; the actors it forked run on, and it "
                        "exits after the last of them")
        z.end_if_idle()

    async def _start(self, key: tuple[Any, ...], spec: sandbox.LaunchSpec, preload: tuple[str, ...]) -> Zygote | None:
        done = self._starting[key] = anyio.Event()
        replaced = self.by_key.pop(key, None)
        z = Zygote(self, key, spec, _zygote_preload(preload))
        z.restarts = replaced.restarts + 1 if replaced is not None else 0
        try:
            await z.start()
        except (OSError, sandbox.SandboxUnavailable) as exc:
            self.log.warning("zygote.unavailable", zygote=spec.label, reason=f"could not launch: {exc}")
            return None
        finally:
            del self._starting[key]
            done.set()
        self.by_key[key] = z
        self.log.info("zygote.launched", zygote=spec.label, pid=z.pid, preload=list(z.preload),
                               replaces=replaced.pid if replaced is not None else None)
        with anyio.move_on_after(READY_TIMEOUT_S):
            await z.ready.wait()
        if z.state == "starting":
            self._give_up(z, f"not ready within {READY_TIMEOUT_S} s")
            return None
        if z.state == "unavailable":
            self.log.warning("zygote.unavailable", zygote=spec.label, reason=z.reason,
                                      consequence="actors of this environment start without a zygote")
            z.kill()
            return None
        if z.state != "ready":
            self.log.warning("zygote.unavailable", zygote=spec.label, reason="it exited before it was ready",
                             consequence="this actor starts without a zygote")
            return None
        self.log.info("zygote.ready", zygote=spec.label, pid=z.pid,
                               duration_ms=round((time.monotonic() - z.started) * 1000, 1))
        return z

    def _give_up(self, z: Zygote, reason: str) -> None:
        self.log.warning("zygote.unavailable", zygote=z.spec.label, pid=z.pid, reason=reason)
        z.state = "dead"
        z.kill()

    async def launch(self, spec: sandbox.LaunchSpec, preload: tuple[str, ...],
                     sock: socket.socket) -> ForkedProcess | None:
        """Fork the actor of ``spec`` on ``sock`` from its zygote; None: start it plainly instead."""
        z = await self.zygote_for(spec, preload)
        if z is None:
            return None
        lease = None
        if spec.sandboxed and os.geteuid() == 0:
            try:
                lease = sandbox.lease_uid()
            except OSError:
                return None  # the plain launch reports it
        uid = lease.uid if lease is not None else (spec.uid if spec.uid is not None else -1)
        nest = [uid, spec.policy.tmpfs_size, spec.policy.network, spec.policy.max_processes,
                spec.policy.max_open_files, int(spec.args[1]) if len(spec.args) > 1 else 0]
        try:
            return await z.fork(sock, nest, lease)
        except ZygoteError as exc:
            if lease is not None:
                lease.release()
            self.log.warning("zygote.fork_failed", zygote=spec.label, pid=z.pid, reason=str(exc),
                                      consequence="this actor starts without the zygote")
            if z.unfit and z.state == "ready":  # its children cannot build their sandbox: none would start
                self._retire(z, z.unfit)
            return None
        except BaseException:
            if lease is not None:
                lease.release()
            raise

    def close(self) -> None:
        """Kill every zygote (their readers reap them); no zygote starts after this."""
        self._closed = True
        for z in self.live():
            z.kill()


def _zygote_nproc(max_processes: int) -> int:
    """The zygote's process limit: within the host's own hard limit (prlimit could not raise it past
    that without CAP_SYS_RESOURCE), with room for the host's own processes (counted in a user namespace)."""
    hard = resource.getrlimit(resource.RLIMIT_NPROC)[1]
    want = max_processes * _ZYGOTE_LIMIT_FACTOR
    if hard != resource.RLIM_INFINITY:
        want = min(want, hard // 2)
    return max(max_processes, want)


def _zygote_preload(preload: tuple[str, ...]) -> tuple[str, ...]:
    """What a zygote imports besides actorbox: torch when the host uses it, then the key's preload."""
    mods = ("torch",) if "torch" in sys.modules else ()
    return tuple(dict.fromkeys((*mods, *preload)))
