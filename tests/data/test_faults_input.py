"""Bad input files and train/serve text skew (issue 12, items 2 and 15): every physical record of an input
is accounted for, a broken quote fails `prepare` naming its line, and one normalisation serves every path.

The headline cases run the real `textrnn prepare` process in a fresh working directory (tests/fault_kit.py);
the many small file shapes call `textrnn.data.read_csv` / `read_parquet` directly, with the working
directory set to the test's own folder and relative paths, as the CLI sees them.
"""

from __future__ import annotations

import csv
import io
import json
import random
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fault_kit import PARAMS, assert_one_line_error, assert_unchanged, cli, fault, snapshot
from textrnn import csv_records, data
from textrnn.config import from_dict
from textrnn.text import normalize_text

LIMIT = csv_records.FIELD_LIMIT
FILES = ("--set", "data.source=csv", "--set", "data.train_path=train.csv", "--set", "data.test_path=test.csv",
         "--set", "tracking.enabled=false")


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def data_cfg(**keys):
    return from_dict({"data": {"source": "csv", "train_path": "train.csv", "test_path": "test.csv", **keys}}).data


def headed(n: int, start: int = 0) -> list[str]:
    """`n` good headed-CSV lines `text,label` (no quotes), classes in turn."""
    return [f"row {i} words and more words,{i % 4}" for i in range(start, start + n)]


def write_lines(name: str, lines: list[str], header: str | None = "text,label", end: str = "\n",
                final: bool = True) -> Path:
    """`lines` under `header`, each ended by `end` (the last one too unless not `final`)."""
    body = end.join(([header] if header is not None else []) + lines) + (end if final else "")
    path = Path(name)
    path.write_bytes(body.encode("utf-8", errors="surrogateescape"))
    return path


def read(path: Path | str = "train.csv", **keys):
    return data.read_csv(Path(path), data_cfg(**keys), "data.train_path")


def assert_accounted(report: dict) -> None:
    """The invariants the report promises: kept + dropped = records = rows read; lines all accounted."""
    assert report["rows_kept"] + sum(report["dropped"].values()) == report["records"] == report["rows_read"]
    if "lines" in report:
        assert report["lines"] >= report["header_lines"] + report["blank_lines"] + report["records"]


# ------------------------------------------------------------------------------ through the real CLI


@pytest.fixture
def prepared_before(workdir: Path) -> dict[str, str]:
    """A good prepare in the working directory; returns the snapshot of data/prepared."""
    write_lines("train.csv", headed(200))
    write_lines("test.csv", headed(40))
    result = cli(workdir, "prepare", "--params", str(PARAMS), *FILES)
    assert result.returncode == 0, result.stderr
    return snapshot(workdir / "data" / "prepared")


@fault(2, "a 1,000-row headed CSV with an unbalanced `\"` opening row 702 (`textrnn prepare`)",
       "error: train.csv: line 702: a quoted field opened in the row starting here is still open after 100 lines "
       "(a stray quote? ...), exit 2",
       kept="data/prepared")
def test_stray_quote_fails_naming_its_line_and_keeps_prepared(workdir: Path, prepared_before) -> None:
    lines = headed(1000)
    lines[700] = '"' + lines[700]  # data row 701 is line 702 (the header is line 1)
    write_lines("train.csv", lines)

    result = cli(workdir, "prepare", "--params", str(PARAMS), *FILES)

    assert_one_line_error(result, "train.csv: line 702: a quoted field opened in the row starting here is still open "
                          f"after {csv_records.MAX_RECORD_LINES} lines (a stray quote?")
    assert_unchanged(prepared_before, workdir / "data" / "prepared")


@fault(2, "a field over 128 KiB in one row of 200 (`textrnn prepare`)",
       "exit 0; that row dropped and counted as field_too_long (report.json: records 200, kept 199, row 101)")
def test_field_over_the_limit_is_one_counted_row(workdir: Path) -> None:
    lines = headed(200)
    lines[99] = '"' + "x" * (LIMIT + 1) + '",1'
    write_lines("train.csv", lines)
    write_lines("test.csv", headed(40))

    result = cli(workdir, "prepare", "--params", str(PARAMS), *FILES)

    assert result.returncode == 0, result.stderr
    report = json.loads((workdir / "data" / "prepared" / "report.json").read_text())
    train = report["inputs"]["train"]
    assert (train["records"], train["rows_read"], train["rows_kept"]) == (200, 200, 199)
    assert train["dropped"]["field_too_long"] == 1 and sum(train["dropped"].values()) == 1
    assert train["dropped_rows"] == {"field_too_long": [101]}
    assert (train["lines"], train["header_lines"], train["blank_lines"]) == (201, 1, 0)
    assert report["rows"]["train"] + report["rows"]["val"] == 199


@fault(2, "a parquet train file whose `text` column holds lists of strings (`textrnn prepare`)",
       "error: train.parquet: text column 'text' holds list<...> values, not strings (first at row 1), exit 2",
       kept="data/prepared")
def test_parquet_list_text_column_fails_and_keeps_prepared(workdir: Path, prepared_before) -> None:
    pq.write_table(pa.table({"text": [["a", "b"], ["c"]] * 10, "label": [0, 1] * 10}), "train.parquet")
    pq.write_table(pa.table({"text": ["a b", "c"], "label": [0, 1]}), "test.parquet")

    result = cli(workdir, "prepare", "--params", str(PARAMS), "--set", "data.source=parquet",
                 "--set", "data.train_path=train.parquet", "--set", "data.test_path=test.parquet",
                 "--set", "tracking.enabled=false")

    assert_one_line_error(result, "train.parquet: text column 'text' holds list<", "not strings (first at row 1)")
    assert_unchanged(prepared_before, workdir / "data" / "prepared")


# ------------------------------------------------------------------------------- quoting: refused


@pytest.mark.parametrize(("row", "line"), [
    pytest.param(1, 2, marks=fault(2, "a stray quote opening the first data row of a headed CSV",
                                   "error: train.csv: line 2: a quoted field ... never closes")),
    pytest.param(50, 51, marks=fault(2, "a stray quote opening the last row, the file ending without a newline",
                                     "error: train.csv: line 51: a quoted field ... never closes")),
])
def test_stray_quote_at_the_edges(workdir: Path, row: int, line: int) -> None:
    lines = headed(50)
    lines[row - 1] = '"' + lines[row - 1]
    write_lines("train.csv", lines, final=False)
    with pytest.raises(data.DataError, match=rf"^train\.csv: line {line}: a quoted field opened in the row starting "
                                             rf"here never closes \(it runs to the end of the file, line 51;"):
        read()


@fault(2, "a stray quote in row 10 of a file whose later rows hold proper quoted fields",
       "error: train.csv: line 11: a quoted field opened in the row starting here closes on line 31 with text after it")
def test_stray_quote_closed_by_a_later_quoted_field_fails(workdir: Path) -> None:
    lines = headed(60)
    lines[9] = '"' + lines[9]
    lines[29] = '"quoted, with a comma",2'
    write_lines("train.csv", lines)
    with pytest.raises(data.DataError, match=r"^train\.csv: line 11: a quoted field opened in the row starting here "
                                             r"closes on line 31 with text after it"):
        read()


@fault(2, "two stray quotes 150 lines apart (the second closes the first)",
       "error: train.csv: line 6: a quoted field ... is still open after 100 lines")
def test_quote_open_for_more_than_the_line_limit_fails(workdir: Path) -> None:
    lines = headed(300)
    lines[4] = '"' + lines[4]
    lines[154] = lines[154].replace(",", '",')
    write_lines("train.csv", lines)
    with pytest.raises(data.DataError, match=r"^train\.csv: line 6: a quoted field opened in the row starting here "
                                             rf"is still open after {csv_records.MAX_RECORD_LINES} lines"):
        read()


@fault(2, 'a quote inside a quoted field that is not doubled (`"He said "hi" to me",1`)',
       "error: train.csv: line 4: text follows the closing quote of a quoted field ...")
def test_text_after_a_closing_quote_fails(workdir: Path) -> None:
    lines = headed(20)
    lines[2] = '"He said "hi" to me",1'
    write_lines("train.csv", lines)
    with pytest.raises(data.DataError, match=r"^train\.csv: line 4: text follows the closing quote of a quoted field"):
        read()


@fault(2, "a broken multi-line quoted field whose next line looks like a row (`\"He said \"hi\"` / `to me\",1`)",
       "error: train.csv: line 3: ... (no row made up from the continuation line)")
def test_broken_multiline_field_invents_no_row(workdir: Path) -> None:
    Path("train.csv").write_text('text,label\n"He said "hi"\nto me",1\nok,2\n')
    with pytest.raises(data.DataError, match=r"^train\.csv: line 2: text follows the closing quote"):
        read()


# ------------------------------------------------------------------------------- counted, not refused


@fault(0, 'a quote inside an unquoted field (`12" pizza,1`)', "read literally as csv and spreadsheets do; kept")
def test_quote_inside_an_unquoted_field_is_literal(workdir: Path) -> None:
    write_lines("train.csv", ['12" pizza,1', 'say "cheese" now,2', *headed(3)])
    frame, report = read()
    assert frame["text"].tolist()[:2] == ['12" pizza', 'say "cheese" now']
    assert report["records"] == report["rows_kept"] == 5
    assert_accounted(report)


@fault(2, "a quoted field over 128 KiB spanning 3 lines, rows around it intact",
       "that record is one field_too_long row; the rows after it are read")
def test_long_multiline_field_is_one_row(workdir: Path) -> None:
    big = "y" * LIMIT
    write_lines("train.csv", [*headed(3), f'"{big}\n{big}\nend",1', *headed(3, start=3)])
    frame, report = read(max_bad_fraction=0.2)
    assert report["records"] == 7 and report["rows_kept"] == 6
    assert report["dropped_rows"] == {"field_too_long": [5]}
    assert (report["lines"], report["header_lines"]) == (10, 1)
    assert frame["text"].tolist()[-1] == "row 5 words and more words"


@pytest.mark.parametrize("end", [
    pytest.param("\r\n", marks=fault(0, "CRLF line endings", "read like LF: same rows, lines counted")),
    pytest.param("\r", marks=fault(0, "lone-CR (classic Mac) line endings", "read like LF: same rows, lines counted")),
])
def test_crlf_and_cr_files(workdir: Path, end: str) -> None:
    write_lines("train.csv", [*headed(5), '"multi\r\nline",3'], end=end)
    frame, report = read()
    assert frame["text"].tolist() == [f"row {i} words and more words" for i in range(5)] + ["multi line"]
    assert (report["records"], report["rows_kept"], report["lines"]) == (6, 6, 8)
    assert_accounted(report)


@fault(0, "a file that ends without a newline", "the last row is read and counted")
def test_no_final_newline(workdir: Path) -> None:
    write_lines("train.csv", headed(5), final=False)
    frame, report = read()
    assert len(frame) == 5 and report["lines"] == 6


@fault(0, "blank and whitespace-only lines before the header, between rows and at the end",
       "counted as blank_lines; rows numbered as a spreadsheet shows them; the arithmetic closes")
def test_blank_lines_are_counted(workdir: Path) -> None:
    Path("train.csv").write_text("\n  \ntext,label\na,0\n\n\t\nb,1\nc,9\n\n")
    frame, report = read(max_bad_fraction=0.5)
    assert frame["text"].tolist() == ["a", "b"]
    assert (report["lines"], report["header_lines"], report["blank_lines"], report["records"]) == (9, 1, 5, 3)
    assert report["dropped_rows"] == {"bad_label": [8]}
    assert report["lines"] == report["header_lines"] + report["blank_lines"] + report["records"]


@fault(0, "a file of blank lines only", "error: train.csv: file is empty (3 blank lines) (data.train_path)")
def test_only_blank_lines(workdir: Path) -> None:
    Path("train.csv").write_text("\n\n\n")
    with pytest.raises(data.DataError, match=r"^train\.csv: file is empty \(3 blank lines\) \(data\.train_path\)$"):
        read()


@fault(0, "a UTF-8 byte-order mark before the header", "ignored; the header is recognised")
def test_bom(workdir: Path) -> None:
    Path("train.csv").write_bytes(b"\xef\xbb\xbftext,label\r\nalpha,0\r\n")
    frame, report = read()
    assert frame["text"].tolist() == ["alpha"] and report["format"] == "headed_csv"


@fault(0, "NUL bytes in 2 rows of 100",
       "those rows dropped as nul_byte; beyond data.max_bad_fraction: error naming them")
def test_nul_bytes_are_counted(workdir: Path) -> None:
    lines = headed(100)
    lines[9] = "bad\x00text,1"
    lines[19] = "\x00,1"
    write_lines("train.csv", lines)
    frame, report = read(max_bad_fraction=0.05)
    assert report["dropped_rows"] == {"nul_byte": [11, 21]} and len(frame) == 98
    with pytest.raises(data.DataError, match=r"2 of 100 rows are bad .*: NUL character at rows 11, 21$"):
        read()


@fault(0, "wrong field counts and invalid UTF-8 in a headed CSV",
       "counted as wrong_field_count / invalid_utf8 with their rows")
def test_wrong_field_counts_and_invalid_utf8_are_counted(workdir: Path) -> None:
    lines = headed(50)
    lines[4] = "only one field"
    lines[5] = "one,2,three"
    lines[6] = "caf\udce9,1"  # a lone 0xE9 byte in the file
    write_lines("train.csv", lines)
    frame, report = read(max_bad_fraction=0.1)
    assert report["dropped_rows"] == {"invalid_utf8": [8], "wrong_field_count": [6, 7]}
    assert len(frame) == 47
    assert_accounted(report)


@fault(0, "an AG News CSV (no header) with blank lines and a multi-line row",
       "format ag_news; records, lines and blank lines add up")
def test_ag_news_accounting(workdir: Path) -> None:
    Path("train.csv").write_text('"3","Title","desc it#39;s"\n\n"1","Two\nlines","x"\n"2","T","d"')
    frame, report = read()
    assert report["format"] == "ag_news"
    assert frame["text"].tolist() == ["Title desc it's", "Two lines x", "T d"]
    assert (report["lines"], report["header_lines"], report["blank_lines"], report["records"]) == (5, 0, 1, 3)


def _corrupt(lines: list[str], rng: random.Random) -> tuple[list[str], int, int]:
    """Random corruptions that keep the framing; returns (lines, data records, blank lines)."""
    lines = list(lines)
    for i in rng.sample(range(len(lines)), rng.randint(1, 8)):  # distinct rows' content
        text, label = lines[i].rsplit(",", 1)
        lines[i] = rng.choice([
            f"{text},{label},extra", f"{text},nine", f"\udcff{text},{label}", f"\x00{text},{label}",
            f'"  ",{label}', "z" * (LIMIT + 1) + f",{label}", f'"two\nlines, quoted",{label}', f'"{text}",{label}',
        ])
    for i in rng.sample(range(len(lines)), rng.randint(0, 5)):  # CR LF line ends on some rows
        lines[i] += "\r"
    n_records = len(lines)
    n_blank = rng.randint(0, 5)
    for _ in range(n_blank):
        lines.insert(rng.randrange(len(lines) + 1), rng.choice(["", "   ", "\t", "\r"]))
    return lines, n_records, n_blank


@fault(2, "40 random corruptions of a headed CSV (extra fields, bad labels, bad bytes, NUL, empty and "
       "over-long text, blank lines, CR, multi-line fields)",
       "every time: records = rows written, kept + dropped = records, lines add up")
def test_random_corruptions_account_for_every_record(workdir: Path) -> None:
    rng = random.Random(12)
    for trial in range(40):
        lines, n_records, n_blank = _corrupt(headed(60), rng)
        write_lines("train.csv", lines)
        try:
            frame, report = read(max_bad_fraction=0.99)
        except data.DataError as error:
            assert "no data rows" in str(error) or "rows are bad" in str(error), (trial, error)
            continue
        assert report["records"] == n_records, trial
        assert report["blank_lines"] == n_blank, trial
        assert report["rows_kept"] == len(frame)
        assert_accounted(report)
        assert report["lines"] == report["header_lines"] + report["blank_lines"] + n_records + sum(
            line.count("\n") for line in lines), trial


@fault(2, "a stray quote put at the start of a random field of a file with quoted fields, 25 times",
       "every time: error naming the line where it was put")
def test_random_stray_quotes_name_their_line(workdir: Path) -> None:
    rng = random.Random(2)
    base = [f'"text {i}, with a comma",{i % 4}' if i % 3 == 0 else f"plain {i},{i % 4}" for i in range(80)]
    for _ in range(25):
        lines = list(base)
        i = rng.choice([k for k in range(80) if k % 3])  # an unquoted row
        field = rng.randrange(2)
        parts = lines[i].split(",")
        parts[field] = '"' + parts[field]
        lines[i] = ",".join(parts)
        write_lines("train.csv", lines)
        with pytest.raises(data.DataError, match=rf"^train\.csv: line {i + 2}: "):
            read()


# ------------------------------------------------------------------------------------------- parquet


@pytest.mark.parametrize(("column", "type_name", "row"), [
    pytest.param(pa.array([None, 5, 6]), "int64", 2,
                 marks=fault(2, "a parquet `text` column of integers (first row missing)",
                             "error: train.parquet: text column 'text' holds int64 values, not strings "
                             "(first at row 2)")),
    pytest.param(pa.array([True, False, True]), "bool", 1,
                 marks=fault(2, "a parquet `text` column of booleans",
                             "error: ... holds bool values ... (first at row 1)")),
    pytest.param(pa.array([{"a": "x"}, {"a": "y"}, None]), "struct<a: string>", 1,
                 marks=fault(2, "a parquet `text` column of structs", "error: ... holds struct<...> values ...")),
    pytest.param(pa.array([1.5, 2.5, 3.5]), "double", 1,
                 marks=fault(2, "a parquet `text` column of floats", "error: ... holds double values ...")),
])
def test_parquet_text_columns_that_are_not_strings(workdir: Path, column, type_name: str, row: int) -> None:
    pq.write_table(pa.table({"text": column, "label": [0, 1, 2]}), "train.parquet")
    cfg = data_cfg(source="parquet", train_path="train.parquet", test_path="train.parquet")
    with pytest.raises(data.DataError, match=rf"^train\.parquet: text column 'text' holds {type_name} values, "
                                             rf"not strings \(first at row {row}\)"):
        data.read_parquet(Path("train.parquet"), cfg, "data.train_path")


@fault(0, "a parquet file with string, binary, dictionary and missing text values",
       "read; missing text is empty_text; records = kept + dropped")
def test_parquet_string_like_columns_are_accepted(workdir: Path) -> None:
    table = pa.table({
        "title": pa.array(["a", None, "c", "d"]).dictionary_encode(),
        "description": pa.array([b"x", b"y", None, b"\xff"], type=pa.binary()),
        "label": [0, 1, 2, 3],
    })
    pq.write_table(table, "train.parquet")
    cfg = data_cfg(source="parquet", train_path="train.parquet", test_path="train.parquet", max_bad_fraction=0.5)
    frame, report = data.read_parquet(Path("train.parquet"), cfg, "data.train_path")
    assert frame["text"].tolist() == ["a x", "y", "c"]
    assert report["dropped_rows"] == {"invalid_utf8": [4]}
    assert_accounted(report)


@fault(0, "a Hub/sample frame whose text holds a list in one row", "error naming the source, column and row")
def test_frame_text_that_is_not_a_string(workdir: Path) -> None:
    frame = pd.DataFrame({"text": ["fine", ["not", "text"]], "label": [0, 1]})
    with pytest.raises(data.DataError, match=r"^hub \[train\]: text column 'text' holds a list at row 2, not a string"):
        data._frame_rows(frame, data_cfg(), "hub [train]")


# ------------------------------------------------------------------------------- one normalisation (15)


AG_EXAMPLES = {
    "the street's shrinking\\band of optimists": "the street's shrinking band of optimists",
    "worth \\$36bn, it#39;s said. quot;Quoted. quot; AT amp;T \\\\Next": 'worth $36bn, it\'s said."Quoted." AT&T Next',
    "as  quot;opt-out? quot; (two spaces)": 'as "opt-out?" (two spaces)',
    "Q3 #151; up #36;5 caf#233;": "Q3 \u2014 up $5 caf\u00e9",
    "&lt;b&gt;bold&lt;/b&gt; &amp;amp; &#x27;x&#39;": "<b>bold</b> & 'x'",
    "  tabs\tand\nnewlines\u00a0nbsp&nbsp;end  ": "tabs and newlines nbsp end",
}


@fault(15, "AG News escapes (`#39;`, ` quot;`, `\\$`, backslash breaks, HTML entities) in text to train on or serve",
       "normalize_text undoes them the same way for every source and every serving path")
def test_normalize_text_undoes_ag_news_escapes() -> None:
    assert {raw: normalize_text(raw) for raw in AG_EXAMPLES} == AG_EXAMPLES


@fault(0, "text that only looks like an escape (`issue #12;`, `#65;`, `AT&T`, `&copy 2004`, `R&D;`)",
       "left as typed")
def test_normalize_text_leaves_look_alikes() -> None:
    for text in ("issue #12; closed", "code #65; here", "AT&T", "&copy 2004", "R&D; x", "50% off; now", "x;y"):
        assert normalize_text(text) == text


@fault(15, "normalize_text on 20,000 random strings built from escape fragments, and on nested escapes",
       "idempotent: normalize(normalize(x)) == normalize(x); linear time on 200 KB of nested `&amp;amp;...`")
def test_normalize_text_is_idempotent() -> None:
    rng = random.Random(15)
    pieces = list("&#;\\$ \t\n\u00a0qutoamplgnbsx039") + ["quot;", " amp;", "#39;", "&#", "#92;", "&#59;", "nbsp;"]
    for _ in range(20_000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 20)))
        once = normalize_text(text)
        assert normalize_text(once) == once, repr(text)
        assert once == once.strip() and "  " not in once and "\\" not in once
    nested = "&amp;" + "amp;" * 50_000 + "quot;"
    assert normalize_text(nested) == '"'


@fault(15, "the same raw text prepared from a headed CSV, a parquet file and an AG News CSV",
       "identical prepared text, equal to normalize_text of the raw text (what serving applies)")
def test_every_source_prepares_what_serving_normalizes(workdir: Path) -> None:
    raw = "Stocks\\band  it#39;s  quot;up quot; \\$5"
    buffer = io.StringIO(newline="")
    csv.writer(buffer).writerows([["text", "label"], [raw, 1]])
    Path("headed.csv").write_text(buffer.getvalue())
    Path("ag.csv").write_text(f'"2","{raw}",""\n')
    pq.write_table(pa.table({"text": [raw], "label": [1]}), "train.parquet")
    texts = [
        read("headed.csv")[0]["text"][0],
        read("ag.csv")[0]["text"][0],
        data.read_parquet(Path("train.parquet"), data_cfg(source="parquet", train_path="train.parquet",
                                                        test_path="train.parquet"), "data.train_path")[0]["text"][0],
    ]
    assert texts == [normalize_text(raw)] * 3
    assert texts[0] == "Stocks band it's \"up\" $5"


@fault(0, "importing the text normalisation into a serving process",
       "standard library only: no pandas, numpy, torch, pyarrow or onnxruntime loaded")
def test_text_module_imports_nothing_heavy() -> None:
    # inference imports textrnn.text; it must stay a standard-library module.
    code = ("import sys, textrnn.text; "
            "print(sorted({'pandas', 'numpy', 'torch', 'pyarrow', 'onnxruntime'} & set(sys.modules)))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stdout + result.stderr
