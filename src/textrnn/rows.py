"""Input rows, validated and accounted for: each record a reader yields is kept or dropped with a reason,
and kept + dropped must equal the records the reader counted on its own, or the read fails.

`textrnn.data`'s readers (CSV, parquet, the Hub, the sample) feed a `Rows`; `Rows.checked` turns it into
the kept frame and the report's accounting, refusing an input with too many bad rows.
"""

from __future__ import annotations

import logging
import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from textrnn import csv_records
from textrnn.errors import TextrnnError

logger = logging.getLogger("textrnn.data")

# Why a row is dropped, in the order rows are checked, with the words used in messages.
REASONS: dict[str, str] = {
    "field_too_long": f"field over {csv_records.FIELD_LIMIT} characters",
    "invalid_utf8": "invalid UTF-8",
    "nul_byte": "NUL character",
    "wrong_field_count": "wrong field count",
    "bad_label": "label not in data.classes",
    "empty_text": "empty text",
}
_ROWS_SHOWN = 5  # bad row numbers quoted per reason in an error
_ROWS_REPORTED = 20  # bad row numbers kept per reason in the report


class DataError(TextrnnError):
    """Unusable input data, stated in one line that names the file (or dataset) and the bad rows."""


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
class Rows:
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

    def checked(self, max_bad_fraction: float, records: int) -> tuple[pd.DataFrame, dict[str, Any]]:
        """The kept rows as a frame and their accounting: `records` (counted by the reader, independently
        of this object), `rows_read`, `rows_kept`, `dropped` by reason and the first `dropped_rows`.

        Raises DataError when the input has no rows, when more than `max_bad_fraction` of them are bad,
        or when kept + dropped != records (a row went missing: a bug, never silently passed over).
        """
        n_bad = self.n_bad()
        if len(self.texts) + n_bad != records or self.total != records:
            raise DataError(f"{self.source}: row accounting does not close: {len(self.texts)} kept + {n_bad} "
                            f"dropped != {records} records (a textrnn bug: please report it)")
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
        accounting = {"records": records, "rows_read": self.total, "rows_kept": len(frame), "dropped": dropped,
                      "dropped_rows": {reason: rows[:_ROWS_REPORTED] for reason, rows in self.bad.items() if rows}}
        return frame, accounting


def _row_list(rows: list[int]) -> str:
    shown = ", ".join(str(row) for row in rows[:_ROWS_SHOWN])
    return shown + (" ..." if len(rows) > _ROWS_SHOWN else "")
