"""Unit tests for textrnn.data: formats, validation, the split, atomic outputs, and the Hub source offline.

Every input file is written here under tmp_path; nothing touches the network.
"""

from __future__ import annotations

import csv
import io
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from textrnn import data
from textrnn.config import Config, from_dict
from textrnn.files import sha256_file
from textrnn.text import normalize_text

from conftest import REPO_ROOT

REPO = REPO_ROOT
CLASSES = ("World", "Sports", "Business", "Sci/Tech")


# -------------------------------------------------------------------------------------------- helpers


def make_cfg(tmp_path: Path, seed: int = 7, prepared: str = "prepared", **data_keys) -> Config:
    """A config whose outputs live under tmp_path; `data_keys` go into the `data` section."""
    return from_dict({
        "seed": seed,
        "paths": {"prepared": str(tmp_path / prepared), "cache": str(tmp_path / "cache")},
        "data": {"source": "csv", **data_keys},
    })


def csv_bytes(rows: list[list[str]]) -> bytes:
    """Rows as a fully quoted CSV (AG News style), UTF-8."""
    buffer = io.StringIO(newline="")
    csv.writer(buffer, quoting=csv.QUOTE_ALL, lineterminator="\n").writerows(rows)
    return buffer.getvalue().encode("utf-8")


def ag_rows(n: int) -> list[list[str]]:
    """`n` valid AG News rows, classes 1..4 in turn, each text unique."""
    return [[str(i % 4 + 1), f"Title {i}", f"words of row {i} " + "filler " * (i % 7)] for i in range(n)]


def write(path: Path, payload: bytes) -> Path:
    path.write_bytes(payload)
    return path


def ag_cfg(tmp_path: Path, train: bytes, test: bytes | None = None, **data_keys) -> Config:
    train_path = write(tmp_path / "train.csv", train)
    test_path = write(tmp_path / "test.csv", test if test is not None else csv_bytes(ag_rows(20)))
    return make_cfg(tmp_path, train_path=str(train_path), test_path=str(test_path), **data_keys)


def tree_hashes(directory: Path) -> dict[str, str]:
    return {path.name: sha256_file(path) for path in sorted(directory.iterdir())}


# -------------------------------------------------------------------------------------------- formats


def test_ag_news_format_joins_title_and_description_and_undoes_escapes(tmp_path):
    rows = [
        ["3", "Markets Edge Up", "Brokers said - Traders, the street's shrinking\\band of optimists"],
        ["1", "Deal", "worth \\$36bn, it#39;s said. quot;Quoted. quot; AT amp;T \\\\Next paragraph"],
        ["4", "Title only", ""],
        ["2", "Multi\nline", "desc"],
    ]
    cfg = ag_cfg(tmp_path, csv_bytes(rows))
    train, _, report = data.load_source(cfg.data, cfg.seed, cfg.paths.cache)

    assert train["text"].tolist() == [
        "Markets Edge Up Brokers said - Traders, the street's shrinking band of optimists",
        'Deal worth $36bn, it\'s said."Quoted." AT&T Next paragraph',
        "Title only",
        "Multi line desc",
    ]
    assert train["label"].tolist() == [2, 0, 3, 1]
    assert train["label"].dtype == "int64"
    assert report["inputs"]["train"]["format"] == "ag_news"


def test_headed_csv_accepts_label_indices_and_class_names(tmp_path):
    text = 'text,label\nfirst text,0\n"second, quoted\ntext",Sports\nthird,3\nfourth, Business \n'
    cfg = ag_cfg(tmp_path, text.encode())
    train, _, report = data.load_source(cfg.data, cfg.seed, cfg.paths.cache)

    assert train["text"].tolist() == ["first text", "second, quoted text", "third", "fourth"]
    assert train["label"].tolist() == [0, 1, 3, 2]
    assert report["inputs"]["train"]["format"] == "headed_csv"


def test_headed_csv_joins_text_fields_and_normalizes_like_serving(tmp_path):
    # One normalisation for every source and for serving (textrnn.text): a headed CSV's backslashes and
    # entities are undone exactly as AG News' are, so train and serve see the same text.
    text = "label,title,description\n1,Cup final,won 2-1 \\o/ it#39;s\n2,Shares,rose \\$5\n"
    cfg = ag_cfg(tmp_path, text.encode())
    train, _, _ = data.load_source(cfg.data, cfg.seed, cfg.paths.cache)
    assert train["text"].tolist() == ["Cup final won 2-1 o/ it's", "Shares rose $5"]
    assert train["text"].map(normalize_text).tolist() == train["text"].tolist()


def test_headed_csv_with_bom_and_crlf(tmp_path):
    cfg = ag_cfg(tmp_path, b"\xef\xbb\xbftext,label\r\nalpha,0\r\nbeta,1\r\n")
    train, _, _ = data.load_source(cfg.data, cfg.seed, cfg.paths.cache)
    assert train["text"].tolist() == ["alpha", "beta"]


def test_parquet_source(tmp_path):
    train = pd.DataFrame({"text": ["a b", " c  d ", "e"], "label": [0, "Sci/Tech", "1"]}).astype({"label": str})
    test = pd.DataFrame({"title": ["t1", "t2"], "description": ["d1", None], "label": [2, 3]})
    train.to_parquet(tmp_path / "train.parquet")
    test.to_parquet(tmp_path / "test.parquet")
    cfg = make_cfg(tmp_path, source="parquet", train_path=str(tmp_path / "train.parquet"),
                   test_path=str(tmp_path / "test.parquet"))

    train_out, test_out, report = data.load_source(cfg.data, cfg.seed, cfg.paths.cache)

    assert train_out["text"].tolist() == ["a b", "c d", "e"]
    assert train_out["label"].tolist() == [0, 3, 1]
    assert test_out["text"].tolist() == ["t1 d1", "t2"]
    assert test_out["label"].tolist() == [2, 3]
    assert report["inputs"]["test"]["sha256"] == sha256_file(tmp_path / "test.parquet")


def test_sample_source(tmp_path):
    cfg = make_cfg(tmp_path, source="sample", sample={"train_rows": 200, "test_rows": 40})
    report = data.prepare(cfg)
    assert report["rows"]["train"] + report["rows"]["val"] == 200
    assert report["rows"]["test"] == 40
    assert report["source"] == "sample"
    assert set(data.read_split(cfg.paths.prepared, "train")["label"]) == {0, 1, 2, 3}


# ---------------------------------------------------------------------------------------- bad inputs


def _bad_at(rows: list[list[str]], numbers: list[int], make_bad) -> list[list[str]]:
    return [make_bad(row) if i + 1 in numbers else row for i, row in enumerate(rows)]


def _ag_with_bad_rows(make_bad, numbers: list[int], n: int = 100) -> bytes:
    return csv_bytes(_bad_at(ag_rows(n), numbers, make_bad))


def _non_utf8(numbers: list[int]) -> bytes:
    lines = csv_bytes(ag_rows(100)).split(b"\n")
    for number in numbers:
        lines[number - 1] = lines[number - 1].replace(b"Title", b"Titl\xe9\xff")
    return b"\n".join(lines)


BAD_INPUTS = {
    "wrong field count": (
        _ag_with_bad_rows(lambda row: row[:2], [3, 7, 9]),
        "train.csv: 3 of 100 rows are bad (> data.max_bad_fraction 0.01): wrong field count at rows 3, 7, 9",
    ),
    "label out of range": (
        _ag_with_bad_rows(lambda row: ["5", *row[1:]], [2, 4]).replace(b'"4","Title 7"', b'"0","Title 7"'),
        "train.csv: 3 of 100 rows are bad (> data.max_bad_fraction 0.01): label not in data.classes at rows 2, 4, 8",
    ),
    "empty texts": (
        _ag_with_bad_rows(lambda row: [row[0], " ", "\\"], [1, 10, 20, 30, 40, 50, 60]),
        "7 of 100 rows are bad (> data.max_bad_fraction 0.01): empty text at rows 1, 10, 20, 30, 40 ...",
    ),
    "non-UTF-8 bytes": (
        _non_utf8([4, 8]),
        "train.csv: 2 of 100 rows are bad (> data.max_bad_fraction 0.01): invalid UTF-8 at rows 4, 8",
    ),
    "mixed reasons": (
        _ag_with_bad_rows(lambda row: ["x", *row[1:]], [5]).replace(b'"Title 9",', b""),
        "2 of 100 rows are bad (> data.max_bad_fraction 0.01): wrong field count at rows 10; "
        "label not in data.classes at rows 5",
    ),
    "unrecognised format": (
        b"name,category\nfoo,1\n",
        "train.csv: cannot tell the CSV format from row 1",
    ),
    "runaway quote": (
        b'text,label\na,0\n"' + b"x" * 200_000 + b"\n",
        "train.csv: line 3: a quoted field opened in the row starting here never closes (it runs to the end of "
        "the file, line 3;",
    ),
    "empty file": (b"", "train.csv: file is empty (data.train_path)"),
    "no data rows": (b"text,label\n", "train.csv: no data rows"),
    "no text column": (b"body,label\nfoo,1\n", "train.csv: no text column: expected 'text' or all of"),
}


@pytest.fixture
def good_prepared(tmp_path):
    """A prepared dir from good data; returns (config to reuse its paths, hashes of its files)."""
    cfg = ag_cfg(tmp_path, csv_bytes(ag_rows(40)))
    data.prepare(cfg)
    return cfg, tree_hashes(cfg.paths.prepared)


def _assert_untouched(cfg: Config, hashes: dict[str, str]) -> None:
    assert tree_hashes(cfg.paths.prepared) == hashes
    # No staging or backup directory is left beside the output.
    assert [p.name for p in cfg.paths.prepared.parent.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize("case", BAD_INPUTS, ids=list(BAD_INPUTS))
def test_bad_input_fails_with_one_line_and_leaves_outputs_alone(tmp_path, good_prepared, case):
    payload, expected = BAD_INPUTS[case]
    good_cfg, hashes = good_prepared
    write(tmp_path / "train.csv", payload)

    with pytest.raises(data.DataError) as caught:
        data.prepare(good_cfg)

    message = str(caught.value)
    assert expected in message
    assert "\n" not in message
    _assert_untouched(good_cfg, hashes)


def test_missing_file_names_the_path_and_key(tmp_path, good_prepared):
    good_cfg, hashes = good_prepared
    cfg = make_cfg(tmp_path, train_path=str(good_cfg.data.train_path), test_path=str(tmp_path / "nope.csv"))
    with pytest.raises(data.DataError, match=r"^.*nope\.csv: file not found \(data\.test_path\)$"):
        data.prepare(cfg)
    _assert_untouched(good_cfg, hashes)


def test_bad_input_creates_no_output_dir(tmp_path):
    cfg = ag_cfg(tmp_path, _non_utf8([1, 2, 3]))
    with pytest.raises(data.DataError):
        data.prepare(cfg)
    assert not cfg.paths.prepared.exists()


def test_bad_rows_within_threshold_are_dropped_and_counted(tmp_path):
    rows = _bad_at(ag_rows(200), [5], lambda row: [row[0], "", ""])
    rows = _bad_at(rows, [9], lambda row: ["9", *row[1:]])
    cfg = ag_cfg(tmp_path, csv_bytes(rows))  # 2 of 200 bad = max_bad_fraction 0.01: allowed

    report = data.prepare(cfg)

    assert report["dropped"]["train"] == {"field_too_long": 0, "invalid_utf8": 0, "nul_byte": 0,
                                          "wrong_field_count": 0, "bad_label": 1, "empty_text": 1}
    inputs = report["inputs"]["train"]
    assert inputs["rows_read"] == inputs["records"] == 200
    assert inputs["rows_kept"] == 198
    assert inputs["dropped_rows"] == {"bad_label": [9], "empty_text": [5]}
    assert (inputs["lines"], inputs["header_lines"], inputs["blank_lines"]) == (200, 0, 0)
    assert report["rows"]["train"] + report["rows"]["val"] == 198
    assert json.loads((cfg.paths.prepared / "report.json").read_text()) == report


def test_row_numbers_count_records_not_lines(tmp_path):
    # Row 2's quoted text spans three lines; the bad label is on row 3 (line 5).
    text = 'text,label\n"one\ntwo\nthree",0\nfine,7\nok,1\n'
    cfg = ag_cfg(tmp_path, text.encode(), max_bad_fraction=0.0)
    with pytest.raises(data.DataError, match=r"label not in data.classes at rows 3$"):
        data.load_source(cfg.data, cfg.seed, cfg.paths.cache)


# -------------------------------------------------------------------------------------------- split


def _unbalanced_rows() -> list[list[str]]:
    counts = {1: 53, 2: 31, 3: 17, 4: 9}
    return [[str(label), f"class {label} item {i}", "text"] for label, n in counts.items() for i in range(n)]


def test_split_is_stratified_and_accounts_for_every_row(tmp_path):
    rows = _unbalanced_rows()
    cfg = ag_cfg(tmp_path, csv_bytes(rows), val_fraction=0.2)
    report = data.prepare(cfg)
    train = data.read_split(cfg.paths.prepared, "train")
    val = data.read_split(cfg.paths.prepared, "val")

    assert len(val) == round(len(rows) * 0.2)
    for label, n in pd.Series([int(r[0]) - 1 for r in rows]).value_counts().items():
        assert abs((val["label"] == label).sum() - n * 0.2) <= 1
    assert set(train["text"]).isdisjoint(val["text"])
    assert sorted([*train["text"], *val["text"]]) == sorted(f"{r[1]} {r[2]}" for r in rows)
    assert report["rows_per_class"]["val"] == {name: int((val["label"] == i).sum()) for i, name in enumerate(CLASSES)}


def test_prepare_is_byte_identical_for_the_same_config(tmp_path):
    payload = csv_bytes(_unbalanced_rows())
    first = ag_cfg(tmp_path, payload)
    data.prepare(first)
    second = make_cfg(tmp_path, prepared="again", train_path=str(first.data.train_path),
                      test_path=str(first.data.test_path))
    data.prepare(second)
    assert tree_hashes(first.paths.prepared) == tree_hashes(second.paths.prepared)

    other_seed = make_cfg(tmp_path, seed=8, prepared="seed8", train_path=str(first.data.train_path),
                          test_path=str(first.data.test_path))
    data.prepare(other_seed)
    assert sha256_file(other_seed.paths.prepared / "val.parquet") != sha256_file(first.paths.prepared / "val.parquet")


def test_split_too_small_for_validation(tmp_path):
    cfg = ag_cfg(tmp_path, csv_bytes(ag_rows(3)), val_fraction=0.1)
    with pytest.raises(data.DataError, match="too few for a validation split"):
        data.prepare(cfg)


# ------------------------------------------------------------------------------------ report, read_split


def test_report_records_inputs_quantiles_and_classes(tmp_path):
    cfg = ag_cfg(tmp_path, csv_bytes(ag_rows(80)))
    report = data.prepare(cfg)

    assert report["source"] == "csv"
    assert report["classes"] == list(CLASSES)
    assert report["inputs"]["train"]["sha256"] == sha256_file(cfg.data.train_path)
    assert report["inputs"]["test"]["sha256"] == sha256_file(cfg.data.test_path)
    assert set(report["rows_per_class"]["train"]) == set(CLASSES)
    for split in data.SPLITS:
        quantiles = report["token_length_quantiles"][split]
        assert list(quantiles) == ["p0", "p5", "p50", "p95", "p100"]
        assert quantiles["p0"] <= quantiles["p50"] <= quantiles["p100"]
    lengths = data.read_split(cfg.paths.prepared, "test")["text"].str.split().str.len()
    assert report["token_length_quantiles"]["test"]["p100"] == lengths.max()


def test_read_split_round_trip_and_errors(tmp_path):
    cfg = ag_cfg(tmp_path, csv_bytes(ag_rows(40)))
    data.prepare(cfg)
    test = data.read_split(cfg.paths.prepared, "test")
    assert list(test.columns) == ["text", "label"]
    assert test["label"].dtype == "int64"
    assert len(test) == 20

    with pytest.raises(data.DataError, match="unknown split 'dev'"):
        data.read_split(cfg.paths.prepared, "dev")
    with pytest.raises(data.DataError, match=r"train\.parquet: prepared split not found"):
        data.read_split(tmp_path / "elsewhere", "train")


@pytest.mark.parametrize(
    ("value", "expected"),
    [(0, 0), (3, 3), (4, None), (-1, None), ("2", 2), (" Sports ", 1), ("sports", None), (2.0, 2), (2.5, None),
     (float("nan"), None), (True, None), (None, None), ("²", None)],
)
def test_parse_label(value, expected):
    assert data.parse_label(value, CLASSES) == expected


# ----------------------------------------------------------------------------------------- Hub source


def _run_prepare_in_subprocess(tmp_path: Path, env_changes: dict[str, str | None], hf_name: str,
                               classes: tuple[str, ...] = CLASSES) -> subprocess.CompletedProcess:
    """Run prepare() for source=hf in a fresh interpreter: huggingface_hub reads its env only on import."""
    cfg = {"paths": {"prepared": str(tmp_path / "prepared"), "cache": str(tmp_path / "cache")},
           "data": {"source": "hf", "hf_name": hf_name, "classes": list(classes)}}
    script = (
        "import json, sys\n"
        "from textrnn import config, data\n"
        f"cfg = config.from_dict(json.loads({json.dumps(json.dumps(cfg))}))\n"
        "try:\n"
        "    print(json.dumps(data.prepare(cfg)))\n"
        "except data.DataError as error:\n"
        "    print(error)\n"
        "    sys.exit(3)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    for key, value in env_changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)


def _hub_name_resolves() -> bool:
    try:
        socket.getaddrinfo("huggingface.co", 443)
    except OSError:
        return False
    return True


@pytest.mark.parametrize(
    "env_changes",
    [
        {"HF_HUB_OFFLINE": None},  # this machine has no Hub access: the real failure
        {"HF_HUB_OFFLINE": None, "HF_ENDPOINT": "http://127.0.0.1:9"},  # unreachable even where online
        {"HF_HUB_OFFLINE": "1"},  # offline mode with nothing cached
    ],
    ids=["no-network", "unreachable-endpoint", "offline-mode"],
)
def test_hf_offline_fails_fast_with_one_line(tmp_path, env_changes):
    if env_changes == {"HF_HUB_OFFLINE": None} and _hub_name_resolves():
        pytest.skip("huggingface.co resolves here; the unreachable-endpoint case covers the failure")
    started = time.monotonic()
    result = _run_prepare_in_subprocess(tmp_path, env_changes, "fancyzhx/ag_news")
    elapsed = time.monotonic() - started

    assert result.returncode == 3, result.stderr[-2000:]
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("cannot download fancyzhx/ag_news from the Hugging Face Hub (offline?")
    assert "use data.source=csv with data.train_path/data.test_path, or data.source=sample" in lines[0]
    assert elapsed < 30
    assert not (tmp_path / "prepared").exists()


def test_hf_source_reads_a_local_dataset_in_offline_mode(tmp_path):
    # load_dataset also takes a local folder; offline mode skips the Hub probe. This runs the Hub
    # source's own code (splits, AG News unescaping, report) without a network.
    folder = tmp_path / "local_ds"
    folder.mkdir()
    pd.DataFrame({"text": ["it#39;s a\\b", "y"] * 10, "label": [0, 1] * 10}).to_parquet(folder / "train.parquet")
    pd.DataFrame({"text": ["z", "w"], "label": [1, 0]}).to_parquet(folder / "test.parquet")

    result = _run_prepare_in_subprocess(tmp_path, {"HF_HUB_OFFLINE": "1"}, str(folder), classes=("a", "b"))

    assert result.returncode == 0, result.stdout + result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["source"] == "hf"
    assert report["rows"] == {"train": 18, "val": 2, "test": 2}
    assert report["inputs"]["train"]["fingerprint"]
    texts = set(data.read_split(tmp_path / "prepared", "train")["text"])
    assert texts == {"it's a b", "y"}


HUB_ENV_SCRIPT = """
import json, sys
from pathlib import Path
from textrnn import hub
from textrnn.config import DataConfig
from textrnn.data import DataError
try:
    hub.download_splits(DataConfig(source="hf", hf_name="nobody/nothing"), Path(sys.argv[1]))
except DataError:
    pass  # offline, nothing cached: only the environment it set matters here
import huggingface_hub
from huggingface_hub import constants
print(json.dumps({"token": huggingface_hub.get_token(), "hub_cache": constants.HF_HUB_CACHE}))
"""


@pytest.mark.parametrize("own_home", [False, True], ids=["default-home", "own-HF_HOME"])
def test_the_hub_cache_stays_in_the_project_and_the_users_token_is_still_found(tmp_path, own_home):
    home = tmp_path / "home"
    hf_home = tmp_path / "my-hf" if own_home else home / ".cache" / "huggingface"
    hf_home.mkdir(parents=True)
    (hf_home / "token").write_text("hf_users_own_token")
    env = {key: value for key, value in os.environ.items() if not key.startswith("HF_")}
    env.update(HOME=str(home), HF_HUB_OFFLINE="1", **({"HF_HOME": str(hf_home)} if own_home else {}))
    done = subprocess.run([sys.executable, "-c", HUB_ENV_SCRIPT, str(tmp_path / "cache")], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["token"] == "hf_users_own_token"
    expected_cache = hf_home / "hub" if own_home else tmp_path / "cache" / "hf" / "hub"
    assert Path(seen["hub_cache"]).resolve() == expected_cache.resolve()
