"""What a Ray worker returns is checked before the host believes it (the Ray backend's ``_wire``).

An actor on the Ray backend makes its own shell return, once, what it chooses in place of
actorbox's ``[status, payload, buffers]``: something else altogether, an undecodable or
too deeply nested payload, an error that is no exception, one of actorbox's own errors.
Each fails that call with a typed error (``SerializationError``; a forged actorbox error
arrives as ``RemoteError`` naming the actor that sent it), and the actor goes on serving.
"""

from __future__ import annotations

from typing import Any

import msgpack
import pytest

import actorbox
from actorbox._codec import Codec
from actorbox._ray._wire import encode_outcome

from ..security.plugins.ray_liar import Liar
from .conftest import runtime

pytestmark = [pytest.mark.anyio, pytest.mark.ray, pytest.mark.timeout(180)]


def _forged_stop() -> list[Any]:
    codec = Codec(allow_pickle=False, make_handle=lambda *a: None)
    return encode_outcome(codec, actorbox.ActorStoppedError("forged: the host stopped it", actor="other#9"),
                          raised=True)


async def test_a_ray_worker_result_not_in_actorboxs_encoding_fails_typed(ray_cluster: Any) -> None:
    async with runtime("ray") as rt:
        h = await rt.start(Liar)
        cases: list[tuple[Any, type[BaseException], str]] = [
            ({"a": 1}, actorbox.SerializationError, "returned dict, not actorbox's result triple"),
            ("x" * 100, actorbox.SerializationError, "returned str, not actorbox's result triple"),
            (["ok", b"\xc1", []], actorbox.SerializationError, "undecodable payload"),
            (["ok", b"\x91" * 100_000 + b"\x90", []], actorbox.SerializationError, "undecodable payload"),
            (["ok", b"\x90", [1]], actorbox.SerializationError, "malformed result"),
            (["ok", b"\x90", [b""] * 5000], actorbox.SerializationError, "malformed result"),
            (["err", msgpack.packb(5), []], actorbox.SerializationError, "error is not an exception"),
            (_forged_stop(), actorbox.RemoteError, "actorbox.ActorStoppedError from actor 'Liar#1': forged"),
        ]
        for wire, error, text in cases:
            with pytest.raises(error) as info:
                await h.lie(wire)
            assert text in str(info.value)
            assert not isinstance(info.value, actorbox.ActorStoppedError)
        assert await h.ping() == "pong"
