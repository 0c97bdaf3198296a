"""``rt.actors()``, ``rt.named_actors()`` and the snapshot ``ps`` shows, from live actors."""

from __future__ import annotations

import os
import time

import anyio
import psutil
import pytest

import actorbox
from actorbox._inspect import format_snapshot, snapshot

pytestmark = pytest.mark.anyio


@actorbox.actor
class Worker:
    async def hold(self, seconds):
        await anyio.sleep(seconds)
        return "held"

    def burn(self, seconds):
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            pass
        return os.getpid()

    def spawn_threads(self, n):
        import threading

        self.stop_threads = threading.Event()
        for _ in range(n):
            threading.Thread(target=self.stop_threads.wait, daemon=True).start()
        return n

    def ballast(self, mib):
        self.data = bytearray(mib << 20)  # touched: it counts in RSS
        return len(self.data)


class Registry:
    def get(self, key):
        return key


async def _wait_running(rt, label):
    with anyio.fail_after(10):
        while not any(i.label == label and i.running_calls for i in rt.actors()):
            await anyio.sleep(0.02)


async def test_actors_reports_rss_cpu_and_running_calls_of_a_live_actor():
    """rt.actors() gives an alive actor's RSS (as psutil sees its pid), CPU % and the ids of its running calls."""
    async with actorbox.Runtime() as rt:
        w = await rt.start(Worker, name="worker")
        rt.register("registry", Registry())
        assert await w.ballast(64) == 64 << 20
        fut = w.hold(5)
        await _wait_running(rt, "worker")
        infos = {i.label: i for i in rt.actors()}
        wi = infos["worker"]
        (call,) = [c for c in rt.pending_calls() if c.method == "hold"]
        assert wi.running_calls == (call.call_id,)
        assert (wi.queued, wi.running) == (0, 1)
        assert wi.rss is not None and wi.rss >= 64 << 20
        assert abs(wi.rss - psutil.Process(wi.pid).memory_info().rss) < 32 << 20
        assert isinstance(wi.cpu_percent, float) and wi.cpu_percent >= 0
        ri = infos["registry"]
        assert (ri.state, ri.pid, ri.rss, ri.cpu_percent, ri.running_calls) == ("resident", None, None, None, ())
        fut.cancel()
        await rt.stop(w)
        stopped = {i.label: i for i in rt.actors()}["worker"]
        assert (stopped.state, stopped.rss, stopped.cpu_percent) == ("stopped", None, None)


async def test_actors_reports_the_thread_count_of_each_actor_process():
    """rt.actors() shows an actor's OS thread count as psutil reads it; it grows by the threads the actor starts."""
    async with actorbox.Runtime() as rt:
        w = await rt.start(Worker, name="worker")
        before = {i.label: i for i in rt.actors()}["worker"]
        assert before.threads is not None and before.threads >= 1
        assert await w.spawn_threads(5) == 5
        after = {i.label: i for i in rt.actors()}["worker"]
        assert after.threads == psutil.Process(after.pid).num_threads()
        assert after.threads >= before.threads + 5
        await rt.stop(w)
        assert {i.label: i for i in rt.actors()}["worker"].threads is None


async def test_cpu_percent_covers_the_time_since_the_previous_sample():
    """An actor busy on the CPU between two rt.actors() calls shows a high CPU %, an idle one about none."""
    async with actorbox.Runtime() as rt:
        w = await rt.start(Worker, name="worker")
        await w.hold(0)
        rt.actors()
        await w.burn(0.6)
        busy = {i.label: i for i in rt.actors()}["worker"].cpu_percent
        await anyio.sleep(0.6)
        idle = {i.label: i for i in rt.actors()}["worker"].cpu_percent
    assert busy is not None and idle is not None
    assert busy > 20  # generous: two shared cores
    assert idle < busy


async def test_named_actors_lists_started_and_registered_names():
    """rt.named_actors() maps each registered name (named actor or host-resident) to its actor id, no anonymous ones."""
    async with actorbox.Runtime() as rt:
        w = await rt.start(Worker, name="worker")
        anon = await rt.start(Worker)
        handle = rt.register("registry", Registry())
        names = rt.named_actors()
        ids = {i.label: i.actor_id for i in rt.actors()}
        assert names == {"registry": ids["registry"], "worker": ids["worker"]}
        assert actorbox.info(anon).label not in names and actorbox.info(handle).name == "registry"
        await rt.stop(w)
        assert "worker" not in rt.named_actors()


async def test_snapshot_holds_actors_calls_names_and_store_and_formats_as_tables():
    """The ps snapshot carries actors, calls in flight, names and object store stats, and prints as two tables."""
    async with actorbox.Runtime() as rt:
        w = await rt.start(Worker, name="worker")
        ref = await rt.put({"k": b"x" * 1000})
        fut = w.hold(5)
        await _wait_running(rt, "worker")
        snap = snapshot(rt)
        fut.cancel()
        await ref.release()
    assert snap["runtime"]["pid"] == os.getpid()
    assert {a["label"] for a in snap["actors"]} >= {"worker"}
    assert [c["method"] for c in snap["calls"]] == ["hold"]
    assert "worker" in snap["names"]
    assert snap["object_store"]["objects"] == 1
    text = format_snapshot(snap)
    header = next(line for line in text.splitlines() if "RSS MiB" in line).split()
    assert header == ["ID", "NAME", "CLASS", "PID", "STATE", "RESTARTS", "RSS", "MiB", "CPU", "%", "THREADS", "FDS",
                      "QUEUED", "RUNNING"]
    assert any(line.split()[:3] == [str(snap["calls"][0]["call_id"]), "worker", "hold"] for line in text.splitlines())


async def test_calls_delivered_ahead_show_as_delivered_not_running():
    """Pipelined calls to a max_concurrency=1 actor: one runs, the others wait in its FIFO, then run in order."""
    async with actorbox.Runtime() as rt:
        w = await rt.start(Worker, name="serial")

        async def call(seconds):
            await w.hold(seconds)

        async with anyio.create_task_group() as tg:
            tg.start_soon(call, 0.5)
            await _wait_running(rt, "serial")
            for _ in range(2):
                tg.start_soon(call, 0.01)
            with anyio.fail_after(5):
                while len(rt.pending_calls()) < 3:
                    await anyio.sleep(0.01)
            states = [c.state for c in sorted(rt.pending_calls(), key=lambda c: c.call_id)]
            assert states == ["running", "delivered", "delivered"]
            (info,) = [i for i in rt.actors() if i.label == "serial"]
            assert (info.running, info.queued, len(info.running_calls)) == (1, 2, 1)
        assert rt.pending_calls() == []


async def test_a_zygote_shows_in_actors_and_ps_as_a_zygote_until_the_runtime_exits(monkeypatch):
    """After a start, rt.actors() lists the zygote the actor was forked from after the actors (kind "zygote",
    negative id, its Python pid, its actors alive), ps shows it as one; rt.stop refuses it; it goes with the Runtime."""
    monkeypatch.setenv("ACTORBOX_ZYGOTES", "1")
    async with actorbox.Runtime() as rt:
        w = await rt.start(Worker, name="worker")
        await rt.start(Worker)
        infos = rt.actors()
        assert [i.kind for i in infos] == ["actor", "actor", "zygote"]
        actors, (z,) = infos[:2], infos[2:]
        assert z.actor_id < 0 and z.actor_id not in {i.actor_id for i in actors}
        assert (z.name, z.label, z.cls, z.state, z.forked) == (None, "zygote (host env)", "zygote", "ready", 2)
        assert all(i.forked is None for i in actors)
        zproc = psutil.Process(z.pid)
        assert "actorbox._zygote" in zproc.cmdline()
        for i in actors:  # each actor descends from it (zygote -> the actor's reaper -> its init -> the actor)
            assert z.pid in [p.pid for p in psutil.Process(i.pid).parents()]
        assert z.rss is not None and z.rss > 0 and z.threads == 1 and z.fds is not None and z.fds > 0
        snap = snapshot(rt)
        (row,) = [a for a in snap["actors"] if a["kind"] == "zygote"]
        assert (row["actor_id"], row["pid"], row["label"], row["forked"]) == (z.actor_id, z.pid, z.label, 2)
        text = format_snapshot(snap)
        assert "zygotes: 1 (prepared processes actors fork from), 2 actor(s) forked from them alive" in text
        (line,) = [line for line in text.splitlines() if "zygote (host env)" in line]
        cells = line.replace("zygote (host env)", "zygote-row").split()
        assert cells[:5] == [str(z.actor_id), "zygote-row", "zygote", str(z.pid), "ready"]
        assert cells[-2:] == ["-", "-"]  # it takes no calls
        with pytest.raises(actorbox.UsageError, match="is a zygote"):
            await rt.stop(z)
        with pytest.raises(actorbox.UsageError, match="not the ActorInfo"):
            await rt.stop(actors[0])
        await rt.stop(w)
        assert [i.forked for i in rt.actors() if i.kind == "zygote"] == [1]
    assert [i for i in rt.actors() if i.kind != "actor"] == []
    assert not zproc.is_running()
