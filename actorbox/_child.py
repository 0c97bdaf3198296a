"""The actor-process entry point: ``python -m actorbox._child FD [MAX_FRAME]``.

The process talks to the host over the inherited Unix socket FD only. It waits
for INIT (its class and constructor arguments, sent by the host and therefore
trusted), constructs the instance and then serves calls (actorbox._actor_server):
sync methods on worker threads, or inline on the loop thread for a sync-only actor
(actorbox._inline); async methods as tasks on the loop, which stays free for
cancellations, nested calls and their replies.
"""

from __future__ import annotations

import asyncio
import faulthandler
import os
import socket
import sys

from ._actor_server import ActorServer
from ._context import process_caller


async def _main(fd: int, max_frame: int | None = None) -> None:
    sock = socket.socket(fileno=fd)
    os.set_inheritable(fd, False)
    server = ActorServer(sock)
    if max_frame is not None:  # the Runtime's limit, both ways, from INIT on
        server.conn.max_frame = max_frame
    process_caller.set(server)
    await server.serve()


def main() -> None:
    faulthandler.enable()
    if len(sys.argv) not in (2, 3) or not all(a.isdigit() for a in sys.argv[1:]):
        print("usage: python -m actorbox._child FD [MAX_FRAME]  (started by actorbox.Runtime, not by hand)",
              file=sys.stderr)
        sys.exit(2)
    asyncio.run(_main(*(int(a) for a in sys.argv[1:])))
    sys.stdout.flush()
    sys.stderr.flush()
    # Worker threads may still be inside user code; don't wait for them.
    os._exit(0)


if __name__ == "__main__":
    main()
