"""CSV input: records with every physical line accounted for, the file's format, and strict quoting.

`read_table(text)` splits decoded CSV text into records (RFC 4180 quoting, as Python's `csv` reads it in
strict mode), notes which physical lines each one spans, tells the format from the first non-blank record
(AG News rows, or a header with a `label` column), and checks that header lines, blank lines and the
lines of the data records add up to the lines in the file. `textrnn.data` validates the records.

Why a quoting error is fatal rather than one more bad row: a quote that opens a field and never closes
where it should (a stray `"` at the start of a field, text after a closing quote, a quoted field still
open at the end of the file or after `MAX_RECORD_LINES` lines) means the record boundaries after it are
unknown. The `csv` module's default guess turns the rest of the file into one giant field (the rows after
it vanish) or flips which quotes open and close fields (rows turn inside out). Resuming at the next line
would be a guess too: the continuation lines of a real multi-line field often parse as valid-looking rows
(`to me",1` after a broken `"He said "hi"`), so garbage would be kept without a word. A data engineer
wants the file refused with the line where the quote opened, not rows invented or lost, so `scan` raises
`CsvFramingError` naming that line, and the caller fails the whole read.

What is not a framing error, and is left to the caller to count as one bad row: a field longer than
`FIELD_LIMIT` characters (the `csv` module's own default limit, lifted while scanning so that one long
field does not reject the file), a wrong field count, undecodable bytes, NUL characters. A quote inside
an unquoted field (`12" pizza`) is taken literally, as `csv`, pandas and spreadsheets read it: it cannot
open a field, so it cannot move a record boundary. What no reader can see: a stray quote closed by
another stray quote fewer than `MAX_RECORD_LINES` lines later, just before a delimiter, is a well-formed
multi-line field; it reads as one long row (visible as the report's token-length p100).

Lines end at `\\r\\n`, `\\n` or a lone `\\r` (as `csv` ends a record); a last line without a line break
still counts. A record holding nothing but whitespace is blank (no fields), not a one-field row.
"""

from __future__ import annotations

import contextlib
import csv
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass

from textrnn.errors import TextrnnError

AG_NEWS_COLUMNS = ("class", "title", "description")
FIELD_LIMIT = 128 * 1024  # characters; longer fields are bad rows (`field_too_long`), as csv's default limit
MAX_RECORD_LINES = 100  # physical lines one record may span before its open quote counts as a runaway

_LINE = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+")


class CsvError(TextrnnError):
    """The file cannot be read as CSV rows (empty, unrecognised format); the message names no file."""


class CsvFramingError(CsvError):
    """The record boundaries cannot be trusted from `line` on; the message names the line (no file)."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"line {line}: {message}")
        self.line = line


class _Runaway(Exception):
    """Raised from the line feed when one record has taken more than MAX_RECORD_LINES lines."""


@dataclass(frozen=True)
class Record:
    """One CSV record: its 1-based row (blank records count, as a spreadsheet numbers rows), its first
    physical line, how many lines it spans, and its fields (empty for a blank record)."""

    row: int
    line: int
    lines: int
    fields: list[str]


@dataclass(frozen=True)
class Table:
    """A CSV file read as data records: its format (`ag_news` or `headed_csv`), column names (AG News' own
    three for that format), and the accounting of its physical lines."""

    format: str
    columns: list[str]
    records: list[Record]  # data records: no header, no blank records
    lines: int
    header_lines: int
    blank_lines: int


def read_table(text: str) -> Table:
    """The data records of decoded CSV `text` and its format; raises CsvFramingError at the first quoting
    error, CsvError for a file with no record or an unrecognised first row."""
    records, n_lines = scan(text)
    blank_lines = sum(record.lines for record in records if not record.fields)
    records = [record for record in records if record.fields]
    if not records:
        raise CsvError(f"file is empty{f' ({blank_lines} blank lines)' if blank_lines else ''}")
    first = records[0]
    names = [name.strip() for name in first.fields]
    if len(names) == len(AG_NEWS_COLUMNS) and names[0].isascii() and names[0].isdigit():
        table = Table("ag_news", list(AG_NEWS_COLUMNS), records, n_lines, 0, blank_lines)
    elif "label" in names:
        table = Table("headed_csv", names, records[1:], n_lines, first.lines, blank_lines)
    else:
        raise CsvError(
            f"cannot tell the CSV format from row {first.row}: expected AG News rows "
            '("class 1-4","title","description") or a header with a \'label\' column'
        )
    record_lines = sum(record.lines for record in table.records)
    if table.header_lines + blank_lines + record_lines != n_lines:  # every physical line is accounted for
        raise CsvError(f"line accounting does not close: {table.header_lines} header + {blank_lines} blank + "
                       f"{record_lines} record lines != {n_lines} lines (a textrnn bug: please report it)")
    return table


def ag_news_label(value: str, n_classes: int) -> int | None:
    """AG News' class number 1..C as an index 0..C-1; None for anything else (names are not used there)."""
    value = value.strip()
    if not (value.isascii() and value.isdigit()):
        return None
    index = int(value) - 1
    return index if 0 <= index < n_classes else None


@contextlib.contextmanager
def _unlimited_fields() -> Iterator[None]:
    # csv's limit is process-wide; it is lifted only while scanning (prepare reads files one at a time).
    previous = csv.field_size_limit(sys.maxsize)
    try:
        yield
    finally:
        csv.field_size_limit(previous)


def scan(text: str) -> tuple[list[Record], int]:
    """Every record of decoded CSV `text` (blank ones too) and the number of physical lines; raises
    CsvFramingError at the first quoting error (see the module docstring)."""
    lines = _LINE.findall(text)
    start = 0  # index of the first line of the record being read

    def feed() -> Iterator[str]:
        for index, line in enumerate(lines):
            if index - start >= MAX_RECORD_LINES:
                raise _Runaway
            yield line

    records: list[Record] = []
    reader = csv.reader(feed(), strict=True)
    with _unlimited_fields():
        while True:
            start = reader.line_num
            try:
                fields = next(reader)
            except StopIteration:
                break
            except _Runaway:
                raise CsvFramingError(start + 1, (
                    f"a quoted field opened in the row starting here is still open after {MAX_RECORD_LINES} "
                    "lines (a stray quote? quote the field and double any quote inside it)")) from None
            except csv.Error as error:
                raise _framing_error(str(error), start + 1, reader.line_num, len(lines)) from None
            if len(fields) == 1 and not fields[0].strip():
                fields = []
            records.append(Record(len(records) + 1, start + 1, reader.line_num - start, fields))
    return records, len(lines)


def _framing_error(error: str, first_line: int, error_line: int, n_lines: int) -> CsvFramingError:
    if "unexpected end of data" in error:
        return CsvFramingError(first_line, (
            f"a quoted field opened in the row starting here never closes (it runs to the end of the file, "
            f"line {n_lines}; a stray quote? quote the field and double any quote inside it)"))
    if "expected after" in error:
        if error_line == first_line:
            what = "text follows the closing quote of a quoted field"
        else:
            what = f"a quoted field opened in the row starting here closes on line {error_line} with text after it"
        return CsvFramingError(first_line, (
            f"{what} (a stray quote, or a quote inside a quoted field not doubled as \"\")"))
    return CsvFramingError(error_line, f"malformed CSV ({error})")
