"""What a zygote sends the host is untrusted (it imported third-party packages): bounded, msgpack, checked (issue 17).

The host's reader (``actorbox._zygotes.Zygote``) is driven here with the messages a
compromised zygote could send; each is refused with ZygoteError (the zygote is then
killed and actors start without it), and no descriptor that came with it stays open.
"""

from __future__ import annotations

import os
import socket
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

import msgpack
import pytest
import structlog

import sandbox
from actorbox._zygotes import MAX_MESSAGE, Zygote, ZygoteError, Zygotes, _decode, pidfd_pid


def _zygote() -> Zygote:
    owner = Zygotes(structlog.get_logger(), ThreadPoolExecutor(1), cast(Any, None), enabled=True)  # never starts one
    spec = sandbox.LaunchSpec(python="python", module="actorbox._child", args=("3", "0"), env={})
    z = Zygote(owner, (), spec, ())
    z.state, z.pid = "ready", os.getpid()
    return z


def test_a_descriptor_that_is_no_pidfd_of_its_child_is_refused():
    """A 'forked' answer carrying a pipe, or a pidfd of a process that is not the zygote's child, is refused."""
    import anyio

    z = _zygote()
    z._pending[1] = (anyio.Event(), [])
    r, w = os.pipe()
    try:
        with pytest.raises(ZygoteError, match="no pidfd"):
            z._on_message(["forked", 1], [r])
        host_pidfd = os.pidfd_open(os.getppid())  # a real pidfd, of a process that is not its child
        try:
            with pytest.raises(ZygoteError, match="no pidfd"):
                z._on_message(["forked", 1], [host_pidfd])
        finally:
            os.close(host_pidfd)
    finally:
        os.close(r)
        os.close(w)


@pytest.mark.parametrize("msg", [
    ["ready", True, ""],  # a second 'ready'
    ["forked", 7],  # an answer to no request
    ["exit", 7, 0],  # the exit of no child it forked
    ["exit", "7", 0],
    ["fork", 1, 2, 3, 4, 5, 6, 7],  # the host's request, sent back
    ["failed", 1],
])
def test_unexpected_messages_are_refused(msg):
    """A message of a kind, shape or id the host did not ask for is a protocol error."""
    z = _zygote()
    with pytest.raises(ZygoteError, match="unexpected message"):
        z._on_message(msg, [])


@pytest.mark.parametrize("data", [
    msgpack.packb({"ready": True}),  # not a list
    msgpack.packb([b"x" * 10]),  # bytes are never part of the protocol
    msgpack.packb(list(range(9))),  # longer than any message
    msgpack.packb(["ready", "x" * (MAX_MESSAGE + 1)]),  # a string over the bound
    b"\xc1",  # not msgpack
    b"\x80\x04\x95" + b"pickle",  # pickle: never decoded
])
def test_undecodable_messages_are_refused(data):
    """Only short msgpack lists of plain values decode; anything else, pickle included, is refused."""
    with pytest.raises(ZygoteError):
        _decode(data)


def test_pidfd_pid_reads_the_host_pid_and_refuses_other_descriptors():
    """pidfd_pid gives a pidfd's host pid from /proc/self/fdinfo, and None for a socket."""
    fd = os.pidfd_open(os.getpid())
    a, b = socket.socketpair()
    try:
        assert pidfd_pid(fd) == os.getpid()
        assert pidfd_pid(a.fileno()) is None
    finally:
        os.close(fd)
        a.close()
        b.close()
