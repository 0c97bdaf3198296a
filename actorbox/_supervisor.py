"""One actor's process lifecycle in the host: spawn, construct, serve, die, restart, stop."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio

import sandbox
from scheduler import Connection, ConnectionClosed, ConnectionEndpoint, envelope

from ._actor_launch import environment, launch
from ._errors import ActorStartError, ActorStoppedError, ProtocolError, describe_exit
from ._zygotes import ForkedProcess

if TYPE_CHECKING:
    from ._options import ActorOptions
    from ._services import ActorServices

# An actor's process: launched alone, or forked by its environment's zygote.
_Proc = sandbox.ActorProcess | ForkedProcess
# Events go through the Runtime's loggers (services.log, services.actor_log), which
# record them too while ACTORBOX_TRACE_FILE is set.
_LEVELS = {"debug", "info", "warning", "error", "critical"}
_RESERVED = {"event", "actor", "pid", "level"}
# Seconds to wait for a SIGKILLed process to be reaped. It takes milliseconds unless the
# kernel holds the process (uninterruptible I/O, many large processes dying at once); then
# it is reaped in the background (sandbox.reap_later, when its process is closed).
_REAP_S = 0.5
# Seconds stop() waits, after the kill, for the supervision to finish: the reap, then
# up to 0.3 s for the output pipes. Keeps a stop within its grace period plus 1 s.
_AFTER_KILL_S = 0.9


@dataclass(slots=True)
class _Start:
    """What a spawn attempt learned before the actor was ready."""

    error: BaseException | None = None
    done: anyio.Event | None = None


class ActorSupervisor:
    """Owns one actor: its current process, endpoint, restarts and state."""

    def __init__(self, services: ActorServices, actor_id: int, label: str, name: str | None, cls_name: str,
                 init_payload: bytes, module_paths: tuple[str, ...], options: ActorOptions,
                 requirements: tuple[str, ...] | None = None) -> None:
        self.services = services
        self.actor_id = actor_id
        self.label = label
        self.name = name
        self.cls_name = cls_name
        # The actor's own environment (None: the host's): validated requirement strings.
        self.requirements = requirements
        self.init_payload = init_payload
        self.module_paths = module_paths
        self.options = options
        self.state = "starting"
        self.pid: int | None = None  # host pid of the actor's Python process
        self.sandboxed = True
        self.policy = sandbox.SandboxPolicy()
        self.restarts = 0
        self.endpoint: ConnectionEndpoint | None = None
        self.proc: _Proc | None = None
        self._tails: tuple[sandbox.OutputTail, ...] = ()
        self.stopping = False
        self.finished = anyio.Event()  # set when the actor is stopped or dead for good
        self._exited: anyio.Event | None = None  # set when the current process is gone
        self._start: _Start | None = None
        self._spawning = False  # a spawn() is in progress (launching or constructing)
        self._spawn_scope: anyio.CancelScope | None = None

    # -- spawning ------------------------------------------------------------------

    async def spawn(self) -> None:
        """Start a process and construct the instance; raises ActorStartError.

        ``stop()`` may run while this awaits: it sets ``stopping``, and the
        process (once there is one) is told to stop or killed; the start then
        fails with ActorStoppedError and the actor ends as stopped.
        """
        t0 = time.monotonic()
        self._spawning = True
        try:
            # stop() cancels this scope while no process is there to be told to stop (the
            # environment builds, the process launches): the start then ends as stopped.
            with anyio.CancelScope() as self._spawn_scope:
                await self._spawn(t0)
            if self._spawn_scope.cancelled_caught:
                if self._exited is None or self._exited.is_set():  # no process of ours will report it
                    self._mark_stopped()
                raise self._stopped_error("while it was starting")
        finally:
            self._spawning = False

    async def _spawn(self, t0: float) -> None:
        if self.stopping:
            raise self._stopped_error("before it started")
        svc = self.services
        launch_env = await environment(svc, self.requirements, self.label, self.cls_name)
        launched = await launch(svc, self.options, self.label, self.cls_name, self.module_paths, launch_env)
        self.sandboxed, self.policy, proc, parent = launched.sandboxed, launched.policy, launched.proc, launched.sock
        self.proc = proc
        self.pid = proc.pid
        start = self._start = _Start(done=anyio.Event())
        endpoint = ConnectionEndpoint(
            self.services.scheduler,
            lambda on_frame: Connection(parent, on_frame, max_frame=self.services.max_frame_size),
            self._on_control, self.label, debug_rpc=self.services.debug_rpc)
        endpoint.actor_id = self.actor_id
        self.endpoint = endpoint
        self._exited = anyio.Event()
        self.services.supervision.start_soon(self._supervise, proc, endpoint)
        if self.stopping:
            _kill_unless_reaped(proc)  # stop() came while we launched; _supervise reports it
        else:
            names = self.services.scheduler.name_table()
            endpoint.send(envelope.Init(self.actor_id, self.name, self.init_payload, names))
        assert start.done is not None
        try:
            await start.done.wait()
        except BaseException:
            # Cancelled while constructing: this process will never serve.
            _kill_unless_reaped(proc)
            await self._reaped()
            raise
        if start.error is not None:
            _kill_unless_reaped(proc)
            await self._reaped()  # the start fails only once its process is gone
            raise start.error
        self._start = None
        self.state = "alive"
        if self.sandboxed:
            # The launcher (prlimit -> bwrap) is what we started; report the Python inside.
            self.pid = _actor_pid(proc)
            for tail in self._tails:
                tail.prefix = f"({self.label} pid={self.pid})"  # the pid events and errors show
        self.services.scheduler.attach(self.actor_id, endpoint)
        self.services.log.info("actor.started", actor=self.label, cls=self.cls_name, pid=self.pid,
                         restarts=self.restarts, duration_ms=round((time.monotonic() - t0) * 1000, 3))

    def _on_control(self, msg: envelope.Message) -> None:
        match msg:
            case envelope.Log():
                _forward_log(self.services.actor_log, self.label, self.pid, msg)
            case envelope.Ready() if (st := self._start) is not None and st.done is not None:
                if msg.error is not None:
                    st.error = _constructor_error(self.services, self.label, self.cls_name, self.pid, msg.error)
                st.done.set()
            case _:
                raise ProtocolError(f"actor {self.label!r} sent an unexpected {type(msg).__name__} message",
                                    actor=self.label)

    # -- supervision -----------------------------------------------------------------

    async def _supervise(self, proc: _Proc, endpoint: ConnectionEndpoint) -> None:
        out = sandbox.OutputTail(f"({self.label} pid={proc.pid})", sys.stdout)
        err = sandbox.OutputTail(f"({self.label} pid={proc.pid})", sys.stderr)
        self._tails = (out, err)  # their prefix names the Python pid once it is known
        reason: BaseException | None = None
        # Runs in the Runtime's actor task group, which the Runtime's own scope being
        # cancelled never reaches: the Runtime ends supervision by stopping the actor. If
        # this task is cancelled all the same, the process is still killed and reaped and
        # `_exited` set (else stop() and spawn() would wait for it for ever).
        try:
            async with anyio.create_task_group() as pumps:
                pumps.start_soon(out.pump, proc.stdout)
                pumps.start_soon(err.pump, proc.stderr)
                try:
                    reason = await self._watch(proc, endpoint)
                finally:
                    with anyio.CancelScope(shield=True):
                        await self._end_process(proc, endpoint, reason, (out, err))
                    pumps.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await proc.aclose()  # closes the stdout/stderr pipes (trio keeps them open otherwise)
            assert self._exited is not None
            self._exited.set()
        await self._after_exit(proc, endpoint, err, reason)

    async def _watch(self, proc: _Proc, endpoint: ConnectionEndpoint) -> BaseException | None:
        """Serve the connection until it ends or the process exits; returns why it was cut, if it was."""
        reason: BaseException | None = None
        async with anyio.create_task_group() as watch:

            async def conn() -> None:
                nonlocal reason
                try:
                    await endpoint.conn.run()
                except Exception as exc:  # a bad frame: this actor is done
                    reason = exc
                watch.cancel_scope.cancel()

            async def exit_() -> None:
                await proc.wait()
                watch.cancel_scope.cancel()

            watch.start_soon(conn)
            watch.start_soon(exit_)
        if reason is None and endpoint.conn.hangup_reason is not None:
            reason = ProtocolError(endpoint.conn.hangup_reason, actor=self.label)
        return reason

    async def _end_process(self, proc: _Proc, endpoint: ConnectionEndpoint,
                           reason: BaseException | None, tails: tuple[sandbox.OutputTail, ...]) -> None:
        """Kill what is left of the process and reap it; bounded (run shielded)."""
        endpoint.conn.close()
        if proc.returncode is None and reason is None and not self.stopping:
            # EOF but still running: give it a moment to finish dying.
            with anyio.move_on_after(0.3):
                await proc.wait()
        _kill(proc)  # also sweeps any grandchildren
        with anyio.move_on_after(_REAP_S):  # a killed process is reaped at once, unless the kernel holds it
            await proc.wait()
        if proc.returncode is None:
            self.services.log.warning("actor.slow_exit", actor=self.label, pid=proc.pid,
                                      reason=f"its process was not gone {_REAP_S} s after SIGKILL (the kernel is "
                                             "still tearing it down); it is reaped, and its uid released, once gone")
        with anyio.move_on_after(0.3):  # a daemonised grandchild may hold the pipes open
            for tail in tails:
                await tail.closed.wait()

    async def _after_exit(self, proc: _Proc, endpoint: ConnectionEndpoint,
                          err: sandbox.OutputTail, reason: BaseException | None) -> None:
        exit_code, sig = sandbox.decode_exit(proc.returncode, self.sandboxed)
        if reason is not None and sig == 9:
            sig = None  # we killed it for its protocol error; say that instead
        message = _exit_message(reason, sig, err.text(), self.policy if self.sandboxed else None)
        detail: dict[str, Any] = {"pid": self.pid, "exit_code": exit_code, "signal": sig,
                                  "stderr": err.text(), "message": message}
        sched = self.services.scheduler
        st = self._start
        if st is not None and st.done is not None:
            # The process ended before it was ready: the start fails (spawn raises).
            if self.stopping:
                if st.error is None:
                    st.error = self._stopped_error("while it was starting")
                self._mark_stopped()
            elif st.error is None:
                st.error = ActorStartError(
                    f"actor {self.label!r} ({self.cls_name}) died while starting: "
                    f"{describe_exit(exit_code, sig)}" + (f"; {message}" if message else ""),
                    actor=self.label, cls=self.cls_name, pid=self.pid, stderr=err.text())
            self._start = None
            st.done.set()
            if self.restarts == 0:
                self.finished.set()  # a failed first start is final; rt.start() reports it
            return
        if self.stopping:
            self._mark_stopped()
            return
        restart = self.restarts < self.options.max_restarts and not self.services.closing()
        sched.detach(self.actor_id, envelope.Status.DIED, detail, keep_queue=restart)
        self.state = "restarting" if restart else "dead"
        self.services.log.warning("actor.died", actor=self.label, pid=self.pid, exit_code=exit_code, signal=sig,
                            reason=message or describe_exit(exit_code, sig), will_restart=restart)
        if not restart:
            self.finished.set()
            return
        self.restarts += 1
        try:
            await self.spawn()
        except Exception as exc:
            if self.stopping:  # stop() ended the restart
                if not self.finished.is_set():
                    self._mark_stopped()
                return
            self.state = "dead"
            sched.detach(self.actor_id, envelope.Status.DIED,
                         {**detail, "message": f"restart {self.restarts} failed: {exc}"}, keep_queue=False)
            self.services.log.error("actor.restart_failed", actor=self.label, error=str(exc))
            self.finished.set()
            return
        self.services.log.info("actor.restarted", actor=self.label, pid=self.pid, restarts=self.restarts)

    # -- stopping ------------------------------------------------------------------

    async def stop(self, grace: float) -> None:
        """Graceful stop, then kill after ``grace`` seconds (idempotent); returns within ``grace`` + 1 s."""
        if self.finished.is_set():
            return
        if self.stopping:
            await self.finished.wait()  # the first stop() sets it within its bound
            return
        self.stopping = True
        with anyio.CancelScope(shield=True):
            exited = self._exited
            if self.endpoint is not None and exited is not None and not exited.is_set():
                try:
                    self.endpoint.send(envelope.Stop())
                except ConnectionClosed:
                    pass
                with anyio.move_on_after(grace):
                    await exited.wait()
                if not exited.is_set() and self.proc is not None:
                    self.services.log.warning("actor.killed", actor=self.label, pid=self.pid,
                                        reason=f"did not stop within the grace period of {grace} s")
                    _kill_unless_reaped(self.proc)
            elif self._spawning:
                # No process to tell (its environment builds, or it launches): end the spawn.
                assert self._spawn_scope is not None
                self._spawn_scope.cancel()
            else:
                self._mark_stopped()  # no process, and none coming
            with anyio.move_on_after(_AFTER_KILL_S):
                await self.finished.wait()
            if not self.finished.is_set():
                # Whatever holds it up, the stop is over: its calls fail, its Runtime may exit.
                self.services.log.error("actor.stop_incomplete", actor=self.label, pid=self.pid,
                                  reason=f"its supervision did not end within {_AFTER_KILL_S} s of the kill")
                self._mark_stopped()
        self.services.log.info("actor.stopped", actor=self.label, pid=self.pid)

    async def _reaped(self) -> None:
        exited = self._exited
        if exited is not None:
            with anyio.move_on_after(self.services.grace_period, shield=True):
                await exited.wait()

    def _stopped_error(self, when: str) -> ActorStoppedError:
        return ActorStoppedError(
            f"actor {self.label!r} was stopped {when} (rt.stop(handle) or the Runtime exited)",
            actor=self.label, method=None, call_id=None)

    def _mark_stopped(self) -> None:
        self.state = "stopped"
        self.services.scheduler.detach(
            self.actor_id, envelope.Status.STOPPED,
            {"message": f"actor {self.label!r} is stopped (rt.stop(handle) or the Runtime exited); "
                        "start a new one with rt.start() to call it again"}, keep_queue=False)
        self.finished.set()

    def encode_names(self) -> None:
        # Also while starting: the actor may look names up from its constructor.
        if self.endpoint is not None and self._exited is not None and not self._exited.is_set():
            try:
                self.endpoint.send(envelope.Names(self.services.scheduler.name_table()))
            except ConnectionClosed:
                pass


def _kill_unless_reaped(proc: _Proc) -> None:
    # Once reaped, the pid may belong to an unrelated process: never signal it then.
    if proc.returncode is None:
        _kill(proc)


def _kill(proc: _Proc) -> None:
    """SIGKILL the actor and everything it started (a forked one through its pidfd)."""
    if isinstance(proc, ForkedProcess):
        proc.kill()
    else:
        sandbox.kill_group(proc.pid)


def _actor_pid(proc: _Proc) -> int:
    """Host pid of the actor's Python process: inside the sandbox we launched, or forked by a zygote."""
    if isinstance(proc, ForkedProcess):
        return proc.actor_pid()
    return sandbox.find_actor_pid(proc.pid) or proc.pid


_LIMIT_ERRORS = ("MemoryError", "Cannot allocate memory", "Too many open files",
                 "Resource temporarily unavailable", "can't start new thread")


def _looks_like_a_limit(stderr: str) -> bool:
    return any(e in stderr for e in _LIMIT_ERRORS)


def _exit_message(reason: BaseException | None, sig: int | None, stderr: str,
                  policy: sandbox.SandboxPolicy | None) -> str:
    """Why the process ended, as far as the host can tell (``policy``: the sandbox's, if it ran in one)."""
    if reason is not None:
        return f"actorbox disconnected it: {reason}"
    if policy is not None and (sig is not None or _looks_like_a_limit(stderr)):
        # A limit hit shows up as a signal or as one of these errors: name the limits in force.
        return (f"it ran in the sandbox with limits of {policy.describe_limits()}; "
                "exceeding one kills or fails the actor (raise it with SandboxPolicy)")
    return ""


def _constructor_error(services: ActorServices, label: str, cls_name: str, pid: int | None,
                       error: bytes) -> ActorStartError:
    """The start's error for a constructor that raised (its exception, decoded safely, as the cause)."""
    try:
        cause = services.codec.loads(error, False)
    except Exception as exc:
        cause = exc
    if not isinstance(cause, BaseException):
        cause = ProtocolError("constructor error was not an exception", actor=label)
    err = ActorStartError(
        f"constructor of actor {label!r} ({cls_name}) raised {type(cause).__name__}: {cause}; the actor "
        "was not started", actor=label, cls=cls_name, pid=pid)
    err.__cause__ = cause
    return err


def _forward_log(actor_log: Any, label: str, pid: int | None, msg: envelope.Log) -> None:
    level = msg.level if msg.level in _LEVELS else "info"
    # The actor chose every string here, and a console renderer prints them raw: escape
    # control characters (nested values are rendered with repr(), which escapes them).
    esc = sandbox.escape_controls
    fields = {esc(f"actor_{k}" if k in _RESERVED else k): esc(v) if type(v) is str else v
              for k, v in msg.fields.items()}
    getattr(actor_log, level)(esc(msg.event), actor=label, pid=pid, **fields)
