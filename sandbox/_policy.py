"""``SandboxPolicy``: what a sandboxed actor may see and use, validated once."""

from __future__ import annotations

import os
from dataclasses import dataclass

# Paths never bound into a sandbox, nor anything below them.
_FORBIDDEN_TREES = ("/etc", "/usr", "/proc", "/sys", "/dev", "/boot", "/bin", "/sbin", "/lib", "/lib64",
                    "/root", "/run", "/var/run")
# Paths never bound themselves (things below them may be).
_FORBIDDEN_EXACT = ("/", "/tmp", "/home", "/var", "/var/tmp", "/mnt", "/media", "/opt", "/srv")


class PolicyError(ValueError):
    """A sandbox policy asks for something that would break the sandbox."""


@dataclass(frozen=True, slots=True)
class SandboxPolicy:
    """Resources and extra paths of a sandboxed actor.

    ``memory_limit``: bytes of data memory (RLIMIT_DATA); ``max_processes``: processes
    and threads of the actor (RLIMIT_NPROC, per actor: each actor gets its own uid);
    ``max_open_files``: RLIMIT_NOFILE. ``writable_paths``/``readable_paths`` are bound
    at the same path; system paths, home directories and /tmp itself are refused.
    """

    network: bool = False
    allow_gpu: bool = False
    writable_paths: tuple[str, ...] = ()
    readable_paths: tuple[str, ...] = ()
    memory_limit: int | None = None
    max_processes: int = 512
    max_open_files: int = 4096
    # Bytes each of the private /tmp and /dev/shm may hold (RAM-backed); by default
    # the memory limit, so filling them can't get around it, else 1 GiB.
    tmpfs_size: int | None = None

    def __post_init__(self) -> None:
        for attr in ("writable_paths", "readable_paths"):
            paths = getattr(self, attr)
            if isinstance(paths, str):
                raise PolicyError(f"{attr} must be a sequence of paths, not one string")
            object.__setattr__(self, attr, tuple(validate_path(p, attr) for p in paths))
        if self.memory_limit is not None and (type(self.memory_limit) is not int or self.memory_limit < 64 << 20):
            raise PolicyError(f"memory_limit must be an int of at least 64 MiB (bytes), got {self.memory_limit!r}")
        if self.tmpfs_size is None:
            object.__setattr__(self, "tmpfs_size", self.memory_limit or 1 << 30)
        if type(self.tmpfs_size) is not int or self.tmpfs_size < 1 << 20:
            raise PolicyError(f"tmpfs_size must be an int of at least 1 MiB (bytes), got {self.tmpfs_size!r}")
        for attr in ("max_processes", "max_open_files"):
            v = getattr(self, attr)
            if type(v) is not int or v < 16:
                raise PolicyError(f"{attr} must be an int >= 16, got {v!r}")

    def describe_limits(self) -> str:
        mem = f"{self.memory_limit >> 20} MiB memory" if self.memory_limit else "no memory limit"
        return f"{mem}, {self.max_processes} processes/threads, {self.max_open_files} open files"


def _home_dirs() -> set[str]:
    homes = {os.path.realpath(os.path.expanduser("~"))}
    try:
        import pwd

        homes.update(os.path.realpath(p.pw_dir) for p in pwd.getpwall() if p.pw_dir not in ("/", ""))
    except (ImportError, KeyError):
        pass
    return homes


def validate_path(path: str, what: str = "path") -> str:
    """Return the real absolute path, or raise PolicyError saying why it can't be shared."""
    if not isinstance(path, str) or not os.path.isabs(path):
        raise PolicyError(f"{what}: {path!r} must be an absolute path")
    real = os.path.realpath(path)
    if not os.path.exists(real):
        raise PolicyError(f"{what}: {path!r} does not exist; create it before starting the actor")
    for tree in _FORBIDDEN_TREES:
        if real == tree or real.startswith(tree + "/"):
            raise PolicyError(f"{what}: {path!r} is (inside) the system path {tree}, which a sandbox never exposes")
    if real in _FORBIDDEN_EXACT:
        raise PolicyError(f"{what}: {path!r} is too broad to share; share a directory of your own below it")
    if real in _home_dirs():
        raise PolicyError(f"{what}: {path!r} is a home directory; share a specific directory inside it instead")
    return real
