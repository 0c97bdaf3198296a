"""The README's Usage section works as written: its example runs, and its concurrency snippets do what they say."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _section(title: str) -> str:
    text = (ROOT / "README.md").read_text()
    return text.split(f"\n{title}\n", 1)[1].split("\n#", 1)[0]


def _python_blocks(section: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", section, re.S)


def _run(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=50,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)})


def test_the_usage_example_runs(tmp_path: Path) -> None:
    """The Usage section's example runs as a script: it classifies, prints the handle's info, stops the actor."""
    [example] = _python_blocks(_section("## Usage"))[:1]
    done = _run(example, tmp_path)
    assert done.returncode == 0, done.stderr
    assert "no\n" in done.stdout or "yes\n" in done.stdout
    assert "HandleInfo(actor_id=2, name='classifier', label='classifier')" in done.stdout


_HARNESS = '''
import asyncio
import anyio
import actorbox


@actorbox.actor(max_concurrency=4)
class Classifier:
    def __init__(self):
        self.events = []

    async def classify(self, text):
        return "long" if len(text) > 3 else "short"

    def log_event(self, what):
        self.events.append(what)

    def events_seen(self):
        return self.events


async def main():
    texts = ["a", "hello", "hi", "world!"]
    async with actorbox.Runtime() as rt:
        c = await rt.start(Classifier)
{body}
        assert rt.pending_calls() == []
        print("labels", labels if "labels" in dir() else None)
        print("results", sorted(results.items()) if "results" in dir() else None)
        print("events", await c.events_seen())

anyio.run(main, backend={backend!r})
'''


@pytest.mark.parametrize(("block", "backend"), [(0, "asyncio"), (0, "trio"), (1, "asyncio"), (2, "asyncio"),
                                                (2, "trio"), (3, "asyncio"), (3, "trio")])
def test_the_concurrency_snippets_work(tmp_path: Path, block: int, backend: str) -> None:
    """Each snippet of "Running calls concurrently" runs (the anyio one on asyncio and trio) and gets every result."""
    snippet = _python_blocks(_section("### Running calls concurrently"))[block]
    done = _run(_HARNESS.format(body=textwrap.indent(snippet, " " * 8), backend=backend), tmp_path)
    assert done.returncode == 0, done.stderr
    expected = ["short", "long", "short", "long"]
    if block == 2:
        assert "results [('a', 'short'), ('hello', 'long'), ('hi', 'short'), ('world!', 'long')]" in done.stdout
        assert "events ['batch']" in done.stdout
    else:
        assert f"labels {expected}" in done.stdout
