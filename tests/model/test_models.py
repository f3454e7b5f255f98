"""TextRNN's masking contract: pads never change a masked model's logits, and the per-direction
formulation is the same function as PyTorch's packed, stacked, bidirectional LSTM."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from textrnn.config import Config, VariantConfig
from textrnn.models import build_model, reverse_within_lengths

from conftest import small_variant

VOCAB, CLASSES = 50, 4
MASKED_VARIANTS = [name for name, variant in Config().variants.items() if variant.masked]


def random_batch(batch: int = 6, seq: int = 11, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, seq + 1, (batch,), generator=generator)
    lengths[0] = seq  # at least one full row, and one of length 1
    lengths[1] = 1
    token_ids = torch.randint(2, VOCAB, (batch, seq), generator=generator)
    token_ids[torch.arange(seq).unsqueeze(0) >= lengths.unsqueeze(1)] = 0
    return token_ids, lengths


def with_extra_pads(token_ids: torch.Tensor, columns: int) -> torch.Tensor:
    return torch.cat([token_ids, torch.zeros(token_ids.size(0), columns, dtype=token_ids.dtype)], dim=1)


@pytest.mark.parametrize("variant_name", MASKED_VARIANTS)
def test_extra_padding_changes_no_logit_of_a_masked_variant(variant_name: str) -> None:
    torch.manual_seed(0)
    model = build_model(Config().variants[variant_name], VOCAB, CLASSES).eval()
    token_ids, lengths = random_batch()
    with torch.no_grad():
        logits = model(token_ids, lengths)
        padded_logits = model(with_extra_pads(token_ids, 9), lengths)
    assert torch.allclose(logits, padded_logits, atol=1e-5, rtol=0)


def test_extra_padding_does_change_the_unmasked_rnn() -> None:
    torch.manual_seed(0)
    model = build_model(Config().variants["rnn"], VOCAB, CLASSES).eval()
    token_ids, lengths = random_batch()
    with torch.no_grad():
        difference = (model(token_ids, lengths) - model(with_extra_pads(token_ids, 9), lengths)).abs().max()
    assert difference > 1e-3


def test_reverse_within_lengths_reverses_real_steps_and_keeps_pads() -> None:
    index = reverse_within_lengths(torch.tensor([3, 1, 5]), 5)
    assert index.tolist() == [[2, 1, 0, 3, 4], [0, 1, 2, 3, 4], [4, 3, 2, 1, 0]]


def test_masked_bilstm_equals_packed_two_layer_bidirectional_lstm() -> None:
    torch.manual_seed(0)
    variant = VariantConfig(cell="lstm", embed_dim=12, hidden=7, layers=2, bidirectional=True, masked=True, batch_size=4)
    model = build_model(variant, VOCAB, CLASSES).eval()
    reference = nn.LSTM(12, 7, num_layers=2, bidirectional=True, batch_first=True)
    # Copy our per-direction cells' weights into the stacked reference's `_l{layer}[_reverse]` slots.
    with torch.no_grad():
        for layer, directions in enumerate(model.layers):
            for direction, cell in enumerate(directions):
                suffix = f"_l{layer}" + ("_reverse" if direction else "")
                for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                    getattr(reference, name + suffix).copy_(getattr(cell, name + "_l0"))
    token_ids, lengths = random_batch(batch=8, seq=13, seed=3)
    with torch.no_grad():
        embedded = model.embedding(token_ids)
        packed = pack_padded_sequence(embedded, lengths, batch_first=True, enforce_sorted=False)
        _, (h_n, _) = reference(packed)
        reference_logits = model.head(torch.cat([h_n[-2], h_n[-1]], dim=1))
        logits = model(token_ids, lengths)
    assert torch.allclose(logits, reference_logits, atol=1e-6, rtol=0)


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_masked_unidirectional_state_is_the_state_at_the_true_last_token(cell: str) -> None:
    torch.manual_seed(1)
    model = build_model(small_variant(cell=cell), VOCAB, CLASSES).eval()
    token_ids, lengths = random_batch(seed=5)
    with torch.no_grad():
        batched = model(token_ids, lengths)
        # One row at a time, cut to its true length: nothing to mask, so this is the ground truth.
        one_by_one = torch.cat([model(token_ids[i : i + 1, : lengths[i]], lengths[i : i + 1]) for i in range(len(lengths))])
    assert torch.allclose(batched, one_by_one, atol=1e-6, rtol=0)


def test_bag_ignores_pads_and_word_order() -> None:
    torch.manual_seed(2)
    model = build_model(Config().variants["bag"], VOCAB, CLASSES).eval()
    token_ids, lengths = random_batch(seed=7)
    shuffled = token_ids.clone()
    shuffled[0] = token_ids[0].flip(0)  # row 0 is full length: a reversal keeps the same bag
    with torch.no_grad():
        assert torch.allclose(model(token_ids, lengths), model(with_extra_pads(shuffled, 4), lengths), atol=1e-6)


def first_token_task(rows: int, seq: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows whose label is their first token (ids 2-5), followed by `seq - 1` random distractors (6-29)."""
    token_ids = torch.randint(6, 30, (rows, seq), generator=generator)
    labels = torch.randint(0, CLASSES, (rows,), generator=generator)
    token_ids[:, 0] = labels + 2
    return token_ids, torch.full((rows,), seq), labels


def first_token_accuracy(model: nn.Module) -> float:
    """Train `model` 300 steps on the first-token task over 60 steps; its accuracy on 1,000 fresh rows."""
    generator = torch.Generator().manual_seed(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(300):
        token_ids, lengths, labels = first_token_task(32, 60, generator)
        loss = nn.functional.cross_entropy(model(token_ids, lengths), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    token_ids, lengths, labels = first_token_task(1000, 60, generator)
    with torch.no_grad():
        return (model(token_ids, lengths).argmax(1) == labels).float().mean().item()


@pytest.mark.slow  # about a minute (600 training steps of a per-step Python loop); kept in `make test`
def test_a_masked_simple_rnn_remembers_its_first_token_across_sixty_steps() -> None:
    """The recurrent initialisation keeps a plain tanh RNN's state and gradients alive along a row; with
    PyTorch's default init the same model and training stay near chance (0.25)."""
    variant = VariantConfig(cell="rnn", embed_dim=16, hidden=16, layers=1, bidirectional=False, masked=True, batch_size=32)
    torch.manual_seed(0)
    ours = build_model(variant, 30, CLASSES)
    torch.manual_seed(0)
    pytorch_default = build_model(variant, 30, CLASSES)
    for directions in pytorch_default.layers:
        for cell in directions:
            cell.reset_parameters()
    assert first_token_accuracy(ours) > 0.9
    assert first_token_accuracy(pytorch_default) < 0.5
