"""What processes a test's Runtime left: its zygotes (and their sandboxes' launchers) apart, they live as
long as the Runtime by design; anything else under this process, an actor forked from a zygote included,
is a leftover."""

from __future__ import annotations

import anyio
import psutil

import actorbox


def zygote_processes(rt: actorbox.Runtime) -> set[int]:
    """Pids of rt's zygotes and of their ancestors below this process (the bubblewrap processes around each)."""
    me = psutil.Process()
    pids: set[int] = set()
    for z in rt.actors():
        if z.kind != "zygote" or z.pid is None:
            continue
        try:
            chain = [psutil.Process(z.pid), *psutil.Process(z.pid).parents()]
        except psutil.NoSuchProcess:
            continue
        for p in chain:
            if p.pid == me.pid:
                break
            pids.add(p.pid)
    return pids


def leftovers(rt: actorbox.Runtime | None = None) -> list[psutil.Process]:
    """Every descendant of this process but rt's zygotes (all of them when rt is None)."""
    spared = zygote_processes(rt) if rt is not None else set()
    return [p for p in psutil.Process().children(recursive=True) if p.pid not in spared]


async def wait_for_no_leftovers(rt: actorbox.Runtime | None = None, timeout: float = 5.0) -> list[psutil.Process]:
    """leftovers(rt) once it is empty, or what is left after ``timeout`` seconds."""
    with anyio.move_on_after(timeout):
        while leftovers(rt):
            await anyio.sleep(0.02)
    return leftovers(rt)
