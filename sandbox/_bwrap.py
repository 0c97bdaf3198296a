"""Building the bubblewrap command line for one actor (a pure function).

Layout inside the sandbox: a fresh tmpfs root holding read-only binds of the
system (/usr and the merged-/usr links, a few files of /etc), the Python
installation, the environment and the actor's module, plus a private /tmp,
/dev (with its own /dev/shm) and /proc of a new pid namespace. Every namespace
is unshared; the network only when the policy allows it.

Privilege: as root, bwrap builds the mounts and ``setpriv`` then drops the
actor to its own uid with no capabilities before any Python runs. As a normal
user, bwrap runs in a user namespace with every capability dropped.
Resource limits are set by ``prlimit`` before bwrap starts, so nothing the
actor runs (not even a .pth file at interpreter start) can raise them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from ._detect import RestrictionModel
from ._policy import SandboxPolicy, validate_path

# Files of /etc that Python and common libraries read; the rest of /etc stays out.
_ETC_FILES = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime", "nsswitch.conf", "passwd", "group",
              "hosts", "mime.types", "ssl", "ca-certificates", "ca-certificates.conf", "alternatives",
              "timezone", "gai.conf")
_MERGED_USR = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
_GPU_DEVICES = ("/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools", "/dev/nvidia-modeset",
                "/dev/dri", "/dev/kfd")
_GPU_SYSTEM = ("/proc/driver/nvidia", "/sys/module/nvidia", "/sys/bus/pci", "/sys/devices")


def _installation_prefix(python_exe: str) -> str:
    """The directory tree of the real interpreter behind ``python_exe`` (venv links resolved)."""
    real = os.path.realpath(python_exe)
    return os.path.dirname(os.path.dirname(real))


def build_bwrap_command(
    python_exe: str,
    module_path: str | Sequence[str],
    venv_path: str | None,
    uds_address: str | int | None,
    allow_gpu: bool,
    restriction_model: RestrictionModel,
    policy: SandboxPolicy,
    *,
    argv: Sequence[str] = (),
    readonly_paths: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    uid: int = 65534,
    nproc_limit: int | None = None,
    gpu_devices: Sequence[str] = (),
) -> list[str]:
    """Return the full argv (prlimit, bwrap, setpriv when root, python) for one actor.

    ``module_path``: file(s) or directories of the actor's code, bound read-only.
    ``venv_path``: the actor's environment (read-only). ``uds_address``: an
    inherited socket fd (nothing to bind) or a Unix socket path (its directory is
    bound, alone). ``argv``: arguments after the interpreter. ``gpu_devices``:
    /dev/nvidiaN nodes present on the host (the caller lists them, keeping this pure).
    """
    rm = restriction_model
    if not rm.available or rm.bwrap is None:
        raise ValueError(f"cannot build a sandbox command: {rm.explain()}")
    if rm.privileged and rm.setpriv is None:
        raise ValueError("cannot build a sandbox command as root without setpriv (util-linux) to drop privileges")
    cmd: list[str] = ["prlimit", f"--nofile={policy.max_open_files}:{policy.max_open_files}"]
    nproc = nproc_limit if nproc_limit is not None else policy.max_processes
    cmd.append(f"--nproc={nproc}:{nproc}")
    if policy.memory_limit is not None:
        cmd.append(f"--data={policy.memory_limit}:{policy.memory_limit}")
    cmd += ["--", rm.bwrap]

    cmd += ["--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try"]
    cmd += ["--share-net"] if policy.network else ["--unshare-net"]
    if not rm.privileged:
        cmd += ["--unshare-user", "--cap-drop", "ALL"]
    cmd += ["--die-with-parent", "--new-session"]

    # System, read-only.
    cmd += ["--ro-bind", "/usr", "/usr"]
    for p in _MERGED_USR:
        if os.path.islink(p):
            cmd += ["--symlink", os.readlink(p), p]
        elif os.path.isdir(p):
            cmd += ["--ro-bind", p, p]
    cmd += ["--perms", "0755", "--dir", "/etc"]
    for name in _ETC_FILES:
        cmd += ["--ro-bind-try", f"/etc/{name}", f"/etc/{name}"]
    if policy.network:
        cmd += ["--ro-bind-try", "/etc/resolv.conf", "/etc/resolv.conf"]
    # Private, world-writable (sticky) scratch space, sized so filling it can't
    # get around the memory limit (tmpfs pages are not the actor's data memory).
    scratch = str(policy.tmpfs_size)
    cmd += ["--proc", "/proc", "--dev", "/dev",
            "--perms", "1777", "--size", scratch, "--tmpfs", "/tmp",
            "--perms", "1777", "--size", scratch, "--tmpfs", "/dev/shm"]

    # The interpreter, the environment, actorbox's code and the actor's module, read-only.
    ro: list[str] = []
    prefix = _installation_prefix(python_exe)
    if prefix != "/usr" and not prefix.startswith("/usr/"):
        ro.append(prefix)
    if venv_path:
        ro.append(venv_path)
    ro += list(readonly_paths)
    ro += [module_path] if isinstance(module_path, str) else list(module_path)
    ro += list(policy.readable_paths)
    rw = list(policy.writable_paths)
    if isinstance(uds_address, str):
        # Only a socket's own directory may be shared, and never a system or broad path.
        rw.append(validate_path(os.path.dirname(uds_address) or ".", "socket directory"))
    ro = list(dict.fromkeys(p for p in ro if p))
    # Directories bwrap creates to hold the binds must be listable by the actor's
    # uid (the import system lists sys.path entries); they show only what is bound.
    parents: dict[str, None] = {}
    for p in (*ro, *rw):
        d = os.path.dirname(p)
        chain = []
        while d not in ("/", "") and not d.startswith("/usr") and d not in _MERGED_USR:
            chain.append(d)
            d = os.path.dirname(d)
        parents.update(dict.fromkeys(reversed(chain)))
    for d in parents:
        cmd += ["--perms", "0755", "--dir", d]
    # Outer paths first, whatever their mode: a writable directory granted by the policy
    # must never be mounted over a read-only one inside it (the environment, a module).
    binds = sorted([(p, "--ro-bind") for p in ro] + [(p, "--bind") for p in rw if p not in ro],
                   key=lambda b: b[0].rstrip("/").count("/"))
    for p, how in binds:
        cmd += [how, p, p]
    if allow_gpu:
        for dev in (*gpu_devices, *_GPU_DEVICES):
            cmd += ["--dev-bind-try", dev, dev]
        for p in _GPU_SYSTEM:
            cmd += ["--ro-bind-try", p, p]

    cmd += ["--clearenv"]
    for k, v in sorted((env or {}).items()):
        cmd += ["--setenv", k, v]
    cmd += ["--chdir", "/tmp"]

    if rm.privileged:
        assert rm.setpriv is not None
        cmd += [rm.setpriv, f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--inh-caps=-all",
                "--bounding-set=-all", "--no-new-privs", "--"]
    cmd += [python_exe, *argv]
    return cmd
