"""The README's benchmark tables are the ones `bench/readme.py` writes from bench/results/*.json.

The benchmarks themselves are not run here (they take tens of minutes and need TensorFlow); this keeps a
hand edit of a figure, or results committed without the README, from going unnoticed.
"""

from __future__ import annotations

import subprocess
import sys

from conftest import REPO_ROOT

README_SCRIPT = REPO_ROOT / "bench" / "readme.py"


def run_readme(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(README_SCRIPT), *args], capture_output=True, text=True, cwd=REPO_ROOT)


def test_readme_tables_match_the_committed_results() -> None:
    finished = run_readme("--check")
    assert finished.returncode == 0, "README.md's benchmark block is stale: run `.venv/bin/python bench/readme.py`"


def test_a_changed_figure_is_detected(tmp_path) -> None:
    readme = tmp_path / "README.md"
    original = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    start = original.index("<!-- bench:start")
    # Edit one character inside the generated block: --check must notice, and a rewrite must restore it.
    position = original.index("|", start)
    readme.write_text(original[:position] + "x" + original[position:], encoding="utf-8")
    assert run_readme("--readme", str(readme), "--check").returncode == 1
    assert run_readme("--readme", str(readme)).returncode == 0
    assert readme.read_text(encoding="utf-8") == original


def test_a_readme_without_the_block_is_a_one_line_error(tmp_path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("# no benchmarks here\n", encoding="utf-8")
    finished = run_readme("--readme", str(readme))
    assert finished.returncode != 0
    assert str(readme) in finished.stderr and len(finished.stderr.strip().splitlines()) == 1


def test_the_quality_tables_difference_to_bag_is_paired_by_seed() -> None:
    """Seed for seed, not the difference of two means: a variant that beats `bag` by the same amount in every
    seed has no spread, however much both move between seeds."""
    sys.path.insert(0, str(README_SCRIPT.parent))
    try:
        from readme import paired_difference
    finally:
        sys.path.remove(str(README_SCRIPT.parent))
    assert paired_difference([0.90, 0.80, 0.85], [0.88, 0.78, 0.83]) == "+0.020 ± 0.000"
    assert paired_difference([0.89, 0.90, 0.88], [0.88, 0.88, 0.88]) == "+0.010 ± 0.006"
