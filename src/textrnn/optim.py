"""Adam for models whose embedding table dwarfs the rest, and gradient clipping that handles sparse grads.

The lesson's models hold 1.3-2.6M embedding weights against 2-200k recurrent ones, and a batch of 16
headlines touches a few hundred of the 20,000 rows. With a dense embedding gradient every step zeroes,
clips and Adam-updates the whole table: on CPU that is half the step time of the small variants. With
`train.sparse_embedding` (the default) the embedding produces a sparse gradient and `torch.optim.SparseAdam`
updates only the rows a batch used (the "lazy Adam" of TensorFlow Addons: a row's moments decay only when
it is seen); every other parameter keeps fused dense Adam. Lazy is not only faster: a rare word's row stops
when its batch is over, where dense Adam keeps moving it on its momentum, which costs the lesson's small
models about 0.013 validation accuracy after two epochs (bench/keras_gap.py).

Options (all off by default, which leaves the optimizer exactly as above): decoupled weight decay (AdamW) on
the dense weight matrices, and a per-step learning-rate schedule, linear warmup then constant or cosine.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import nn


class SplitAdam:
    """SparseAdam on the parameters whose gradients are sparse, fused Adam (AdamW for the parameters given
    weight decay) on the rest, stepped together.

    Offers the parts of `torch.optim.Optimizer` training uses: `zero_grad`, `step`, `state_dict` and
    `load_state_dict` (one dict holding both optimizers' states, for checkpoints).
    """

    def __init__(
        self, sparse: list[nn.Parameter], dense: list[nn.Parameter], lr: float,
        decayed: list[nn.Parameter] | None = None, weight_decay: float = 0.0,
    ) -> None:
        """`dense` is stepped by Adam; `decayed` (more dense parameters) by AdamW with `weight_decay` too."""
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        if sparse:
            self.optimizers["sparse"] = torch.optim.SparseAdam(sparse, lr=lr)
        if decayed and weight_decay > 0:
            # AdamW with weight decay 0 on a group is Adam: one fused optimizer, two groups.
            groups = [{"params": decayed, "weight_decay": weight_decay}, {"params": dense, "weight_decay": 0.0}]
            groups = [group for group in groups if group["params"]]
            self.optimizers["dense"] = torch.optim.AdamW(groups, lr=lr, fused=True)
        elif dense or decayed:
            # fused: one kernel over every dense parameter instead of a handful of ops per tensor.
            self.optimizers["dense"] = torch.optim.Adam(dense + (decayed or []), lr=lr, fused=True)

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


def make_optimizer(model: nn.Module, lr: float, sparse_embedding: bool, weight_decay: float = 0.0) -> SplitAdam:
    """Adam over `model`'s parameters; with `sparse_embedding`, its `embedding` emits sparse gradients and
    gets SparseAdam. With `weight_decay`, the weight matrices (2-d parameters other than the embedding
    table) also shrink by `lr * weight_decay` per step, decoupled from the gradient (AdamW)."""
    embedding = getattr(model, "embedding", None)
    table = embedding.weight if isinstance(embedding, nn.Embedding) else None
    sparse = bool(sparse_embedding and table is not None)
    # Biases (1-d) are offsets, not the weights whose size the penalty is about: decaying them only pulls
    # outputs toward zero (AdamW's usual practice). The table is never decayed, sparse or dense, so
    # `sparse_embedding` adds no penalty of its own. Under SparseAdam it could not be: a lazy decay
    # would shrink only the rows a batch touches (frequent words far more than rare ones: a penalty on
    # frequency, not size), and SparseAdam has no weight decay anyway.
    decayed = [
        parameter for parameter in model.parameters()
        if weight_decay > 0 and parameter.ndim >= 2 and parameter is not table
    ]
    elsewhere = {id(parameter) for parameter in decayed} | ({id(table)} if sparse else set())
    dense = [parameter for parameter in model.parameters() if id(parameter) not in elsewhere]
    if sparse:
        embedding.sparse = True
    return SplitAdam([table] if sparse else [], dense, lr, decayed, weight_decay)


class SplitSchedule:
    """One `torch.optim.lr_scheduler.LambdaLR` per optimizer of a `SplitAdam`, stepped together: call `step`
    after each optimizer step. Offers `step`, `get_last_lr`, `state_dict` and `load_state_dict`."""

    def __init__(self, optimizer: SplitAdam, factor: Callable[[int], float]) -> None:
        self.schedulers = {
            name: torch.optim.lr_scheduler.LambdaLR(inner, factor) for name, inner in optimizer.optimizers.items()
        }

    def step(self) -> None:
        for scheduler in self.schedulers.values():
            scheduler.step()

    def get_last_lr(self) -> dict[str, list[float]]:
        return {name: scheduler.get_last_lr() for name, scheduler in self.schedulers.items()}

    def state_dict(self) -> dict[str, Any]:
        return {name: scheduler.state_dict() for name, scheduler in self.schedulers.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if set(state) != set(self.schedulers):
            raise ValueError(f"scheduler state holds {sorted(state)}, this schedule has {sorted(self.schedulers)}")
        for name, scheduler in self.schedulers.items():
            scheduler.load_state_dict(state[name])


def lr_factor(
    step: int, *, warmup_steps: int, total_steps: int, schedule: Literal["constant", "cosine"]
) -> float:
    """The learning rate of optimizer step `step` (0-based) as a fraction of the configured one.

    Warmup rises linearly through its `warmup_steps` steps, from 1/(warmup_steps + 1) (no step is wasted
    at lr 0) to 1 at step `warmup_steps`; from there `constant` stays at 1 and `cosine` falls along half a
    cosine, reaching 0 at `total_steps` (the last step uses a small but non-zero rate).
    """
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def make_scheduler(
    optimizer: SplitAdam, *, steps_per_epoch: int, epochs: int, warmup_epochs: float,
    schedule: Literal["constant", "cosine"],
) -> SplitSchedule:
    """The learning-rate schedule of `lr_factor`, in optimizer steps, over every optimizer `optimizer` holds.

    `warmup_epochs` may be fractional (rounded to whole steps). With no warmup and `constant` the learning
    rate stays exactly as configured. Raises ValueError on a non-positive step count or negative warmup.
    """
    if steps_per_epoch < 1 or epochs < 1 or not warmup_epochs >= 0 or schedule not in ("constant", "cosine"):
        raise ValueError(
            f"make_scheduler: needs steps_per_epoch, epochs >= 1, warmup_epochs >= 0 and schedule constant|cosine "
            f"(got {steps_per_epoch}, {epochs}, {warmup_epochs}, {schedule!r})"
        )
    warmup_steps = round(warmup_epochs * steps_per_epoch)
    total_steps = steps_per_epoch * epochs

    def factor(step: int) -> float:
        return lr_factor(step, warmup_steps=warmup_steps, total_steps=total_steps, schedule=schedule)

    return SplitSchedule(optimizer, factor)


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
