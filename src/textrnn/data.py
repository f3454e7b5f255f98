"""Data: load a source, validate it row by row, carve a stratified validation split, write the splits.

`prepare(cfg)` is the `textrnn prepare` step. It writes `{train,val,test}.parquet` (columns `text`: str,
`label`: int64 in 0..C-1) and `report.json` into `cfg.paths.prepared`, all at once or not at all.

Sources (`data.source`):
- `hf`: a Hugging Face dataset with `train`/`test` splits and `text`/`label` columns (AG News by default).
- `csv`: either the original AG News CSV (no header; `"class 1-4","title","description"`) or a headed CSV
  with a `label` column and a `text` column (or the `data.text_fields` columns). The format is detected
  from the first row.
- `parquet`: a `label` column and a `text` column (or the `data.text_fields` columns).
- `sample`: the embedded, seeded corpus of `textrnn.sample`.

Labels are an index 0..C-1 or a class name from `data.classes`; AG News' own class numbers 1..C map to
0..C-1. Text is the text fields joined with one space, whitespace runs collapsed to one space.

AG News text (the CSV and the Hub copy, which holds the same strings) carries two quirks of its scrape, and
both are undone here so the two sources give the same text:
- a backslash stands for a line break (`dwindling\\band` is "dwindling" and "band" on two lines; `\\\\`
  is a paragraph break) and becomes a space, except before `$`, where it escapes the dollar sign
  (`\\$55bn`) and is removed;
- HTML entities lost their `&`: `#39;` is `&#39;` (an apostrophe), and ` quot;` / ` amp;` had the `&`
  replaced by a space. These are restored and unescaped, so "it#39;s" reads "it's".
Headed CSV and parquet files are taken as written (no unescaping), apart from the whitespace collapse.

Row numbers in messages are 1-based as a spreadsheet shows them: a headed file's header is row 1, and a
CSV record whose quoted field spans several lines is still one row. Parquet and Hub rows count from 1.
"""

from __future__ import annotations

import csv
import hashlib
import html
import io
import itertools
import logging
import math
import numbers
import os
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from textrnn import sample
from textrnn.config import Config, DataConfig
from textrnn.errors import TextrnnError
from textrnn.files import atomic_dir, write_json

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")

# Why a row is dropped, in the order rows are checked, with the words used in messages.
REASONS: dict[str, str] = {
    "invalid_utf8": "invalid UTF-8",
    "wrong_field_count": "wrong field count",
    "bad_label": "label not in data.classes",
    "empty_text": "empty text",
}
QUANTILES = {"p0": 0, "p5": 5, "p50": 50, "p95": 95, "p100": 100}
AG_NEWS_COLUMNS = ("class", "title", "description")
HF_TIMEOUT_S = "10"
_ROWS_SHOWN = 5  # bad row numbers quoted per reason in an error


class DataError(TextrnnError):
    """Unusable input data, stated in one line that names the file (or dataset) and the bad rows."""


# ---------------------------------------------------------------------------------------------- text


_NUMERIC_ENTITY = re.compile(r"&?(#\d{1,7});")
# A named entity whose '&' the scrape turned into a space (or, rarely, kept).
_NAMED_ENTITY = re.compile(r"[& ](quot|amp|lt|gt|nbsp);")
_ESCAPED_DOLLAR = re.compile(r"\\(?=\$)")
_SURROGATE = re.compile("[\udc80-\udcff]")


def collapse_whitespace(text: str) -> str:
    """`text` with leading/trailing whitespace removed and every inner whitespace run made one space."""
    return " ".join(text.split())


def unescape_ag_news(text: str) -> str:
    """AG News text with its scrape's escapes undone (see the module docstring); whitespace not collapsed."""
    text = _NUMERIC_ENTITY.sub(r"&\1;", text)
    text = _NAMED_ENTITY.sub(r"&\1;", text)
    text = html.unescape(text)
    text = _ESCAPED_DOLLAR.sub("", text)
    return text.replace("\\", " ")


# -------------------------------------------------------------------------------------- validation


def parse_label(value: Any, classes: Sequence[str]) -> int | None:
    """The class index (0..C-1) that `value` names, or None if it names none.

    `value` is an integer index, an integral float, a decimal string, or a class name from `classes`.
    Booleans and other values name no class.
    """
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, numbers.Integral):
        index = int(value)
    elif isinstance(value, numbers.Real):
        if not math.isfinite(value) or value != int(value):
            return None
        index = int(value)
    elif isinstance(value, str):
        name = value.strip()
        if name in classes:
            return classes.index(name)
        try:
            index = int(name)
        except ValueError:
            return None
    else:
        return None
    return index if 0 <= index < len(classes) else None


@dataclass
class _Rows:
    """Rows read from one input: the kept texts and labels, and the bad row numbers by reason."""

    source: str
    texts: list[str] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    bad: dict[str, list[int]] = field(default_factory=lambda: {reason: [] for reason in REASONS})
    total: int = 0

    def keep(self, text: str, label: int) -> None:
        self.total += 1
        self.texts.append(text)
        self.labels.append(label)

    def drop(self, row: int, reason: str) -> None:
        self.total += 1
        self.bad[reason].append(row)

    def add(self, row: int, text: str, label: int | None) -> None:
        """Keep the row, or drop it as `bad_label` / `empty_text` (checked in that order)."""
        if label is None:
            self.drop(row, "bad_label")
        elif not text:
            self.drop(row, "empty_text")
        else:
            self.keep(text, label)

    def n_bad(self) -> int:
        return sum(len(rows) for rows in self.bad.values())

    def checked(self, max_bad_fraction: float) -> tuple[pd.DataFrame, dict[str, int]]:
        """The kept rows as a frame and the dropped counts by reason.

        Raises DataError when the input has no rows, or more than `max_bad_fraction` of them are bad.
        """
        n_bad = self.n_bad()
        if self.total == 0:
            raise DataError(f"{self.source}: no data rows")
        if n_bad > max_bad_fraction * self.total:
            details = "; ".join(
                f"{REASONS[reason]} at rows {_row_list(rows)}" for reason, rows in self.bad.items() if rows
            )
            raise DataError(
                f"{self.source}: {n_bad} of {self.total} rows are bad "
                f"(> data.max_bad_fraction {max_bad_fraction:g}): {details}"
            )
        dropped = {reason: len(rows) for reason, rows in self.bad.items()}
        if n_bad:
            logger.warning("%s: dropped %d of %d rows (%s)", self.source, n_bad, self.total,
                           ", ".join(f"{reason} {count}" for reason, count in dropped.items() if count))
        frame = pd.DataFrame({"text": pd.Series(self.texts, dtype=object),
                              "label": np.asarray(self.labels, dtype=np.int64)})
        return frame, dropped


def _row_list(rows: list[int]) -> str:
    shown = ", ".join(str(row) for row in rows[:_ROWS_SHOWN])
    return shown + (" ..." if len(rows) > _ROWS_SHOWN else "")


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


def _join_text(parts: Iterable[str], ag_news: bool) -> str:
    text = " ".join(parts)
    return collapse_whitespace(unescape_ag_news(text) if ag_news else text)


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


def _csv_records(raw: bytes, path: Path) -> Iterator[tuple[int, list[str]]]:
    """(row number, fields) for each CSV record; a quoted field may span lines and still be one row.

    The bytes are decoded with surrogateescape so that one bad byte spoils only its own row (see
    `_has_undecodable`), and csv sees the same quoting it would in a clean file. A record csv cannot
    parse at all (e.g. a stray quote swallowing the rest of the file) raises DataError.
    """
    text = raw.decode("utf-8", errors="surrogateescape").removeprefix("\ufeff")
    reader = csv.reader(io.StringIO(text, newline=""))
    row = 0
    while True:
        row += 1
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as error:
            raise DataError(f"{path}: malformed CSV at row {row} (line {reader.line_num}): {error}") from None
        yield row, fields


def read_csv(path: Path, cfg: DataConfig, key: str) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Rows of an AG News or headed CSV file, validated; see the module docstring for both formats.

    Returns the kept rows (text, label) and an input report (path, sha256, format, rows read and
    dropped by reason). Raises DataError for a missing, empty, unrecognised or too-broken file.
    """
    raw = _read_bytes(path, key)
    records = _csv_records(raw, path)
    rows = _Rows(source=str(path))
    first = next(records, None)
    if first is None:
        raise DataError(f"{path}: file is empty ({key})")
    header = [name.strip() for name in first[1]]
    if _looks_like_ag_news(header):
        fmt = "ag_news"
        columns = _ag_news_text_columns(cfg.text_fields, path)
        _read_records(itertools.chain([first], records), rows, len(AG_NEWS_COLUMNS), columns, 0,
                      lambda value: _ag_news_label(value, len(cfg.classes)), ag_news=True)
    elif "label" in header:
        fmt = "headed_csv"
        names = _text_columns(header, cfg.text_fields, str(path))
        columns = [header.index(name) for name in names]
        _read_records(records, rows, len(header), columns, header.index("label"),
                      lambda value: parse_label(value, cfg.classes), ag_news=False)
    else:
        raise DataError(
            f"{path}: cannot tell the CSV format from row 1: expected AG News rows "
            '("class 1-4","title","description") or a header with a \'label\' column'
        )
    frame, dropped = rows.checked(cfg.max_bad_fraction)
    report = {"path": str(path), "sha256": hashlib.sha256(raw).hexdigest(), "format": fmt,
              "rows_read": rows.total, "rows_kept": len(frame), "dropped": dropped}
    return frame, report


def _looks_like_ag_news(first_row: list[str]) -> bool:
    return len(first_row) == len(AG_NEWS_COLUMNS) and first_row[0].isascii() and first_row[0].isdigit()


def _ag_news_text_columns(text_fields: Sequence[str], path: Path) -> list[int]:
    unknown = [name for name in text_fields if name not in AG_NEWS_COLUMNS[1:]]
    if unknown:
        raise DataError(
            f"{path}: data.text_fields {', '.join(unknown)} not among the AG News columns (title, description)"
        )
    return [AG_NEWS_COLUMNS.index(name) for name in text_fields]


def _ag_news_label(value: str, n_classes: int) -> int | None:
    """AG News' class number 1..C as an index 0..C-1; None for anything else (names are not used there)."""
    value = value.strip()
    if not (value.isascii() and value.isdigit()):
        return None
    index = int(value) - 1
    return index if 0 <= index < n_classes else None


def _read_records(records: Iterable[tuple[int, list[str]]], rows: _Rows, n_fields: int, text_columns: list[int],
                  label_column: int, label_of: Callable[[str], int | None], ag_news: bool) -> None:
    """Validate CSV records into `rows`, checking UTF-8, then the field count, then label and text."""
    for row, fields in records:
        if not fields:  # a blank line holds no row
            continue
        if _has_undecodable(fields):
            rows.drop(row, "invalid_utf8")
        elif len(fields) != n_fields:
            rows.drop(row, "wrong_field_count")
        else:
            text = _join_text((fields[i] for i in text_columns), ag_news=ag_news)
            rows.add(row, text, label_of(fields[label_column]))


def _frame_rows(frame: pd.DataFrame, cfg: DataConfig, source: str, ag_news: bool) -> _Rows:
    """Validate a frame's rows (numbered from 1) that have a `label` column and text columns."""
    columns = [str(name) for name in frame.columns]
    if "label" not in columns:
        raise DataError(f"{source}: no 'label' column among the columns ({', '.join(columns)})")
    names = _text_columns(columns, cfg.text_fields, source)
    rows = _Rows(source=source)
    text_values = zip(*(frame[name].tolist() for name in names))
    for row, (parts, label_value) in enumerate(zip(text_values, frame["label"].tolist()), start=1):
        strings = [_cell_text(part) for part in parts]
        if any(text is None for text in strings):
            rows.drop(row, "invalid_utf8")
            continue
        rows.add(row, _join_text(strings, ag_news=ag_news), parse_label(label_value, cfg.classes))
    return rows


def _cell_text(value: Any) -> str | None:
    """A cell as text: '' for a missing value, None for bytes that are not UTF-8."""
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return None
    return str(value)


def read_parquet(path: Path, cfg: DataConfig, key: str) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Rows of a parquet file with a `label` column and text columns, validated; as `read_csv` returns."""
    raw = _read_bytes(path, key)
    try:
        frame = pq.read_table(pa.BufferReader(raw)).to_pandas()
    except (pa.ArrowException, OSError) as error:
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise DataError(f"{path}: not a readable parquet file ({message}) ({key})") from None
    rows = _frame_rows(frame, cfg, str(path), ag_news=False)
    kept, dropped = rows.checked(cfg.max_bad_fraction)
    report = {"path": str(path), "sha256": hashlib.sha256(raw).hexdigest(), "format": "parquet",
              "rows_read": rows.total, "rows_kept": len(kept), "dropped": dropped}
    return kept, report


# -------------------------------------------------------------------------------------------- sources


def _load_files(cfg: DataConfig) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    reader = read_csv if cfg.source == "csv" else read_parquet
    assert cfg.train_path is not None and cfg.test_path is not None  # DataConfig guarantees both
    train, train_report = reader(Path(cfg.train_path), cfg, "data.train_path")
    test, test_report = reader(Path(cfg.test_path), cfg, "data.test_path")
    return train, test, {"train": train_report, "test": test_report}


def _offline_message(hf_name: str, cause: str) -> str:
    """The one line for an unreachable Hub: what failed and how to point the pipeline at local data."""
    from huggingface_hub import constants

    cache_hint = ("HF_HUB_OFFLINE is set and no usable cached copy was found" if constants.HF_HUB_OFFLINE
                  else "or set HF_HUB_OFFLINE=1 to use a cached copy")
    return (
        f"cannot download {hf_name} from the Hugging Face Hub (offline? {cause}): use data.source=csv with "
        f"data.train_path/data.test_path, or data.source=sample ({cache_hint})"
    )


def _hub_revision(hf_name: str) -> str | None:
    """The dataset's current commit on the Hub, asked once with a short timeout and no retries.

    `load_dataset` retries an unreachable Hub for ~25 s; this probe fails in at most HF_TIMEOUT_S.
    Returns None in offline mode (HF_HUB_OFFLINE), where `load_dataset` reads the local cache.
    """
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

    if constants.HF_HUB_OFFLINE:
        return None
    try:
        return HfApi().dataset_info(hf_name, timeout=float(HF_TIMEOUT_S)).sha
    except RepositoryNotFoundError:
        raise DataError(f"{hf_name}: dataset not found on the Hugging Face Hub, or gated (data.hf_name)") from None
    except HfHubHTTPError as error:
        status = error.response.status_code if error.response is not None else "?"
        raise DataError(_offline_message(hf_name, f"HTTP {status}")) from error
    except Exception as error:  # the HTTP client's connection and timeout errors have no common public base
        raise DataError(_offline_message(hf_name, type(error).__name__)) from error


def _load_hf(cfg: DataConfig, cache_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    hf_home = Path(cache_dir).resolve() / "hf"
    # huggingface_hub reads these when first imported, so they are set before the lazy imports below.
    os.environ["HF_HOME"] = str(hf_home)
    os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", HF_TIMEOUT_S)
    os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", HF_TIMEOUT_S)
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    import datasets

    revision = _hub_revision(cfg.hf_name)
    try:
        dataset = datasets.load_dataset(cfg.hf_name, revision=revision, cache_dir=str(hf_home / "datasets"))
    except Exception as error:  # network, cache and format errors all mean: this source is unusable now
        raise DataError(_offline_message(cfg.hf_name, type(error).__name__)) from error
    frames, reports = [], {}
    for split in ("train", "test"):
        if split not in dataset:
            raise DataError(f"{cfg.hf_name}: no '{split}' split (has {', '.join(dataset)}) (data.hf_name)")
        part = dataset[split]
        _check_hf_classes(part, cfg)
        rows = _frame_rows(part.to_pandas(), cfg, f"{cfg.hf_name} [{split}]", ag_news=True)
        frame, dropped = rows.checked(cfg.max_bad_fraction)
        frames.append(frame)
        reports[split] = {"hf_name": cfg.hf_name, "split": split, "revision": revision,
                          "fingerprint": getattr(part, "_fingerprint", None), "format": "hf",
                          "rows_read": rows.total, "rows_kept": len(frame), "dropped": dropped}
    return frames[0], frames[1], reports


def _check_hf_classes(part: Any, cfg: DataConfig) -> None:
    """DataError when the dataset names its classes and they differ from `data.classes`."""
    names = getattr(part.features.get("label"), "names", None)
    if names is not None and tuple(names) != tuple(cfg.classes):
        raise DataError(
            f"{cfg.hf_name}: its classes ({', '.join(names)}) differ from data.classes ({', '.join(cfg.classes)})"
        )


def _load_sample(cfg: DataConfig, seed: int) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    train_raw, test_raw = sample.generate_splits(cfg, seed)
    frames, reports = [], {}
    for split, raw in (("train", train_raw), ("test", test_raw)):
        rows = _frame_rows(raw, cfg, f"sample [{split}]", ag_news=False)
        frame, dropped = rows.checked(cfg.max_bad_fraction)
        frames.append(frame)
        reports[split] = {"generator": "textrnn.sample", "seed": seed, "format": "sample",
                          "rows_read": rows.total, "rows_kept": len(frame), "dropped": dropped}
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
    path = Path(prepared_dir) / f"{split}.parquet"
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
    with atomic_dir(cfg.paths.prepared) as staging:
        for name, frame in splits.items():
            write_split(frame, staging / f"{name}.parquet")
        write_json(staging / "report.json", report)
    logger.info("prepared %s", ", ".join(f"{name} {len(frame)}" for name, frame in splits.items()))
    return report
