"""Integration tests of ``actorbox.Runtime`` with real actor processes.

Covers starting actors (sync and async methods, constructor arguments, classes
travelling by import path or by value), named actors and host-resident
singletons, handles as arguments, re-entrant chains, per-actor concurrency and
the inspection API (``rt.actors()``, ``rt.pending_calls()``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import anyio
import psutil
import pytest

import actorbox

pytestmark = pytest.mark.anyio


# -- actor classes (importable from this module: they travel by import path) ---------


@actorbox.actor
class Counter:
    def __init__(self, start=0, *, step=1):
        self.n = start
        self.step = step
        self.init_args = [start, step]

    def incr(self, k=None):
        self.n += self.step if k is None else k
        return self.n

    async def aincr(self, k=1):
        await anyio.sleep(0)
        self.n += k
        return self.n

    def get_init_args(self):
        return self.init_args

    def pid(self):
        return os.getpid()

    def identity(self):
        return [os.getpid(), psutil.Process().create_time()]

    def child_flag(self):
        return os.environ.get("ACTORBOX_CHILD")

    def origin(self):
        mod = sys.modules.get(type(self).__module__)
        return [type(self).__module__, mod is not None and getattr(mod, type(self).__name__, None) is type(self)]


@actorbox.actor
class Client:
    """Calls other actors through handles and names."""

    async def incr_via(self, handle, k):
        return [isinstance(handle, actorbox.ActorHandle), await handle.incr(k)]

    def incr_via_sync(self, handle, k):
        return handle.incr(k).result()

    async def lookup_async(self, name, *args):
        return await actorbox.get_actor(name).lookup(*args)

    def lookup_sync(self, name, *args):
        return actorbox.get_actor(name).lookup(*args).result()

    async def missing(self, name):
        actorbox.get_actor(name)

    def missing_sync(self, name):
        actorbox.get_actor(name)

    def handle_of(self, name):
        return actorbox.get_actor(name)


@actorbox.actor
class Reentrant:
    """Method ``start`` calls the host-resident ``models``, which calls back into ``back``."""

    async def start_async(self, middle):
        me = actorbox.get_actor("a")
        return await getattr(actorbox.get_actor("models"), middle)(me)

    def start_sync(self, middle):
        me = actorbox.get_actor("a")
        return getattr(actorbox.get_actor("models"), middle)(me).result()

    def back(self):
        return "A-back"


class Models:
    """A host-resident singleton."""

    def __init__(self):
        self.seen = []

    async def lookup(self, key):
        self.seen.append(key)
        return f"model:{key}"

    async def lookup_back(self, handle):
        return ["models-async", await handle.back()]

    def lookup_back_sync(self, handle):
        return ["models-sync", handle.back().result()]


@actorbox.actor
class Recorder:
    """Records start/end of each call so tests can see ordering and overlap."""

    def __init__(self):
        self.events = []
        self.active = 0
        self.max_active = 0

    async def astep(self, i, s=0.03):
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        self.events.append(("start", i))
        await anyio.sleep(s)
        self.events.append(("end", i))
        self.active -= 1
        return i

    def step(self, i, s=0.03):
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        self.events.append(("start", i))
        time.sleep(s)
        self.events.append(("end", i))
        self.active -= 1
        return i

    def report(self):
        return {"events": self.events, "max_active": self.max_active}


@actorbox.actor(max_concurrency=3)
class Wide(Recorder):
    pass


@actorbox.actor
class Slow:
    async def slow(self, s):
        await anyio.sleep(s)
        return "slow-done"

    def pid(self):
        return os.getpid()

    def identity(self):
        return [os.getpid(), psutil.Process().create_time()]


def _is_same_process(host_pid, identity):
    """Whether ``host_pid`` (as the host sees it) is the process that reported ``identity``.

    The actor may run in its own pid namespace (the sandbox), where os.getpid()
    differs from the host's pid: compare the innermost pid the kernel lists for
    ``host_pid`` and the process start time instead.
    """
    inner_pid, created = identity
    with open(f"/proc/{host_pid}/status") as f:
        nspids = next(line.split()[1:] for line in f if line.startswith("NSpid:"))
    return int(nspids[0]) == host_pid and int(nspids[-1]) == inner_pid and \
        psutil.Process(host_pid).create_time() == created


# -- starting actors ---------------------------------------------------------------


async def test_sync_and_async_methods_run_in_the_actor():
    """A started actor serves both sync and async methods and keeps its state between calls."""
    async with actorbox.Runtime() as rt:
        c = await rt.start(Counter)
        assert isinstance(c, actorbox.ActorHandle)
        assert await c.incr() == 1
        assert await c.aincr(5) == 6
        assert await c.incr(10) == 16
        assert await c.pid() != os.getpid()


async def test_constructor_receives_args_and_kwargs():
    """rt.start(Cls, *args, **kwargs) constructs the instance with exactly those arguments."""
    async with actorbox.Runtime() as rt:
        c = await rt.start(Counter, 10, step=3)
        assert await c.get_init_args() == [10, 3]
        assert await c.incr() == 13


async def test_class_from_test_module_travels_by_import_path():
    """A class defined at module level is imported by its module name in the actor, not shipped by value."""
    async with actorbox.Runtime() as rt:
        c = await rt.start(Counter)
        module, same_class = await c.origin()
        assert module == __name__
        assert same_class is True


async def test_class_defined_in_function_travels_by_value():
    """A class defined inside a function (with a closure) is shipped by value and works in the actor."""
    secret = 41

    @actorbox.actor
    class Local:
        def answer(self, k):
            return secret + k

        async def module_imported(self, name):
            return name in sys.modules

    async with actorbox.Runtime() as rt:
        h = await rt.start(Local)
        assert await h.answer(1) == 42
        # By value: the defining test module was never imported in the actor.
        assert await h.module_imported(__name__) is False


_SCRIPT = """
import os, sys
import anyio
import actorbox

@actorbox.actor
class ScriptActor:
    def __init__(self, greeting):
        self.greeting = greeting

    def hello(self, who):
        return f"{self.greeting}, {who} from {os.environ.get('ACTORBOX_CHILD')} pid={os.getpid()}"

async def main():
    async with actorbox.Runtime() as rt:
        h = await rt.start(ScriptActor, "hi")
        print("RESULT", await h.hello("script"), "host", os.getpid(), flush=True)

anyio.run(main, backend=sys.argv[1])
"""


def test_class_defined_in_a_script_runs_as_actor(tmp_path, anyio_backend):
    """An @actor class defined at the top level of a script (__main__) runs in its own process."""
    script = tmp_path / "plugin_script.py"
    script.write_text(textwrap.dedent(_SCRIPT))
    proc = subprocess.run([sys.executable, str(script), anyio_backend], capture_output=True, text=True,
                          timeout=30, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert len(lines) == 1, proc.stdout
    words = lines[0].split()
    # RESULT hi, script from 1 pid=<actor> host <host>
    assert words[1:5] == ["hi,", "script", "from", "1"]
    assert words[5].startswith("pid=") and words[5] != f"pid={words[7]}"


async def test_actorbox_child_is_set_in_actor_only():
    """ACTORBOX_CHILD=1 is set in the actor's environment and not in the host's."""
    assert os.environ.get("ACTORBOX_CHILD") is None
    async with actorbox.Runtime() as rt:
        c = await rt.start(Counter)
        assert await c.child_flag() == "1"
    assert os.environ.get("ACTORBOX_CHILD") is None


# -- named actors --------------------------------------------------------------------


async def test_get_actor_returns_handle_to_the_same_named_actor():
    """rt.get_actor(name) returns a handle to the running actor started under that name."""
    async with actorbox.Runtime() as rt:
        c = await rt.start(Counter, name="counter")
        assert await c.incr() == 1
        again = rt.get_actor("counter")
        assert again == c
        assert await again.incr() == 2
        assert await c.incr() == 3


async def test_duplicate_name_raises_name_taken():
    """Starting or registering a second actor under a taken name raises NameTakenError; the first keeps working."""
    async with actorbox.Runtime() as rt:
        c = await rt.start(Counter, name="dup")
        with pytest.raises(actorbox.NameTakenError, match="dup") as ei:
            await rt.start(Counter, name="dup")
        assert ei.value.name == "dup"
        with pytest.raises(actorbox.NameTakenError, match="dup"):
            rt.register("dup", Models())
        assert await c.incr() == 1
        assert [a.name for a in rt.actors()].count("dup") == 1


async def test_unknown_name_raises_actor_not_found_with_fix():
    """rt.get_actor of an unknown name raises ActorNotFoundError that names the actor and how to create it."""
    async with actorbox.Runtime() as rt:
        await rt.start(Counter, name="present")
        with pytest.raises(actorbox.ActorNotFoundError) as ei:
            rt.get_actor("nope")
        msg = str(ei.value)
        assert "'nope'" in msg
        assert "rt.start(" in msg and "rt.register(" in msg
        assert ei.value.name == "nope"


@pytest.mark.parametrize("method", ["lookup_async", "lookup_sync"])
async def test_actor_reaches_host_resident_actor_by_name(method):
    """Inside an actor, actorbox.get_actor(name) reaches a host-resident object from async and sync methods."""
    async with actorbox.Runtime() as rt:
        models = Models()
        rt.register("models", models)
        client = await rt.start(Client)
        assert await getattr(client, method)("models", "resnet") == "model:resnet"
        assert models.seen == ["resnet"]


@pytest.mark.parametrize("method", ["missing", "missing_sync"])
async def test_get_actor_of_missing_name_inside_actor_raises_not_found(method):
    """actorbox.get_actor of an unregistered name inside an actor raises ActorNotFoundError naming it.

    Let through, it reaches the host as the actor's error: a RemoteError naming it.
    """
    async with actorbox.Runtime() as rt:
        rt.register("models", Models())
        client = await rt.start(Client)
        with pytest.raises(actorbox.RemoteError) as ei:
            await getattr(client, method)("ghost")
        assert ei.value.type_name == "actorbox.ActorNotFoundError" and ei.value.actor == actorbox.info(client).label
        assert "'ghost'" in str(ei.value)
        assert "rt.register(" in str(ei.value)


async def test_register_after_start_is_visible_inside_actor():
    """A host-resident actor registered after an actor started can be looked up by that actor."""
    async with actorbox.Runtime() as rt:
        client = await rt.start(Client)
        rt.register("late", Models())
        with anyio.fail_after(5):
            assert await client.lookup_async("late", "k") == "model:k"


class Front:
    """A host-resident object that calls other host-resident objects."""

    def via_sync(self, name, method):
        return getattr(actorbox.get_actor(name), method)().result(timeout=5)

    async def via_async(self, name, method):
        return await getattr(actorbox.get_actor(name), method)()


class Back:
    async def ahello(self):
        return "async-back"

    def hello(self):
        return "sync-back"


@pytest.mark.parametrize("front", ["via_async", "via_sync"])
@pytest.mark.parametrize("back", ["ahello", "hello"])
async def test_host_resident_calls_another_host_resident(front, back):
    """A host-resident actor's method (async, or sync with .result()) can call another host-resident actor."""
    async with actorbox.Runtime() as rt:
        rt.register("back", Back())
        f = rt.register("front", Front())
        with anyio.fail_after(10):
            assert await getattr(f, front)("back", back) == ("async-back" if back == "ahello" else "sync-back")
            # The callee is still serving afterwards (its slot was released).
            assert await rt.get_actor("back").hello() == "sync-back"
        assert rt.pending_calls() == []


# -- handles as arguments -------------------------------------------------------------


@pytest.mark.parametrize("method", ["incr_via", "incr_via_sync"])
async def test_handle_passed_host_to_actor_works(method):
    """An ActorHandle passed as an argument arrives in the actor as a working handle to the same actor."""
    async with actorbox.Runtime() as rt:
        counter = await rt.start(Counter, 100)
        client = await rt.start(Client)
        out = await getattr(client, method)(counter, 5)
        if method == "incr_via":
            assert out == [True, 105]
        else:
            assert out == 105
        assert await counter.incr(0) == 105


async def test_handle_returned_actor_to_host_works():
    """An ActorHandle returned by an actor arrives in the host as a working handle."""
    async with actorbox.Runtime() as rt:
        counter = await rt.start(Counter, name="counter")
        client = await rt.start(Client)
        h = await client.handle_of("counter")
        assert isinstance(h, actorbox.ActorHandle)
        assert h == counter
        assert await h.incr(7) == 7


# -- re-entrancy ------------------------------------------------------------------------


@pytest.mark.parametrize("outer", ["start_async", "start_sync"])
@pytest.mark.parametrize("middle", ["lookup_back", "lookup_back_sync"])
async def test_reentrant_chain_completes_with_max_concurrency_one(outer, middle):
    """host -> A -> host named actor -> A completes although A (max_concurrency=1) is busy with the outer call."""
    async with actorbox.Runtime() as rt:
        rt.register("models", Models())
        a = await rt.start(Reentrant, name="a")
        with anyio.fail_after(10):
            out = await getattr(a, outer)(middle)
        assert out == ["models-async" if middle == "lookup_back" else "models-sync", "A-back"]
        assert rt.pending_calls() == []


# -- concurrency -------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["astep", "step"])
async def test_max_concurrency_one_runs_calls_one_at_a_time_in_fifo_order(method):
    """With max_concurrency=1, calls run one at a time, in the order they were submitted."""
    async with actorbox.Runtime() as rt:
        r = await rt.start(Recorder)
        futs = [getattr(r, method)(i) for i in range(6)]
        results = [await f for f in futs]
        assert results == list(range(6))
        rep = await r.report()
        assert rep["max_active"] == 1
        expected = [kind_i for i in range(6) for kind_i in (["start", i], ["end", i])]
        assert [list(e) for e in rep["events"]] == expected


@pytest.mark.parametrize("method", ["astep", "step"])
async def test_max_concurrency_three_lets_three_calls_overlap(method):
    """With max_concurrency=3, exactly three calls run at the same time, never more."""
    async with actorbox.Runtime() as rt:
        w = await rt.start(Wide)
        futs = [getattr(w, method)(i, 0.3) for i in range(6)]
        assert [await f for f in futs] == list(range(6))
        rep = await w.report()
        assert rep["max_active"] == 3
        starts = [e[1] for e in rep["events"] if e[0] == "start"]
        assert set(starts[:3]) == {0, 1, 2}  # FIFO admission: the first three submitted start first


# -- inspection ---------------------------------------------------------------------------


async def test_actors_lists_processes_and_residents():
    """rt.actors() reports name, class, the actor process's host pid and state for process and resident actors."""
    async with actorbox.Runtime() as rt:
        c = await rt.start(Counter, name="counter")
        anon = await rt.start(Slow)
        rt.register("models", Models())
        infos = {i.label: i for i in rt.actors() if i.kind != "zygote"}  # (its rows: test_inspection.py)
        assert set(infos) == {"counter", actorbox.info(anon).label, "models"}
        ci = infos["counter"]
        assert (ci.name, ci.cls, ci.state) == ("counter", "Counter", "alive")
        assert _is_same_process(ci.pid, await c.identity())
        ai = infos[actorbox.info(anon).label]
        assert (ai.name, ai.cls, ai.state) == (None, "Slow", "alive")
        assert _is_same_process(ai.pid, await anon.identity())
        assert not _is_same_process(ai.pid, await c.identity())
        mi = infos["models"]
        assert (mi.name, mi.cls, mi.pid, mi.state) == ("models", "Models", None, "resident")
        await rt.stop(anon)
        assert {i.label: i.state for i in rt.actors()}[actorbox.info(anon).label] == "stopped"


async def test_pending_calls_shows_slow_call():
    """rt.pending_calls() shows an in-flight call with method, actor, caller, state and age; it is gone after."""
    async with actorbox.Runtime() as rt:
        s = await rt.start(Slow, name="slowpoke")
        fut = s.slow(0.5)
        await anyio.sleep(0.2)
        pending = rt.pending_calls()
        assert len(pending) == 1
        p = pending[0]
        assert (p.method, p.actor, p.caller, p.state, p.parent_call_id) == ("slow", "slowpoke", "host", "running", None)
        assert 0.15 <= p.age_s < 5
        assert await fut == "slow-done"
        assert rt.pending_calls() == []
