"""Data: load a source, validate it row by row, carve a stratified validation split, write the splits.

`prepare(cfg)` is the `textrnn prepare` step. It writes `{train,val,test}.parquet` (columns `text`: str,
`label`: int64 in 0..C-1) and `report.json` into `cfg.paths.prepared`, all at once or not at all.

Sources (`data.source`):
- `hf`: a Hugging Face dataset with `train`/`test` splits and `text`/`label` columns (AG News by default).
- `csv`: either the original AG News CSV (no header; `"class 1-4","title","description"`) or a headed CSV
  with a `label` column and a `text` column (or the `data.text_fields` columns). The format is detected
  from the first row that is not blank.
- `parquet`: a `label` column and a `text` column (or the `data.text_fields` columns). A text column must
  hold strings (or bytes, or missing values): lists, structs, numbers or booleans are refused, naming the
  file, the column and the first such row, never turned into text.
- `sample`: the embedded, seeded corpus of `textrnn.sample`.

Labels are an index 0..C-1 or a class name from `data.classes`; AG News' own class numbers 1..C map to
0..C-1. Text is the text fields joined with one space, then `textrnn.text.normalize_text`: the one
normalisation that predict and serving apply too (whitespace collapsed; HTML entities, AG News' lost-`&`
entities such as `#39;`, and its backslash line breaks undone), for every source alike.

Every input record is accounted for: each problem in a record is one bad row, dropped and counted by
reason (`REASONS`) up to `data.max_bad_fraction` of the records, beyond which the read fails naming the
reason and the first bad rows. A CSV is read strictly (`textrnn.csv_records`): a quoting error fails the
read naming the line where the quoted field opened, since the row boundaries after it are unknown and a
guess would invent or lose rows; a field over 128 KiB is one bad row. Each input report states `records`
(CSV records after the header, blank lines excluded; frame rows), `rows_read`, `rows_kept`, `dropped` by
reason and the first `dropped_rows`, and for a CSV `lines`, `header_lines` and `blank_lines`; kept +
dropped = records (and, for a CSV, header + blank + record lines = lines) is checked, never assumed.

Row numbers in messages are 1-based as a spreadsheet shows them: a headed file's header is row 1, a blank
line is a row, and a CSV record whose quoted field spans several lines is still one row. Framing errors
name physical lines instead. Parquet and Hub rows count from 1.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from textrnn import csv_records, lineage, sample
from textrnn.config import Config, DataConfig
from textrnn.filenames import PREPARED_REPORT_FILE, prepared_split_file
from textrnn.files import atomic_dir, write_json
from textrnn.rows import DataError, Rows, parse_label  # noqa: F401 (DataError, parse_label: public here)
from textrnn.text import normalize_text

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")

QUANTILES = {"p0": 0, "p5": 5, "p50": 50, "p95": 95, "p100": 100}


_SURROGATE = re.compile("[\udc80-\udcff]")


def _has_undecodable(values: Iterable[str]) -> bool:
    # Bytes that are not UTF-8 were decoded with surrogateescape into lone surrogates U+DC80..U+DCFF;
    # a strict UTF-8 decoder never yields those, so their presence marks exactly the undecodable rows.
    return any(_SURROGATE.search(value) for value in values)


def _text_columns(columns: Sequence[str], text_fields: Sequence[str], source: str) -> list[str]:
    """The columns that make the text: all of `text_fields` if present, else `text`; DataError if neither."""
    if all(name in columns for name in text_fields):
        return list(text_fields)
    if "text" in columns:
        return ["text"]
    raise DataError(
        f"{source}: no text column: expected 'text' or all of data.text_fields ({', '.join(text_fields)}) "
        f"among the columns ({', '.join(columns)})"
    )


def _join_text(parts: Iterable[str]) -> str:
    return normalize_text(" ".join(parts))


# ------------------------------------------------------------------------------------------- readers


def _read_bytes(path: Path, key: str) -> bytes:
    """The file's bytes; DataError naming the config key when it is missing or unreadable."""
    if not path.exists():
        raise DataError(f"{path}: file not found ({key})")
    if not path.is_file():
        raise DataError(f"{path}: not a file ({key})")
    try:
        return path.read_bytes()
    except OSError as error:
        raise DataError(f"{path}: cannot read ({error.strerror or error}) ({key})") from None


def read_csv(path: Path, cfg: DataConfig, key: str) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Rows of an AG News or headed CSV file, validated; see the module docstring for both formats.

    Returns the kept rows (text, label) and an input report (path, sha256, format, and the accounting:
    lines, header/blank lines, records, rows read/kept, dropped by reason). Raises DataError for a
    missing, empty, unrecognised, mis-quoted (naming the line) or too-broken file.
    """
    raw = _read_bytes(path, key)
    # surrogateescape: one bad byte spoils only its own row (see `_has_undecodable`), and csv sees the
    # same quoting it would in a clean file.
    try:
        table = csv_records.read_table(raw.decode("utf-8", errors="surrogateescape").removeprefix("\ufeff"))
    except csv_records.CsvError as error:
        raise DataError(f"{path}: {error} ({key})") from None
    names = _text_columns(table.columns, cfg.text_fields, str(path))
    if table.format == "ag_news":
        label_column, label_of = 0, lambda value: csv_records.ag_news_label(value, len(cfg.classes))
    else:
        label_column, label_of = table.columns.index("label"), lambda value: parse_label(value, cfg.classes)
    rows = Rows(source=str(path))
    _read_records(table.records, rows, len(table.columns), [table.columns.index(name) for name in names],
                  label_column, label_of)
    frame, accounting = rows.checked(cfg.max_bad_fraction, records=len(table.records))
    report = {"path": str(path), "sha256": hashlib.sha256(raw).hexdigest(), "format": table.format,
              "lines": table.lines, "header_lines": table.header_lines, "blank_lines": table.blank_lines,
              **accounting}
    return frame, report


def _bad_strings(values: Sequence[str]) -> str | None:
    """The reason strings read from one row are unusable (checked in REASONS order), or None."""
    if any(len(value) > csv_records.FIELD_LIMIT for value in values):
        return "field_too_long"
    if _has_undecodable(values):
        return "invalid_utf8"
    if any("\x00" in value for value in values):
        return "nul_byte"
    return None


def _read_records(records: Iterable[csv_records.Record], rows: Rows, n_fields: int, text_columns: list[int],
                  label_column: int, label_of: Callable[[str], int | None]) -> None:
    """Validate non-blank CSV records into `rows`: field length, UTF-8, NUL, field count, label, text."""
    for record in records:
        fields = record.fields
        reason = _bad_strings(fields) or ("wrong_field_count" if len(fields) != n_fields else None)
        if reason:
            rows.drop(record.row, reason)
        else:
            rows.add(record.row, _join_text(fields[i] for i in text_columns), label_of(fields[label_column]))


def _frame_rows(frame: pd.DataFrame, cfg: DataConfig, source: str) -> Rows:
    """Validate a frame's rows (numbered from 1) that have a `label` column and text columns."""
    columns = [str(name) for name in frame.columns]
    if "label" not in columns:
        raise DataError(f"{source}: no 'label' column among the columns ({', '.join(columns)})")
    names = _text_columns(columns, cfg.text_fields, source)
    rows = Rows(source=source)
    text_values = zip(*(frame[name].tolist() for name in names))
    for row, (parts, label_value) in enumerate(zip(text_values, frame["label"].tolist()), start=1):
        strings = [_cell_text(part, source, name, row) for part, name in zip(parts, names)]
        if any(text is None for text in strings):
            rows.drop(row, "invalid_utf8")
        elif reason := _bad_strings(strings):
            rows.drop(row, reason)
        else:
            rows.add(row, _join_text(strings), parse_label(label_value, cfg.classes))
    return rows


def _cell_text(value: Any, source: str, column: str, row: int) -> str | None:
    """A text cell as a str: '' for a missing value, None for bytes that are not UTF-8.

    Raises DataError for anything else (a number, a bool, a list, a dict): text is never made up from
    values that are not text.
    """
    if isinstance(value, str):
        return value
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return None
    raise DataError(f"{source}: text column '{column}' holds a {type(value).__name__} at row {row}, "
                    "not a string (text columns must hold strings)")


_TEXT_TYPES = (pa.types.is_string, pa.types.is_large_string, pa.types.is_binary, pa.types.is_large_binary,
               pa.types.is_null, *([pa.types.is_string_view] if hasattr(pa.types, "is_string_view") else []))


def _check_text_types(table: pa.Table, names: list[str], path: Path) -> None:
    """DataError naming the column and its first value when a parquet text column is not a string type."""
    for name in names:
        column = table.column(name)
        kind = column.type.value_type if pa.types.is_dictionary(column.type) else column.type
        if any(check(kind) for check in _TEXT_TYPES):
            continue
        present = np.flatnonzero(column.is_valid().to_numpy(zero_copy_only=False))
        where = f"first at row {present[0] + 1}" if len(present) else "every value missing"
        raise DataError(f"{path}: text column '{name}' holds {column.type} values, not strings ({where}); "
                        "text columns must hold strings")


def read_parquet(path: Path, cfg: DataConfig, key: str) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Rows of a parquet file with a `label` column and text columns, validated; as `read_csv` returns."""
    raw = _read_bytes(path, key)
    try:
        table = pq.read_table(pa.BufferReader(raw))
    except (pa.ArrowException, OSError) as error:
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise DataError(f"{path}: not a readable parquet file ({message}) ({key})") from None
    if "label" in table.column_names:
        _check_text_types(table, _text_columns(table.column_names, cfg.text_fields, str(path)), path)
    frame = table.to_pandas()
    rows = _frame_rows(frame, cfg, str(path))
    kept, accounting = rows.checked(cfg.max_bad_fraction, records=len(frame))
    report = {"path": str(path), "sha256": hashlib.sha256(raw).hexdigest(), "format": "parquet", **accounting}
    return kept, report


# -------------------------------------------------------------------------------------------- sources


def _load_files(cfg: DataConfig) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    reader = read_csv if cfg.source == "csv" else read_parquet
    assert cfg.train_path is not None and cfg.test_path is not None  # DataConfig guarantees both
    train, train_report = reader(Path(cfg.train_path), cfg, "data.train_path")
    test, test_report = reader(Path(cfg.test_path), cfg, "data.test_path")
    return train, test, {"train": train_report, "test": test_report}


def _load_hf(cfg: DataConfig, cache_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    from textrnn import hub  # imports datasets: only for this source

    frames, reports = [], {}
    for split, (part_frame, meta) in hub.download_splits(cfg, cache_dir).items():
        rows = _frame_rows(part_frame, cfg, f"{cfg.hf_name} [{split}]")
        frame, accounting = rows.checked(cfg.max_bad_fraction, records=len(part_frame))
        frames.append(frame)
        reports[split] = {**meta, **accounting}
    return frames[0], frames[1], reports


def _load_sample(cfg: DataConfig, seed: int) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    train_raw, test_raw = sample.generate_splits(cfg, seed)
    frames, reports = [], {}
    for split, raw in (("train", train_raw), ("test", test_raw)):
        rows = _frame_rows(raw, cfg, f"sample [{split}]")
        frame, accounting = rows.checked(cfg.max_bad_fraction, records=len(raw))
        frames.append(frame)
        reports[split] = {"generator": "textrnn.sample", "seed": seed, "format": "sample", **accounting}
    return frames[0], frames[1], reports


def load_source(cfg: DataConfig, seed: int, cache_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """The configured source's train and test rows, validated, with a source report.

    Frames have columns `text` (str, non-empty, whitespace collapsed) and `label` (int64 in 0..C-1).
    The report holds `source` and `inputs` (per split: path and sha256, or Hub name/revision/fingerprint,
    rows read/kept and `dropped` counts by reason). `seed` seeds the sample generator; `cache_dir` holds
    the Hugging Face cache. Raises DataError (one line) for any unusable input.
    """
    if cfg.source in ("csv", "parquet"):
        train, test, inputs = _load_files(cfg)
    elif cfg.source == "hf":
        train, test, inputs = _load_hf(cfg, cache_dir)
    else:
        train, test, inputs = _load_sample(cfg, seed)
    return train, test, {"source": cfg.source, "inputs": inputs}


# ---------------------------------------------------------------------------------------- split, write


def stratified_split(frame: pd.DataFrame, fraction: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split `frame` into (train, val) with `round(len * fraction)` val rows, stratified by `label`.

    Each class puts floor or ceil of its exact share in val (largest remainders get the ceil), chosen by
    `numpy.random.default_rng(seed)`; both parts keep the input's row order. Deterministic for a seed.
    Raises DataError when either part would be empty.
    """
    labels = frame["label"].to_numpy()
    classes, counts = np.unique(labels, return_counts=True)
    exact = counts * fraction
    n_val = np.floor(exact).astype(np.int64)
    remainder_order = np.argsort(-(exact - n_val), kind="stable")
    n_val[remainder_order[: int(round(len(frame) * fraction)) - int(n_val.sum())]] += 1
    if n_val.sum() == 0 or n_val.sum() == len(frame):
        raise DataError(
            f"train has {len(frame)} rows: too few for a validation split of data.val_fraction {fraction:g}"
        )
    rng = np.random.default_rng(seed)
    val_mask = np.zeros(len(frame), dtype=bool)
    for label, take in zip(classes, n_val):
        members = np.flatnonzero(labels == label)
        val_mask[rng.permutation(members)[:take]] = True
    train = frame[~val_mask].reset_index(drop=True)
    val = frame[val_mask].reset_index(drop=True)
    return train, val


def write_split(frame: pd.DataFrame, path: Path) -> None:
    """Write `text` (string) and `label` (int64) as parquet; the same rows give the same bytes."""
    # Built from arrays, not from pandas, so no index or pandas metadata ends up in the file.
    table = pa.table({
        "text": pa.array(frame["text"].tolist(), type=pa.string()),
        "label": pa.array(frame["label"].to_numpy(dtype=np.int64), type=pa.int64()),
    })
    pq.write_table(table, path)


def read_split(prepared_dir: Path, split: str) -> pd.DataFrame:
    """A prepared split as a frame with columns `text` (str) and `label` (int64).

    Raises DataError for an unknown split name or a missing or unreadable file.
    """
    if split not in SPLITS:
        raise DataError(f"unknown split '{split}' (expected one of {', '.join(SPLITS)})")
    path = Path(prepared_dir) / prepared_split_file(split)
    if not path.is_file():
        raise DataError(f"{path}: prepared split not found (run `textrnn prepare` first)")
    try:
        frame = pq.read_table(path, columns=["text", "label"]).to_pandas()
    except (pa.ArrowException, OSError) as error:
        raise DataError(f"{path}: unreadable prepared split ({str(error).splitlines()[0]})") from None
    frame["label"] = frame["label"].astype(np.int64)
    return frame


def token_length_quantiles(texts: pd.Series) -> dict[str, int]:
    """Whitespace-token counts of `texts` at p0, p5, p50, p95, p100 (nearest rank, so whole numbers)."""
    lengths = texts.str.split().str.len().to_numpy()
    values = np.percentile(lengths, list(QUANTILES.values()), method="nearest")
    return {name: int(value) for name, value in zip(QUANTILES, values)}


def build_report(cfg: Config, splits: dict[str, pd.DataFrame], source_report: dict[str, Any]) -> dict[str, Any]:
    """report.json: source, classes, rows per split and class, token-length quantiles, drops, inputs."""
    classes = list(cfg.data.classes)
    inputs = source_report["inputs"]
    return {
        "source": source_report["source"],
        "classes": classes,
        "seed": cfg.seed,
        "val_fraction": cfg.data.val_fraction,
        "rows": {name: len(frame) for name, frame in splits.items()},
        "rows_per_class": {
            name: {classes[i]: int((frame["label"] == i).sum()) for i in range(len(classes))}
            for name, frame in splits.items()
        },
        "token_length_quantiles": {name: token_length_quantiles(frame["text"]) for name, frame in splits.items()},
        "dropped": {name: inputs[name]["dropped"] for name in inputs},
        "inputs": inputs,
    }


def prepare(cfg: Config) -> dict[str, Any]:
    """Load and validate the source, carve the validation split, and write the prepared directory.

    Writes `cfg.paths.prepared/{train,val,test}.parquet` and `report.json` together: on any error the
    previous directory (if any) is left as it was and nothing partial remains. Returns the report.
    """
    train_raw, test, source_report = load_source(cfg.data, cfg.seed, cfg.paths.cache)
    train, val = stratified_split(train_raw, cfg.data.val_fraction, cfg.seed)
    splits = {"train": train, "val": val, "test": test}
    report = build_report(cfg, splits, source_report)
    with atomic_dir(cfg.paths.prepared, key="prepared") as staging:
        for name, frame in splits.items():
            write_split(frame, staging / prepared_split_file(name))
        report["outputs"] = lineage.outputs(staging)  # what encode checks before it reads the splits
        write_json(staging / PREPARED_REPORT_FILE, report)
    logger.info("prepared %s", ", ".join(f"{name} {len(frame)}" for name, frame in splits.items()))
    return report
