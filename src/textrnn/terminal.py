"""The consoles textrnn prints to: rich, with no markup, and not cut to 80 columns when piped."""

from __future__ import annotations

import sys

from rich.console import Console

# Piped or redirected, rich assumes 80 columns and cuts tables and progress lines to fit (`textrnn compare >
# table.txt`); there a line keeps its natural width instead.
PIPED_WIDTH = 10_000


def console(stderr: bool = False) -> Console:
    """A console on stdout (or stderr) that reads nothing as markup or highlighting: what textrnn prints
    holds user text, paths and lists, in which rich would read `[/]` or `[bold]` (and fail on some)."""
    stream = sys.stderr if stderr else sys.stdout
    return Console(stderr=stderr, markup=False, highlight=False, width=None if stream.isatty() else PIPED_WIDTH)
