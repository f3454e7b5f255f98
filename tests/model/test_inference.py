"""The one inference path: `OnnxClassifier`, the `predict` CLI and evaluation through ONNX.

Two sample models (`gru`, masked, and `rnn`, unmasked: it reads pads) are trained one epoch and exported
per module, with the workspace as working directory (as a user runs them); CLI tests run inside it too.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from conftest import PARAMS, SMALL_SAMPLE, make_config, path_overrides
from typer.testing import CliRunner

from textrnn import inference
from textrnn.cli import app
from textrnn.config import Config
from textrnn.data import read_split
from textrnn.export import export_variant
from textrnn.files import read_json
from textrnn.inference import (
    CPU_PROVIDER,
    CUDA_PROVIDER,
    InferenceError,
    OnnxClassifier,
    TextInputError,
    length_batches,
)
from textrnn.serving import ServingError, check_output_path, read_texts
from textrnn.text import normalize_text
from textrnn.tokens import encode_texts
from textrnn.train import train_variant


def cuda_provider_works(onnx_file: Path) -> bool:
    """Whether onnxruntime can really create its CUDA provider on this machine."""
    try:
        inference.create_session(onnx_file, "cuda")
    except InferenceError:
        return False
    return True


@pytest.fixture(scope="module")
def trained(encoded_sample: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Config]:
    """A workspace with `gru` and `rnn` trained for one epoch and exported."""
    workdir = tmp_path_factory.mktemp("trained") / "ws"
    shutil.copytree(encoded_sample, workdir)
    with contextlib.chdir(workdir):
        cfg = make_config(workdir, "train.epochs=1")
        for variant in ("gru", "rnn"):
            train_variant(cfg, cfg.variant(variant))
            export_variant(cfg, cfg.variant(variant))
    return workdir, cfg


@pytest.fixture
def in_workspace(trained, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run the test inside the module's workspace (outputs must lie inside the working directory)."""
    workdir, _ = trained
    monkeypatch.chdir(workdir)
    return workdir


@pytest.fixture(scope="module")
def classifier(trained) -> OnnxClassifier:
    _, cfg = trained
    return OnnxClassifier.from_model_dir(cfg.paths.model_dir("gru"), device="cpu")


@pytest.fixture(scope="module")
def test_texts(trained) -> list[str]:
    _, cfg = trained
    return read_split(cfg.paths.prepared, "test")["text"].tolist()


# ------------------------------------------------------------------------------------------ providers


def test_auto_device_reports_the_provider_that_really_runs(trained, caplog) -> None:
    _, cfg = trained
    model_dir = cfg.paths.model_dir("gru")
    with caplog.at_level("INFO", logger="textrnn"):
        auto = OnnxClassifier.from_model_dir(model_dir, device="auto")
    expected = CUDA_PROVIDER if cuda_provider_works(model_dir / "model.onnx") else CPU_PROVIDER
    assert auto.provider == expected == auto.session.get_providers()[0]
    assert [record.getMessage() for record in caplog.records if "provider=" in record.getMessage()] == [
        f"onnxruntime provider={expected} device=auto model={model_dir / 'model.onnx'}"
    ]


def test_cuda_device_without_a_usable_cuda_provider_is_one_clear_error(trained) -> None:
    _, cfg = trained
    model_dir = cfg.paths.model_dir("gru")
    if cuda_provider_works(model_dir / "model.onnx"):
        pytest.skip("this machine has a working CUDA provider")
    # onnxruntime-gpu lists CUDA as available even here: exactly the trap we must not fall into.
    assert CUDA_PROVIDER in ort.get_available_providers()
    with pytest.raises(InferenceError) as raised:
        OnnxClassifier.from_model_dir(model_dir, device="cuda")
    message = str(raised.value)
    assert "\n" not in message
    assert "could not create the CUDA provider" in message and "CUDA 13" in message and "--device auto or cpu" in message


def test_unknown_device_is_rejected(trained) -> None:
    _, cfg = trained
    with pytest.raises(InferenceError, match="unknown device 'gpu'"):
        OnnxClassifier.from_model_dir(cfg.paths.model_dir("gru"), device="gpu")


def test_a_cuda_session_uses_io_binding(trained, monkeypatch) -> None:
    """The one mock: pretend onnxruntime came up on CUDA, to see the classifier choose IO binding."""
    _, cfg = trained
    real_session = inference.cpu_session(cfg.paths.model_dir("gru") / "model.onnx")

    class CudaLookingSession:
        def __getattr__(self, name):
            return getattr(real_session, name)

        def get_providers(self):
            return [CUDA_PROVIDER, CPU_PROVIDER]

    monkeypatch.setattr(inference, "create_session", lambda *args, **kwargs: CudaLookingSession())
    on_cuda = OnnxClassifier.from_model_dir(cfg.paths.model_dir("gru"), device="cuda")
    assert on_cuda.provider == CUDA_PROVIDER and on_cuda.io_binding_device == "cuda"


def test_io_binding_path_gives_the_same_probabilities(classifier: OnnxClassifier, test_texts: list[str]) -> None:
    # IO binding works on CPU memory too, so its code path runs for real here.
    texts = test_texts[:40]
    plain = classifier.predict_proba(texts)
    classifier.io_binding_device = "cpu"
    try:
        bound = classifier.predict_proba(texts)
    finally:
        classifier.io_binding_device = None
    np.testing.assert_allclose(bound, plain, atol=1e-6, rtol=0)


# ------------------------------------------------------------------------------------------ batching


def test_length_batches_cover_every_row_once_within_the_token_budget() -> None:
    lengths = np.random.default_rng(0).integers(1, 120, size=500)
    batches = length_batches(lengths, batch_tokens=600)
    rows = np.concatenate(batches)
    assert sorted(rows.tolist()) == list(range(500))
    for batch in batches:
        assert len(set(lengths[batch].tolist())) == 1  # never padded: a row's batch-mates cannot matter
        assert len(batch) == 1 or len(batch) * lengths[batch].max() <= 600
    assert length_batches(np.array([900, 3]), batch_tokens=100)[-1].tolist() == [0]  # too long: alone
    assert length_batches(np.array([], dtype=np.int64), batch_tokens=100) == []


def test_batched_prediction_keeps_input_order_and_equals_one_by_one(trained, test_texts: list[str]) -> None:
    _, cfg = trained
    # A small token budget forces many batches over these mixed lengths.
    small_batches = OnnxClassifier.from_model_dir(cfg.paths.model_dir("gru"), device="cpu", batch_tokens=64)
    texts = test_texts[:60] + ["", "a"]
    assert len(set(small_batches.encode(texts).lengths.tolist())) > 10
    labels, probabilities = small_batches.predict(texts)
    for index, text in enumerate(texts):
        one_label, one_probabilities = small_batches.predict([text])
        assert one_label == [labels[index]]
        np.testing.assert_array_equal(one_probabilities[0], probabilities[index])  # bit for bit
    reversed_labels, reversed_probabilities = small_batches.predict(texts[::-1])
    assert reversed_labels == labels[::-1]
    np.testing.assert_array_equal(reversed_probabilities, probabilities[::-1])


def test_the_unmasked_rnn_runs_through_the_same_path(trained, test_texts: list[str]) -> None:
    _, cfg = trained
    rnn = OnnxClassifier.from_model_dir(cfg.paths.model_dir("rnn"), device="cpu", batch_tokens=256)
    labels, probabilities = rnn.predict(test_texts[:20])
    assert len(labels) == 20 and set(labels) <= set(cfg.data.classes)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    # It reads pads, yet a text's answer is its own: alone or among others, the same bits.
    alone = np.concatenate([rnn.predict_proba([text]) for text in test_texts[:20]])
    np.testing.assert_array_equal(probabilities, alone)
    assert rnn.variant is not None and rnn.variant["masked"] is False


def test_texts_are_normalised_as_in_training(classifier: OnnxClassifier, trained) -> None:
    _, cfg = trained
    raw = ["It#39;s AT&amp;T \\ quot;news quot; today", "  spaced\tout  "]
    normalised = [normalize_text(text) for text in raw]
    assert normalised == ['It\'s AT&T "news" today', "spaced out"]
    expected = encode_texts(classifier.tokenizer, normalised)
    np.testing.assert_array_equal(classifier.encode(raw).token_ids, expected.token_ids)
    np.testing.assert_array_equal(classifier.predict_proba(raw), classifier.predict_proba(normalised))


# ------------------------------------------------------------------------------------------ edge inputs


def test_empty_unknown_and_very_long_texts_get_valid_predictions(classifier: OnnxClassifier, trained) -> None:
    _, cfg = trained
    max_len = cfg.tokenizer.max_len
    long_text = " ".join(f"word{i % 7} market" for i in range(3 * max_len))
    texts = ["", "   \t ", "zzqxv wqxyz qqqqz", "!!! ??? ...", long_text]
    labels, probabilities = classifier.predict(texts)
    assert len(labels) == len(texts) and set(labels) <= set(classifier.classes)
    assert probabilities.shape == (len(texts), len(classifier.classes)) and probabilities.dtype == np.float32
    assert np.isfinite(probabilities).all()
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    assert classifier.encode([long_text]).lengths.tolist() == [max_len]
    truncated = " ".join(long_text.split()[:max_len])
    np.testing.assert_allclose(classifier.predict_proba([truncated]), probabilities[-1:], atol=1e-6, rtol=0)


def test_no_texts_gives_empty_results(classifier: OnnxClassifier) -> None:
    labels, probabilities = classifier.predict([])
    assert labels == [] and probabilities.shape == (0, len(classifier.classes))


def test_non_string_input_is_a_clear_error_naming_its_index(classifier: OnnxClassifier) -> None:
    with pytest.raises(TextInputError, match=r"texts\[2\] is NoneType, expected str"):
        classifier.predict(["fine", "also fine", None])
    with pytest.raises(TypeError, match=r"texts\[0\] is int"):
        classifier.predict([3])
    with pytest.raises(TextInputError, match="not a single string"):
        classifier.predict("a headline")
    with pytest.raises(TextInputError, match=r"texts\[1\] is not valid Unicode"):  # undecodable bytes from argv
        classifier.predict(["fine", "caf\udce9"])


def test_a_tokenizer_other_than_the_exported_one_is_refused(trained, tmp_path: Path) -> None:
    _, cfg = trained
    model_dir = cfg.paths.model_dir("gru")
    other = tmp_path / "tokenizer.json"
    other.write_text((model_dir / "tokenizer.json").read_text(encoding="utf-8") + "\n", encoding="utf-8")
    with pytest.raises(InferenceError, match="not the tokenizer"):
        OnnxClassifier(other, model_dir / "model.onnx", device="cpu")


def test_missing_model_files_are_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(InferenceError, match="model.onnx or tokenizer.json"):
        OnnxClassifier.from_model_dir(tmp_path)


# ------------------------------------------------------------------------------------------ input files


def test_read_texts_from_csv_jsonl_and_plain_lines(tmp_path: Path) -> None:
    (tmp_path / "in.csv").write_text('id,text\n1,"Stocks, bonds rally"\n2,\n', encoding="utf-8")
    (tmp_path / "in.jsonl").write_text('{"text": "one"}\n\n{"text": "two", "id": 2}\n', encoding="utf-8")
    (tmp_path / "in.txt").write_text("first line\n\nthird line\n", encoding="utf-8")
    assert read_texts(tmp_path / "in.csv") == ["Stocks, bonds rally", ""]
    assert read_texts(tmp_path / "in.jsonl") == ["one", "two"]
    assert read_texts(tmp_path / "in.txt") == ["first line", "", "third line"]


def test_read_texts_names_the_bad_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"title": "no text"}\n', encoding="utf-8")
    (tmp_path / "bad.csv").write_text("title,label\nx,1\n", encoding="utf-8")
    with pytest.raises(InferenceError, match=r"bad.jsonl:2: expected an object"):
        read_texts(tmp_path / "bad.jsonl")
    with pytest.raises(InferenceError, match="'text' column"):
        read_texts(tmp_path / "bad.csv")
    (tmp_path / "latin1.txt").write_bytes("first\nsecond caf\u00e9\n".encode("latin-1"))
    with pytest.raises(InferenceError, match=r"latin1.txt:2: not valid UTF-8 \(byte 0xe9 at byte 11 of the line\)"):
        read_texts(tmp_path / "latin1.txt")
    with pytest.raises(InferenceError, match="is a directory"):
        read_texts(tmp_path)


def test_read_texts_counts_lines_as_an_editor_does(tmp_path: Path) -> None:
    # CRLF ends a line; a line separator or form feed inside a text does not (str.splitlines would cut).
    (tmp_path / "in.txt").write_bytes("one\r\ntwo\u2028still two\x0cand\n\nlast".encode("utf-8"))
    assert read_texts(tmp_path / "in.txt") == ["one", "two\u2028still two\x0cand", "", "last"]
    (tmp_path / "in.jsonl").write_text('{"text": "a\u2028b"}\n', encoding="utf-8")
    assert read_texts(tmp_path / "in.jsonl") == ["a\u2028b"]


def test_output_path_is_checked_before_any_work(tmp_path: Path) -> None:
    with pytest.raises(ServingError, match="is a directory"):
        check_output_path(tmp_path)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ServingError, match="is not a directory"):
        check_output_path(tmp_path / "file" / "out.jsonl")
    assert check_output_path(tmp_path / "new" / "out.jsonl") == tmp_path / "new" / "out.jsonl"
    assert not (tmp_path / "new").exists()


# ------------------------------------------------------------------------------------------ CLI + evaluate


def cli_settings(workdir: Path) -> list[str]:
    overrides = [arg for override in [*SMALL_SAMPLE, *path_overrides(workdir)] for arg in ("--set", override)]
    return ["--params", str(PARAMS), *overrides]


def test_cli_predict_prints_labels_and_probabilities(trained, in_workspace, classifier: OnnxClassifier) -> None:
    workdir, cfg = trained
    result = CliRunner().invoke(app, ["predict", "--model", "gru", "stocks rally on wall street", "", *cli_settings(workdir)])
    assert result.exit_code == 0, result.output
    expected_label = classifier.predict(["stocks rally on wall street"])[0][0]
    assert expected_label in result.output and all(name in result.output for name in cfg.data.classes)


def test_cli_predict_scores_a_file_into_jsonl_in_input_order(
    trained, in_workspace, classifier: OnnxClassifier, tmp_path: Path
) -> None:
    workdir, cfg = trained
    texts = ["the match ended in a draw", "", "shares fell sharply", "x " * 400]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    output = workdir / tmp_path.name / "predictions.jsonl"  # inside the working directory
    model_dir = str(cfg.paths.model_dir("gru"))  # a directory, not a variant name
    result = CliRunner().invoke(
        app, ["predict", "-m", model_dir, "--input", str(tmp_path / "in.jsonl"), "--output", str(output), "--no-progress",
              *cli_settings(workdir)]
    )
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in output.read_text(encoding="utf-8").splitlines()]
    labels, probabilities = classifier.predict(texts)
    assert [record["text"] for record in records] == texts
    assert [record["label"] for record in records] == labels
    np.testing.assert_allclose([list(record["probabilities"].values()) for record in records], probabilities, atol=1e-5)


def test_cli_predict_errors_are_one_line(trained, in_workspace) -> None:
    workdir, _ = trained
    runner = CliRunner()
    unknown = runner.invoke(app, ["predict", "-m", "nope", "text", *cli_settings(workdir)])
    assert unknown.exit_code == 2 and "neither a variant" in unknown.output
    neither = runner.invoke(app, ["predict", "-m", "gru", *cli_settings(workdir)])
    assert neither.exit_code == 2 and "exactly one of them" in neither.output


def test_cli_export_then_evaluate_records_the_onnxruntime_provider(trained, in_workspace) -> None:
    workdir, cfg = trained
    runner = CliRunner()
    exported = runner.invoke(app, ["export", "--variant", "gru", *cli_settings(workdir)])
    assert exported.exit_code == 0, exported.output
    assert "parity max" in exported.output
    evaluated = runner.invoke(app, ["evaluate", "--variant", "gru", "--device", "auto", *cli_settings(workdir)])
    assert evaluated.exit_code == 0, evaluated.output
    report = read_json(cfg.paths.metrics_dir("gru") / "eval.json")
    assert report["runtime"] == "onnxruntime"
    assert report["provider"] in (CPU_PROVIDER, CUDA_PROVIDER)
    assert report["inference_latency_ms_b1"] > 0
    assert report["rows"] == len(read_split(cfg.paths.prepared, "test"))
    # The evaluated probabilities are the shipped graph's: accuracy recomputed from OnnxClassifier agrees.
    test = read_split(cfg.paths.prepared, "test")
    labels, _ = OnnxClassifier.from_model_dir(cfg.paths.model_dir("gru"), device="cpu").predict(test["text"].tolist())
    truth = [cfg.data.classes[label] for label in test["label"]]
    assert report["test_accuracy"] == pytest.approx(np.mean([a == b for a, b in zip(labels, truth)]))


def test_evaluate_before_export_says_what_to_run(workspace: Path) -> None:
    from textrnn.errors import TextrnnError
    from textrnn.evaluate import evaluate_variant

    with pytest.raises(TextrnnError, match="textrnn export"):
        cfg = make_config(workspace)
        evaluate_variant(cfg, cfg.variant("lstm"))
