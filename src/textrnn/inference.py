"""The one inference path: raw texts -> tokenizer -> ONNX graph in onnxruntime -> labels and probabilities.

Evaluation, the CLI's `predict` and serving all go through `OnnxClassifier`, so what we evaluate is
exactly what we ship. A model directory written by `textrnn export` holds everything it needs:
`model.onnx` (class names in its metadata) and `tokenizer.json`.

Providers: `auto` and `cuda` ask for CUDA then CPU; onnxruntime silently drops a provider it cannot
create (`get_available_providers()` lists CUDA even without a GPU), so we read `session.get_providers()`
to know which one really runs, log it once, and make `device="cuda"` an error when CUDA did not come up.

Integrity: a graph is verified before onnxruntime sees it (`textrnn.onnx_graph.read_graph`), and the
verified bytes are what it loads.

Determinism: a text's probabilities are a function of that text alone, bit for bit. Texts are batched
with others of exactly the same token length, so no row is ever padded: the unmasked `rnn` (which reads
pads) sees each text exactly as it would alone, and no variant's arithmetic changes with its batch-mates
(see `length_batches`).
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal

# Must be set before onnxruntime is imported: it reads the variable once, at load.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402

from textrnn.errors import TextrnnError  # noqa: E402
from textrnn.filenames import ONNX_FILE, TOKENIZER_FILE  # noqa: E402
from textrnn.files import sha256_file  # noqa: E402
from textrnn.onnx_graph import InferenceError, read_graph  # noqa: E402
from textrnn.text import normalize_text  # noqa: E402
from textrnn.tokens import EncodedTexts, encode_texts, load_tokenizer  # noqa: E402

log = logging.getLogger("textrnn")

Device = Literal["auto", "cpu", "cuda"]
CUDA_PROVIDER, CPU_PROVIDER = "CUDAExecutionProvider", "CPUExecutionProvider"
# Tokens (rows x longest row) per internal batch: large enough to amortise per-call overhead, small
# enough that a batch of max_len rows stays a few MB of activations.
DEFAULT_BATCH_TOKENS = 32768
_ORT_ERROR, _ORT_FATAL = 3, 4
CUDA_REQUIREMENTS = (
    "onnxruntime-gpu 1.31 needs an NVIDIA GPU with CUDA 13 and cuDNN 9 (the package's cuda and cudnn extras install them)"
)


# Only errors from onnxruntime's own logger; its warnings are about things we report ourselves.
ort.set_default_logger_severity(_ORT_ERROR)


class TextInputError(TextrnnError, TypeError):
    """An input that is not a text; the message names its index."""


def session_options(threads: int | None = None) -> ort.SessionOptions:
    """Quiet session options (errors only); `threads` sets intra-op threads (None: onnxruntime's default)."""
    options = ort.SessionOptions()
    options.log_severity_level = _ORT_ERROR
    if threads is not None:
        options.intra_op_num_threads = threads
    return options


def cpu_session(onnx_file: Path | str, threads: int | None = None) -> ort.InferenceSession:
    """An onnxruntime session on the CPU provider only (the export's parity check uses it)."""
    return ort.InferenceSession(str(onnx_file), sess_options=session_options(threads), providers=[CPU_PROVIDER])


@functools.cache
def _preload_cuda_libraries() -> str:
    """Load CUDA/cuDNN from the nvidia-* wheels (the `[cuda,cudnn]` extra) if they are installed.

    onnxruntime prints what it could not load; we capture that text and return its first
    `Failed to load ...` line ('' when nothing failed), to explain a CUDA failure in one line.
    """
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            ort.preload_dlls()
    except Exception as error:  # a broken CUDA install must not break CPU inference
        return str(error).splitlines()[0] if str(error) else type(error).__name__
    failures = (line for line in printed.getvalue().splitlines() if line.startswith("Failed to load"))
    # "Failed to load libX.so: libX.so: cannot open shared object file: ..." -> "Failed to load libX.so"
    return next((line.split(":")[0] for line in failures), "")


def create_session(
    onnx_file: Path | str, device: Device = "auto", threads: int | None = None, model_bytes: bytes | None = None
) -> ort.InferenceSession:
    """A session for `device`: `cpu` uses CPU; `auto` tries CUDA then CPU; `cuda` requires CUDA.

    `model_bytes`, when given, is the graph to load (already read and verified); `onnx_file` then only
    names it in messages. Raises InferenceError when the file is missing or invalid, for an unknown
    device, and for `device="cuda"` when the CUDA provider could not be created (never a silent CPU
    fallback).
    """
    if device not in ("auto", "cpu", "cuda"):
        raise InferenceError(f"unknown device '{device}' (expected auto, cpu or cuda)")
    if model_bytes is None and not Path(onnx_file).is_file():
        raise InferenceError(f"{onnx_file}: ONNX model not found (run `textrnn export` first)")
    wants_cuda = device != "cpu" and CUDA_PROVIDER in ort.get_available_providers()
    load_failure = _preload_cuda_libraries() if wants_cuda else ""
    providers = [CUDA_PROVIDER, CPU_PROVIDER] if wants_cuda else [CPU_PROVIDER]
    # A CUDA provider that cannot be created is logged at ERROR before onnxruntime falls back to CPU;
    # we detect the fallback from get_providers() and report it ourselves, so mute that one call.
    ort.set_default_logger_severity(_ORT_FATAL if wants_cuda else _ORT_ERROR)
    try:
        source = model_bytes if model_bytes is not None else str(onnx_file)
        session = ort.InferenceSession(source, sess_options=session_options(threads), providers=providers)
    except Exception as error:  # onnxruntime raises its own exception types with multi-line text
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise InferenceError(f"{onnx_file}: onnxruntime cannot load it ({first})") from None
    finally:
        ort.set_default_logger_severity(_ORT_ERROR)
    if device == "cuda" and session.get_providers()[0] != CUDA_PROVIDER:
        reason = f" ({load_failure})" if load_failure else ""
        raise InferenceError(
            f"device 'cuda': onnxruntime could not create the CUDA provider{reason}; {CUDA_REQUIREMENTS}; "
            "use --device auto or cpu to run on the CPU"
        )
    return session


def length_batches(lengths: np.ndarray, batch_tokens: int) -> list[np.ndarray]:
    """Row indices grouped into batches whose rows all have the same length, each costing at most
    `batch_tokens` (rows x length) unless a single row is longer than the budget (it then runs alone).

    No batch needs padding, so a row's logits never depend on the other rows of the call: the unmasked
    `rnn` reads pads, and even a masked graph's arithmetic (the order of a sum over time in `bag`)
    changes with the padded width. Every row appears in exactly one batch; rows keep their input order
    within a length (stable sort).
    """
    order = np.argsort(lengths, kind="stable")
    batches = []
    for group in np.split(order, np.flatnonzero(np.diff(np.asarray(lengths)[order])) + 1):
        if not len(group):
            continue
        per_batch = max(1, batch_tokens // max(int(lengths[group[0]]), 1))
        batches.extend(group[start : start + per_batch] for start in range(0, len(group), per_batch))
    return batches


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of [rows, classes] logits, float32."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    exps = np.exp(shifted, dtype=np.float32)
    return exps / exps.sum(axis=1, keepdims=True)


def checked_texts(texts: Iterable[str]) -> list[str]:
    """`texts` as a list of str; raises TextInputError naming the first non-string's index (or the first
    string holding a lone surrogate, which no tokenizer can encode)."""
    if isinstance(texts, (str, bytes)):
        raise TextInputError("texts must be a sequence of strings, not a single string (wrap it in a list)")
    texts = list(texts)
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise TextInputError(f"texts[{index}] is {type(text).__name__}, expected str")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as error:  # a lone surrogate: undecodable bytes from argv, or JSON "\udc80"
            raise TextInputError(
                f"texts[{index}] is not valid Unicode (a lone surrogate at character {error.start}: "
                "undecodable bytes?); pass UTF-8 text"
            ) from None
    return texts


def _graph_classes(session: ort.InferenceSession) -> list[str] | None:
    raw = session.get_modelmeta().custom_metadata_map.get("textrnn.classes")
    return json.loads(raw) if raw else None


def _graph_variant(session: ort.InferenceSession) -> dict | None:
    """The exported VariantConfig (`textrnn.variant_config`: cell, masked, ...), or None when not recorded."""
    raw = session.get_modelmeta().custom_metadata_map.get("textrnn.variant_config")
    try:
        config = json.loads(raw) if raw else None
    except ValueError:
        return None
    return config if isinstance(config, dict) else None


class OnnxClassifier:
    """Classify raw texts with an exported model.

    `predict(texts)` returns (labels: list[str] of len n, probabilities: float32 [n, classes]) in input
    order. `provider` names the onnxruntime execution provider that really runs.

    A text's probabilities depend on that text alone, bit for bit, for every variant: texts are
    normalised (`textrnn.text.normalize_text`, as in training), and batched only with texts of the same
    token length, so no row is padded (`length_batches`). The unmasked `rnn` (which reads pads, the
    lesson's first model) therefore reads exactly its own tokens, as in length-bucketed training; a
    batch of one row runs as two copies of it, because onnxruntime's RNN kernel rounds a single row
    differently from a batch. `variant` holds the graph's recorded VariantConfig (`masked` included).
    """

    def __init__(
        self,
        tokenizer_path: Path | str,
        onnx_path: Path | str,
        device: Device = "auto",
        classes: Sequence[str] | None = None,
        batch_tokens: int = DEFAULT_BATCH_TOKENS,
        threads: int | None = None,
    ) -> None:
        """Raises InferenceError for a missing file, a tokenizer that does not match the graph, missing
        or mismatched class names, or `device="cuda"` without a usable CUDA provider."""
        if batch_tokens < 1:
            raise InferenceError(f"batch_tokens must be >= 1, got {batch_tokens}")
        self.tokenizer = load_tokenizer(tokenizer_path)
        # Verified bytes are what onnxruntime loads: nothing can change the file in between.
        self.session = create_session(onnx_path, device, threads, model_bytes=read_graph(onnx_path))
        self.provider: str = self.session.get_providers()[0]
        self.variant: dict | None = _graph_variant(self.session)
        self.batch_tokens = batch_tokens
        self.classes = self._resolve_classes(classes, onnx_path)
        self._check_tokenizer(tokenizer_path, onnx_path)
        # On CUDA, bind inputs/outputs to device memory: one copy in, one copy out per batch.
        self.io_binding_device: str | None = "cuda" if self.provider == CUDA_PROVIDER else None
        log.info("onnxruntime provider=%s device=%s model=%s", self.provider, device, onnx_path)

    @classmethod
    def from_model_dir(cls, model_dir: Path | str, device: Device = "auto", **options) -> OnnxClassifier:
        """The classifier for a directory written by `textrnn export` (model.onnx + tokenizer.json)."""
        model_dir = Path(model_dir)
        missing = [name for name in (ONNX_FILE, TOKENIZER_FILE) if not (model_dir / name).is_file()]
        if missing:
            raise InferenceError(f"{model_dir}: no {' or '.join(missing)} (run `textrnn export` first)")
        return cls(model_dir / TOKENIZER_FILE, model_dir / ONNX_FILE, device=device, **options)

    def _resolve_classes(self, classes: Sequence[str] | None, onnx_path: Path | str) -> list[str]:
        classes = list(classes) if classes is not None else _graph_classes(self.session)
        if classes is None:
            raise InferenceError(f"{onnx_path}: no class names in the graph's metadata; pass classes=")
        width = self.session.get_outputs()[0].shape[-1]
        if isinstance(width, int) and width != len(classes):
            raise InferenceError(f"{onnx_path}: graph outputs {width} classes but {len(classes)} names were given")
        return classes

    def _check_tokenizer(self, tokenizer_path: Path | str, onnx_path: Path | str) -> None:
        """Raise InferenceError unless the tokenizer is the one the graph was exported with (when the
        graph records it): another vocabulary would map words to the wrong embeddings, silently."""
        metadata = self.session.get_modelmeta().custom_metadata_map
        expected_ids = metadata.get("textrnn.vocab_size")
        if expected_ids is not None and int(expected_ids) != self.tokenizer.get_vocab_size():
            raise InferenceError(
                f"{tokenizer_path}: {self.tokenizer.get_vocab_size()} ids, but {onnx_path} was trained with {expected_ids}"
            )
        expected_sha = metadata.get("textrnn.tokenizer_sha256")
        if expected_sha is not None and sha256_file(tokenizer_path) != expected_sha:
            raise InferenceError(f"{tokenizer_path}: not the tokenizer {onnx_path} was exported with (sha256 differs)")

    def encode(self, texts: Iterable[str]) -> EncodedTexts:
        """Token ids for `texts`, normalised as training normalised its texts (`normalize_text`); an
        empty text becomes one [UNK]; long texts are cut at max_len."""
        return encode_texts(self.tokenizer, [normalize_text(text) for text in checked_texts(texts)])

    def predict_proba(self, texts: Iterable[str]) -> np.ndarray:
        """Class probabilities float32 [n, classes], rows in input order."""
        return softmax(self.logits(self.encode(texts)))

    def predict(self, texts: Iterable[str]) -> tuple[list[str], np.ndarray]:
        """(labels, probabilities [n, classes]) for `texts`, in input order."""
        probabilities = self.predict_proba(texts)
        return [self.classes[index] for index in probabilities.argmax(axis=1)], probabilities

    def logits(self, encoded: EncodedTexts) -> np.ndarray:
        """Logits float32 [rows, classes] for encoded texts, in their order; each row's logits depend on
        that row alone (batches of equal-length rows, never padded, never a lone row: see the class)."""
        logits = np.empty((len(encoded), len(self.classes)), dtype=np.float32)
        for rows in length_batches(encoded.lengths, self.batch_tokens):
            run_rows = np.concatenate([rows, rows]) if len(rows) == 1 else rows
            logits[rows] = self._run(encoded.padded(run_rows), encoded.lengths[run_rows])[: len(rows)]
        return logits

    def _run(self, token_ids: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """One graph call: token_ids int64 [B, T], lengths int64 [B] -> logits [B, classes]."""
        if self.io_binding_device is not None:
            return self._run_bound(token_ids, lengths, self.io_binding_device)
        return self.session.run(["logits"], {"token_ids": token_ids, "lengths": lengths})[0]

    def _run_bound(self, token_ids: np.ndarray, lengths: np.ndarray, device: str) -> np.ndarray:
        """`_run` through IO binding: inputs copied to `device` once, logits left there by the graph
        and copied back once (plain `run` would stage both through extra host buffers)."""
        binding = self.session.io_binding()
        for name, array in (("token_ids", token_ids), ("lengths", lengths)):
            binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), device, 0))
        binding.bind_output("logits", device, 0)
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()[0]
