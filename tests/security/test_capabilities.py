"""Reserved names and capabilities: what an actor can reach, and under which names.

Issue 14, findings 3 and 7. An extension named ``actorbox.objects`` took the object
store's name and answered other actors' ObjectRef reads with forged values; an actor
called an unnamed actor by guessing its small integer id; a host-resident UserDict
answered ``pop`` and ``clear``. Now names under ``actorbox.`` are refused, a call from
an actor is served only with the random token its handle carries (so an actor reaches
only actors whose handle reached it), and a host-resident object exposes only the
methods its own classes define, or exactly those the host lists.
"""

from __future__ import annotations

import collections
import re
from pathlib import Path

import anyio
import pytest

import actorbox
from actorbox._objects import SERVICE_NAME
from actorbox._options import RESERVED_PREFIX, check_name

from ._support import CALL_TIMEOUT, start_actors
from .plugins.capabilities import Guesser, Holder, Secret

pytestmark = pytest.mark.anyio


# -- reserved names ----------------------------------------------------------------------


def test_every_internal_service_name_is_reserved() -> None:
    """The object store's service name falls under the reserved prefix, so no one else can take it."""
    assert SERVICE_NAME.startswith(RESERVED_PREFIX)
    with pytest.raises(actorbox.NameTakenError, match="reserved"):
        check_name(SERVICE_NAME, "name")


@pytest.mark.parametrize("name", [SERVICE_NAME, "actorbox.anything"])
def test_the_actor_decorator_refuses_reserved_names(name: str) -> None:
    """@actorbox.actor(name=...) under the reserved prefix raises NameTakenError (a ValueError) at decoration."""
    with pytest.raises(actorbox.NameTakenError, match="reserved") as info:
        actorbox.actor(name=name)
    assert isinstance(info.value, ValueError) and info.value.name == name  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", [SERVICE_NAME, "actorbox.anything"])
async def test_start_and_register_refuse_reserved_names(name: str) -> None:
    """rt.start(name=...) and rt.register(...) under the reserved prefix raise NameTakenError and take nothing."""
    async with actorbox.Runtime() as rt:
        with pytest.raises(actorbox.NameTakenError, match="reserved"):
            await rt.start(Secret, name=name)
        with pytest.raises(actorbox.NameTakenError, match="reserved"):
            rt.register(name, {"forged": True})
        assert rt.actors() == [] and rt.named_actors() == {}
        await rt.put("value")  # the Runtime still registers the store itself
        assert list(rt.named_actors()) == [SERVICE_NAME]


_FORGER = """
class Store:
    def get(self, object_id):
        return "forged by an extension"

    def release(self, object_id):
        return None
"""


def _extension(folder: Path, project: str, table_name: str | None) -> Path:
    folder.mkdir()
    (folder / "store.py").write_text(_FORGER)
    name = f'name = "{table_name}"\n' if table_name else ""
    (folder / "pyproject.toml").write_text(
        f'[project]\nname = "{project}"\n[tool.actorbox]\nentry = "store:Store"\n{name}')
    return folder


@pytest.mark.parametrize(("project", "table_name"), [(SERVICE_NAME, None), ("innocent-store", SERVICE_NAME)],
                         ids=["project-name", "tool-actorbox-name"])
async def test_an_extension_named_like_the_object_store_is_refused(tmp_path: Path, project: str,
                                                                  table_name: str | None) -> None:
    """Finding 3: an extension named actorbox.objects is an ExtensionError, and ObjectRef reads reach the real store."""
    ext = _extension(tmp_path / "store", project, table_name)
    async with actorbox.Runtime() as rt:
        with pytest.raises(actorbox.ExtensionError, match="reserved"):
            await rt.load_extension(ext)
        (loaded,) = await rt.load_extensions(tmp_path)
        assert isinstance(loaded.error, actorbox.ExtensionError) and loaded.handle is None
        assert SERVICE_NAME not in rt.named_actors()  # the squatter never took the name
        (holder,) = await start_actors(rt, Holder)
        ref = await rt.put({"value": 42})
        with anyio.fail_after(CALL_TIMEOUT):
            assert await holder.read([ref]) == {"value": 42}  # not "forged by an extension"


# -- actor references are capabilities ---------------------------------------------------


async def test_an_actor_cannot_call_an_actor_by_guessing_its_id() -> None:
    """Finding 7: an id guessed, stolen from a handle, or quoted with a made-up token reaches nothing."""
    async with actorbox.Runtime() as rt:
        secret, guesser = await start_actors(rt, Secret, Guesser)
        with anyio.fail_after(CALL_TIMEOUT):
            outcomes = [await guesser.guess(actorbox.info(secret).actor_id, "reveal"),
                        await guesser.guess(actorbox.info(secret).actor_id, "reveal", b"\x00" * 16),
                        await guesser.steal(secret, "reveal"),
                        await guesser.guess(10_000, "reveal")]  # an id that does not exist, for comparison
            assert all(o[:2] == ["error", "ActorNotFoundError"] for o in outcomes), outcomes
            # The refusal says nothing of whether the id exists.
            assert len({re.sub(r"\d+", "N", o[2]) for o in outcomes}) == 1, outcomes
            assert await guesser.token_length(secret) == 16  # a handle given to it carries its token
            assert await secret.reveal() == "the secret"  # the host still reaches it


async def test_a_handle_works_wherever_it_reached_the_actor() -> None:
    """Handles given as constructor or call arguments (nested too), by name, or as a result all work."""
    async with actorbox.Runtime() as rt:
        secret, other = await start_actors(rt, Secret, Holder)
        await rt.start(Secret, name="named-secret")
        rt.register("directory", _Directory(secret))
        with anyio.fail_after(CALL_TIMEOUT):
            holder = await rt.start(Holder, secret)
            assert await holder.call_kept("reveal") == "the secret"  # constructor argument
            assert await other.call_handle(secret, "reveal") == "the secret"  # call argument
            assert await other.call_in_list([secret, secret], "reveal") == ["the secret"] * 2  # nested
            assert await other.by_name("named-secret", "reveal") == "the secret"  # name lookup
            assert await other.from_resident("directory", "find", "reveal") == "the secret"  # host's result
            assert await other.via(holder, "reveal") == ["ok", "the secret"]  # forwarded from another actor
            # A Future as an argument: the scheduler hands holder's result straight to other.
            assert await other.call_handle(holder.give(), "reveal") == "the secret"


async def test_forged_handles_are_refused_wherever_they_go() -> None:
    """A handle with a made-up token is a SerializationError at the host; passed to an actor, it reaches nothing."""
    async with actorbox.Runtime() as rt:
        secret, holder = await start_actors(rt, Secret, Holder)
        with anyio.fail_after(CALL_TIMEOUT):
            guesser = await rt.start(Guesser, actorbox.info(secret).actor_id)
            # The host's calls are trusted, so it must never take a forged handle as its own.
            with pytest.raises(actorbox.SerializationError, match="not a valid reference"):
                await guesser.forge(actorbox.info(secret).actor_id)
            assert (await holder.via(guesser, "reveal"))[:2] == ["error", "ActorNotFoundError"]
            assert await holder.call_handle(secret, "reveal") == "the secret"


class _Directory:
    """A host-resident object that hands out a handle as its result."""

    def __init__(self, handle: actorbox.ActorHandle) -> None:
        self.handle = handle

    def find(self) -> actorbox.ActorHandle:
        return self.handle


# -- host-resident objects expose what their own classes define --------------------------


class Vault(collections.UserDict):  # type: ignore[type-arg]
    """A UserDict holding secrets, with one method of its own."""

    def lookup(self, key: str) -> str:
        return f"looked up {key}"


class _Base:
    def inherited(self) -> str:
        return "from the base"


class Plain(_Base):
    def own(self) -> str:
        return "own"

    @staticmethod
    def static() -> str:
        return "static"

    async def later(self) -> str:
        return "async"


async def test_a_resident_userdict_does_not_answer_its_inherited_methods() -> None:
    """Finding 7: pop, clear, keys of a registered UserDict subclass are refused; its own method works."""
    async with actorbox.Runtime() as rt:
        vault = Vault(secret="the host's secret")
        h = rt.register("vault", vault)
        with anyio.fail_after(CALL_TIMEOUT):
            assert await h.lookup("x") == "looked up x"
            for method, args in (("pop", ("secret",)), ("clear", ()), ("keys", ()), ("get", ("secret",))):
                with pytest.raises(actorbox.MethodNotFoundError, match="lookup"):
                    await getattr(h, method)(*args)
            (holder,) = await start_actors(rt, Holder)
            assert (await holder.try_call("vault", "pop", "secret"))[:2] == ["error", "MethodNotFoundError"]
            assert await holder.try_call("vault", "lookup", "y") == ["ok", "looked up y"]
        assert dict(vault) == {"secret": "the host's secret"}


async def test_a_plain_resident_keeps_every_public_method() -> None:
    """A plain class's own, inherited (from its own bases), static and async public methods stay callable."""
    async with actorbox.Runtime() as rt:
        h = rt.register("plain", Plain())
        with anyio.fail_after(CALL_TIMEOUT):
            assert [await h.own(), await h.inherited(), await h.static(), await h.later()] == [
                "own", "from the base", "static", "async"]


async def test_methods_exposes_exactly_the_listed_ones() -> None:
    """register(methods=[...]) exposes exactly those, stdlib-inherited ones included; the rest are refused."""
    async with actorbox.Runtime() as rt:
        vault = Vault(a=1)
        h = rt.register("vault", vault, methods=["get"])
        with anyio.fail_after(CALL_TIMEOUT):
            assert await h.get("a") == 1
            with pytest.raises(actorbox.MethodNotFoundError, match=re.escape("methods=[...]")):
                await h.lookup("a")  # its own, but not listed


@pytest.mark.parametrize(("methods", "error"), [
    (["nope"], actorbox.MethodNotFoundError),
    (["lookup", "_secret"], actorbox.PrivateMethodError),
    (["data"], actorbox.MethodNotFoundError),  # an attribute, not a method
    ("lookup", TypeError),
])
async def test_bad_methods_fail_at_register(methods: object, error: type[Exception]) -> None:
    """Unknown, private or non-method names in methods= (or a bare string) fail register() and take no name."""
    async with actorbox.Runtime() as rt:
        with pytest.raises(error):
            rt.register("vault", Vault(), methods=methods)  # type: ignore[arg-type]
        assert rt.named_actors() == {}
