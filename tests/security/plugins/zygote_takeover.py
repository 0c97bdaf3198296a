"""A preloaded package that takes its zygote over (issue 17): it replaces the zygote's serve loop.

Imported in a zygote (``python -m actorbox._zygote``), it swaps ``serve`` for a loop that
misbehaves as the actor class preloading it asks (by the module it preloads: see
``zygote_stalls`` and ``zygote_dies``); imported in an actor started plainly it does nothing.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Callable, Iterator

Serve = Callable[[socket.socket, bool], None]


def take_over(serve: Serve) -> None:
    """Replace the zygote's serve loop, when this is a zygote."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name == "actorbox._zygote":
        vars(main)["serve"] = serve  # main() looks it up when it calls it


def requests(sock: socket.socket) -> Iterator[bytes]:
    """The host's fork requests (their descriptors kept open, as a hostile zygote may), until it hangs up."""
    while True:
        data, _, _, _ = sock.recvmsg(4096, socket.CMSG_SPACE(3 * 4))
        if not data:
            return
        yield data


def stall(sock: socket.socket, nested: bool) -> None:
    """Takes every fork request and never answers one."""
    for _ in requests(sock):
        pass


def die(sock: socket.socket, nested: bool) -> None:
    """Exits at the first fork request, without a word."""
    for _ in requests(sock):
        os._exit(3)


def keep_the_socket(sock: socket.socket, nested: bool) -> None:
    """Keeps a copy of each actor socket it is handed, writes junk on it, then says the fork failed."""
    import array

    import msgpack

    kept = []
    while True:
        data, anc, _, _ = sock.recvmsg(4096, socket.CMSG_SPACE(3 * 4))
        if not data:
            return
        fds = [fd for level, kind, payload in anc if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS
               for fd in array.array("i", payload[: len(payload) - len(payload) % 4])]
        actor = socket.socket(fileno=fds[0])
        kept.append(actor)
        try:
            actor.sendall(b"\xff" * 64)  # what the host would read as the actor's first frame
        except OSError:
            pass
        sock.send(msgpack.packb(["failed", msgpack.unpackb(data)[1], "refused"]))
