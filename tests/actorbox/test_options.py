"""Tests for actorbox/_options.py: the @actor decorator and its validated options."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

import actorbox
from actorbox._options import ActorOptions, options_of


def test_bare_decorator_gives_defaults() -> None:
    """@actor without parentheses marks the class with default options."""

    @actorbox.actor
    class Counter:
        pass

    assert options_of(Counter) == ActorOptions()
    assert options_of(Counter).max_concurrency == 1 and options_of(Counter).max_restarts == 0


def test_decorator_with_options() -> None:
    """@actor(...) records every keyword option, dependencies normalised to a tuple."""

    @actorbox.actor(name="models", dependencies=["numpy<2", "pillow"], sandbox="disabled", max_concurrency=4,
                    max_restarts=2)
    class Models:
        pass

    assert options_of(Models) == ActorOptions(name="models", dependencies=("numpy<2", "pillow"), sandbox="disabled",
                                              max_concurrency=4, max_restarts=2)
    assert type(options_of(Models).dependencies) is tuple


def test_sandbox_policy_option() -> None:
    """sandbox= accepts a sandbox.SandboxPolicy as well as 'required', 'disabled' and None."""
    from sandbox import SandboxPolicy

    policy = SandboxPolicy(network=True)

    @actorbox.actor(sandbox=policy)
    class Networked:
        pass

    assert options_of(Networked).sandbox is policy
    for mode in ("required", "disabled", None):
        assert ActorOptions(sandbox=mode).sandbox == mode


def test_empty_parentheses() -> None:
    """@actor() behaves like bare @actor."""

    @actorbox.actor()
    class C:
        pass

    assert options_of(C) == ActorOptions()


def test_class_stays_a_plain_class() -> None:
    """The decorated class is the same class: constructible, its methods and class attributes work as before."""

    class Counter:
        step = 2

        def __init__(self, start: int = 0) -> None:
            self.n = start

        def incr(self) -> int:
            self.n += self.step
            return self.n

        async def aget(self) -> int:
            return self.n

    decorated = actorbox.actor(max_concurrency=2)(Counter)
    assert decorated is Counter
    c = decorated(10)
    assert isinstance(c, Counter) and c.incr() == 12
    assert Counter.__name__ == "Counter" and Counter.step == 2


def test_undecorated_class_has_default_options() -> None:
    """options_of() a class never decorated returns the defaults."""

    class Plain:
        pass

    assert options_of(Plain) == ActorOptions()


def test_subclass_does_not_inherit_options() -> None:
    """options_of() reads only the class's own options: an undecorated subclass gets the defaults."""

    @actorbox.actor(max_concurrency=3)
    class Base:
        pass

    class Child(Base):
        pass

    assert options_of(Base).max_concurrency == 3
    assert options_of(Child) == ActorOptions()


def test_options_are_frozen() -> None:
    """ActorOptions cannot be changed after validation."""
    opts = ActorOptions(max_concurrency=2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.max_concurrency = 100  # type: ignore[misc]


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"name": ""}, ValueError, "name"),
        ({"name": 5}, ValueError, "name"),
        ({"dependencies": "numpy"}, TypeError, "dependencies"),
        ({"dependencies": ["numpy", 3]}, TypeError, "dependencies"),
        ({"sandbox": "maybe"}, ValueError, "sandbox"),
        ({"sandbox": True}, ValueError, "sandbox"),
        ({"max_concurrency": 0}, ValueError, "max_concurrency"),
        ({"max_concurrency": -1}, ValueError, "max_concurrency"),
        ({"max_concurrency": 2.0}, ValueError, "max_concurrency"),
        ({"max_concurrency": True}, ValueError, "max_concurrency"),
        ({"max_concurrency": "4"}, ValueError, "max_concurrency"),
        ({"max_restarts": -1}, ValueError, "max_restarts"),
        ({"max_restarts": 1.5}, ValueError, "max_restarts"),
        ({"max_restarts": None}, ValueError, "max_restarts"),
    ],
    ids=lambda v: repr(v) if isinstance(v, dict) else "",
)
def test_bad_options_are_refused(options: dict[str, Any], error: type[Exception], match: str) -> None:
    """Invalid option values raise at decoration time with a message naming the option."""
    with pytest.raises(error, match=match):
        actorbox.actor(**options)


def test_unknown_option_is_refused() -> None:
    """An unknown keyword option raises TypeError."""
    with pytest.raises(TypeError):
        actorbox.actor(concurrency=2)


@pytest.mark.parametrize("target", [lambda: None, 42, "Counter"], ids=["function", "int", "str"])
def test_only_classes_can_be_decorated(target: Any) -> None:
    """@actor on something that is not a class raises TypeError."""
    with pytest.raises(TypeError, match="classes"):
        actorbox.actor(target)
    with pytest.raises(TypeError, match="classes"):
        actorbox.actor(max_concurrency=2)(target)

