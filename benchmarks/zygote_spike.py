"""Zygote spike (issue 17): the building blocks of fast starts, measured on this machine.

Run from the repository root: ``python benchmarks/zygote_spike.py [--children 10]``

Not library code: it measures what a zygote design would rest on, and prints one table.

(a) A "zygote" process imports torch (no torch op), calls ``gc.freeze()`` and forks
    children one at a time: the time from ``fork()`` until the child says it is ready,
    and each child's private memory (USS) and PSS once all are alive and idle (each ran
    a ``gc.collect()``, as any actor soon does). The same without ``gc.freeze()``, and
    a 2-thread torch matmul in every child after the fork (fork safety: the zygote ran
    no torch op), and whether children reseeded from the OS draw different numbers.
(b) The same zygote inside a bubblewrap sandbox (the command line of
    ``sandbox.build_bwrap_command`` with the default ``SandboxPolicy``, as an actor
    gets), each child unsharing nested user, pid, mount, IPC and network namespaces
    with ctypes ``unshare``, mounting its own tmpfs /tmp and /dev/shm, forking once
    more to be pid 1 of its pid namespace, trying to mount a fresh /proc and dropping
    its capabilities; the table says what worked and what failed (with errno), and
    what a child still sees of its siblings (the last child forked reports). The same steps outside any sandbox are in
    the first column for comparison, and the last column repeats (b) with the zygote
    (so every child) marked non-dumpable (``PR_SET_DUMPABLE`` 0), the rule that keeps
    a child from opening the zygote's or a sibling's ``/proc/PID/mem``.

Numbers are informational: nothing here is a test.
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import gc
import json
import os
import platform
import random
import select
import socket
import statistics
import struct
import subprocess
import sys
import time
from typing import Any

CLONE_NEWNS = 0x00020000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REC, MS_PRIVATE = 2, 4, 8, 16384, 1 << 18
SYS_CAPSET = 126  # x86_64
CAP_V3 = 0x20080522


# ---------------------------------------------------------------------------- child side

def _libc() -> Any:
    return ctypes.CDLL(None, use_errno=True)


def _err(rc: int) -> str:
    e = ctypes.get_errno()
    return "ok" if rc == 0 else f"{errno.errorcode.get(e, e)}"


def _cap_eff() -> str:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("CapEff:"):
                return line.split()[1]
    return "?"


def _nested(libc: Any, uid: int, gid: int) -> tuple[dict[str, str], bool]:
    """Unshare nested namespaces and mount a private /tmp and /dev/shm; (what happened, may fork into new pidns)."""
    out: dict[str, str] = {}
    flags = CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWIPC | CLONE_NEWNET | CLONE_NEWPID
    out["unshare user+mnt+ipc+net+pid"] = _err(libc.unshare(flags))
    if out["unshare user+mnt+ipc+net+pid"] != "ok":
        return out, False
    # A non-dumpable process's /proc files belong to root: its own uid_map cannot be written.
    # So the child is dumpable only while it writes the maps (zygote code only runs then).
    dumpable = libc.prctl(3, 0, 0, 0, 0)  # PR_GET_DUMPABLE
    if dumpable == 0:
        libc.prctl(4, 1, 0, 0, 0)
    try:
        with open("/proc/self/setgroups", "w") as f:
            f.write("deny")
        with open("/proc/self/uid_map", "w") as f:
            f.write(f"{uid} {uid} 1")
        with open("/proc/self/gid_map", "w") as f:
            f.write(f"{gid} {gid} 1")
        out["uid/gid map (self as self)"] = "ok"
    except OSError as exc:
        out["uid/gid map (self as self)"] = errno.errorcode.get(exc.errno or 0, str(exc))
    if dumpable == 0:
        libc.prctl(4, 0, 0, 0, 0)
    # Only ever in the new mount namespace (unshare succeeded): nothing propagates out.
    out["make / private"] = _err(libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None))
    for where in (b"/tmp", b"/dev/shm"):
        rc = libc.mount(b"tmpfs", where, b"tmpfs", MS_NOSUID | MS_NODEV, b"size=64m,mode=1777")
        out[f"own tmpfs {where.decode()}"] = _err(rc)
    return out, True


def _drop_caps(libc: Any) -> str:
    hdr = struct.pack("Ii", CAP_V3, 0)
    data = bytes(24)  # two zeroed (effective, permitted, inheritable) u32 triples
    rc = libc.syscall(SYS_CAPSET, ctypes.c_char_p(hdr), ctypes.c_char_p(data))
    return _err(rc)


def _in_actor(libc: Any, nested: bool, info: dict[str, str]) -> None:
    """What runs as the actor (pid 1 of its pid namespace when nested): probes, reported to the zygote."""
    if nested:
        info["pid in own pid namespace"] = str(os.getpid())
        info["fresh /proc mount"] = _err(libc.mount(b"proc", b"/proc", b"proc", MS_NOSUID | MS_NODEV | MS_NOEXEC,
                                                    None))
        hide = libc.mount(b"tmpfs", b"/proc", b"tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, b"size=1m")
        info["tmpfs over /proc (hide siblings)"] = _err(hide)
        if hide == 0:
            libc.umount2(b"/proc", 0)  # the probes below read /proc again
        info["CapEff before drop"] = _cap_eff()
        info["capset(all 0)"] = _drop_caps(libc)
        info["CapEff after drop"] = _cap_eff()
        try:
            pids = [p for p in os.listdir("/proc") if p.isdigit()]
            info["pids listed in /proc"] = str(len(pids))
        except OSError as exc:
            info["pids listed in /proc"] = str(exc)
        try:
            os.kill(2, 0)  # a pid the zygote's namespace has (bwrap's child): unknown in ours
            info["kill(2, 0) from nested pidns"] = "ok (reachable)"
        except OSError as exc:
            info["kill(2, 0) from nested pidns"] = errno.errorcode.get(exc.errno or 0, str(exc))
        try:
            me = os.readlink("/proc/self")
            others = [p for p in os.listdir("/proc") if p.isdigit() and p != me]
        except OSError:
            others = []
        opened = 0
        for p in others:
            try:  # opening another process's memory for writing: never written, only opened and closed
                os.close(os.open(f"/proc/{p}/mem", os.O_RDWR))
                opened += 1
            except OSError:
                pass
        info["others' /proc/PID/mem opened rw"] = f"{opened} of {len(others)}"
        try:
            with open("/proc/self/status") as f:
                info["reads own /proc/self/status"] = "ok" if f.read() else "empty"
        except OSError as exc:
            info["reads own /proc/self/status"] = errno.errorcode.get(exc.errno or 0, str(exc))
        marker = f"/tmp/child-{os.getpid()}-{random.random()}"
        try:
            with open(marker, "w") as f:
                f.write("x")
            info["/tmp entries seen (own file only = 1)"] = str(len(os.listdir("/tmp")))
        except OSError as exc:
            info["/tmp entries seen (own file only = 1)"] = str(exc)
        s = socket.socket()
        s.settimeout(1)
        try:
            s.connect(("127.0.0.1", 9))  # loopback only: down in a fresh net namespace
            info["connect 127.0.0.1:9"] = "connected"
        except OSError as exc:
            info["connect 127.0.0.1:9"] = errno.errorcode.get(exc.errno or 0, str(exc))
        finally:
            s.close()


def _child(ready_w: int, go_r: int, nested: bool) -> None:
    """A forked actor: reseed, (nested: sandbox itself), collect garbage, say ready, wait, run torch, exit."""
    import torch

    random.seed()  # from os.urandom: forked children must not share the zygote's state
    torch.seed()
    libc = _libc()
    info: dict[str, str] = {}
    if nested:
        steps, can_fork = _nested(libc, os.getuid(), os.getgid())
        info.update(steps)
        if can_fork:
            pid = os.fork()  # the actor proper: pid 1 of the new pid namespace
            if pid:
                _, status = os.waitpid(pid, 0)
                os._exit(os.waitstatus_to_exitcode(status) & 0xFF)
    _in_actor(libc, nested, info)
    gc.collect()
    draw = random.random()
    os.write(ready_w, (json.dumps({"pid_seen_by_zygote": None, "draw": draw, "info": info}) + "\n").encode())
    os.read(go_r, 1)
    t0 = time.perf_counter()
    torch.set_num_threads(2)
    x = torch.randn(512, 512)
    ok = bool(torch.isfinite((x @ x).sum()))
    os.write(ready_w, (json.dumps({"matmul_ok": ok, "matmul_ms": (time.perf_counter() - t0) * 1000}) + "\n").encode())
    os._exit(0)


def _readline(fd: int, timeout: float) -> dict[str, Any] | None:
    buf = b""
    end = time.monotonic() + timeout
    while not buf.endswith(b"\n"):
        left = end - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            return None
        chunk = os.read(fd, 65536)
        if not chunk:
            return None
        buf += chunk
    return json.loads(buf)  # type: ignore[no-any-return]


def zygote(children: int, freeze: bool, nested: bool, dumpable: bool) -> dict[str, Any]:
    """Import torch, freeze, fork ``children`` actors one at a time; report timings, memory and probes."""
    import psutil

    t0 = time.perf_counter()
    import torch  # noqa: F401  (no torch op here: its thread pools would not survive the fork)

    import_s = time.perf_counter() - t0
    gc.collect()
    if freeze:
        gc.freeze()
    if not dumpable:  # inherited by every child: no same-uid ptrace or /proc/PID/mem of the zygote or its children
        _libc().prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE
    kids: list[tuple[int, int, int]] = []  # (pid, ready_r, go_w)
    ready_ms, draws, infos = [], [], []
    for _ in range(children):
        ready_r, ready_w = os.pipe()
        go_r, go_w = os.pipe()
        t = time.perf_counter()
        pid = os.fork()
        if pid == 0:
            try:
                os.close(ready_r)
                os.close(go_w)
                _child(ready_w, go_r, nested)
            finally:
                os._exit(70)
        os.close(ready_w)
        os.close(go_r)
        msg = _readline(ready_r, 30)
        ready_ms.append((time.perf_counter() - t) * 1000)
        kids.append((pid, ready_r, go_w))
        if msg is not None:
            draws.append(msg["draw"])
            infos.append(msg["info"])
    time.sleep(0.5)
    uss, pss = [], []
    for pid, _, _ in kids:
        try:
            proc = psutil.Process(pid)
            target = proc.children()[0] if nested and proc.children() else proc  # the actor proper
            m = target.memory_full_info()
            uss.append(m.uss)
            pss.append(m.pss)
        except (psutil.Error, IndexError):
            pass
    parent = psutil.Process().memory_full_info()
    matmul = []
    for pid, ready_r, go_w in kids:
        os.write(go_w, b"g")
        msg = _readline(ready_r, 20)
        matmul.append(msg if msg is not None else {"matmul_ok": False, "matmul_ms": None, "hung": True})
        os.waitpid(pid, 0)
    return {"import_s": import_s, "ready_ms": ready_ms, "uss": uss, "pss": pss, "zygote_uss": parent.uss,
            "zygote_pss": parent.pss, "draws_distinct": len(set(draws)) == len(draws) and bool(draws),
            "matmul": matmul, "info": infos[-1] if infos else {}, "uid": os.getuid(),
            "cap_eff": _cap_eff()}


# ---------------------------------------------------------------------------- driver

def _run(cmd: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    if out.returncode != 0:
        return {"error": f"exit {out.returncode}: {out.stderr.strip()[-800:]}"}
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def _bwrap_command(argv: list[str]) -> list[str]:
    """This script as an actor runs: bubblewrap with the default policy, the venv's interpreter."""
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import sandbox

    model = sandbox.detect_restriction_model()
    env = {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "OMP_WAIT_POLICY": "PASSIVE"}
    return sandbox.build_bwrap_command(sys.executable, [os.path.abspath(__file__)], sys.prefix, None, False, model,
                                       sandbox.SandboxPolicy(), argv=["-P", os.path.abspath(__file__), *argv],
                                       env=env, uid=65534)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--children", type=int, default=10, help="children forked per zygote (default 10)")
    p.add_argument("--zygote", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--no-freeze", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--nested", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--nondumpable", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.zygote:
        print(json.dumps(zygote(args.children, not args.no_freeze, args.nested, not args.nondumpable)))
        return 0
    me = [sys.executable, "-P", os.path.abspath(__file__), "--zygote", "--children", str(args.children)]
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import torch"], check=True)
    bare_s = time.perf_counter() - t0
    cols = {
        "outside, gc.freeze": _run(me),
        "outside, no freeze": _run([*me, "--no-freeze"]),
        "outside, nested ns": _run([*me, "--nested"]),
        "in bwrap, nested ns": _run(_bwrap_command(["--zygote", "--children", str(args.children), "--nested"])),
        "in bwrap, nested, non-dumpable": _run(_bwrap_command(["--zygote", "--children", str(args.children),
                                                               "--nested", "--nondumpable"])),
    }
    report(bare_s, cols, args.children)
    return 0


def _median_matmul(c: dict[str, Any]) -> float:
    return statistics.median(m["matmul_ms"] for m in c["matmul"])


def report(bare_s: float, cols: dict[str, dict[str, Any]], n: int) -> None:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from _common import print_table

    names = list(cols)

    def cell(c: dict[str, Any], f: Any) -> str:
        if "error" in c:
            return "failed"
        try:
            return str(f(c))
        except (KeyError, ValueError, statistics.StatisticsError, TypeError):
            return "-"

    def mb(v: float) -> str:
        return f"{v / 1e6:.1f} MB"

    def pct(xs: list[float], q: float) -> float:
        s = sorted(xs)
        return s[min(len(s) - 1, int(len(s) * q))]

    rows: list[tuple[str, ...]] = [
        ("zygote: import torch", *(cell(c, lambda c: f"{c['import_s']:.3f} s") for c in cols.values())),
        (f"fork to ready child, p50 of {n}", *(cell(c, lambda c: f"{pct(c['ready_ms'], 0.5):.1f} ms")
                                                for c in cols.values())),
        (f"fork to ready child, max of {n}", *(cell(c, lambda c: f"{max(c['ready_ms']):.1f} ms")
                                                for c in cols.values())),
        ("child USS (private), median", *(cell(c, lambda c: mb(statistics.median(c["uss"]))) for c in cols.values())),
        ("child PSS, median", *(cell(c, lambda c: mb(statistics.median(c["pss"]))) for c in cols.values())),
        ("zygote PSS with children alive", *(cell(c, lambda c: mb(c["zygote_pss"])) for c in cols.values())),
        ("2-thread matmul after fork: all ok", *(cell(c, lambda c: all(m["matmul_ok"] for m in c["matmul"]))
                                                 for c in cols.values())),
        ("first matmul in child, median", *(cell(c, lambda c: f"{_median_matmul(c):.1f} ms") for c in cols.values())),
        ("reseeded draws differ between children", *(cell(c, lambda c: c["draws_distinct"]) for c in cols.values())),
        ("zygote uid / CapEff", *(cell(c, lambda c: f"{c['uid']} / {c['cap_eff']}") for c in cols.values())),
    ]
    keys: list[str] = []
    for c in cols.values():
        for k in c.get("info", {}):
            if k not in keys:
                keys.append(k)
    for k in keys:
        rows.append((f"child: {k}", *(cell(c, lambda c, k=k: c["info"].get(k, "-")) for c in cols.values())))
    try:
        with open("/proc/sys/kernel/yama/ptrace_scope") as f:
            yama = f.read().strip()
    except OSError:
        yama = "absent"
    print(f"zygote spike: Python {platform.python_version()}, {os.cpu_count()} CPUs, euid {os.geteuid()}, "
          f"kernel {platform.release()}, yama ptrace_scope {yama}; "
          f"bare `python -c \"import torch\"`: {bare_s:.3f} s")
    print()
    print_table(("measurement", *names), rows)
    for name, c in cols.items():
        if "error" in c:
            print(f"\n{name}: {c['error']}")


if __name__ == "__main__":
    sys.exit(main())
