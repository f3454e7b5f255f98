"""Serving under faults and bad input (issue 12 items 9, 10, 13, 14, 15): a graph that is not the one
exported, batch-mates that must not matter, train/serve text normalisation, user text that looks like
markup or is not UTF-8, an `--output` that is a directory, and the served pyfunc's input contract
against a real `mlflow models serve`.

One module workspace trains `rnn` (unmasked: it reads pads), `gru` (masked) and `bag` for one epoch on
the small sample and exports them; each test works on its own copy or reads it only.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from conftest import SMALL_SAMPLE, make_config, path_overrides, private_copy
from fault_kit import PARAMS, assert_one_line_error, assert_unchanged, cli, fault, snapshot

from textrnn.config import Config
from textrnn.data import read_split
from textrnn.export import export_variant
from textrnn.inference import InferenceError, OnnxClassifier
from textrnn.onnx_graph import GRAPH_SHA256_KEY, graph_digest, stamp_graph_digest
from textrnn.serving import read_texts
from textrnn.text import normalize_text
from textrnn.tokens import encode_texts, load_tokenizer
from textrnn.checkpoints import load_model
from textrnn.train import train_variant

VARIANTS = ("rnn", "gru", "bag")


@pytest.fixture(scope="module")
def trained(encoded_sample: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A workspace with `rnn`, `gru` and `bag` trained one epoch and exported (read-only for tests)."""
    workdir = tmp_path_factory.mktemp("serving") / "ws"
    shutil.copytree(encoded_sample, workdir)
    with contextlib.chdir(workdir):
        cfg = make_config(workdir, "train.epochs=1")
        for variant in VARIANTS:
            train_variant(cfg, cfg.variant(variant))
            export_variant(cfg, cfg.variant(variant))
    return workdir


@pytest.fixture
def ws(trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private copy of the trained workspace; the test runs inside it."""
    return private_copy(trained, tmp_path, monkeypatch)


def config_of(workdir: Path) -> Config:
    return make_config(workdir, "train.epochs=1")


def settings(workdir: Path) -> list[str]:
    overrides = [arg for override in [*SMALL_SAMPLE, *path_overrides(workdir)] for arg in ("--set", override)]
    return ["--params", str(PARAMS), *overrides]


def classifier(workdir: Path, variant: str, **options) -> OnnxClassifier:
    return OnnxClassifier.from_model_dir(config_of(workdir).paths.model_dir(variant), device="cpu", **options)


def sample_texts(workdir: Path) -> list[str]:
    return read_split(config_of(workdir).paths.prepared, "test")["text"].tolist()




def flip_weight_byte(onnx_file: Path) -> None:
    """Flip one bit in the middle of the largest initializer's raw data (a weight, not metadata)."""
    data = bytearray(onnx_file.read_bytes())
    largest = max(onnx.load(str(onnx_file)).graph.initializer, key=lambda tensor: len(tensor.raw_data))
    assert len(largest.raw_data) > 1000
    offset = bytes(data).find(largest.raw_data)
    assert offset > 0 and bytes(data).find(largest.raw_data, offset + 1) == -1
    data[offset + len(largest.raw_data) // 2] ^= 0x04
    onnx_file.write_bytes(bytes(data))


def self_verifying_copy(model_dir: Path, target: Path) -> Path:
    """`model.onnx` + `tokenizer.json` without export.json (what an MLflow download can hold), the graph
    carrying its own digest (export stamps it; stamped here too for graphs exported before that)."""
    target.mkdir(parents=True)
    proto = onnx.load(str(model_dir / "model.onnx"))
    if not any(entry.key == GRAPH_SHA256_KEY for entry in proto.metadata_props):
        stamp_graph_digest(proto)
        onnx.save(proto, str(target / "model.onnx"))
    else:
        shutil.copyfile(model_dir / "model.onnx", target / "model.onnx")
    shutil.copyfile(model_dir / "tokenizer.json", target / "tokenizer.json")
    return target


# ------------------------------------------------------------------------- 13: the graph is verified


@fault(13, "one bit flipped inside a weight (initializer raw data) of models/<V>/model.onnx",
       "predict and evaluate: error: .../model.onnx: ... modified since export ...; re-run `textrnn export`, exit 2",
       kept="metrics/")
def test_bit_flip_in_a_weight_is_refused_by_predict_and_evaluate(ws: Path) -> None:
    cfg = config_of(ws)
    flip_weight_byte(cfg.paths.model_dir("gru") / "model.onnx")
    cfg.paths.metrics.mkdir(parents=True, exist_ok=True)
    before = snapshot(cfg.paths.metrics)
    assert_one_line_error(cli(ws, "predict", "-m", "gru", "Stocks rally", *settings(ws)), "model.onnx")
    assert_one_line_error(cli(ws, "evaluate", "--variant", "gru", *settings(ws)), "model.onnx")
    assert_unchanged(before, cfg.paths.metrics)
    assert not (cfg.paths.metrics_dir("gru") / "eval.json").exists()


def one_line_inference_error(workdir: Path, variant: str, *fragments: str) -> str:
    """Loading the variant fails with one InferenceError line holding every fragment (the CLI prints
    exactly that line as `error: ...`, exit 2: see the bit-flip case, which runs the real CLI)."""
    with pytest.raises(InferenceError) as raised:
        classifier(workdir, variant)
    message = str(raised.value)
    assert "\n" not in message and all(fragment in message for fragment in fragments), message
    return message


@fault(13, "models/<V>/model.onnx truncated to half its size",
       "error: .../model.onnx: not a complete ONNX model (a field runs past the end of the file: truncated or corrupted); re-run `textrnn export`")
def test_truncated_graph_is_one_line(ws: Path) -> None:
    onnx_file = config_of(ws).paths.model_dir("gru") / "model.onnx"
    data = onnx_file.read_bytes()
    onnx_file.write_bytes(data[: len(data) // 2])
    one_line_inference_error(ws, "gru", "model.onnx", "textrnn export")


@fault(13, "models/gru/model.onnx replaced by another variant's (rnn) graph, which verifies itself",
       "error: .../gru/model.onnx: sha256 differs from the onnx_sha256 in .../export.json ...")
def test_graph_swapped_in_from_another_variant_is_refused(ws: Path) -> None:
    cfg = config_of(ws)
    shutil.copyfile(cfg.paths.model_dir("rnn") / "model.onnx", cfg.paths.model_dir("gru") / "model.onnx")
    one_line_inference_error(ws, "gru", "gru/model.onnx", "export.json", "textrnn export")


@fault(13, "a downloaded model (no export.json beside the graph) with one weight bit flipped",
       "InferenceError: .../model.onnx: content does not match the textrnn.graph_sha256 recorded at export")
def test_a_graph_verifies_itself_without_export_json(ws: Path) -> None:
    copy = self_verifying_copy(config_of(ws).paths.model_dir("gru"), ws / "downloaded")
    OnnxClassifier.from_model_dir(copy, device="cpu").predict(["Stocks rally"])  # intact: loads and predicts
    flip_weight_byte(copy / "model.onnx")
    with pytest.raises(InferenceError, match=r"model\.onnx: content does not match the textrnn\.graph_sha256"):
        OnnxClassifier.from_model_dir(copy, device="cpu")


@fault(13, "a graph with no recorded digest and no export.json beside it",
       "InferenceError: .../model.onnx: unverifiable graph ...; re-export it with `textrnn export`")
def test_an_unverifiable_graph_is_refused(ws: Path) -> None:
    model_dir = config_of(ws).paths.model_dir("gru")
    bare = ws / "bare"
    bare.mkdir()
    proto = onnx.load(str(model_dir / "model.onnx"))
    kept = [(entry.key, entry.value) for entry in proto.metadata_props if entry.key != GRAPH_SHA256_KEY]
    del proto.metadata_props[:]
    for key, value in kept:
        proto.metadata_props.add(key=key, value=value)
    onnx.save(proto, str(bare / "model.onnx"))
    shutil.copyfile(model_dir / "tokenizer.json", bare / "tokenizer.json")
    with pytest.raises(InferenceError, match="unverifiable graph .* re-export it with `textrnn export`"):
        OnnxClassifier.from_model_dir(bare, device="cpu")


def test_graph_digest_covers_everything_but_itself(ws: Path) -> None:
    proto = onnx.load(str(config_of(ws).paths.model_dir("gru") / "model.onnx"))
    first = stamp_graph_digest(proto)
    assert stamp_graph_digest(proto) == first == graph_digest(proto) == graph_digest(proto.SerializeToString())
    assert sum(entry.key == GRAPH_SHA256_KEY for entry in proto.metadata_props) == 1
    proto.metadata_props.add(key="textrnn.classes", value='["a", "b", "c", "d"]')
    assert graph_digest(proto) != first  # metadata (class names) is covered too


# ------------------------------------------------------------------- 14: batch-mates do not matter


@fault(14, "the same text scored with different batch-mates, batch sizes and token budgets (rnn unmasked, gru, bag)",
       "identical probabilities, bit for bit; equal to the model run on that text alone")
@pytest.mark.parametrize("variant", VARIANTS)
def test_a_texts_answer_never_depends_on_its_batch_mates(trained: Path, variant: str) -> None:
    texts = sample_texts(trained)[:80]
    alone = {budget: classifier(trained, variant, batch_tokens=budget) for budget in (1, 64, 32768)}
    reference = np.concatenate([alone[32768].predict_proba([text]) for text in texts])
    rng = np.random.default_rng(7)
    for trial in range(12):
        rows = rng.choice(len(texts), size=int(rng.integers(2, 60)), replace=bool(trial % 2))
        budget = (1, 64, 32768)[trial % 3]
        probabilities = alone[budget].predict_proba([texts[row] for row in rows])
        np.testing.assert_array_equal(probabilities, reference[rows])
    # Rows of the same length and of other lengths mixed, reversed: still the same bits.
    order = rng.permutation(len(texts))
    np.testing.assert_array_equal(alone[64].predict_proba([texts[i] for i in order]), reference[order])


@fault(14, "the unmasked rnn's served answer compared with torch on the text alone (how it is trained: buckets of "
           "near-equal length, so almost no pads)", "equal within 1e-5: the served model reads exactly the text's tokens")
def test_unmasked_rnn_scores_each_text_on_its_own_tokens(trained: Path) -> None:
    cfg = config_of(trained)
    onnx_model = classifier(trained, "rnn")
    torch_model, _ = load_model(cfg.paths.model_dir("rnn") / "model.pt")
    texts = sample_texts(trained)[:40]
    encoded = onnx_model.encode(texts)
    with torch.no_grad():
        expected = np.concatenate([
            torch_model(torch.from_numpy(encoded.padded([row])), torch.from_numpy(encoded.lengths[[row]])).numpy()
            for row in range(len(texts))
        ])
    np.testing.assert_allclose(onnx_model.logits(encoded), expected, atol=1e-5, rtol=0)
    assert onnx_model.variant is not None and onnx_model.variant["masked"] is False


# ---------------------------------------------------------------------- 15: one text normalisation

RAW_TEXTS = [
    "Stocks rally as Fed#39;s chief speaks \\ markets cheer",
    "Home side beat AT&amp;T Stars 2-1 in the final quot;thrillerquot;",
    "Oil hits \\$55 a barrel &lt;b&gt;record&lt;/b&gt;",
]


@fault(15, "text with AG News escapes (`#39;`, `&amp;`, a backslash) sent to predict, the pyfunc and batch predict",
       "scored exactly as its normalised form, with the tokens training's data path gives it")
def test_serving_normalises_text_as_training_does(ws: Path) -> None:
    from textrnn import data

    model = classifier(ws, "gru")
    normalised = [normalize_text(text) for text in RAW_TEXTS]
    assert normalised != RAW_TEXTS
    np.testing.assert_array_equal(model.predict_proba(RAW_TEXTS), model.predict_proba(normalised))
    # Training's data path: an AG News CSV row (class, title, description) read by `prepare`'s reader.
    csv_file = ws / "agnews.csv"
    csv_file.write_text("".join(f'"3","{text}",""\n' for text in RAW_TEXTS), encoding="utf-8")
    frame, _ = data.read_csv(csv_file, config_of(ws).data, "data.train_path")
    prepared = frame["text"].tolist()
    assert prepared == [normalize_text(text + " ") for text in RAW_TEXTS]
    tokenizer = load_tokenizer(config_of(ws).paths.tokenizer)
    trained_ids = encode_texts(tokenizer, prepared)
    served_ids = model.encode(RAW_TEXTS)
    np.testing.assert_array_equal(served_ids.token_ids, trained_ids.token_ids)
    np.testing.assert_array_equal(served_ids.lengths, trained_ids.lengths)


# --------------------------------------------------------------------- 10: one line, literal text


@fault(10, "predict texts holding rich markup (`[/]`, `[bold]x[/bold]`)", "printed literally, exit 0")
def test_markup_in_texts_is_printed_literally(ws: Path) -> None:
    result = cli(ws, "predict", "-m", "gru", "[/]", "[bold]big[/bold] news", *settings(ws), "--no-progress")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "[/]" in result.stdout and "[bold]big[/bold]" in result.stdout


@fault(10, "`predict --input` with a byte that is not UTF-8 on line 2 (plain lines; JSONL and CSV alike)",
       "error: in.txt:2: not valid UTF-8 (byte 0xff at byte 5 of the line); save the file as UTF-8, exit 2")
def test_input_that_is_not_utf8_names_the_line(ws: Path) -> None:
    (ws / "in.txt").write_bytes(b"Stocks rally\nbad \xff byte\nthird\n")
    result = cli(ws, "predict", "-m", "gru", "--input", "in.txt", "--output", "out.jsonl", *settings(ws), "--no-progress")
    assert_one_line_error(result, "in.txt:2", "not valid UTF-8", "0xff")
    assert not (ws / "out.jsonl").exists()
    for name, content in (("in.jsonl", b'{"text": "ok"}\n{"text": "bad \xff"}\n'), ("in.csv", b"text\nok\nbad \xff\n")):
        (ws / name).write_bytes(content)
        line = 3 if name == "in.csv" else 2
        with pytest.raises(InferenceError, match=rf"{name}:{line}: not valid UTF-8 \(byte 0xff"):
            read_texts(ws / name)


@fault(10, "`predict --output` naming an existing directory", "error: out: is a directory; ..., exit 2; out/ untouched",
       kept="out/")
def test_output_naming_a_directory_is_one_line(ws: Path) -> None:
    (ws / "out").mkdir()
    (ws / "out" / "mine.txt").write_text("keep me\n")
    (ws / "in.txt").write_text("Stocks rally\n")
    before = snapshot(ws / "out")
    result = cli(ws, "predict", "-m", "gru", "--input", "in.txt", "--output", "out", *settings(ws), "--no-progress")
    assert_one_line_error(result, "out", "is a directory")
    assert_unchanged(before, ws / "out")
    assert sorted(p.name for p in (ws / "out").iterdir()) == ["mine.txt"]


# --------------------------------------------------------------------- 9: the pyfunc's input contract


@fault(9, "pyfunc inputs in process: no `text` column, a number/null/bool/list in it, an empty batch",
       "MlflowException INVALID_PARAMETER_VALUE naming the column or the indices")
def test_pyfunc_input_contract_in_process() -> None:
    import pandas as pd
    from mlflow.exceptions import MlflowException

    from textrnn.pyfunc import texts_from_input

    assert texts_from_input(pd.DataFrame({"id": ["Rates rise"], "text": ["Striker scores twice"]})) == ["Striker scores twice"]
    assert texts_from_input(pd.DataFrame({"text": [["a", "b"]]})) == ["a", "b"]  # how MLflow hands over {"inputs": [...]}
    assert texts_from_input({"text": ["a"]}) == ["a"]
    cases = [
        (pd.DataFrame({"id": ["Rates rise"]}), "no 'text' column"),
        (pd.DataFrame({"text": ["a", 5, None, True]}), r"text\[1\] is a number \(5\), text\[2\] is null .*text\[3\] is a boolean"),
        (pd.DataFrame({"text": [float("nan")]}), r"text\[0\] is null"),
        (pd.DataFrame({"text": [[]]}), "no texts"),
        (pd.DataFrame({"text": []}), "no texts"),
        (["a", "b"], "send a required column 'text'"),
        ("a", "single str"),
    ]
    for model_input, message in cases:
        with pytest.raises(MlflowException, match=message) as raised:
            texts_from_input(model_input)
        assert raised.value.get_http_status_code() == 400 and "\n" not in raised.value.message


def _post(url: str, payload: dict) -> tuple[int, dict]:
    request = urllib.request.Request(f"{url}/invocations", data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


@pytest.mark.slow
@fault(9, "`mlflow models serve` sent: an `id` column beside `text`; no `text`; text 5/null/true; `inputs: []`",
       "`text` is what is read (extra columns ignored); every other case HTTP 400 naming the column or index")
def test_served_pyfunc_enforces_its_contract(ws: Path) -> None:
    import mlflow.pyfunc
    from mlflow_server import start_model_server

    from textrnn.pyfunc import model_spec

    cfg = config_of(ws)
    model_dir = cfg.paths.model_dir("gru")
    reference = OnnxClassifier.from_model_dir(model_dir, device="cpu")
    saved = ws / "pyfunc"
    mlflow.pyfunc.save_model(str(saved), **model_spec(model_dir, reference.classes, ["Stocks rally", "Home side wins"]))
    server = start_model_server(str(saved), (ws / "mlruns").as_uri(), ws / "server", timeout_s=180)
    try:
        def probabilities(predictions: list[dict]) -> np.ndarray:
            return np.array([[row[f"prob_{name}"] for name in reference.classes] for row in predictions])

        texts = ["Rates rise as inflation bites", "Striker scores twice"]
        status, body = _post(server.url, {"inputs": texts})
        assert status == 200, (body, server.log_tail())
        np.testing.assert_allclose(probabilities(body["predictions"]), reference.predict_proba(texts), atol=1e-7, rtol=0)

        status, body = _post(server.url, {"dataframe_records": [{"id": texts[0], "text": texts[1]}]})
        assert status == 200, body
        np.testing.assert_allclose(probabilities(body["predictions"]), reference.predict_proba([texts[1]]), atol=1e-7, rtol=0)

        refused = [
            ({"dataframe_records": [{"id": texts[0]}]}, ["missing inputs ['text']"]),
            ({"inputs": ["a", 5, None, True]}, ["text[1] is a number (5)", "text[2] is null", "text[3] is a boolean"]),
            ({"dataframe_records": [{"text": "ok"}, {"text": 5}]}, ["text[1] is a number (5)"]),
            ({"dataframe_split": {"columns": ["text"], "data": [[None]]}}, ["text[0] is null"]),
            ({"inputs": []}, ["no texts"]),
            ({"dataframe_split": {"columns": ["text"], "data": []}}, ["no texts"]),
        ]
        for payload, fragments in refused:
            status, body = _post(server.url, payload)
            assert status == 400, (payload, status, body)
            for fragment in fragments:
                assert fragment in body.get("message", ""), (payload, body)
    finally:
        server.stop()
    assert server.process.poll() is not None
