"""A tiny plugin host: two plugin classes run as actors, each in its own process.

The host owns a model registry (a host-resident named actor, the kind of
singleton a plugin would otherwise import as a module global); a plugin reaches
it by name with ``actorbox.get_actor("models")`` and awaits its methods, the call
going through the host's scheduler like any other. Errors come back typed.

Run: ``python examples/plugin_host.py`` (``bash scripts/setup.sh demo`` does it).
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import anyio
import psutil

import actorbox


class Registry:
    """Host-resident: lives in the host process, registered under the name "models"."""

    def __init__(self) -> None:
        self.models = {
            "sentiment": {"labels": ["negative", "positive"], "version": 3},
            "language": {"labels": ["de", "en", "fr"], "version": 1},
        }
        self.lookups: dict[str, int] = {}

    def get(self, name: str) -> dict[str, Any]:
        self.lookups[name] = self.lookups.get(name, 0) + 1
        if name not in self.models:
            raise KeyError(f"no model named {name!r}; known: {sorted(self.models)}")
        return {"name": name, "pid": os.getpid(), **self.models[name]}


@actorbox.actor
class Resizer:
    """A plugin with sync methods (they run on a worker thread in the actor process)."""

    def __init__(self, scale: float) -> None:
        self.scale = scale

    def resize(self, width: int, height: int) -> tuple[int, int]:
        if width <= 0 or height <= 0:
            raise ValueError(f"image size must be positive, got {width}x{height}")
        return round(width * self.scale), round(height * self.scale)

    def where(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "uid": os.getuid(), "ACTORBOX_CHILD": os.environ.get("ACTORBOX_CHILD")}

    def brighten(self, image: Any, amount: float) -> float:
        """Works in place on the host's image: shared memory, nothing copied either way."""
        image.add_(amount)
        return float(image.mean())


@actorbox.actor(name="classifier")
class Classifier:
    """A plugin with an async method that calls back into the host's registry."""

    async def classify(self, model: str, text: str) -> dict[str, Any]:
        models = actorbox.get_actor("models")  # a handle routed through the host scheduler
        spec = await models.get(model)
        labels = spec["labels"]
        label = labels[-1] if any(w in text for w in ("good", "great", "love")) else labels[0]  # state of the art
        return {"label": label, "model": f"{spec['name']} v{spec['version']}", "registry_pid": spec["pid"]}

    def crash_with_private_error(self) -> None:
        class TokenizerExploded(Exception):  # a type the host cannot (and must not) rebuild
            pass

        raise TokenizerExploded("vocabulary file is corrupt")


async def main() -> int:
    t0 = time.monotonic()
    async with actorbox.Runtime() as rt:
        registry = Registry()
        rt.register("models", registry)
        resizer = await rt.start(Resizer, 0.5)
        classifier = await rt.start(Classifier)  # named "classifier" by its decorator
        assert rt.get_actor("classifier") == classifier

        where = await resizer.where()
        pids = {info.label: info.pid for info in rt.actors()}
        resizer_pid = pids[actorbox.info(resizer).label]  # its label: its name, or Resizer#<id>
        print(f"host: pid {os.getpid()}, uid {os.getuid()}")
        print(f"Resizer: pid {resizer_pid} seen from the host; inside its sandbox pid {where['pid']}, "
              f"uid {where['uid']}, ACTORBOX_CHILD={where['ACTORBOX_CHILD']}")
        print(f"resize(640, 480) -> {await resizer.resize(640, 480)}")

        # A 64 MB image handed over without copying: allocated in shared memory, the
        # actor maps the same pages and its in-place write is seen here.
        image = actorbox.shared_empty(4096, 4096)  # float32
        image.fill_(0.0)
        await resizer.brighten(image, 0.25)  # the first tensor makes the actor import torch (~1 s)
        t1 = time.perf_counter()
        mean = await resizer.brighten(image, 0.5)
        took = (time.perf_counter() - t1) * 1e3
        print(f"brighten(64 MB image) in {took:.1f} ms, no copy: actor saw mean {mean:.2f}, "
              f"host now sees {float(image[0, 0]):.2f}")

        # Many calls in flight at once; each handle.method() returns an awaitable Future.
        futures = [classifier.classify("sentiment", text) for text in ("great stuff", "awful", "love it")]
        for text, fut in zip(("great stuff", "awful", "love it"), futures, strict=True):
            r = await fut
            print(f"classify({text!r}) -> {r['label']} by {r['model']} "
                  f"(the registry answered from pid {r['registry_pid']})")

        # Errors come back typed, with the remote traceback attached.
        try:
            await resizer.resize(0, 10)
        except ValueError as exc:
            print(f"typed error from the actor: ValueError: {exc}")
        try:
            # The registry (host) raises KeyError inside the actor's call; the actor
            # doesn't catch it, so it travels host -> actor -> host, still a KeyError.
            await classifier.classify("vision", "a cat")
        except KeyError as exc:
            print(f"typed error through a nested call: KeyError: {exc}")
        try:
            await classifier.crash_with_private_error()
        except actorbox.RemoteError as exc:
            print(f"type the host does not know: RemoteError({exc.type_name}): {exc.message}")  # type: ignore[attr-defined]
        try:
            await resizer.no_such_method()
        except actorbox.MethodNotFoundError as exc:
            print(f"unknown method: {type(exc).__name__}: {exc}")

        print("\nactors:")
        for info in rt.actors():
            # kind: "actor", or "zygote" for the prepared process its actors were forked from
            print(f"  {info.kind:<6} {info.label:<18} {info.cls:<10} pid={info.pid} state={info.state}")
        print(f"registry lookups: {registry.lookups}")
        await rt.stop(resizer)
        await rt.stop(resizer)  # idempotent
        try:
            await resizer.resize(1, 1)
        except actorbox.ActorStoppedError as exc:
            print(f"after stop(): {type(exc).__name__}: {exc}")
    left = psutil.Process().children(recursive=True)
    print(f"done in {time.monotonic() - t0:.2f} s; child processes left: {len(left)}")
    return 0 if not left else 1


if __name__ == "__main__":
    # The host runs on asyncio or trio alike: python examples/plugin_host.py --backend trio
    backend = sys.argv[sys.argv.index("--backend") + 1] if "--backend" in sys.argv else "asyncio"
    sys.exit(anyio.run(main, backend=backend))
