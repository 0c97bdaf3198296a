"""The ``preload`` option: validated once, and imported by the actor process before its instance is constructed."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

import actorbox
from actorbox._extensions import read_extension

PROBE = "tests.actorbox.preload_probe"


@actorbox.actor(preload=[PROBE])
class Preloaded:
    def __init__(self) -> None:
        # Looked up, never imported here: only the preload can have put it there.
        self.seen = sys.modules.get(PROBE)
        self.init_at = time.monotonic()

    def report(self) -> tuple[bool, bool]:
        """(imported before __init__ ran, imported in this process)."""
        import os

        if self.seen is None:
            return False, False
        return self.seen.IMPORTED_AT <= self.init_at, self.seen.IMPORTED_IN == os.getpid()


@actorbox.actor
class NotPreloaded(Preloaded):
    pass


@actorbox.actor(preload=["json", "no_such_module_for_actorbox_preload"])
class MissingPreload:
    pass


@pytest.mark.anyio
async def test_a_preloaded_module_is_imported_before_the_instance_is_constructed() -> None:
    """With preload the module is in the actor's sys.modules, imported there, before __init__; without it, not."""
    async with actorbox.Runtime() as rt:
        with_preload = await rt.start(Preloaded)
        without = await rt.start(NotPreloaded)
        assert await with_preload.report() == (True, True)
        assert await without.report() == (False, False)


@pytest.mark.anyio
async def test_a_preload_that_fails_to_import_fails_the_start_naming_module_and_environment() -> None:
    """A preload module missing from the actor's environment fails the start with ActorStartError naming both."""
    async with actorbox.Runtime() as rt:
        with pytest.raises(actorbox.ActorStartError) as info:
            await rt.start(MissingPreload, name="missing")
        text = str(info.value)
        assert "no_such_module_for_actorbox_preload" in text and "preload" in text
        assert sys.prefix in text  # the host's environment: the one this actor runs in
        assert info.value.actor == "missing"
        ok = await rt.start(Preloaded)  # the Runtime goes on
        assert await ok.report() == (True, True)


@pytest.mark.parametrize("preload", ["numpy", [1], ["../numpy"], ["os; import shutil"], ["numpy>=2"], [".rel"],
                                     ["a..b"], ["x" * 300], [f"m{i}" for i in range(65)], None])
def test_preload_that_is_not_a_list_of_module_names_is_refused(preload: object) -> None:
    """@actor(preload=...) accepts only a list of dotted identifiers; anything else is an InvalidPreloadError."""
    with pytest.raises(actorbox.InvalidPreloadError, match="preload"):
        actorbox.actor(preload=preload)


def test_preload_keeps_module_names_in_order_once() -> None:
    """Valid names are kept as a tuple, in order, duplicates dropped."""
    @actorbox.actor(preload=["torch", "skimage.filters", "torch", "_private1"])
    class C:
        pass

    assert C.__actorbox_options__.preload == ("torch", "skimage.filters", "_private1")
    assert issubclass(actorbox.InvalidPreloadError, actorbox.ActorboxError)


def _extension(tmp_path: Path, preload: str) -> Path:
    tmp_path = tmp_path / "pre-node"  # made 0755: the sandboxed actor's uid can't list pytest's 0700 tmp_path
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / "pyproject.toml").write_text(
        f'[project]\nname = "pre-node"\n\n[tool.actorbox]\nentry = "node:Node"\npreload = {preload}\n')
    (tmp_path / "node.py").write_text(
        "import sys\n\nclass Node:\n    def __init__(self):\n        self.seen = 'probe_mod' in sys.modules\n\n"
        "    def seen_before_init(self):\n        return self.seen\n")
    (tmp_path / "probe_mod.py").write_text("VALUE = 1\n")
    return tmp_path


def test_an_extension_pyproject_preload_is_read_and_validated(tmp_path: Path) -> None:
    """[tool.actorbox] preload becomes the options' preload; a bad entry is an InvalidPreloadError naming the file."""
    assert read_extension(str(_extension(tmp_path, '["probe_mod", "json"]'))).options.preload == ("probe_mod", "json")
    with pytest.raises(actorbox.InvalidPreloadError, match=r"pyproject\.toml.*preload entry '/etc/passwd'") as info:
        read_extension(str(_extension(tmp_path, '["/etc/passwd"]')))
    assert (info.value.actor, info.value.module) == ("pre-node", "/etc/passwd")


@pytest.mark.anyio
async def test_an_extension_preloads_its_own_module_before_construction(tmp_path: Path) -> None:
    """An extension's preload (a module of its folder) is imported in its sandboxed actor before __init__."""
    async with actorbox.Runtime() as rt:
        node = await rt.load_extension(_extension(tmp_path, '["probe_mod"]'))
        assert await node.seen_before_init() is True
