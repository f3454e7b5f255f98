"""Adam for models whose embedding table dwarfs the rest, and gradient clipping that handles sparse grads.

The lesson's models hold 1.3-2.6M embedding weights against 2-200k recurrent ones, and a batch of 16
headlines touches a few hundred of the 20,000 rows. With a dense embedding gradient every step zeroes,
clips and Adam-updates the whole table: on CPU that is half the step time of the small variants. With
`train.sparse_embedding` (the default) the embedding produces a sparse gradient and `torch.optim.SparseAdam`
updates only the rows a batch used (the "lazy Adam" of TensorFlow Addons: a row's moments decay only when
it is seen); every other parameter keeps fused dense Adam.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class SplitAdam:
    """SparseAdam on the parameters whose gradients are sparse, fused Adam on the rest, stepped together.

    Offers the parts of `torch.optim.Optimizer` training uses: `zero_grad`, `step`, `state_dict` and
    `load_state_dict` (one dict holding both optimizers' states, for checkpoints).
    """

    def __init__(self, sparse: list[nn.Parameter], dense: list[nn.Parameter], lr: float) -> None:
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        if sparse:
            self.optimizers["sparse"] = torch.optim.SparseAdam(sparse, lr=lr)
        if dense:
            # fused: one kernel over every dense parameter instead of a handful of ops per tensor.
            self.optimizers["dense"] = torch.optim.Adam(dense, lr=lr, fused=True)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for optimizer in self.optimizers.values():
            optimizer.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        for optimizer in self.optimizers.values():
            optimizer.step()

    def state_dict(self) -> dict[str, Any]:
        return {name: optimizer.state_dict() for name, optimizer in self.optimizers.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if set(state) != set(self.optimizers):
            raise ValueError(f"optimizer state holds {sorted(state)}, this optimizer has {sorted(self.optimizers)}")
        for name, optimizer in self.optimizers.items():
            optimizer.load_state_dict(state[name])


def make_optimizer(model: nn.Module, lr: float, sparse_embedding: bool) -> SplitAdam:
    """Adam over `model`'s parameters; with `sparse_embedding`, its `embedding` emits sparse gradients and
    gets SparseAdam."""
    embedding = getattr(model, "embedding", None)
    if not sparse_embedding or not isinstance(embedding, nn.Embedding):
        return SplitAdam([], list(model.parameters()), lr)
    embedding.sparse = True
    sparse_ids = {id(embedding.weight)}
    dense = [parameter for parameter in model.parameters() if id(parameter) not in sparse_ids]
    return SplitAdam([embedding.weight], dense, lr)


@torch.no_grad()
def clip_grad_norm(parameters: list[nn.Parameter], max_norm: float) -> torch.Tensor:
    """Scale all gradients so their joint L2 norm is at most `max_norm`; returns the norm before.

    `torch.nn.utils.clip_grad_norm_` rejects sparse gradients. A sparse gradient is coalesced first (a row
    used twice in a batch arrives as two entries that must add up before squaring) and stays coalesced.
    """
    squares = []
    for parameter in parameters:
        if parameter.grad is None:
            continue
        if parameter.grad.is_sparse:
            parameter.grad = parameter.grad.coalesce()
            squares.append(parameter.grad.values().float().pow(2).sum())
        else:
            squares.append(parameter.grad.float().pow(2).sum())
    if not squares:
        return torch.tensor(0.0)
    total = torch.stack(squares).sum().sqrt()
    # The same rule as torch's: scale by max_norm / (norm + 1e-6) only when that is below 1.
    scale = (max_norm / (total + 1e-6)).clamp(max=1.0)
    for parameter in parameters:
        if parameter.grad is not None:
            parameter.grad.mul_(scale.to(parameter.grad.device, parameter.grad.dtype))
    return total
