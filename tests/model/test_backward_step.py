"""The training regularisers of `backward_step`, the function every training step calls: adversarial
training (the `adversarial` option, FGM on the embeddings) and consistency between dropout draws (the
`consistency` option, R-Drop).

The adversarial pass reads embeddings moved uphill by the configured share of each row's own norm and never
moves a pad; the consistency pass is a second dropout draw whose disagreement with the first is penalised,
and which adds nothing when dropout is off. Neither makes a batch's gradients depend on how many pad columns
it has.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from textrnn.models import build_model
from textrnn.tokens import PAD_ID
from textrnn.train import backward_step, symmetric_kl

from conftest import small_variant

VOCAB, CLASSES = 60, 4
CPU = torch.device("cpu")


def model_with(**options: object) -> nn.Module:
    torch.manual_seed(0)
    variant = small_variant(cell="lstm", bidirectional=True, layers=2, pool="mean", embedding_skip=True, **options)
    return build_model(variant, VOCAB, CLASSES)


def batch(extra_pads: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(4)
    lengths = torch.tensor([9, 1, 5, 7, 3])
    token_ids = torch.randint(2, VOCAB, (5, 9), generator=generator)
    token_ids = torch.cat([token_ids, torch.zeros(5, extra_pads, dtype=token_ids.dtype)], dim=1)
    token_ids[torch.arange(9 + extra_pads).unsqueeze(0) >= lengths.unsqueeze(1)] = PAD_ID
    return token_ids, lengths, torch.tensor([0, 1, 2, 3, 0])


def spy_on_classify(model: nn.Module) -> list[torch.Tensor]:
    """The embeddings each `classify` call of `model` reads, in call order."""
    seen: list[torch.Tensor] = []
    classify = model.classify

    def recording(embedded: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        seen.append(embedded.detach().clone())
        return classify(embedded, lengths)

    model.classify = recording
    return seen


def gradients(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: parameter.grad.clone() for name, parameter in model.named_parameters() if parameter.grad is not None}


@pytest.mark.parametrize("size", [0.02, 0.3])
def test_the_second_pass_reads_embeddings_moved_uphill_by_the_share_of_each_rows_norm(size: float) -> None:
    model = model_with(adversarial=size).eval()  # no dropout: both passes see the same model
    token_ids, lengths, labels = batch()
    seen = spy_on_classify(model)
    loss_fn = nn.CrossEntropyLoss()
    _, loss = backward_step(model, token_ids, lengths, labels, loss_fn, CPU)
    clean, moved = seen
    move = moved - clean
    assert torch.allclose(move.flatten(1).norm(dim=1), size * clean.flatten(1).norm(dim=1), rtol=1e-5)
    pads = torch.arange(token_ids.size(1)).unsqueeze(0) >= lengths.unsqueeze(1)
    assert move[pads].abs().max() == 0
    del model.classify  # the spy
    with torch.no_grad():
        assert loss == pytest.approx(float(loss_fn(model(token_ids, lengths), labels)), abs=1e-6)
        moved_loss = loss_fn(model.classify(moved, lengths), labels)
        # Uphill: the chosen move raises the loss more than random moves of the same size per row.
        generator = torch.Generator().manual_seed(1)
        for _ in range(5):
            noise = torch.randn(move.shape, generator=generator).masked_fill(pads.unsqueeze(-1), 0)
            noise *= (move.flatten(1).norm(dim=1) / noise.flatten(1).norm(dim=1)).view(-1, 1, 1)
            assert moved_loss > loss_fn(model.classify(clean + noise, lengths), labels)
        assert moved_loss > loss


def test_adversarial_training_adds_gradients_and_zero_turns_it_off() -> None:
    token_ids, lengths, labels = batch()
    steps = {}
    for size in (0.0, 0.1):
        model = model_with(adversarial=size).eval()
        calls = spy_on_classify(model)
        backward_step(model, token_ids, lengths, labels, nn.CrossEntropyLoss(), CPU)
        steps[size] = (len(calls), gradients(model))
    assert steps[0.0][0] == 1 and steps[0.1][0] == 2
    assert any(not torch.allclose(steps[0.0][1][name], steps[0.1][1][name]) for name in steps[0.0][1])


# ---- consistency between two dropout draws (R-Drop)

DROPOUTS = {"dropout": 0.3, "embed_dropout": 0.2, "token_dropout": 0.3}


def test_the_symmetric_kl_is_the_mean_of_both_divergences_and_zero_only_for_equal_predictions() -> None:
    generator = torch.Generator().manual_seed(2)
    first, second = torch.randn(6, 4, generator=generator), torch.randn(6, 4, generator=generator)

    p, q = first.softmax(-1), second.softmax(-1)
    by_hand = ((p * (p / q).log()).sum(-1) + (q * (q / p).log()).sum(-1)).mean() / 2
    assert float(symmetric_kl(first, second)) == pytest.approx(float(by_hand), rel=1e-5)
    assert float(symmetric_kl(first, second)) == pytest.approx(float(symmetric_kl(second, first)), rel=1e-6)
    assert float(symmetric_kl(first, second)) > 0
    assert float(symmetric_kl(first, first + 3.0)) == pytest.approx(0.0, abs=1e-6)  # same softmax


@pytest.mark.parametrize("adversarial", [0.0, 0.1])
def test_without_dropout_the_second_draw_is_the_first_and_changes_no_gradient(adversarial: float) -> None:
    token_ids, lengths, labels = batch()
    steps = {}
    for weight in (0.0, 2.0):
        model = model_with(adversarial=adversarial, consistency=weight, **DROPOUTS).eval()  # eval: every dropout off
        calls = spy_on_classify(model)
        _, loss = backward_step(model, token_ids, lengths, labels, nn.CrossEntropyLoss(), CPU)
        steps[weight] = (len(calls), loss, gradients(model))
    assert steps[2.0][0] == steps[0.0][0] + 1
    assert steps[2.0][1] == pytest.approx(steps[0.0][1], abs=1e-6)
    for name, gradient in steps[0.0][2].items():
        assert torch.allclose(steps[2.0][2][name], gradient, atol=1e-6), name


def test_with_dropout_a_step_makes_the_two_draws_agree_more_than_plain_training_does() -> None:
    """The same two dropout draws (same seed) after one small SGD step: with the consistency weight on they
    disagree less than after a step of plain training (which, making the predictions surer, raises it)."""
    token_ids, lengths, labels = batch()

    def disagreement(model: nn.Module) -> float:
        torch.manual_seed(3)  # the draws backward_step makes from this seed: embed, classify, embed, classify
        with torch.no_grad():
            return float(symmetric_kl(model(token_ids, lengths), model(token_ids, lengths)))

    after = {}
    for weight in (0.0, 5.0):
        model = model_with(consistency=weight, **DROPOUTS).train()
        calls = spy_on_classify(model)
        torch.manual_seed(3)
        backward_step(model, token_ids, lengths, labels, nn.CrossEntropyLoss(), CPU)
        del model.classify  # the spy
        assert len(calls) == (2 if weight else 1) and (not weight or not torch.equal(*calls))
        with torch.no_grad():
            for parameter in model.parameters():
                if parameter.grad is not None:
                    parameter -= 0.05 * parameter.grad
        after[weight] = disagreement(model)
    assert after[5.0] < after[0.0]


@pytest.mark.parametrize("options", [{"adversarial": 0.1}, {"adversarial": 0.1, "consistency": 1.0},
                                     {"adversarial": 0.0, "consistency": 1.0}], ids=["fgm", "fgm+rdrop", "rdrop"])
def test_in_training_extra_pad_columns_change_no_gradient_and_the_pad_row_gets_none(options: dict) -> None:
    """With every dropout on and a fixed seed, a batch with 6 more pad columns gives the same gradients."""
    results = []
    for extra_pads in (0, 6):
        model = model_with(**DROPOUTS, **options).train()
        token_ids, lengths, labels = batch(extra_pads)
        torch.manual_seed(11)
        backward_step(model, token_ids, lengths, labels, nn.CrossEntropyLoss(label_smoothing=0.1), CPU)
        results.append(gradients(model))
        assert model.embedding.weight.grad[PAD_ID].abs().max() == 0
    narrow, wide = results
    assert narrow.keys() == wide.keys()
    for name in narrow:
        assert torch.allclose(narrow[name], wide[name], atol=1e-6, rtol=0), name
