"""``python -m actorbox doctor``: the checks a person would otherwise run by hand.

Each check returns a ``Check`` (pass, warn or fail, a one-line detail and, when
something is wrong, the remedy). A failed *required* check (bubblewrap, the
restriction model, the sandboxed round trip) means actors cannot run here as
configured; ``run_checks`` never raises for a failed check.
"""

from __future__ import annotations

import enum
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import anyio

import sandbox

from ._errors import SandboxUnavailableError
from ._options import actor
from ._runtime import Runtime

ROUND_TRIP_TIMEOUT_S = 60.0
SHM_WARN_BYTES = 1 << 30
_ROUND_TRIP_CALLS = 50


class Status(enum.Enum):
    PASS = "pass"
    WARN = "warn"
    FAIL = "fail"


@dataclass(frozen=True, slots=True)
class Check:
    """The outcome of one check: ``[STATUS] name: detail`` plus the remedy when not PASS."""

    name: str
    status: Status
    detail: str
    remedy: str = ""
    required: bool = False  # a FAIL here makes the doctor exit non-zero
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def blocking(self) -> bool:
        return self.required and self.status is Status.FAIL

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["status"] = self.status.value
        return d

    def format(self) -> str:
        head, *rest = self.detail.splitlines() or [""]
        lines = [f"[{self.status.name}] {self.name}: {head}", *(f"    {line}" for line in rest)]
        if self.remedy and self.status is not Status.PASS:
            lines.append(f"    remedy: {self.remedy}")
        return "\n".join(lines)


# The round-trip actor ships by import path (this module), so it lives at module
# level and this module imports nothing heavy at import time (no torch).
@actor
class DoctorProbe:
    """A tiny actor that reports what the sandbox made of it."""

    def whoami(self) -> dict[str, Any]:
        cap_eff = None
        try:
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith("CapEff:"):
                        cap_eff = int(line.split()[1], 16)
        except OSError:
            pass
        return {"pid": os.getpid(), "uid": os.getuid(), "euid": os.geteuid(), "cap_eff": cap_eff,
                "actorbox_child": os.environ.get("ACTORBOX_CHILD")}

    def ping(self) -> None:
        return None


_read = sandbox.read_kernel_setting


def _remedy(restriction: sandbox.Restriction) -> str:
    return sandbox.RestrictionModel(restriction).remedy


# -- the checks ----------------------------------------------------------------------


def check_bwrap() -> Check:
    """bubblewrap is on PATH and answers ``--version``."""
    path = shutil.which("bwrap")
    if path is None:
        return Check("bwrap", Status.FAIL, "'bwrap' not found on PATH", _remedy(sandbox.Restriction.BWRAP_MISSING),
                     required=True)
    try:
        proc = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError) as exc:
        return Check("bwrap", Status.FAIL, f"{path} does not run: {exc}",
                     _remedy(sandbox.Restriction.BWRAP_MISSING), required=True, data={"path": path})
    version = proc.stdout.strip().removeprefix("bubblewrap ").strip()
    if proc.returncode != 0 or not version:
        return Check("bwrap", Status.FAIL, f"'{path} --version' exited with code {proc.returncode}: "
                     f"{proc.stderr.strip()}", _remedy(sandbox.Restriction.BWRAP_MISSING), required=True,
                     data={"path": path})
    return Check("bwrap", Status.PASS, f"bubblewrap {version} at {path}", required=True,
                 data={"path": path, "version": version})


def check_user_namespaces() -> Check:
    """Unprivileged user namespaces, which bwrap needs unless the host runs as root."""
    clone = _read("/proc/sys/kernel/unprivileged_userns_clone")
    max_ns = _read("/proc/sys/user/max_user_namespaces")
    data = {"unprivileged_userns_clone": clone, "max_user_namespaces": max_ns}
    settings = (f"kernel.unprivileged_userns_clone={clone if clone is not None else 'n/a'}, "
                f"user.max_user_namespaces={max_ns if max_ns is not None else 'n/a'}")
    disabled = clone == "0" or max_ns == "0"
    if os.geteuid() == 0:
        return Check("user namespaces", Status.PASS,
                     f"not needed: running as root, actorbox drops each actor to its own uid with setpriv "
                     f"({settings})", data=data)
    if disabled:
        return Check("user namespaces", Status.FAIL, f"unprivileged user namespaces are disabled ({settings})",
                     _remedy(sandbox.Restriction.USERNS_DISABLED), data=data)
    return Check("user namespaces", Status.PASS, f"enabled ({settings})", data=data)


def check_tools() -> Check:
    """prlimit (resource limits, always) and setpriv (dropping root, when root) are on PATH."""
    root = os.geteuid() == 0
    needed = ("prlimit", "setpriv") if root else ("prlimit",)
    found = {name: shutil.which(name) for name in needed}
    missing = [n for n, p in found.items() if p is None]
    if missing:
        return Check("setpriv/prlimit", Status.FAIL, f"missing on PATH: {', '.join(missing)}",
                     "install util-linux ('sudo apt-get install -y util-linux' on Debian/Ubuntu, "
                     "'sudo dnf install util-linux' on Fedora)", data=found)
    why = "root: setpriv drops each actor's uid and capabilities" if root else "setpriv not needed (not root)"
    return Check("setpriv/prlimit", Status.PASS,
                 ", ".join(f"{n} at {p}" for n, p in found.items()) + f" ({why})", data=found)


def check_apparmor() -> Check:
    """Ubuntu 23.10+ may restrict unprivileged user namespaces through AppArmor."""
    value = _read("/proc/sys/kernel/apparmor_restrict_unprivileged_userns")
    data = {"apparmor_restrict_unprivileged_userns": value}
    if value is None:
        return Check("apparmor", Status.PASS, "no AppArmor user-namespace restriction on this kernel", data=data)
    if value == "0":
        return Check("apparmor", Status.PASS, "kernel.apparmor_restrict_unprivileged_userns=0", data=data)
    if os.geteuid() == 0:
        return Check("apparmor", Status.PASS,
                     f"kernel.apparmor_restrict_unprivileged_userns={value}, which does not apply to root",
                     data=data)
    # bwrap may still work through an AppArmor profile: the restriction model decides.
    return Check("apparmor", Status.WARN,
                 f"kernel.apparmor_restrict_unprivileged_userns={value}: bwrap needs an AppArmor profile "
                 "(see the restriction model below)", _remedy(sandbox.Restriction.APPARMOR), data=data)


def check_restriction_model() -> tuple[Check, sandbox.RestrictionModel]:
    """What sandbox.detect_restriction_model() found by running bubblewrap for real."""
    model = sandbox.detect_restriction_model()
    data = {"restriction": model.restriction.value, "privileged": model.privileged, "bwrap": model.bwrap,
            "bwrap_version": model.bwrap_version, "setpriv": model.setpriv, "explain": model.explain()}
    if model.available:
        return Check("restriction model", Status.PASS, model.explain(), required=True, data=data), model
    head = model.explain().split("\nRemedy:")[0]
    return Check("restriction model", Status.FAIL, head, model.remedy, required=True, data=data), model


def check_shm(path: str = "/dev/shm") -> Check:
    """Free space of /dev/shm. actorbox's own tensors live in memfd segments, which /dev/shm's size does
    not limit; this matters to libraries that use /dev/shm themselves (torch.multiprocessing's
    file_system strategy, DataLoader workers, multiprocessing.shared_memory)."""
    try:
        st = os.statvfs(path)
    except OSError as exc:
        return Check(path, Status.WARN, f"cannot stat {path}: {exc}",
                     "mount a tmpfs there ('mount -t tmpfs -o size=8g tmpfs /dev/shm'; in Docker "
                     "'--shm-size=8g')")
    free = st.f_bavail * st.f_frsize
    total = st.f_blocks * st.f_frsize
    data = {"free_bytes": free, "total_bytes": total}
    detail = f"{free / (1 << 30):.1f} GiB free of {total / (1 << 30):.1f} GiB"
    if free < SHM_WARN_BYTES:
        return Check(path, Status.WARN, detail + " (under 1 GiB: libraries that share through /dev/shm may "
                     "run out; actorbox's own tensors use memfd segments and are not affected)",
                     "enlarge it: 'sudo mount -o remount,size=8g /dev/shm'; in Docker pass '--shm-size=8g' "
                     "(or '--ipc=host')", data=data)
    return Check(path, Status.PASS, detail, data=data)


def check_torch() -> tuple[Check, Any]:
    """torch's version (optional: actorbox works without it, tensors just aren't special)."""
    try:
        import torch
    except ImportError as exc:
        return Check("torch", Status.WARN, f"not installed ({exc})",
                     "install it if actors exchange tensors: pip install 'actorbox[torch]'"), None
    except Exception as exc:  # a broken install raises all sorts
        return Check("torch", Status.WARN, f"import failed: {type(exc).__name__}: {exc}",
                     "reinstall torch in this environment"), None
    return Check("torch", Status.PASS, f"{torch.__version__} at {os.path.dirname(torch.__file__)}",
                 data={"version": str(torch.__version__)}), torch


def check_cuda(torch: Any) -> list[Check]:
    """CUDA availability, and whether CUDA tensors travel by CUDA IPC or through CPU shared memory."""
    ipc_env = os.environ.get("ACTORBOX_ENABLE_CUDA_IPC")
    ipc_on = (ipc_env or "").strip().lower() in ("1", "true", "yes", "on")
    shown = repr(ipc_env) if ipc_env is not None else "unset"
    if torch is None:
        return [Check("cuda", Status.WARN, "not checked: torch is not installed",
                      "install torch to use GPUs from actors: pip install 'actorbox[torch]'")]
    try:
        available = bool(torch.cuda.is_available())
    except Exception as exc:
        return [Check("cuda", Status.WARN, f"torch.cuda.is_available() raised {type(exc).__name__}: {exc}",
                      "check the NVIDIA driver with 'nvidia-smi'")]
    if not available:
        return [
            Check("cuda", Status.PASS, f"no CUDA device (torch {torch.__version__}, CUDA build "
                  f"{torch.version.cuda or 'none'}): tensors will use CPU shared memory",
                  data={"available": False, "cuda_build": torch.version.cuda}),
            Check("cuda ipc", Status.PASS, f"not applicable without CUDA (ACTORBOX_ENABLE_CUDA_IPC={shown})",
                  data={"enabled": ipc_on, "env": ipc_env}),
        ]
    n = torch.cuda.device_count()
    names = ", ".join(torch.cuda.get_device_name(i) for i in range(n))
    checks = [Check("cuda", Status.PASS, f"{n} device(s): {names} (CUDA {torch.version.cuda}); sandboxed actors "
                    "see them only with SandboxPolicy(allow_gpu=True)",
                    data={"available": True, "device_count": n, "cuda_build": torch.version.cuda})]
    if ipc_on:
        checks.append(Check("cuda ipc", Status.PASS, f"on (ACTORBOX_ENABLE_CUDA_IPC={shown}): CUDA tensors are "
                            "shared between processes without copying", data={"enabled": True, "env": ipc_env}))
    else:
        checks.append(Check("cuda ipc", Status.WARN, f"off (ACTORBOX_ENABLE_CUDA_IPC={shown}): CUDA tensors are "
                            "copied through CPU shared memory and restored on their device",
                            "set ACTORBOX_ENABLE_CUDA_IPC=1 to share CUDA tensors by CUDA IPC",
                            data={"enabled": False, "env": ipc_env}))
    return checks


async def _round_trip() -> dict[str, Any]:
    with anyio.fail_after(ROUND_TRIP_TIMEOUT_S):
        async with Runtime(sandbox="required", grace_period=2.0) as rt:
            t0 = time.perf_counter()
            h = await rt.start(DoctorProbe)
            start_s = time.perf_counter() - t0
            who = await h.whoami()
            samples = []
            for _ in range(_ROUND_TRIP_CALLS):
                t = time.perf_counter()
                await h.ping()
                samples.append(time.perf_counter() - t)
            await rt.stop(h)
    return {**who, "start_ms": round(start_s * 1000, 2),
            "call_p50_us": round(statistics.median(samples) * 1e6, 1), "calls": len(samples)}


def check_round_trip(model: sandbox.RestrictionModel) -> Check:
    """Start DoctorProbe in a real sandbox and call it; it must run unprivileged."""
    try:
        r = anyio.run(_round_trip)
    except TimeoutError:
        return Check("round trip", Status.FAIL, f"no answer within {ROUND_TRIP_TIMEOUT_S:g} s",
                     "run with ACTORBOX_DEBUG_RPC=1 to see the frames, and print the sandbox command with "
                     "sandbox.build_command()", required=True)
    except SandboxUnavailableError as exc:
        # Its message repeats the restriction model's remedy: show the remedy once.
        head = str(exc).partition("\n")[0]
        return Check("round trip", Status.FAIL, f"{type(exc).__name__}: {head}", model.remedy, required=True)
    except Exception as exc:
        return Check("round trip", Status.FAIL, f"{type(exc).__name__}: {exc}",
                     "see the error above; print the actor's sandbox command with sandbox.build_command() "
                     "and run it by hand to see why", required=True)
    detail = (f"sandboxed actor started in {r['start_ms']:.0f} ms (pid {r['pid']} inside, uid {r['uid']}), "
              f"call round trip p50 {r['call_p50_us']:.0f} µs over {r['calls']} calls")
    problems = []
    if r["uid"] == 0 or r["euid"] == 0:
        problems.append("the actor ran as uid 0")
    if r["cap_eff"]:
        problems.append(f"the actor holds capabilities (CapEff={r['cap_eff']:#x})")
    if r["actorbox_child"] != "1":
        problems.append("ACTORBOX_CHILD is not set in the actor")
    if problems:
        return Check("round trip", Status.FAIL, f"{detail}; but {'; '.join(problems)}",
                     "the sandbox is not isolating actors: report this with the output of "
                     "'python -m actorbox doctor --json'", required=True, data=r)
    return Check("round trip", Status.PASS, detail, required=True, data=r)


def run_checks() -> Iterator[Check]:
    """Every check in order, yielded as each finishes (the round trip takes a moment)."""
    yield check_bwrap()
    yield check_user_namespaces()
    yield check_tools()
    yield check_apparmor()
    model_check, model = check_restriction_model()
    yield model_check
    yield check_shm()
    torch_check, torch = check_torch()
    yield torch_check
    yield from check_cuda(torch)
    yield check_round_trip(model)


def exit_code(checks: list[Check]) -> int:
    """1 when a required check failed, else 0."""
    return 1 if any(c.blocking for c in checks) else 0


def summary(checks: list[Check]) -> str:
    counts = {s: sum(c.status is s for c in checks) for s in Status}
    verdict = ("actorbox can run sandboxed actors here" if not exit_code(checks)
               else "a required check failed: sandboxed actors cannot run here until it is fixed")
    return (f"{counts[Status.PASS]} passed, {counts[Status.WARN]} warnings, {counts[Status.FAIL]} failed: "
            f"{verdict}")


def json_report(checks: list[Check]) -> dict[str, Any]:
    return {"ok": exit_code(checks) == 0, "python": sys.executable, "checks": [c.to_json() for c in checks]}
