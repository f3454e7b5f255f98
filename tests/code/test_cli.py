"""The `textrnn` command line: the steps end to end, and one-line errors with nothing half-written."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from textrnn.cli import app

from conftest import PARAMS, SMALL_SAMPLE, path_overrides
from fault_kit import cli

runner = CliRunner()


def run(workdir: Path, *args: str, overrides: tuple[str, ...] = ()):
    sets = [a for o in [*SMALL_SAMPLE, *path_overrides(workdir), *overrides] for a in ("--set", o)]
    return runner.invoke(app, [*args, "--params", str(PARAMS), *sets])


def assert_one_line_error(result, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_prepare_encode_train_evaluate_compare(tmp_path: Path) -> None:
    for step in (["prepare"], ["encode"], ["train", "--variant", "bag", "--no-progress"],
                 ["export", "--variant", "bag"], ["evaluate", "--variant", "bag"]):
        result = run(tmp_path, *step, overrides=("train.epochs=1",))
        assert result.exit_code == 0, result.output
    assert "padding efficiency at batch 64" in run(tmp_path, "encode").output
    table = run(tmp_path, "compare")
    assert table.exit_code == 0 and "bag" in table.output and "accuracy" in table.output
    # Piped (a real process whose stdout is not a terminal), a table wider than 80 columns is not cut: the
    # same results under a long variant name keep every column on one line.
    wide = "bag_under_a_name_long_enough_to_push_the_table_well_past_eighty_columns"
    shutil.copytree(tmp_path / "metrics" / "bag", tmp_path / "metrics" / wide)
    overrides = [*SMALL_SAMPLE, *path_overrides(tmp_path), f"variants.{wide}={{cell: bag, embed_dim: 64, hidden: 16, "
                 "layers: 1, bidirectional: false, masked: true, batch_size: 16}"]
    piped = cli(tmp_path, "compare", "--params", str(PARAMS), *(a for o in overrides for a in ("--set", o)))
    row = next(line for line in piped.stdout.splitlines() if wide in line)
    assert "yes" in row and "0.9" in row, piped.stdout  # masked, and the padding efficiency: the last column
    # With --progress each epoch keeps its bar, ending in its validation figures.
    overrides = [*SMALL_SAMPLE, *path_overrides(tmp_path), "train.epochs=2", "train.patience=5"]
    shown = cli(tmp_path, "train", "--variant", "bag", "--progress", "--params", str(PARAMS),
                *(a for o in overrides for a in ("--set", o)))
    bars = [line for line in shown.stdout.splitlines() if line.startswith("bag epoch ")]
    assert [line.split()[2] for line in bars] == ["1/2", "2/2"], shown.stdout
    assert all("samples/s" in line and "val loss" in line and "val acc" in line for line in bars), shown.stdout


def test_unknown_params_key_and_bad_override(tmp_path: Path) -> None:
    assert_one_line_error(run(tmp_path, "prepare", overrides=("train.epochz=2",)), "unknown key 'train.epochz'")
    assert_one_line_error(run(tmp_path, "prepare", overrides=("train.epochs",)), "bad override")
    assert not (tmp_path / "data").exists()


def test_unknown_variant(tmp_path: Path) -> None:
    assert_one_line_error(run(tmp_path, "train", "--variant", "transformer"), "unknown variant 'transformer'")


def test_training_before_encoding_says_what_to_run(tmp_path: Path) -> None:
    assert_one_line_error(run(tmp_path, "train", "--variant", "bag"), "textrnn encode")


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b'"1","ok title","ok text"\n"2","only two"\n' * 10, "wrong field count"),
        (b'"1","ok title","ok text"\n"9","bad","label"\n' * 10, "label"),
        (b'"1","ok title","ok text"\n"2","",""\n' * 10, "empty"),
        (b'"1","ok title","ok text"\n"2","caf\xe9","bytes"\n' * 10, "UTF-8"),
    ],
)
def test_bad_csv_rows_fail_with_one_line_and_keep_previous_outputs(tmp_path: Path, content: bytes, fragment: str) -> None:
    good = tmp_path / "good.csv"
    good.write_bytes(b'"1","ok title","ok text"\n"2","sport title","sport text"\n' * 20)
    bad = tmp_path / "bad.csv"
    bad.write_bytes(content)
    files = lambda train: ("data.source=csv", f"data.train_path={train}", f"data.test_path={good}")  # noqa: E731
    assert run(tmp_path, "prepare", overrides=files(good)).exit_code == 0
    before = {p.name: p.read_bytes() for p in (tmp_path / "data" / "prepared").iterdir()}

    assert_one_line_error(run(tmp_path, "prepare", overrides=files(bad)), str(bad), fragment)
    after = {p.name: p.read_bytes() for p in (tmp_path / "data" / "prepared").iterdir()}
    assert after == before


def test_missing_input_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.csv"
    result = run(tmp_path, "prepare", overrides=("data.source=csv", f"data.train_path={missing}", f"data.test_path={missing}"))
    assert_one_line_error(result, str(missing), "not found")
    assert not (tmp_path / "data" / "prepared").exists()
