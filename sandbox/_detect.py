"""Finding out whether (and how) bubblewrap can sandbox actors on this machine.

The answer comes from running bubblewrap for real, the way actors will be run:
kernel settings are only consulted afterwards, to explain a failure.
"""

from __future__ import annotations

import enum
import functools
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass


class Restriction(enum.Enum):
    NONE = "none"  # sandboxing works
    UNSUPPORTED_PLATFORM = "unsupported-platform"
    BWRAP_MISSING = "bwrap-missing"
    SETPRIV_MISSING = "setpriv-missing"
    USERNS_DISABLED = "userns-disabled"
    APPARMOR = "apparmor-userns-restricted"
    SELINUX = "selinux"
    PROBE_FAILED = "probe-failed"


_REMEDIES = {
    Restriction.NONE: "",
    Restriction.UNSUPPORTED_PLATFORM: (
        "actorbox sandboxes actors with bubblewrap, which needs Linux. On this platform run actors "
        "explicitly unsandboxed with Runtime(sandbox='disabled') and only load plugins you trust."),
    Restriction.BWRAP_MISSING: (
        "bubblewrap (bwrap) is not installed. Install it: 'sudo apt-get install -y bubblewrap' on "
        "Debian/Ubuntu, 'sudo dnf install bubblewrap' on Fedora; then check with 'python -m actorbox doctor'."),
    Restriction.SETPRIV_MISSING: (
        "the host runs as root, and actorbox drops each actor to its own unprivileged uid with setpriv "
        "(util-linux), which is missing. Install it: 'apt-get install -y util-linux'."),
    Restriction.USERNS_DISABLED: (
        "unprivileged user namespaces are disabled, so bubblewrap cannot build a sandbox as this user. "
        "Enable them: 'sudo sysctl -w kernel.unprivileged_userns_clone=1' (Debian) or "
        "'sudo sysctl -w user.max_user_namespaces=15000', and persist it in /etc/sysctl.d/."),
    Restriction.APPARMOR: (
        "AppArmor restricts unprivileged user namespaces (Ubuntu 23.10+). Allow bwrap with an AppArmor "
        "profile ('sudo apt-get install apparmor-profiles' provides one for bwrap on Ubuntu 24.04+: "
        "'sudo ln -s /usr/share/apparmor/extra-profiles/bwrap-userns-restrict /etc/apparmor.d/ && "
        "sudo systemctl reload apparmor'), or as a last resort "
        "'sudo sysctl -w kernel.apparmor_restrict_unprivileged_userns=0'."),
    Restriction.SELINUX: (
        "SELinux denied creating the sandbox's namespaces. Check 'sudo ausearch -m avc -ts recent' for "
        "bwrap denials and allow them with a local policy module (audit2allow), or run this host in "
        "a permissive domain."),
    Restriction.PROBE_FAILED: (
        "bubblewrap is installed but could not start a sandbox; its error is shown above. Run "
        "'python -m actorbox doctor' for details; to try the sandbox by hand, build its command with "
        "sandbox.build_command() and run it (docs/debugging.md shows how)."),
}


@dataclass(frozen=True, slots=True)
class RestrictionModel:
    """What this machine allows: whether sandboxing works, how, and if not why and what to do."""

    restriction: Restriction
    bwrap: str | None = None
    bwrap_version: str | None = None
    privileged: bool = False  # host runs as root: bwrap builds the sandbox, setpriv drops to a uid
    setpriv: str | None = None
    detail: str = ""

    @property
    def available(self) -> bool:
        return self.restriction is Restriction.NONE

    @property
    def remedy(self) -> str:
        return _REMEDIES[self.restriction]

    def explain(self) -> str:
        if self.available:
            mode = "as root, dropping each actor to its own uid" if self.privileged else "with user namespaces"
            return f"bubblewrap {self.bwrap_version} at {self.bwrap} sandboxes actors ({mode})"
        head = f"actor sandbox unavailable ({self.restriction.value})"
        if self.detail:
            head += f": {self.detail}"
        return f"{head}\nRemedy: {self.remedy}"


def read_kernel_setting(path: str) -> str | None:
    """The stripped contents of a /proc or /sys setting, or None when it can't be read."""
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _probe_argv(bwrap: str, privileged: bool, setpriv: str | None) -> list[str]:
    argv = [bwrap, "--ro-bind", "/usr", "/usr", "--symlink", "usr/bin", "/bin", "--symlink", "usr/lib", "/lib",
            "--symlink", "usr/lib64", "/lib64", "--proc", "/proc", "--dev", "/dev",
            "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--die-with-parent", "--new-session"]
    if privileged:
        assert setpriv is not None
        argv += [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all",
                 "--bounding-set=-all", "--no-new-privs", "--", "/usr/bin/true"]
    else:
        argv += ["--unshare-user", "--cap-drop", "ALL", "/usr/bin/true"]
    return argv


@functools.cache
def detect_restriction_model() -> RestrictionModel:
    """Probe bubblewrap once per process (cached) and say what is possible and why not."""
    if not sys.platform.startswith("linux"):
        return RestrictionModel(Restriction.UNSUPPORTED_PLATFORM, detail=f"platform is {sys.platform}")
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return RestrictionModel(Restriction.BWRAP_MISSING, detail="no 'bwrap' on PATH")
    try:
        version = subprocess.run([bwrap, "--version"], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        return RestrictionModel(Restriction.PROBE_FAILED, bwrap, detail=f"'bwrap --version' failed: {exc}")
    version = version.removeprefix("bubblewrap ").strip() or "unknown"
    privileged = os.geteuid() == 0
    setpriv = shutil.which("setpriv") if privileged else None
    if privileged and setpriv is None:
        return RestrictionModel(Restriction.SETPRIV_MISSING, bwrap, version, privileged,
                                detail="no 'setpriv' on PATH")
    try:
        proc = subprocess.run(_probe_argv(bwrap, privileged, setpriv), capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        return RestrictionModel(Restriction.PROBE_FAILED, bwrap, version, privileged, setpriv, detail=str(exc))
    if proc.returncode == 0:
        return RestrictionModel(Restriction.NONE, bwrap, version, privileged, setpriv)
    err = proc.stderr.strip()
    return RestrictionModel(_explain_failure(privileged), bwrap, version, privileged, setpriv,
                            detail=err or f"bwrap exited with code {proc.returncode}")


def _explain_failure(privileged: bool) -> Restriction:
    if not privileged:
        if (read_kernel_setting("/proc/sys/kernel/unprivileged_userns_clone") == "0"
                or read_kernel_setting("/proc/sys/user/max_user_namespaces") == "0"):
            return Restriction.USERNS_DISABLED
        if read_kernel_setting("/proc/sys/kernel/apparmor_restrict_unprivileged_userns") == "1":
            return Restriction.APPARMOR
    if read_kernel_setting("/sys/fs/selinux/enforce") == "1":
        return Restriction.SELINUX
    return Restriction.PROBE_FAILED
