"""Integration tests of how failures reach the caller, with real actor processes.

Remote exceptions keep their type and carry the remote traceback; misuse
(unknown, private or dunder methods, calls after stop, failing constructors,
unserializable results) raises a typed actorbox error.
"""

from __future__ import annotations

import inspect

import anyio
import psutil
import pytest

import actorbox

from .processes import wait_for_no_leftovers

pytestmark = pytest.mark.anyio


class PluginError(Exception):
    """An application exception type, importable in both host and actor."""


class Unsendable:
    pass


@actorbox.actor
class Faulty:
    def fail_with_value(self, *args):
        raise ValueError(*args)

    async def afail_with_value(self, *args):
        await anyio.sleep(0)
        raise ValueError(*args)

    def fail_with_plugin_error(self, msg):
        raise PluginError(msg)

    def fail_with_local_type(self):
        class HiddenError(Exception):
            pass

        raise HiddenError("from a type the host cannot import")

    def unsendable(self):
        return Unsendable()

    async def aunsendable(self):
        return object()

    def open_missing(self, path):
        open(path)

    def rename_missing(self, src, dst):
        import os

        os.rename(src, dst)

    def ok(self):
        return "ok"

    def _secret(self):
        return "leaked"

    async def call_resident_private(self, name, method):
        # Goes through the handle's client-side check.
        return await getattr(actorbox.get_actor(name), method)()

    async def call_resident_raw(self, name, method):
        # Bypasses the handle's client-side check, as a malicious actor could:
        # the host must refuse the call itself.
        h = actorbox.get_actor(name)
        return await h._caller.submit(h._actor_id, h._label, method, b"", token=h._token)


@actorbox.actor
class BadInit:
    def __init__(self, value):
        raise ValueError(f"bad value {value}")

    def ok(self):
        return "ok"


class Vault:
    """A host-resident object with a private method that must never be reachable."""

    def __init__(self):
        self.opened = 0

    def _secret(self):
        self.opened += 1
        return "leaked"

    def public(self):
        return "public"


async def _children_gone(timeout=2.0):
    with anyio.move_on_after(timeout):
        while psutil.Process().children(recursive=True):
            await anyio.sleep(0.02)
    return psutil.Process().children(recursive=True)


# -- remote exceptions -----------------------------------------------------------------


@pytest.mark.parametrize("method", ["fail_with_value", "afail_with_value"])
async def test_remote_builtin_exception_keeps_type_args_and_traceback(method):
    """A ValueError raised in the actor arrives as ValueError with its args and the remote traceback text."""
    async with actorbox.Runtime() as rt:
        f = await rt.start(Faulty)
        with pytest.raises(ValueError) as ei:
            await getattr(f, method)("bad input", 3)
        exc = ei.value
        assert type(exc) is ValueError
        assert exc.args == ("bad input", 3)
        tb = exc.remote_traceback
        assert method in tb
        assert "ValueError" in tb
        # The actor still serves after raising.
        assert await f.ok() == "ok"


async def test_an_os_error_keeps_its_file_names():
    """OSError keeps file names beside its args; they arrive (and so does the message naming them)."""
    async with actorbox.Runtime() as rt:
        f = await rt.start(Faulty)
        with pytest.raises(FileNotFoundError) as ei:
            await f.open_missing("/nonexistent/plugin.cfg")
        exc = ei.value
        assert (exc.errno, exc.filename) == (2, "/nonexistent/plugin.cfg")
        assert str(exc) == "[Errno 2] No such file or directory: '/nonexistent/plugin.cfg'"
        with pytest.raises(FileNotFoundError) as ei:
            await f.rename_missing("/nonexistent/a", "/nonexistent/b")
        assert (ei.value.filename, ei.value.filename2) == ("/nonexistent/a", "/nonexistent/b")


async def test_custom_exception_from_importable_module_keeps_type():
    """An exception class defined in an importable module arrives with that exact type and its message."""
    async with actorbox.Runtime() as rt:
        f = await rt.start(Faulty)
        with pytest.raises(PluginError) as ei:
            await f.fail_with_plugin_error("plugin broke")
        assert type(ei.value) is PluginError
        assert ei.value.args == ("plugin broke",)
        assert "fail_with_plugin_error" in ei.value.remote_traceback


async def test_exception_of_unimportable_type_arrives_as_remote_error():
    """An exception whose type the host cannot import arrives as RemoteError naming the type."""
    async with actorbox.Runtime() as rt:
        f = await rt.start(Faulty)
        with pytest.raises(actorbox.RemoteError) as ei:
            await f.fail_with_local_type()
        assert "HiddenError" in ei.value.type_name
        assert "from a type the host cannot import" in str(ei.value)
        assert "fail_with_local_type" in ei.value.remote_traceback


# -- refused calls ----------------------------------------------------------------------


async def test_unknown_method_raises_method_not_found_listing_public_methods():
    """Calling a method the actor class doesn't define raises MethodNotFoundError listing its public methods."""
    async with actorbox.Runtime() as rt:
        f = await rt.start(Faulty)
        with pytest.raises(actorbox.MethodNotFoundError) as ei:
            await f.no_such_method()
        msg = str(ei.value)
        assert "no_such_method" in msg
        for public in ("fail_with_value", "ok", "unsendable"):
            assert public in msg
        assert "_secret" not in msg
        assert ei.value.method == "no_such_method"
        assert await f.ok() == "ok"


@pytest.mark.parametrize("method", ["_secret", "__secret__"])
async def test_private_and_dunder_methods_are_refused_through_handle(method):
    """handle._private or handle.__dunder__ (one the handle lacks) raises PrivateMethodError; the actor keeps
    serving. (Dunders the handle has, such as __init__, are the handle's own: never a remote call.)"""
    async with actorbox.Runtime() as rt:
        f = await rt.start(Faulty)
        with pytest.raises(actorbox.PrivateMethodError) as ei:
            await getattr(f, method)()
        assert method in str(ei.value)
        assert await f.ok() == "ok"


async def test_private_attribute_of_handle_is_not_a_remote_method():
    """handle._name is an AttributeError, not a remote call to the actor's private method."""
    async with actorbox.Runtime() as rt:
        f = await rt.start(Faulty)
        with pytest.raises(AttributeError):
            f._secret  # noqa: B018
        assert await f.ok() == "ok"


@pytest.mark.parametrize("method", ["_secret", "__init__", "__class__"])
async def test_actor_refuses_private_method_even_when_caller_bypasses_handle(method):
    """The actor process itself refuses a private method sent without the handle's client-side check."""
    async with actorbox.Runtime() as rt:
        f = await rt.start(Faulty)
        with pytest.raises(actorbox.PrivateMethodError):
            await f._caller.submit(f._actor_id, f._label, method, b"")
        assert await f.ok() == "ok"


@pytest.mark.parametrize("via", ["call_resident_private", "call_resident_raw"])
async def test_host_resident_private_method_refused_from_actor(via):
    """A host-resident actor's private method called from inside an actor is refused there and never runs.

    The actor passes the PrivateMethodError it got on to the host, which sees it as the
    actor's (RemoteError naming it): only the host's own errors keep actorbox's types.
    """
    async with actorbox.Runtime() as rt:
        vault = Vault()
        rt.register("vault", vault)
        f = await rt.start(Faulty)
        # (Through the handle, __init__ would be the handle's own; a dunder it lacks is refused.)
        for method in ("_secret", "__init__" if via == "call_resident_raw" else "__secret__"):
            with pytest.raises(actorbox.RemoteError) as ei:
                await getattr(f, via)("vault", method)
            assert ei.value.type_name == "actorbox.PrivateMethodError"
            assert (ei.value.actor, ei.value.method) == (actorbox.info(f).label, via)
        assert vault.opened == 0
        assert await rt.get_actor("vault").public() == "public"


async def test_host_resident_private_method_refused_from_host():
    """Calling a host-resident actor's private method from the host raises PrivateMethodError."""
    async with actorbox.Runtime() as rt:
        vault = Vault()
        h = rt.register("vault", vault)
        with pytest.raises(actorbox.PrivateMethodError):
            await h._secret()
        with pytest.raises(actorbox.PrivateMethodError):
            await h._caller.submit(h._actor_id, h._label, "_secret", b"")
        assert vault.opened == 0


# -- lifecycle errors ---------------------------------------------------------------------


async def test_constructor_failure_raises_actor_start_error_and_leaves_no_process():
    """A constructor that raises gives ActorStartError with the cause chained, no process, and a free name."""
    async with actorbox.Runtime() as rt:
        with pytest.raises(actorbox.ActorStartError) as ei:
            await rt.start(BadInit, 7, name="bad")
        err = ei.value
        assert "bad value 7" in str(err)
        assert isinstance(err.__cause__, ValueError)
        assert err.__cause__.args == ("bad value 7",)
        # Nothing of the actor is left; its zygote (and the sandbox around it) lives with the Runtime.
        assert await wait_for_no_leftovers(rt) == []
        assert [a for a in rt.actors() if a.name == "bad"] == []
        with pytest.raises(actorbox.ActorNotFoundError):
            rt.get_actor("bad")
        # The name was released, so it can be used again.
        h = await rt.start(Faulty, name="bad")
        assert await h.ok() == "ok"
    assert await _children_gone() == []  # the zygote too, once the Runtime exited


async def test_call_after_stop_raises_actor_stopped():
    """A call to a stopped actor raises ActorStoppedError naming the actor and method."""
    async with actorbox.Runtime() as rt:
        f = await rt.start(Faulty, name="gone")
        assert await f.ok() == "ok"
        await rt.stop(f)
        with pytest.raises(actorbox.ActorStoppedError) as ei:
            await f.ok()
        assert ei.value.actor == "gone"
        assert ei.value.method == "ok"
        assert "gone" in str(ei.value)


def test_every_public_error_derives_from_actorbox_error():
    """Every exception class exported by actorbox is a subclass of ActorboxError."""
    errors = [getattr(actorbox, n) for n in actorbox.__all__
              if inspect.isclass(getattr(actorbox, n)) and issubclass(getattr(actorbox, n), BaseException)]
    assert len(errors) >= 10
    for cls in errors:
        assert issubclass(cls, actorbox.ActorboxError), cls


async def test_raised_errors_are_actorbox_errors():
    """The errors raised for refused calls, stopped actors and failed starts are all ActorboxErrors."""
    async with actorbox.Runtime() as rt:
        f = await rt.start(Faulty)
        caught = []
        for make in (lambda: f.nope(), lambda: f._secret(), lambda: f.unsendable()):
            try:
                await make()
            except Exception as exc:
                caught.append(exc)
        try:
            await rt.start(BadInit, 1)
        except Exception as exc:
            caught.append(exc)
        await rt.stop(f)
        try:
            await f.ok()
        except Exception as exc:
            caught.append(exc)
        assert len(caught) == 5
        assert all(isinstance(e, actorbox.ActorboxError) for e in caught), caught


@pytest.mark.parametrize("method", ["unsendable", "aunsendable"])
async def test_unserializable_result_raises_serialization_error(method):
    """Returning a value that cannot cross the boundary raises SerializationError promptly; the actor goes on."""
    async with actorbox.Runtime() as rt:
        f = await rt.start(Faulty)
        with anyio.fail_after(5):
            with pytest.raises(actorbox.SerializationError) as ei:
                await getattr(f, method)()
        assert ("Unsendable" if method == "unsendable" else "object") in str(ei.value)
        assert await f.ok() == "ok"


async def test_unserializable_argument_from_actor_raises_serialization_error():
    """An actor passing an unserializable argument to a host-resident actor gets SerializationError."""

    @actorbox.actor
    class Sender:
        async def send(self):
            return await actorbox.get_actor("vault").public(object())

    async with actorbox.Runtime() as rt:
        rt.register("vault", Vault())
        s = await rt.start(Sender)
        with anyio.fail_after(5):
            with pytest.raises(actorbox.SerializationError) as ei:
                await s.send()
        assert "object" in str(ei.value)
