"""torch -> ONNX for one variant, with a parity check that decides whether the graph may ship.

`export_variant` turns `models/<V>/model.pt` into a self-contained model directory:

- `model.onnx`: inputs `token_ids` int64 [batch, seq] and `lengths` int64 [batch], output `logits`
  float32 [batch, classes]; both input axes symbolic; class names, variant and vocabulary size in the
  graph's metadata (`metadata_props`), so the file alone says what its outputs mean;
- `tokenizer.json`: a copy of the tokenizer the model was trained with, so inference needs nothing else;
- `export.json`: the parity report (`max_abs_diff`, per-shape results, `opset`, `passed`).

The graph is written only if onnxruntime (CPU) reproduces torch's logits on shapes the exporter never saw
(different batch sizes, rows of length 1, rows longer than the export example) to within `PARITY_ATOL`
with the same argmax.

The three files are published together or not at all: each is staged beside its target, and only when
all are written and checked are they moved into place, `export.json` last (its `onnx_sha256` is what
evaluate and register verify the graph against). A failed export (parity, a full disk, a signal) leaves
the previous three exactly as they were and writes what it measured to `export.failed.json`. No older
graph can describe another `model.pt`: training removes the export before it writes a new model.

Lineage: export refuses a `model.pt` whose recorded tokenizer is not the current one, and `export.json`
records the sha256 of `model.pt` and the tokenizer it read plus the model's training config.

We use the TorchScript exporter (`dynamo=False`): the dynamo exporter freezes the sequence length of
multi-layer, bidirectional and tanh-RNN models (DESIGN.md), and we assert the dims are symbolic anyway.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

# textrnn.inference first: it sets ORT_DISABLE_TELEMETRY before onnxruntime loads.
from textrnn.inference import cpu_session  # isort: skip
import onnxruntime as ort  # isort: skip

from textrnn import lineage
from textrnn.config import Config, Variant
from textrnn.errors import TextrnnError
from textrnn.files import atomic_path, sha256_file, write_json
from textrnn.models import TextRNN
from textrnn.onnx_graph import stamp_graph_digest
from textrnn.tokens import PAD_ID, load_tokenizer

ONNX_OPSET = 17
INPUT_NAMES = ("token_ids", "lengths")
OUTPUT_NAME = "logits"
DYNAMIC_AXES = {"token_ids": {0: "batch", 1: "seq"}, "lengths": {0: "batch"}, "logits": {0: "batch"}}
# Per unit of logit (see `parity_check`). 1e-5 was too tight: an LSTM trained on real AG News (logits up
# to 3.8) differed by 4.3e-5 between torch and onnxruntime on 200-step rows, float32 rounding alone, and
# its correct export was refused. A wrong graph is off by 1e-3 or more (tests/model/test_export.py).
PARITY_ATOL = 1e-4
# The traced example: small on purpose, so every parity shape below is new to the graph and most have
# rows longer than anything the tracer saw.
EXPORT_EXAMPLE = (2, 5)
# (batch, seq): batch 1, odd sizes, a large batch, and sequences up to the default max_len.
PARITY_SHAPES = ((1, 1), (1, 37), (3, 9), (7, 23), (16, 64), (33, 200))
PARITY_SEED = 1234

class ExportError(TextrnnError):
    """The ONNX graph could not be produced, or does not compute what the torch model computes.

    `report` holds what was measured before the failure (written to `export.json`).
    """

    def __init__(self, message: str, report: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.report = report or {}


def example_inputs(vocab_size: int, batch: int, seq: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(token_ids int64 [batch, seq], lengths int64 [batch]) with mixed lengths in 1..seq, right-padded.

    Row 0 always fills the whole sequence and row 1 (when there is one) has length 1, so every shape
    tests both extremes; other rows are random. Ids are drawn from 1..vocab_size-1 ([UNK] included).
    """
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, seq + 1, (batch,), generator=generator)
    lengths[0] = seq
    if batch > 1:
        lengths[1] = 1
    token_ids = torch.randint(1, vocab_size, (batch, seq), generator=generator)
    token_ids[torch.arange(seq).unsqueeze(0) >= lengths.unsqueeze(1)] = PAD_ID
    return token_ids, lengths


def _trace_to_onnx(model: TextRNN, path: Path, opset: int) -> None:
    """Run the TorchScript exporter on `EXPORT_EXAMPLE` and write the raw graph to `path`."""
    example = example_inputs(model.vocab_size, *EXPORT_EXAMPLE, seed=0)
    # The legacy exporter warns about its own deprecation, traced shape checks inside nn.RNN and
    # batch-size-dependent initial states. The parity check below is what decides whether those matter.
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            example,
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=list(INPUT_NAMES),
            output_names=[OUTPUT_NAME],
            dynamic_axes=DYNAMIC_AXES,
        )


def _restore_dropped_inputs(graph: onnx.GraphProto) -> None:
    """Put back `lengths` when the exporter dropped it.

    The unmasked `rnn` variant never reads `lengths`, and the TorchScript exporter removes unused inputs.
    Every graph must take the same two inputs (one inference path feeds them all), so we add it back
    as a declared but unused input: the computation is untouched.
    """
    present = {value.name for value in graph.input}
    if "token_ids" not in present:
        raise ExportError("exported graph has no 'token_ids' input")
    if "lengths" not in present:
        graph.input.append(onnx.helper.make_tensor_value_info("lengths", onnx.TensorProto.INT64, ["batch"]))


def symbolic_dims(proto: onnx.ModelProto) -> dict[str, list[str | int]]:
    """Each graph input's dims: a name (`dim_param`, symbolic) or an int (`dim_value`, fixed)."""
    return {
        value.name: [dim.dim_param or dim.dim_value for dim in value.type.tensor_type.shape.dim]
        for value in proto.graph.input
    }


def check_symbolic_inputs(proto: onnx.ModelProto) -> None:
    """Raise ExportError unless `token_ids` is [batch, seq] and `lengths` is [batch], all symbolic."""
    dims = symbolic_dims(proto)
    expected = {"token_ids": ["batch", "seq"], "lengths": ["batch"]}
    if dims != expected:
        raise ExportError(f"exported inputs have dims {dims}, expected symbolic {expected}")


def write_onnx(model: TextRNN, path: Path, metadata: dict[str, str], opset: int = ONNX_OPSET) -> str:
    """Export `model` to `path`: two int64 inputs with symbolic dims, `metadata` in `metadata_props`, and
    last `textrnn.graph_sha256`, the digest of the final graph (`onnx_graph.stamp_graph_digest`), so the
    file verifies itself wherever it is copied. Returns that digest.

    Raises ExportError if the exporter fails, the graph is invalid, or an input dim came out fixed.
    """
    try:
        # torch.onnx.export keeps its state in module globals: one export per process at a time (every
        # variant exports in a process of its own).
        _trace_to_onnx(model, path, opset)
    except OSError:
        raise  # a full disk or read-only directory: the caller names the file
    except Exception as error:  # the exporter raises many types; the user needs one line
        raise ExportError(f"torch.onnx.export failed: {str(error).splitlines()[0] if str(error) else type(error).__name__}") from error
    proto = onnx.load(str(path))
    _restore_dropped_inputs(proto.graph)
    check_symbolic_inputs(proto)
    del proto.metadata_props[:]
    for key, value in metadata.items():
        proto.metadata_props.add(key=key, value=value)
    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as error:
        raise ExportError(f"exported graph is invalid: {str(error).splitlines()[0]}") from None
    digest = stamp_graph_digest(proto)
    onnx.save(proto, str(path))
    return digest


def _top_two_gap(logits: np.ndarray) -> np.ndarray:
    """Per row, the largest logit minus the second largest ([rows]; inf with a single class)."""
    if logits.shape[1] < 2:
        return np.full(len(logits), np.inf)
    top_two = np.sort(logits, axis=1)[:, -2:]
    return top_two[:, 1] - top_two[:, 0]


def compare_logits(reference: np.ndarray, candidate: np.ndarray, atol: float = PARITY_ATOL) -> dict[str, Any]:
    """Max abs difference and argmax agreement of two [rows, classes] logit arrays.

    A row whose reference top two logits are within `atol` is a tie at the precision we promise, so
    its argmax may legitimately differ; such rows are counted in `argmax_ties`, not as mismatches.
    """
    max_abs_diff = float(np.abs(reference - candidate).max()) if reference.size else 0.0
    differs = reference.argmax(1) != candidate.argmax(1)
    ties = _top_two_gap(reference) <= atol
    return {
        "max_abs_diff": max_abs_diff,
        "argmax_mismatches": int((differs & ~ties).sum()),
        "argmax_ties": int((differs & ties).sum()),
    }


def parity_check(
    model: TextRNN, path: Path, shapes: tuple[tuple[int, int], ...] = PARITY_SHAPES, atol: float = PARITY_ATOL,
    seed: int = PARITY_SEED,
) -> dict[str, Any]:
    """Run the graph at `path` in onnxruntime (CPU) and `model` in torch on every (batch, seq) shape.

    Returns {max_abs_diff, argmax_equal, passed, atol, shapes: [{batch, seq, max_abs_diff, ...}]};
    `passed` is max_abs_diff <= atol with no argmax mismatch. Never raises on a mismatch: the caller
    decides what a failed check means.
    """
    session = cpu_session(path)
    results = []
    max_abs_logit = 0.0
    model.eval()
    for index, (batch, seq) in enumerate(shapes):
        token_ids, lengths = example_inputs(model.vocab_size, batch, seq, seed + index)
        with torch.no_grad():
            expected = model(token_ids, lengths).numpy()
        actual = session.run([OUTPUT_NAME], {"token_ids": token_ids.numpy(), "lengths": lengths.numpy()})[0]
        max_abs_logit = max(max_abs_logit, float(np.abs(expected).max()))
        results.append({"batch": batch, "seq": seq, "lengths": lengths.tolist(), **compare_logits(expected, actual, atol)})
    max_abs_diff = max(result["max_abs_diff"] for result in results)
    argmax_equal = all(result["argmax_mismatches"] == 0 for result in results)
    # `atol` holds for logits up to 1 in size; beyond that it scales with them. Two float32 kernels
    # (MKL's RNN in torch, onnxruntime's) differ by a few ulps per step, so a trained model legitimately
    # differs by a few 1e-5 after 200 recurrent steps; a wrong graph differs by far more.
    tolerance = atol * max(1.0, max_abs_logit)
    return {
        "max_abs_diff": max_abs_diff,
        "argmax_equal": argmax_equal,
        "passed": bool(max_abs_diff <= tolerance and argmax_equal),
        "atol": atol,
        "max_abs_logit": max_abs_logit,
        "tolerance": tolerance,
        "export_example": list(EXPORT_EXAMPLE),
        "shapes": results,
    }


def _graph_metadata(model: TextRNN, classes: list[str], variant_name: str, tokenizer_sha256: str) -> dict[str, str]:
    return {
        "textrnn.classes": json.dumps(list(classes)),
        "textrnn.variant": variant_name,
        "textrnn.variant_config": json.dumps(model.variant.model_dump()),
        "textrnn.vocab_size": str(model.vocab_size),
        "textrnn.tokenizer_sha256": tokenizer_sha256,
    }


def _check_tokenizer(tokenizer_file: Path, vocab_size: int) -> None:
    """Raise ExportError unless the tokenizer has exactly the model's vocabulary size."""
    tokenizer_ids = load_tokenizer(tokenizer_file).get_vocab_size()
    if tokenizer_ids != vocab_size:
        raise ExportError(
            f"{tokenizer_file}: has {tokenizer_ids} ids but the model was trained with {vocab_size} "
            "(the tokenizer changed since training: re-run `textrnn train`)"
        )


def _json_safe(value: Any) -> Any:
    """`value` with every non-finite float replaced by None: reports stay valid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    return value


def _check_model_lineage(source: Path, tokenizer_file: Path) -> dict[str, Any]:
    """The lineage record of `source` (model.pt), after checking the tokenizer is the one it was trained
    with; raises LineageError naming both files otherwise."""
    from textrnn.checkpoints import model_lineage

    record = model_lineage(source)
    lineage.verify_inputs(record, source, only=[tokenizer_file])
    return record


@contextlib.contextmanager
def _published_together(*targets: Path) -> Any:
    """Yield one temporary path per target; move them all into place, in order, only if the block succeeds
    (else remove them). Each move is atomic; the last target is the commit point readers check."""
    from textrnn.checkpoints import writing

    with writing(targets[0].parent), contextlib.ExitStack() as stack:
        temps = {}
        # ExitStack unwinds in reverse: enter the commit point first so it is moved last.
        for target in reversed(targets):
            with writing(target):
                temps[target] = stack.enter_context(atomic_path(target))
        yield [temps[target] for target in targets]


def _export_into(cfg: Config, variant_name: str) -> dict[str, Any]:
    """Export and check the graph, then publish `model.onnx`, `tokenizer.json` and `export.json` together;
    return the passing report."""
    from textrnn.checkpoints import load_model, writing

    paths = cfg.paths
    source = paths.model_file(variant_name)
    model, classes = load_model(source)
    model_record = _check_model_lineage(source, paths.tokenizer)
    _check_tokenizer(paths.tokenizer, model.vocab_size)
    tokenizer_sha256 = sha256_file(paths.tokenizer)
    report: dict[str, Any] = {
        "variant": variant_name,
        "opset": ONNX_OPSET,
        "exporter": "torch.onnx.export(dynamo=False)",
        "torch_version": torch.__version__,
        "onnxruntime_version": ort.__version__,
        "model_pt_sha256": sha256_file(source),
        "tokenizer_sha256": tokenizer_sha256,
    }
    targets = (paths.onnx_file(variant_name), paths.served_tokenizer(variant_name), paths.export_report(variant_name))
    with _published_together(*targets) as (onnx_tmp, tokenizer_tmp, report_tmp):
        with writing(targets[0]):
            report["graph_sha256"] = write_onnx(model, onnx_tmp, _graph_metadata(model, classes, variant_name, tokenizer_sha256))
        report["input_dims"] = symbolic_dims(onnx.load(str(onnx_tmp)))
        report.update(parity_check(model, onnx_tmp))
        if not report["passed"]:
            raise ExportError(
                f"{variant_name}: ONNX parity failed (max |logit diff| {report['max_abs_diff']:.3g} > "
                f"{report['tolerance']:.3g} or argmax differs); see {paths.export_failure(variant_name)}",
                report,
            )
        report["onnx_sha256"] = sha256_file(onnx_tmp)
        with writing(targets[1]):
            shutil.copyfile(paths.tokenizer, tokenizer_tmp)
        report["lineage"] = lineage.record([source, paths.tokenizer], model_record.get("config"))
        with writing(targets[2]):
            report_tmp.write_text(json.dumps(_json_safe(report), indent=2) + "\n", encoding="utf-8")
    return report


def export_variant(cfg: Config, variant: Variant) -> dict[str, Any]:
    """Export `models/<V>/model.pt` to `models/<V>/model.onnx` and check parity in onnxruntime.

    Returns the report also written to `models/<V>/export.json`. Raises ExportError when export or parity
    fails (the previous model.onnx, tokenizer.json and export.json stay as they were; what was measured
    goes to `export.failed.json`); OutputError when a file cannot be written; LineageError when the
    tokenizer is not the one model.pt was trained with; TextrnnError when the variant's `model.pt` or
    the tokenizer is missing or unreadable.
    """
    variant_name = variant.name
    try:
        return _export_into(cfg, variant_name)
    except ExportError as error:
        report = {"variant": variant_name, "opset": ONNX_OPSET, **error.report, "passed": False, "error": str(error)}
        with contextlib.suppress(OSError):  # a diagnostic: a full disk must not hide the real error
            write_json(cfg.paths.export_failure(variant_name), _json_safe(report))
        raise
