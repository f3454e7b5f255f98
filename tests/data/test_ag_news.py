"""Data expectations on the real AG News rows in ../shared/data/ag_news (skipped where absent).

The file's licence forbids committing it, so it is read in place: `TEXTRNN_AG_NEWS_DIR`, else
`<repo>/../shared/data/ag_news`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path

import pytest

from textrnn import data
from textrnn.config import from_dict
from textrnn.files import sha256_file

from conftest import REPO_ROOT

REPO = REPO_ROOT
AG_NEWS_DIR = Path(os.environ.get("TEXTRNN_AG_NEWS_DIR", REPO.parent / "shared" / "data" / "ag_news"))
AG_NEWS_TRAIN = AG_NEWS_DIR / "train_head_10429.csv"
N_ROWS = 10_429
# The shared file's README gives its class counts (classes 1-4): 2,630 / 2,452 / 2,594 / 2,753.
CLASS_COUNTS = {0: 2630, 1: 2452, 2: 2594, 3: 2753}
FIRST_TEXT_SHA256 = "e3ec37493278ecb793bdb369ffa11e7c8dd0d6a8d6111b4b4b7f89fb721621ee"

pytestmark = pytest.mark.skipif(not AG_NEWS_TRAIN.is_file(), reason=f"AG News rows not found at {AG_NEWS_TRAIN}")


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
    """source=csv with the shared file as both train and test; outputs in a temporary folder."""
    out = tmp_path_factory.mktemp("ag_news")
    with contextlib.chdir(out):  # outputs must lie inside the working directory
        return from_dict({
            "paths": {name: str(out / name) for name in ("prepared", "encoded", "cache")},
            "data": {"source": "csv", "train_path": str(AG_NEWS_TRAIN), "test_path": str(AG_NEWS_TRAIN)},
        })


@pytest.fixture(scope="module")
def loaded(cfg):
    return data.load_source(cfg.data, cfg.seed, cfg.paths.cache)


def test_parser_reads_every_row_with_the_four_classes(loaded):
    train, test, report = loaded
    assert len(train) == N_ROWS
    assert report["inputs"]["train"]["format"] == "ag_news"
    assert report["inputs"]["train"]["rows_read"] == N_ROWS
    assert sum(report["inputs"]["train"]["dropped"].values()) == 0
    counts = train["label"].value_counts().to_dict()
    assert set(counts) == {0, 1, 2, 3}
    # Plausible for a head of a balanced 4-class split: every class near a quarter of the rows.
    assert all(0.2 < n / N_ROWS < 0.3 for n in counts.values())
    assert counts == CLASS_COUNTS
    assert test["text"].tolist() == train["text"].tolist()


def test_texts_are_clean(loaded):
    texts = loaded[0]["text"]
    assert texts.str.len().min() > 0
    # The scrape's escapes are undone: no backslashes, no '&'-less entities, no double spaces.
    assert not texts.str.contains("\\", regex=False).any()
    assert not texts.str.contains(r"#\d+;|\bquot;", regex=True).any()
    assert not texts.str.contains("  ", regex=False).any()
    # The first row, unescaped, by hash: its text must not be quoted in this repository (licence).
    assert hashlib.sha256(texts[0].encode()).hexdigest() == FIRST_TEXT_SHA256


def test_prepare_on_the_shared_rows(cfg):
    report = data.prepare(cfg)
    assert report["rows"]["train"] + report["rows"]["val"] == N_ROWS
    assert report["rows"]["val"] == round(N_ROWS * cfg.data.val_fraction)
    assert report["rows"]["test"] == N_ROWS
    assert report["inputs"]["train"]["sha256"] == sha256_file(AG_NEWS_TRAIN)
    for split in data.SPLITS:
        assert set(report["rows_per_class"][split]) == {"World", "Sports", "Business", "Sci/Tech"}
        assert min(report["rows_per_class"][split].values()) > 0
    assert report["token_length_quantiles"]["train"]["p50"] > 10
    val = data.read_split(cfg.paths.prepared, "val")
    assert val["label"].value_counts().to_dict() == pytest.approx(
        {label: n * cfg.data.val_fraction for label, n in CLASS_COUNTS.items()}, abs=1
    )


def test_bucketing_removes_nearly_all_padding_at_batch_64(cfg):
    from textrnn.tokens import encode

    data.prepare(cfg)
    at_64 = next(r for r in encode(cfg)["by_batch_size"] if r["batch_size"] == 64)
    assert at_64["padding_efficiency_bucketed"] >= 0.95
    assert at_64["padding_efficiency_random"] < 0.8
