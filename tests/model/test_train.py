"""Training behaviour on the sample corpus: order is learned, runs are reproducible, and a killed run
resumes to the same weights."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from textrnn.config import Config
from textrnn.evaluate import evaluate_variant
from textrnn.export import export_variant
from textrnn.train import train_variant

from conftest import PARAMS, SMALL_SAMPLE, make_config, path_overrides

# Enough epochs and a livelier learning rate than the lesson's so the small corpus trains in seconds.
BEHAVIOUR = ["train.epochs=8", "train.learning_rate=0.005", "variants.lstm.batch_size=16"]
MASKED_RECURRENT = [name for name, v in Config().variants.items() if v.masked and v.cell != "bag"]
ORDER_AWARE_BAR = 0.9


@pytest.fixture(scope="module")
def behaviour_results(tmp_path_factory: pytest.TempPathFactory, encoded_sample: Path) -> dict[str, float]:
    """Test accuracy of every masked recurrent variant and of `bag`, trained once for this module."""
    import shutil

    workdir = tmp_path_factory.mktemp("behaviour") / "ws"
    shutil.copytree(encoded_sample, workdir)
    cfg = make_config(workdir, *BEHAVIOUR)
    results = {}
    for variant in [*MASKED_RECURRENT, "bag"]:
        train_variant(cfg, cfg.variant(variant))
        export_variant(cfg, cfg.variant(variant))  # evaluation runs the shipped ONNX model
        results[variant] = evaluate_variant(cfg, cfg.variant(variant))["test_accuracy"]
    return results


@pytest.mark.slow
@pytest.mark.parametrize("variant", MASKED_RECURRENT)
def test_masked_recurrent_variants_learn_the_order_dependent_sample(behaviour_results: dict[str, float], variant: str) -> None:
    assert behaviour_results[variant] >= ORDER_AWARE_BAR, behaviour_results


@pytest.mark.slow
def test_bag_of_embeddings_cannot_see_order(behaviour_results: dict[str, float]) -> None:
    best_recurrent = min(behaviour_results[v] for v in MASKED_RECURRENT)
    assert behaviour_results["bag"] <= best_recurrent - 0.15, behaviour_results
    assert behaviour_results["bag"] > 0.3  # it still learns the one-topic rows: above chance (0.25)


def test_loss_goes_down_and_outputs_are_written(workspace: Path) -> None:
    cfg = make_config(workspace, "train.epochs=2")
    summary = train_variant(cfg, cfg.variant("gru"))
    history = summary["history"]
    assert history[1]["train_loss"] < history[0]["train_loss"]
    assert cfg.paths.model_file("gru").is_file() and cfg.paths.checkpoint("gru").is_file()
    written = json.loads((cfg.paths.metrics_dir("gru") / "train.json").read_text())
    assert written["epochs_run"] == 2 and written["padding_efficiency"] > 0.9
    assert set(history[0]) >= {"train_loss", "train_accuracy", "val_loss", "val_accuracy", "samples_per_second", "padding_efficiency"}


def test_epoch_callback_sees_every_epoch(workspace: Path) -> None:
    seen: list[tuple[str, int]] = []
    cfg = make_config(workspace, "train.epochs=2")
    train_variant(cfg, cfg.variant("bag"), on_epoch=lambda v, m: seen.append((v, m["epoch"])))
    assert seen == [("bag", 1), ("bag", 2)]


def test_same_config_gives_identical_metrics_and_weights(workspace: Path) -> None:
    cfg = make_config(workspace, "train.epochs=2")
    first = train_variant(cfg, cfg.variant("rnn_masked"))
    first_weights = torch.load(cfg.paths.model_file("rnn_masked"), weights_only=True)["state_dict"]
    second = train_variant(cfg, cfg.variant("rnn_masked"))
    second_weights = torch.load(cfg.paths.model_file("rnn_masked"), weights_only=True)["state_dict"]
    strip = ("samples_per_second", "seconds")
    assert [{k: v for k, v in h.items() if k not in strip} for h in first["history"]] == [
        {k: v for k, v in h.items() if k not in strip} for h in second["history"]
    ]
    assert all(torch.equal(first_weights[k], second_weights[k]) for k in first_weights)


# Every training option of a variant on at once: dropout draws from torch's RNG and the schedule has state
# of its own, so a resumed run must restore both to land on the same weights.
EVERY_OPTION = [f"variants.lstm.{key}" for key in ("pool=attention", "dropout=0.2", "embed_dropout=0.1", "token_dropout=0.1",
                                                   "weight_decay=0.01", "label_smoothing=0.1", "warmup_epochs=1.5",
                                                   "schedule=cosine", "sparse_embedding=false", "embedding_skip=true",
                                                   "adversarial=0.05", "weight_average=0.9",
                                                   "consistency=1.0")]


def _train_command(workspace: Path, *extra: str, options: list[str]) -> list[str]:
    sets = [arg for override in [*SMALL_SAMPLE, *path_overrides(workspace), "train.epochs=4", "train.patience=10",
                                 *options]
            for arg in ("--set", override)]
    return [sys.executable, "-m", "textrnn.cli", "train", "--variant", "lstm", "--params", str(PARAMS),
            "--no-progress", *sets, *extra]


@pytest.mark.parametrize("options", [[], EVERY_OPTION], ids=["lesson", "every-option"])
def test_a_killed_run_resumes_to_the_weights_of_an_uninterrupted_run(workspace: Path, options: list[str]) -> None:
    cfg = make_config(workspace, "train.epochs=4", "train.patience=10", *options)
    uninterrupted = train_variant(cfg, cfg.variant("lstm"))
    reference = torch.load(cfg.paths.model_file("lstm"), weights_only=True)["state_dict"]
    cfg.paths.model_file("lstm").unlink()
    cfg.paths.checkpoint("lstm").unlink()

    # A real process, really killed (SIGKILL: no cleanup) once its first epoch's checkpoint is on disk.
    process = subprocess.Popen(_train_command(workspace, options=options), cwd=workspace, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 120
    while not cfg.paths.checkpoint("lstm").exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not cfg.paths.model_file("lstm").exists()
    killed_after = torch.load(cfg.paths.checkpoint("lstm"), weights_only=True)["state"]["epoch"]
    assert killed_after < 4

    resumed = subprocess.run(_train_command(workspace, "--resume", options=options), cwd=workspace, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    weights = torch.load(cfg.paths.model_file("lstm"), weights_only=True)["state_dict"]
    assert all(torch.equal(reference[k], weights[k]) for k in reference)
    history = json.loads((cfg.paths.metrics_dir("lstm") / "train.json").read_text())["history"]
    assert [h["val_loss"] for h in history] == [h["val_loss"] for h in uninterrupted["history"]]


def test_each_training_option_changes_what_is_learnt(workspace: Path) -> None:
    """Every option in EVERY_OPTION reaches training: alone, each changes the first epoch's weights."""
    def first_epoch(*overrides: str) -> dict[str, torch.Tensor]:
        cfg = make_config(workspace, "train.epochs=1", *overrides)
        train_variant(cfg, cfg.variant("lstm"))
        return torch.load(cfg.paths.model_file("lstm"), weights_only=True)["state_dict"]

    lesson = first_epoch()
    assert all(torch.equal(lesson[key], value) for key, value in first_epoch().items())  # deterministic
    with_dropout = first_epoch("variants.lstm.dropout=0.2")
    for option in EVERY_OPTION:
        # Consistency compares two dropout draws, which without dropout are one: it is tried on top of dropout.
        before, changed = ((with_dropout, first_epoch("variants.lstm.dropout=0.2", option))
                           if "consistency" in option else (lesson, first_epoch(option)))
        shared = set(before) & set(changed)  # attention adds a weight of its own
        assert any(not torch.equal(before[key], changed[key]) for key in shared), option
    # A variant's sparse_embedding overrides train.sparse_embedding: the same as switching it for all.
    dense = first_epoch("variants.lstm.sparse_embedding=false")
    assert all(torch.equal(dense[key], value) for key, value in first_epoch("train.sparse_embedding=false").items())


def test_validation_reads_and_training_publishes_the_weight_average(workspace: Path) -> None:
    from textrnn.checkpoints import load_model
    from textrnn.tokens import EncodedSplit
    from textrnn.train import _cross_entropy, predict_logits

    cfg = make_config(workspace, "train.epochs=2", "train.patience=5", "variants.lstm.weight_average=0.9")
    summary = train_variant(cfg, cfg.variant("lstm"))
    model, _ = load_model(cfg.paths.model_file("lstm"))
    val = EncodedSplit.load(cfg.paths.encoded_split("val"))
    assert _cross_entropy(predict_logits(model, val, 256, torch.device("cpu")), val.labels) == pytest.approx(
        summary["best_val_loss"], abs=1e-6)
    checkpoint = torch.load(cfg.paths.checkpoint("lstm"), weights_only=True)
    published = model.state_dict()
    averaged = {key.removeprefix("module."): value for key, value in checkpoint["average"].items() if key != "n_averaged"}
    assert averaged.keys() == published.keys()
    best_is_last = summary["best_epoch"] == summary["epochs_run"]
    assert all(torch.equal(averaged[key], published[key]) for key in published) == best_is_last
    # The average is not the last step's weights, which the checkpoint also keeps for resuming.
    assert any(not torch.equal(averaged[key], checkpoint["model"][key]) for key in published)


def test_outputs_record_their_inputs_and_training_config(workspace: Path) -> None:
    from textrnn.files import sha256_file
    from textrnn.train import training_config

    cfg = make_config(workspace, "train.epochs=1")
    summary = train_variant(cfg, cfg.variant("bag"))
    expected_inputs = {f"data/encoded/{name}": sha256_file(workspace / "data" / "encoded" / name)
                       for name in ("train.npz", "val.npz", "tokenizer.json")}
    for record in (summary["lineage"], torch.load(cfg.paths.model_file("bag"), weights_only=True)["lineage"],
                   torch.load(cfg.paths.checkpoint("bag"), weights_only=True)["lineage"]):
        assert record["inputs"] == expected_inputs
        assert record["config"] == training_config(cfg, cfg.variant("bag"))
    assert summary["model_pt_sha256"] == sha256_file(cfg.paths.model_file("bag"))
    assert "device" not in training_config(cfg, cfg.variant("bag"))["train"] and training_config(cfg, cfg.variant("bag"))["variant"]["name"] == "bag"


def test_a_new_run_clears_the_variants_previous_outputs_first(workspace: Path) -> None:
    from textrnn.train import clear_outputs, variant_outputs

    cfg = make_config(workspace, "train.epochs=1")
    outputs = variant_outputs(cfg, cfg.variant("gru"))
    for path in outputs:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("old")
    mine = cfg.paths.model_dir("gru") / "notes.txt"
    mine.write_text("a user's file")
    clear_outputs(cfg, cfg.variant("gru"), resume=True, run_record=False)
    assert cfg.paths.checkpoint("gru").exists() and (cfg.paths.model_dir("gru") / "mlflow_run.json").exists()
    clear_outputs(cfg, cfg.variant("gru"))
    assert not [path for path in outputs if path.exists()] and mine.read_text() == "a user's file"


def test_divergence_is_caught_at_the_first_non_finite_loss(workspace: Path) -> None:
    from textrnn.train import TrainingDiverged

    cfg = make_config(workspace, "train.epochs=1", "train.learning_rate=1e30")
    with pytest.raises(TrainingDiverged, match=r"lstm epoch 1/1, step \d+: loss is") as raised:
        train_variant(cfg, cfg.variant("lstm"))
    assert "\n" not in str(raised.value)
    assert not cfg.paths.model_file("lstm").exists()


@pytest.mark.parametrize("changed", ["train.learning_rate=0.01", "seed=1", "train.epochs=3", "variants.gru.hidden=8",
                                     "buckets.enabled=false", "tokenizer.min_frequency=2", "data.classes=[a,b,c,d]"])
def test_resume_refuses_each_kind_of_changed_training_key(workspace: Path, changed: str) -> None:
    from textrnn.checkpoints import CheckpointError

    def train_gru(*overrides: str, resume: bool = False) -> None:
        cfg = make_config(workspace, "train.epochs=1", *overrides)
        train_variant(cfg, cfg.variant("gru"), resume=resume)

    train_gru()
    key = changed.split("=")[0].replace("variants.gru.", "variant.")
    with pytest.raises(CheckpointError, match=f"cannot resume, the training config changed: {key}"):
        train_gru(changed, resume=True)
    # Device and thread count may change on resume: they do not change what is learnt.
    train_gru("train.threads=2", "train.device=cpu", resume=True)
