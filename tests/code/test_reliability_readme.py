"""The README's Reliability table is exactly what the fault suite's marks say (tests/reliability.py)."""

from __future__ import annotations

import subprocess
import sys

from fault_kit import REPO_ROOT


def test_readme_reliability_table_is_current() -> None:
    result = subprocess.run(
        [sys.executable, "tests/reliability.py", "--check"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
