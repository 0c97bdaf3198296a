"""Where code finds the caller of its own process (host Runtime or actor process)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._errors import ActorboxError, UsageError
from ._process import ProcessCaller
from ._process import process_caller as process_caller
from ._tensors import shared_empty as _shared_empty

if TYPE_CHECKING:
    from ._handle import ActorHandle


def get_actor(name: str) -> ActorHandle:
    """Return a handle to the named actor (host-resident or not), routed through the host.

    Works in the host inside ``async with Runtime()`` and in any actor's code.
    """
    caller: ProcessCaller | None = process_caller.get()
    if caller is None:
        raise ActorboxError(
            f"get_actor({name!r}) needs a running actorbox Runtime: call it inside 'async with "
            "actorbox.Runtime() as rt:' or from an actor's code"
        )
    handle: ActorHandle = caller.get_actor(name)
    return handle


def shared_empty(*shape: int, dtype: Any = None) -> Any:
    """A torch tensor allocated in shared memory (pooled): sending it copies nothing, and
    in-place writes by the receiver are seen here, and the other way round.

    Works in the host inside a Runtime and in actor code.
    """
    import torch

    caller: ProcessCaller | None = process_caller.get()
    if caller is None:
        raise ActorboxError("shared_empty() needs a running actorbox Runtime (or to run inside an actor)")
    return _shared_empty(caller.codec.segments, tuple(shape), dtype or torch.float32)


def share(tensor: Any) -> Any:
    """A copy of ``tensor`` in shared memory (see ``shared_empty``)."""
    import torch

    if not isinstance(tensor, torch.Tensor):
        raise UsageError(f"share() takes a torch tensor, got {type(tensor).__module__}.{type(tensor).__qualname__}; "
                         "send numpy arrays as they are (they travel as shared memory)")
    out = shared_empty(*tensor.shape, dtype=tensor.dtype)
    out.copy_(tensor)
    return out
