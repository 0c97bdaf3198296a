"""Actors for tests/actorbox/test_zygote.py: what a forked actor draws, computes and can see."""

from __future__ import annotations

import errno
import os
import random
import subprocess

import numpy
import torch

import actorbox


@actorbox.actor
class Drawer:
    """Draws from every generator it inherited; runs a multi-threaded torch op."""

    def draws(self) -> list[float]:
        return [random.random(), float(numpy.random.rand()), float(torch.rand(1))]

    def matmul(self, threads: int = 2) -> list[float]:
        torch.set_num_threads(threads)
        x = torch.ones(384, 384)
        return [torch.get_num_threads(), float((x @ x)[0, 0])]

    def pid(self) -> int:
        return os.getpid()


@actorbox.actor(max_restarts=1)
class Restarting:
    def ping(self) -> str:
        return "pong"


@actorbox.actor
class Looker:
    """Looks for the zygote and its siblings from inside a forked actor."""

    def proc_entries(self) -> list[str]:
        return sorted(e for e in os.listdir("/proc") if e.isdigit())

    def signal(self, pid: int) -> str:
        try:
            os.kill(pid, 0)
        except OSError as exc:
            return errno.errorcode.get(exc.errno or 0, str(exc))
        return "ok"

    def open_mem(self, pids: list[int]) -> list[int]:
        """The pids (as this actor's /proc numbers them) whose memory it could open."""
        opened = []
        for pid in pids:
            try:
                os.close(os.open(f"/proc/{pid}/mem", os.O_RDONLY))
                opened.append(pid)
            except OSError:
                pass
        return opened

    def reads_own_proc(self) -> bool:
        with open(f"/proc/{os.getpid()}/status") as f:
            return "Pid:" in f.read() and os.path.exists("/proc/self/fd")


@actorbox.actor
class Spawner:
    """Starts a process in its own session, then dies."""

    def spawn_sleeper(self) -> int:
        return subprocess.Popen(["sleep", "300"]).pid

    def die(self) -> None:
        os._exit(3)
