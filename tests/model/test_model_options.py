"""The model options of issue 14: pooling, dropout, and the training options in optim.py.

Every pool reads only the real steps, so pads never change a logit or receive a gradient, in eval mode
and, with a fixed seed, in train mode with dropout on; the graph still exports with symbolic dims and
matches torch; the config refuses what the model cannot do; the schedule and the weight decay act on the
optimizer `make_optimizer` really returns.
"""

from __future__ import annotations

import math
from pathlib import Path

import onnx
import pytest
import torch
from pydantic import ValidationError
from torch import nn

from textrnn.export import example_inputs, symbolic_dims, write_onnx  # isort: skip (sets ORT env first)
import onnxruntime as ort  # isort: skip

from textrnn import config
from textrnn.config import ConfigError, VariantConfig
from textrnn.models import build_model
from textrnn.optim import make_optimizer, make_scheduler
from textrnn.tokens import PAD_ID, UNK_ID

from conftest import SMALL_ARCHITECTURE, small_variant

VOCAB, CLASSES = 50, 4
POOLS = ["last", "max", "mean", "attention"]
RECURRENT = [(cell, bidirectional) for cell in ("rnn", "lstm", "gru") for bidirectional in (False, True)]


def options_model(pool: str, cell: str, bidirectional: bool, seed: int = 0, **options: object) -> nn.Module:
    """A small two-layer model (so dropout between layers runs) with both dropouts on."""
    variant = small_variant(cell=cell, layers=2, bidirectional=bidirectional, pool=pool, dropout=0.3, embed_dropout=0.25,
                            token_dropout=0.2, **options)
    torch.manual_seed(seed)
    model = build_model(variant, VOCAB, CLASSES)
    if pool == "attention":
        # Attention starts at zero (uniform weights over the real steps); make it look somewhere.
        nn.init.normal_(model.attention.weight, std=2.0)
    return model


def random_batch(batch: int = 6, seq: int = 11, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids with mixed lengths: row 0 full, row 1 of length 1."""
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, seq + 1, (batch,), generator=generator)
    lengths[0], lengths[1] = seq, 1
    token_ids = torch.randint(2, VOCAB, (batch, seq), generator=generator)
    token_ids[torch.arange(seq).unsqueeze(0) >= lengths.unsqueeze(1)] = PAD_ID
    return token_ids, lengths


def with_extra_pads(token_ids: torch.Tensor, columns: int) -> torch.Tensor:
    return torch.cat([token_ids, torch.full((token_ids.size(0), columns), PAD_ID, dtype=token_ids.dtype)], dim=1)


# ---- (1) eval mode: pads and batch-mates change nothing

@pytest.mark.parametrize("skip", [False, True], ids=["", "skip"])
@pytest.mark.parametrize("cell,bidirectional", RECURRENT)
@pytest.mark.parametrize("pool", POOLS)
def test_in_eval_mode_pads_and_batch_mates_change_no_logit(pool: str, cell: str, bidirectional: bool, skip: bool) -> None:
    model = options_model(pool, cell, bidirectional, embedding_skip=skip).eval()
    token_ids, lengths = random_batch()
    with torch.no_grad():
        logits = model(token_ids, lengths)
        padded = model(with_extra_pads(token_ids, 9), lengths)
        # Each row alone, cut to its true length: no pads and no batch-mates.
        alone = torch.cat([model(token_ids[i : i + 1, : lengths[i]], lengths[i : i + 1]) for i in range(len(lengths))])
    assert torch.allclose(logits, padded, atol=1e-6, rtol=0)
    assert torch.allclose(logits, alone, atol=1e-6, rtol=0)


# ---- (2) train mode: with a fixed seed, pads change neither the logits nor a real token's gradient

def train_step_gradients(
    model: nn.Module, token_ids: torch.Tensor, lengths: torch.Tensor, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, d loss / d embedded input [B, T, D]) of one train-mode forward and backward."""
    captured = {}

    def keep_output(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
        output.retain_grad()
        captured["embedded"] = output

    hook = model.embedding.register_forward_hook(keep_output)
    try:
        torch.manual_seed(seed)
        logits = model(token_ids, lengths)
        nn.functional.cross_entropy(logits, torch.arange(len(lengths)) % CLASSES).backward()
    finally:
        hook.remove()
    return logits.detach(), captured["embedded"].grad


@pytest.mark.parametrize("skip", [False, True], ids=["", "skip"])
@pytest.mark.parametrize("cell,bidirectional", RECURRENT)
@pytest.mark.parametrize("pool", POOLS)
def test_in_train_mode_pads_get_no_gradient_and_change_no_real_tokens_gradient(
    pool: str, cell: str, bidirectional: bool, skip: bool
) -> None:
    model = options_model(pool, cell, bidirectional, embedding_skip=skip).train()
    token_ids, lengths = random_batch(seed=3)
    seq = token_ids.size(1)
    logits, grad = train_step_gradients(model, token_ids, lengths, seed=7)
    model.zero_grad()
    padded_logits, padded_grad = train_step_gradients(model, with_extra_pads(token_ids, 6), lengths, seed=7)
    # Every dropout mask is drawn per row and channel, so the same seed gives the same masks whatever the width.
    assert torch.allclose(logits, padded_logits, atol=1e-6, rtol=0)
    real = (torch.arange(seq).unsqueeze(0) < lengths.unsqueeze(1)).unsqueeze(-1)
    assert torch.allclose(grad * real, padded_grad[:, :seq] * real, atol=1e-6, rtol=0)
    pads = ~(torch.arange(seq + 6).unsqueeze(0) < lengths.unsqueeze(1))
    assert padded_grad[pads].abs().max() == 0  # exactly: nothing read a pad
    assert model.embedding.weight.grad[PAD_ID].abs().max() == 0
    # And the dropout really was on: train-mode logits differ from eval's and from another seed's.
    with torch.no_grad():
        assert not torch.allclose(logits, model.eval()(token_ids, lengths), atol=1e-4)
    assert not torch.allclose(logits, train_step_gradients(model.train(), token_ids, lengths, seed=8)[0], atol=1e-4)


def test_word_dropout_turns_only_real_tokens_into_unk_and_only_in_training() -> None:
    model = build_model(small_variant(cell="gru", pool="mean", token_dropout=0.5), VOCAB, CLASSES)
    seen: list[torch.Tensor] = []
    model.embedding.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0].clone()))
    token_ids, lengths = random_batch(batch=64, seq=30)
    token_ids = token_ids.clamp(min=2)  # no [UNK] in the input: every [UNK] seen was made by the dropout
    real = torch.arange(token_ids.size(1)).unsqueeze(0) < lengths.unsqueeze(1)
    token_ids = token_ids.masked_fill(~real, PAD_ID)
    torch.manual_seed(3)
    model.train()(token_ids, lengths)
    model.eval()(token_ids, lengths)
    trained, evaluated = seen
    assert torch.equal(evaluated, token_ids)
    unk = trained == UNK_ID
    assert not (unk & ~real).any() and torch.equal(trained[~real], token_ids[~real])
    assert torch.equal(trained[real & ~unk], token_ids[real & ~unk])
    assert 0.4 < unk[real].float().mean() < 0.6


@pytest.mark.parametrize("variant", [
    small_variant(cell="bag", dropout=0.3, embed_dropout=0.3),
    small_variant(cell="lstm", masked=False, layers=2, dropout=0.3, embed_dropout=0.3),
])
def test_bag_and_unmasked_variants_take_dropout_and_drop_nothing_in_eval(variant: VariantConfig) -> None:
    torch.manual_seed(0)
    model = build_model(variant, VOCAB, CLASSES)
    token_ids, lengths = random_batch()
    torch.manual_seed(1)
    trained = model.train()(token_ids, lengths)
    with torch.no_grad():
        evaluated = model.eval()(token_ids, lengths)
        assert torch.equal(evaluated, model(token_ids, lengths))  # eval is deterministic
    assert not torch.allclose(trained, evaluated, atol=1e-4)
    if variant.cell == "bag":
        # The spatial mask scales a pad's zero embedding to zero: pads stay out of the mean in training too.
        torch.manual_seed(1)
        assert torch.allclose(trained, model.train()(with_extra_pads(token_ids, 5), lengths), atol=1e-6, rtol=0)


# ---- (3) ONNX: symbolic dims and parity, dropout configured but off in eval

@pytest.mark.parametrize("skip", [False, True], ids=["", "skip"])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("pool", POOLS)
def test_pooled_bidirectional_model_exports_with_symbolic_dims_and_matches_torch(
    tmp_path: Path, pool: str, cell: str, skip: bool
) -> None:
    model = options_model(pool, cell, bidirectional=True, seed=2, embedding_skip=skip).eval()
    path = tmp_path / "model.onnx"
    write_onnx(model, path, {"variant": f"{pool}-{cell}"})
    assert symbolic_dims(onnx.load(str(path))) == {"token_ids": ["batch", "seq"], "lengths": ["batch"]}
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for index, (batch, seq) in enumerate([(7, 23), (3, 40), (1, 1)]):  # none is the traced (2, 5)
        token_ids, lengths = example_inputs(VOCAB, batch, seq, seed=index)
        with torch.no_grad():
            expected = model(token_ids, lengths).numpy()
        actual = session.run(["logits"], {"token_ids": token_ids.numpy(), "lengths": lengths.numpy()})[0]
        assert abs(expected - actual).max() <= 1e-5, (batch, seq)


# ---- (4) the config refuses what the model cannot do

@pytest.mark.parametrize("fields", [
    {"cell": "rnn", "masked": False, "pool": "max"},
    {"cell": "bag", "pool": "mean"},
])
def test_pooling_needs_a_masked_recurrent_cell(fields: dict) -> None:
    with pytest.raises(ValidationError, match=f"pool '{fields['pool']}' needs a masked recurrent cell"):
        small_variant(**fields)


@pytest.mark.parametrize("fields", [{"cell": "rnn", "masked": False}, {"cell": "bag"}])
def test_the_embedding_skip_needs_a_masked_recurrent_cell(fields: dict) -> None:
    with pytest.raises(ValidationError, match="embedding_skip needs a masked recurrent cell"):
        small_variant(**fields, embedding_skip=True)


def test_a_bad_pool_is_one_config_error_line_naming_the_variant() -> None:
    with pytest.raises(ConfigError, match=r"variants\.gist: .*pool 'attention' needs a masked recurrent cell") as error:
        config.from_dict({"variants": {"gist": {**SMALL_ARCHITECTURE, "cell": "gru", "masked": False, "pool": "attention"}}})
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("field,value,message", [
    ("dropout", 1.0, "less than 1"),
    ("dropout", -0.1, "greater than or equal to 0"),
    ("embed_dropout", 1.5, "less than 1"),
    ("weight_decay", -1e-4, "greater than or equal to 0"),
    ("label_smoothing", 1.0, "less than 1"),
    ("warmup_epochs", -0.5, "greater than or equal to 0"),
    ("dropout", True, "expected a number, not true/false"),
    ("pool", "first", "'last', 'max', 'mean' or 'attention'"),
    ("schedule", "linear", "'constant' or 'cosine'"),
    ("adversarial", -0.01, "greater than or equal to 0"),
    ("adversarial", "big", "valid number"),
    ("embedding_skip", "yes", "valid boolean"),
    ("weight_average", 1.0, "less than 1"),
    ("consistency", -1.0, "greater than or equal to 0"),
    ("consistency", False, "expected a number, not true/false"),
    ("weight_average", -0.5, "greater than or equal to 0"),
])
def test_out_of_range_options_are_refused(field: str, value: object, message: str) -> None:
    with pytest.raises(ConfigError, match=rf"variants\.lstm\.{field}: .*{message}"):
        config.from_dict({"variants": {"lstm": {**SMALL_ARCHITECTURE, "cell": "lstm", field: value}}})


def test_the_defaults_are_the_lesson_models() -> None:
    variant = small_variant(cell="lstm")
    assert (variant.pool, variant.dropout, variant.embed_dropout) == ("last", 0.0, 0.0)
    assert (variant.weight_decay, variant.label_smoothing, variant.warmup_epochs, variant.schedule) == (0.0, 0.0, 0.0, "constant")
    assert (variant.embedding_skip, variant.adversarial, variant.weight_average, variant.consistency) == (False, 0.0, 0.0, 0.0)
    assert not hasattr(build_model(variant, VOCAB, CLASSES), "attention")


# ---- (5) the learning-rate schedule, over every optimizer make_optimizer returns

LR = 0.1


def scheduled(sparse: bool, **schedule: object) -> tuple[object, object]:
    torch.manual_seed(0)
    optimizer = make_optimizer(options_model("last", "gru", False), LR, sparse_embedding=sparse)
    assert list(optimizer.optimizers) == (["sparse", "dense"] if sparse else ["dense"])
    return optimizer, make_scheduler(optimizer, steps_per_epoch=4, epochs=3, **schedule)


def learning_rates(optimizer: object, scheduler: object, steps: int) -> list[float]:
    """The lr each of `steps` optimizer steps uses (checked equal across optimizers and groups), then the lr after."""
    used = []
    for _ in range(steps + 1):
        rates = {group["lr"] for inner in optimizer.optimizers.values() for group in inner.param_groups}
        assert len(rates) == 1
        used.append(rates.pop())
        optimizer.step()  # no gradients: nothing moves, but the scheduler sees a step
        scheduler.step()
    return used


@pytest.mark.parametrize("sparse", [True, False])
def test_warmup_ramps_linearly_then_cosine_falls_to_zero(sparse: bool) -> None:
    optimizer, scheduler = scheduled(sparse, warmup_epochs=1.0, schedule="cosine")
    rates = learning_rates(optimizer, scheduler, 12)
    assert rates[:5] == pytest.approx([LR / 5, 2 * LR / 5, 3 * LR / 5, 4 * LR / 5, LR])  # 4 warmup steps, then the peak
    cosine = [LR * 0.5 * (1 + math.cos(math.pi * k / 8)) for k in range(8)]
    assert rates[4:12] == pytest.approx(cosine)
    assert all(later < earlier for earlier, later in zip(rates[4:12], rates[5:12]))
    assert rates[11] < 0.05 * LR and rates[12] == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("sparse", [True, False])
def test_constant_without_warmup_leaves_the_learning_rate_exactly_as_configured(sparse: bool) -> None:
    optimizer, scheduler = scheduled(sparse, warmup_epochs=0.0, schedule="constant")
    assert learning_rates(optimizer, scheduler, 12) == [LR] * 13
    optimizer, scheduler = scheduled(sparse, warmup_epochs=0.5, schedule="constant")  # 2 warmup steps
    assert learning_rates(optimizer, scheduler, 6) == pytest.approx([LR / 3, 2 * LR / 3, LR, LR, LR, LR, LR])


@pytest.mark.parametrize("sparse", [True, False])
def test_a_schedule_resumes_from_its_state(sparse: bool) -> None:
    optimizer, scheduler = scheduled(sparse, warmup_epochs=1.0, schedule="cosine")
    learning_rates(optimizer, scheduler, 5)
    resumed_optimizer, resumed_scheduler = scheduled(sparse, warmup_epochs=1.0, schedule="cosine")
    resumed_optimizer.load_state_dict(optimizer.state_dict())
    resumed_scheduler.load_state_dict(scheduler.state_dict())
    assert learning_rates(resumed_optimizer, resumed_scheduler, 4) == learning_rates(optimizer, scheduler, 4)


def test_make_scheduler_refuses_impossible_arguments() -> None:
    optimizer = make_optimizer(options_model("last", "gru", False), LR, sparse_embedding=False)
    with pytest.raises(ValueError, match="steps_per_epoch"):
        make_scheduler(optimizer, steps_per_epoch=0, epochs=1, warmup_epochs=0.0, schedule="constant")


# ---- (6) weight decay: only the dense weight matrices shrink

@pytest.mark.parametrize("sparse", [True, False])
def test_weight_decay_shrinks_only_the_dense_weight_matrices(sparse: bool) -> None:
    model = options_model("attention", "lstm", True)
    for parameter in model.parameters():
        if parameter.ndim == 1:  # biases start at zero, where decay would not show: make them non-zero
            nn.init.uniform_(parameter, 0.1, 0.2)
    optimizer = make_optimizer(model, LR, sparse_embedding=sparse, weight_decay=0.5)
    before = {name: parameter.detach().clone() for name, parameter in model.named_parameters()}
    steps = 3
    for _ in range(steps):
        for name, parameter in model.named_parameters():
            # A zero gradient: Adam's step is exactly 0, so only the decay can move a parameter.
            if name == "embedding.weight" and sparse:
                rows, zeros = torch.tensor([[2, 3]]), torch.zeros(2, parameter.size(1))
                parameter.grad = torch.sparse_coo_tensor(rows, zeros, parameter.shape, check_invariants=True)
            else:
                parameter.grad = torch.zeros_like(parameter)
        optimizer.step()
    decayed = {name for name, parameter in model.named_parameters() if parameter.ndim >= 2 and name != "embedding.weight"}
    assert "head.weight" in decayed and "attention.weight" in decayed and "layers.1.1.weight_hh_l0" in decayed
    for name, parameter in model.named_parameters():
        if name in decayed:
            assert torch.allclose(parameter, before[name] * (1 - LR * 0.5) ** steps, rtol=1e-6, atol=0), name
        else:
            assert torch.equal(parameter, before[name]), name  # biases and the embedding table


def test_no_weight_decay_keeps_plain_fused_adam() -> None:
    optimizer = make_optimizer(options_model("last", "gru", False), LR, sparse_embedding=True)
    assert type(optimizer.optimizers["dense"]) is torch.optim.Adam
    assert type(optimizer.optimizers["sparse"]) is torch.optim.SparseAdam
