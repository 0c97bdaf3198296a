"""An extension module that imports torch at the top, as almost every ML extension does (issue 17)."""

import torch

import actorbox


@actorbox.actor
class TorchNode:
    """Does nothing but prove torch is imported and working in its process."""

    def ping(self) -> tuple[str, float]:
        return torch.__version__, float(torch.ones(2, 2).sum())
