"""An exported ONNX graph as bytes that can be trusted: the graph records its own sha256, and the export
report beside it records the file's; both are checked before onnxruntime sees a byte.

Export records `graph_digest` of the graph in the graph itself (`metadata_props` key
`textrnn.graph_sha256`, see `stamp_graph_digest`), so a copy downloaded from MLflow checks itself; when
`export.json` sits beside the graph, the file's sha256 must also equal its `onnx_sha256` (which also
catches a graph swapped in from another variant). A graph verified by neither is refused: nothing says it
is the graph that was exported.

The digest is computed on the protobuf wire format, field by field as the file holds them, so it does not
depend on how a protobuf library re-serializes a message, and serving needs no `onnx` package.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from textrnn.errors import TextrnnError
from textrnn.filenames import EXPORT_REPORT_FILE

GRAPH_SHA256_KEY = "textrnn.graph_sha256"
_METADATA_PROPS_FIELD = 14  # ModelProto.metadata_props: repeated StringStringEntryProto {1: key, 2: value}


class InferenceError(TextrnnError):
    """The model directory, the runtime or the requested device cannot serve predictions."""


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("a number runs past the end of the file")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _top_level_fields(data: bytes):
    """(field number, start, payload start, end) of each top-level field of a serialized protobuf message."""
    pos = 0
    while pos < len(data):
        start = pos
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        payload = pos
        if wire == 0:
            _, pos = _varint(data, pos)
        elif wire == 1:
            pos += 8
        elif wire == 2:
            length, payload = _varint(data, pos)
            pos = payload + length
        elif wire == 5:
            pos += 4
        else:
            raise ValueError(f"unknown protobuf wire type {wire}")
        if number == 0:
            raise ValueError("protobuf field number 0")
        if pos > len(data):
            raise ValueError("a field runs past the end of the file")
        yield number, start, payload, pos


def _digest_entry_value(data: bytes, payload: int, end: int) -> str | None:
    """The value of a metadata_props entry whose key is GRAPH_SHA256_KEY, else None."""
    entry = data[payload:end]
    fields = {number: entry[body:stop] for number, _, body, stop in _top_level_fields(entry)}
    if fields.get(1) != GRAPH_SHA256_KEY.encode():
        return None
    return fields.get(2, b"").decode("utf-8", errors="replace")


def _split_digest(data: bytes) -> tuple[str, str | None]:
    """(sha256 of the serialized model without its GRAPH_SHA256_KEY entry, the value that entry holds or
    None). Raises ValueError when `data` is not a complete protobuf message (e.g. a truncated file)."""
    digest, recorded = hashlib.sha256(), None
    for number, start, payload, end in _top_level_fields(data):
        if number == _METADATA_PROPS_FIELD:
            value = _digest_entry_value(data, payload, end)
            if value is not None:
                recorded = value
                continue
        digest.update(memoryview(data)[start:end])
    return digest.hexdigest(), recorded


def graph_digest(proto: object) -> str:
    """sha256 (hex) of a serialized ONNX model (an `onnx.ModelProto` or its bytes), every field included
    (graph, weights, metadata) except a `textrnn.graph_sha256` entry itself.

    Computed on the protobuf wire format, so serving needs no `onnx` package.
    """
    data = bytes(proto) if isinstance(proto, (bytes, bytearray, memoryview)) else proto.SerializeToString()
    return _split_digest(data)[0]


def stamp_graph_digest(proto: object) -> str:
    """Record `graph_digest(proto)` in `proto.metadata_props` under `textrnn.graph_sha256` (replacing an
    earlier one) and return it. Export calls this last, just before saving: any later change to the
    model, a weight's byte included, then fails `verify_graph`."""
    kept = [(entry.key, entry.value) for entry in proto.metadata_props if entry.key != GRAPH_SHA256_KEY]
    if len(kept) != len(proto.metadata_props):
        del proto.metadata_props[:]
        for key, value in kept:
            proto.metadata_props.add(key=key, value=value)
    digest = graph_digest(proto)
    proto.metadata_props.add(key=GRAPH_SHA256_KEY, value=digest)
    return digest


def _recorded_file_sha256(report: Path) -> str | None:
    """`onnx_sha256` from an export report (None when it records none); InferenceError if unreadable."""
    try:
        recorded = json.loads(report.read_text(encoding="utf-8")).get("onnx_sha256")
    except (OSError, UnicodeDecodeError, ValueError, AttributeError) as error:
        raise InferenceError(f"{report}: unreadable export report ({type(error).__name__}); re-run `textrnn export`") from None
    return recorded if isinstance(recorded, str) else None


def verify_graph(onnx_file: Path | str, data: bytes) -> str:
    """Check that `data` (the bytes of `onnx_file`) is the graph textrnn exported; return how it was
    verified (`graph_sha256`, `export.json` or both).

    - The graph's own `textrnn.graph_sha256`, when present, must equal `graph_digest(data)`.
    - `export.json` beside the graph, when present with an `onnx_sha256`, must equal the file's sha256
      (this also catches a graph swapped in from another variant, which verifies itself).
    - A graph verified by neither is refused. Every failure is one InferenceError line naming the file.
    """
    onnx_file = Path(onnx_file)
    try:
        digest, recorded = _split_digest(data)
    except ValueError as error:
        raise InferenceError(
            f"{onnx_file}: not a complete ONNX model ({error}: truncated or corrupted); re-run `textrnn export`"
        ) from None
    checks = []
    if recorded is not None:
        if recorded != digest:
            raise InferenceError(
                f"{onnx_file}: content does not match the {GRAPH_SHA256_KEY} recorded at export (corrupted or "
                "modified since); re-run `textrnn export`, or download the model again"
            )
        checks.append("graph_sha256")
    report = onnx_file.parent / EXPORT_REPORT_FILE
    expected_file_sha = _recorded_file_sha256(report) if report.is_file() else None
    if expected_file_sha is not None:
        if hashlib.sha256(data).hexdigest() != expected_file_sha:
            raise InferenceError(
                f"{onnx_file}: sha256 differs from the onnx_sha256 in {report} (modified or replaced since export); "
                "re-run `textrnn export`"
            )
        checks.append(EXPORT_REPORT_FILE)
    if not checks:
        raise InferenceError(
            f"{onnx_file}: unverifiable graph (no {GRAPH_SHA256_KEY} in its metadata and no {EXPORT_REPORT_FILE} beside "
            "it recording its sha256); re-export it with `textrnn export`"
        )
    return "+".join(checks)


def read_graph(onnx_file: Path | str) -> bytes:
    """The bytes of `onnx_file`, verified by `verify_graph`; InferenceError (one line) otherwise."""
    onnx_file = Path(onnx_file)
    if not onnx_file.is_file():
        raise InferenceError(f"{onnx_file}: ONNX model not found (run `textrnn export` first)")
    try:
        data = onnx_file.read_bytes()
    except OSError as error:
        raise InferenceError(f"{onnx_file}: cannot read ({error.strerror or error})") from None
    verify_graph(onnx_file, data)
    return data
