"""Write the README's Reliability table from the fault suite's marks (tests/fault_kit.py `fault`).

    python tests/reliability.py          # rewrite the table between the README markers
    python tests/reliability.py --check  # exit 1 if the README is not what the marks say

The rows are collected by pytest itself (every test marked `fault`, parametrised cases counted one by
one), so the table lists exactly the cases `make test` runs; tests/code/test_reliability_readme.py fails when
the README falls behind.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
START, END = "<!-- reliability:start -->", "<!-- reliability:end -->"
ISSUE_ITEMS = 15  # the reproductions numbered in issue 12


class _Collector:
    def __init__(self) -> None:
        self.rows: list[dict[str, object]] = []

    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        for item in items:
            mark = item.get_closest_marker("fault")
            if mark is not None:
                self.rows.append({**mark.kwargs, "test": item.nodeid})


def collect() -> list[dict[str, object]]:
    """Every fault-marked test case as {item, case, outcome, kept, test}, in file order."""
    collector = _Collector()
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = pytest.main(["--collect-only", "-q", "-p", "no:cacheprovider", str(ROOT / "tests")], plugins=[collector])
    if code not in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
        raise SystemExit(f"collection failed ({code}):\n{printed.getvalue()[-3000:]}")
    return collector.rows


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render(rows: list[dict[str, object]]) -> str:
    """The markdown between the markers: a summary line and one table row per case, by issue item."""
    rows = sorted(rows, key=lambda row: (int(row["item"]) or ISSUE_ITEMS + 1, str(row["test"])))
    items = sorted({int(row["item"]) for row in rows if 1 <= int(row["item"]) <= ISSUE_ITEMS})
    kept = sum(1 for row in rows if row.get("kept"))
    lines = [
        f"{len(rows)} cases tried, covering {len(items)} of issue 12's {ISSUE_ITEMS} reproductions "
        f"(item 0: cases beyond them). Every case passes in `make test`; in the {kept} cases where outputs "
        "existed before the fault, the test asserts they are byte-for-byte intact afterwards (column *kept*).",
        "",
        "| # | what the test does | what the user gets | kept |",
        "|---:|---|---|---|",
    ]
    # Parametrised cases share their mark: one table row each, with how many cases it stands for.
    counted: dict[tuple[object, ...], int] = {}
    for row in rows:
        key = (row["item"], row["case"], row["outcome"], row.get("kept") or "-")
        counted[key] = counted.get(key, 0) + 1
    lines += [
        f"| {item or '+'} | {_cell(case)}{f' ({count} cases)' if count > 1 else ''} | {_cell(outcome)} | {_cell(kept)} |"
        for (item, case, outcome, kept), count in counted.items()
    ]
    return "\n".join(lines)


def replace_section(readme: str, body: str) -> str:
    head, start, rest = readme.partition(START)
    _, end, tail = rest.partition(END)
    if not start or not end:
        raise SystemExit(f"{README}: no {START} ... {END} markers")
    return f"{head}{START}\n{body}\n{END}{tail}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the README is out of date")
    args = parser.parse_args()
    current = README.read_text(encoding="utf-8")
    wanted = replace_section(current, render(collect()))
    if args.check:
        if wanted != current:
            print(f"{README}: Reliability table is out of date; run python tests/reliability.py", file=sys.stderr)
            return 1
        return 0
    README.write_text(wanted, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
