"""Tests of actorbox._errors' typed context fields: declared, settable only by keyword, and kept across a hop."""

from __future__ import annotations

import inspect
import pickle
from typing import Any

import pytest

import actorbox
from actorbox import _errors
from actorbox._codec import Codec

ERRORS = sorted((c for c in vars(_errors).values() if isinstance(c, type) and issubclass(c, actorbox.ActorboxError)),
                key=lambda c: c.__name__)


def _keyword_params(cls: type[actorbox.ActorboxError]) -> set[str]:
    sig = inspect.signature(cls.__init__)
    return {p.name for p in sig.parameters.values() if p.kind is inspect.Parameter.KEYWORD_ONLY}


def _sample(cls: type[actorbox.ActorboxError]) -> dict[str, Any]:
    """A distinct plain value per field (ints where the field holds a number)."""
    ints = {"call_id", "pid", "exit_code", "signal", "capacity", "used", "requested"}
    return {f: (len(f) + 1 if f in ints else f"<{f}>") for f in cls.fields}


def _codec() -> Codec:
    return Codec(allow_pickle=False, make_handle=lambda *a: None)  # type: ignore[arg-type]  # never decodes a handle


@pytest.mark.parametrize("cls", ERRORS, ids=lambda c: c.__name__)
def test_fields_are_exactly_the_keyword_parameters(cls: type[actorbox.ActorboxError]) -> None:
    """Each error's ``fields`` name exactly its __init__'s keyword-only parameters (what the receiver rebuilds with)."""
    assert set(cls.fields) == _keyword_params(cls)
    assert len(set(cls.fields)) == len(cls.fields)


@pytest.mark.parametrize("cls", ERRORS, ids=lambda c: c.__name__)
def test_fields_are_attributes_defaulting_to_none(cls: type[actorbox.ActorboxError]) -> None:
    """An error built with only a message has every field as an attribute, None; context() lists them all."""
    err = cls("what happened")
    assert err.context() == dict.fromkeys(cls.fields)
    assert err.message == "what happened"
    str(err)  # __str__ copes with absent context


@pytest.mark.parametrize("cls", ERRORS, ids=lambda c: c.__name__)
def test_unknown_context_is_refused(cls: type[actorbox.ActorboxError]) -> None:
    """A context name the error does not declare is a TypeError, not a silently added attribute."""
    with pytest.raises(TypeError):
        cls("m", no_such_field=1)  # type: ignore[call-arg]  # the very mistake under test


@pytest.mark.parametrize("cls", ERRORS, ids=lambda c: c.__name__)
def test_pickle_keeps_type_message_and_fields(cls: type[actorbox.ActorboxError]) -> None:
    """Pickling an error (a host-side copy, a thread hand-off) keeps its type, message and every field."""
    err = cls("m", **_sample(cls))
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is cls and back.message == "m" and back.context() == _sample(cls)


@pytest.mark.parametrize("cls", ERRORS, ids=lambda c: c.__name__)
def test_codec_rebuilds_host_errors_with_their_fields(cls: type[actorbox.ActorboxError]) -> None:
    """An error the host sends (trusted) is rebuilt as itself with every field; from an actor, RemoteError."""
    codec = _codec()
    err = cls("m", **_sample(cls))
    back = codec.loads(codec.dumps(err), True)
    # A traceback passed on grows by the hop's own (the codec appends where it was re-raised).
    got, want = back.context(), _sample(cls)
    assert str(got.pop("remote_traceback", "")).startswith(want.pop("remote_traceback", ""))
    assert type(back) is cls and got == want
    forged = codec.loads(codec.dumps(err), False)
    named = "<type_name>" if cls is actorbox.RemoteError else f"actorbox.{cls.__name__}"
    assert type(forged) is actorbox.RemoteError and forged.type_name == named


def test_actor_died_error_reads_its_typed_fields() -> None:
    """ActorDiedError's message is built from its fields: actor, pid, signal name, the failing call, stderr."""
    err = actorbox.ActorDiedError("", actor="a", method="m", call_id=7, pid=42, exit_code=None, signal=9,
                                  stderr="boom")
    text = str(err)
    assert "actor 'a' (pid 42) died: killed by SIGKILL" in text
    assert "failing call m() [call 7]" in text and "boom" in text


def test_remote_error_traceback_defaults_on_every_error() -> None:
    """Every actorbox error has ``remote_traceback`` (None until the codec rebuilds it from another process)."""
    assert actorbox.CallError("m").remote_traceback is None
    assert actorbox.RemoteError("m", type_name="x.Y", remote_traceback="tb").remote_traceback == "tb"
