"""Tests that what actorbox's API returns or raises is importable from ``actorbox`` (issue 15, API surface)."""

from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path

import anyio
import pytest

import actorbox
import sandbox
import scheduler

pytestmark = pytest.mark.anyio


def test_returned_types_are_exported() -> None:
    """CallInfo (rt.pending_calls()), LoadedExtension (rt.load_extensions()), LeakCheck (the fixture) are exported."""
    import actorbox._pytest_plugin as plugin

    assert actorbox.CallInfo is scheduler.CallInfo
    assert {"CallInfo", "LoadedExtension", "LeakCheck", "PolicyError"} <= set(actorbox.__all__)
    assert plugin.LeakCheck is actorbox.LeakCheck


def test_leak_check_module_needs_no_pytest() -> None:
    """actorbox.LeakCheck lives outside the pytest plugin, so importing actorbox never imports pytest for it."""
    import actorbox._leaks as leaks

    assert actorbox.LeakCheck.__module__ == "actorbox._leaks"
    assert "pytest" not in vars(leaks)


def test_leak_check_fixture_yields_the_exported_type(actorbox_leak_check: actorbox.LeakCheck) -> None:
    """The actorbox_leak_check fixture yields an actorbox.LeakCheck, which finds nothing left behind here."""
    assert isinstance(actorbox_leak_check, actorbox.LeakCheck)
    assert actorbox_leak_check.leaks() == []


@pytest.mark.parametrize("kwargs", [{"memory_limit": 5}, {"readable_paths": ["/etc"]}, {"writable_paths": "/tmp/x"},
                                    {"max_processes": 1}, {"tmpfs_size": "big"}])
def test_bad_policy_raises_an_actorbox_error(kwargs: dict[str, object]) -> None:
    """actorbox.SandboxPolicy(bad) raises actorbox.PolicyError: an ActorboxError, sandbox's PolicyError, ValueError."""
    with pytest.raises(actorbox.PolicyError) as info:
        actorbox.SandboxPolicy(**kwargs)  # type: ignore[arg-type]  # bad input is the point
    err = info.value
    assert isinstance(err, actorbox.ActorboxError)
    assert isinstance(err, sandbox.PolicyError) and isinstance(err, ValueError)
    assert next(iter(kwargs)) in str(err)
    assert err.__suppress_context__  # the message is the whole story: sandbox's copy is not chained


def test_actorbox_policy_is_a_sandbox_policy_equal_by_fields(tmp_path: Path) -> None:
    """actorbox.SandboxPolicy is a sandbox.SandboxPolicy, equal and hashed alike by fields, and replaceable."""
    mine = actorbox.SandboxPolicy(memory_limit=1 << 30, readable_paths=(str(tmp_path),))
    theirs = sandbox.SandboxPolicy(memory_limit=1 << 30, readable_paths=(str(tmp_path),))
    assert isinstance(mine, sandbox.SandboxPolicy)
    assert mine == theirs and theirs == mine and hash(mine) == hash(theirs)
    assert mine != actorbox.SandboxPolicy() and actorbox.SandboxPolicy() == sandbox.SandboxPolicy()
    looser = dataclasses.replace(mine, network=True)
    assert type(looser) is actorbox.SandboxPolicy and looser.network
    assert pickle.loads(pickle.dumps(mine)) == mine
    with pytest.raises(actorbox.PolicyError):
        dataclasses.replace(mine, max_open_files=0)


@actorbox.actor
class PolicyMaker:
    def make(self) -> None:
        import actorbox as ab

        ab.SandboxPolicy(memory_limit=5)


async def test_policy_error_from_an_actor_is_its_remote_error() -> None:
    """A PolicyError raised in an actor arrives as RemoteError naming actorbox.PolicyError (not as the host's own)."""
    async with actorbox.Runtime() as rt:
        h = await rt.start(PolicyMaker)
        with anyio.fail_after(30), pytest.raises(actorbox.RemoteError) as info:
            await h.make()
    assert info.value.type_name == "actorbox.PolicyError"
    assert "memory_limit" in str(info.value)


def test_one_meaning_per_name() -> None:
    """The trace timeline's records are TracedRuntime/TracedCall (not a second Runtime); sandbox has no default_echo."""
    import actorbox._timeline as timeline
    import sandbox._launcher as launcher

    assert not hasattr(timeline, "Runtime") and not hasattr(timeline, "Call")
    assert timeline.TracedRuntime.__name__ == "TracedRuntime" and timeline.TracedCall.__name__ == "TracedCall"
    assert not hasattr(launcher, "default_echo")


@actorbox.actor
class Limits:
    def open_files(self) -> int:
        import resource

        return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


async def test_runtime_applies_an_actorbox_policy() -> None:
    """A Runtime given an actorbox.SandboxPolicy starts its actors under it (here: their open-files limit)."""
    async with actorbox.Runtime(sandbox_policy=actorbox.SandboxPolicy(max_open_files=256)) as rt:
        h = await rt.start(Limits)
        with anyio.fail_after(30):
            assert await h.open_files() == 256
