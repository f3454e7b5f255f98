"""Sparse embedding gradients: clipping agrees with torch's on the same gradients made dense, and the split
optimizer updates only the embedding rows a batch used while every other parameter moves."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from textrnn.config import Config
from textrnn.models import build_model
from textrnn.optim import SplitAdam, clip_grad_norm, make_optimizer

VOCAB, CLASSES = 40, 4


def backward_once(model: nn.Module, token_ids: torch.Tensor, scale: float = 1.0) -> None:
    lengths = torch.full((token_ids.size(0),), token_ids.size(1))
    labels = torch.arange(token_ids.size(0)) % CLASSES
    (nn.functional.cross_entropy(model(token_ids, lengths), labels) * scale).backward()


def twin_models() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    dense = build_model(Config().variants["lstm"], VOCAB, CLASSES)
    sparse = build_model(Config().variants["lstm"], VOCAB, CLASSES)
    sparse.load_state_dict(dense.state_dict())
    sparse.embedding.sparse = True
    return dense, sparse


@pytest.mark.parametrize("max_norm", [1e-3, 1e3])  # clipping, and a norm below the limit (no change)
def test_clipping_a_sparse_gradient_equals_torch_clipping_it_dense(max_norm: float) -> None:
    dense, sparse = twin_models()
    token_ids = torch.tensor([[3, 5, 5, 7], [5, 9, 3, 3]])  # repeated rows: the sparse grad must add them up
    for model in (dense, sparse):
        backward_once(model, token_ids, scale=50.0)
    assert sparse.embedding.weight.grad.is_sparse
    expected = nn.utils.clip_grad_norm_(list(dense.parameters()), max_norm)
    total = clip_grad_norm(list(sparse.parameters()), max_norm)
    assert torch.allclose(total, expected, rtol=1e-5)
    for (name, a), b in zip(dense.named_parameters(), sparse.parameters()):
        assert torch.allclose(a.grad, b.grad.to_dense(), atol=1e-7, rtol=1e-5), name


def test_split_adam_moves_only_the_embedding_rows_a_batch_used() -> None:
    torch.manual_seed(0)
    model = build_model(Config().variants["rnn_masked"], VOCAB, CLASSES)
    optimizer = make_optimizer(model, lr=1e-2, sparse_embedding=True)
    before = {name: parameter.detach().clone() for name, parameter in model.named_parameters()}
    used = torch.tensor([[3, 4, 5], [6, 3, 8]])
    optimizer.zero_grad()
    backward_once(model, used)
    clip_grad_norm(list(model.parameters()), 1.0)
    optimizer.step()
    moved_rows = (model.embedding.weight != before["embedding.weight"]).any(1).nonzero().flatten().tolist()
    assert moved_rows == [3, 4, 5, 6, 8]
    for name, parameter in model.named_parameters():
        if name != "embedding.weight":
            assert not torch.equal(parameter, before[name]), f"{name} did not move"


def test_dense_mode_is_one_fused_adam_and_states_round_trip() -> None:
    torch.manual_seed(0)
    model = build_model(Config().variants["bag"], VOCAB, CLASSES)
    dense = make_optimizer(model, lr=1e-3, sparse_embedding=False)
    assert list(dense.optimizers) == ["dense"] and not model.embedding.sparse
    split = make_optimizer(build_model(Config().variants["bag"], VOCAB, CLASSES), lr=1e-3, sparse_embedding=True)
    with pytest.raises(ValueError, match="optimizer state holds"):
        split.load_state_dict(dense.state_dict())
    assert isinstance(split, SplitAdam) and set(split.state_dict()) == {"sparse", "dense"}
