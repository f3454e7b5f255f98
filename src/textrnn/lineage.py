"""Lineage by content: every output records the sha256 of each input it read and the config it used;
the step that reads that output checks both before it runs.

A record is plain JSON, stored under the key `lineage` of the output's report (report.json,
lineage.json, train.json, export.json, eval.json) or inside `model.pt`:

    {"inputs": {"data/encoded/train.npz": "<sha256>", ...}, "config": {"seed": 42, ...}}

Input paths are recorded relative to the working directory (outputs always live inside it), so a
workspace can be moved or copied whole and still verify.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from textrnn.errors import TextrnnError
from textrnn.files import MARKER, sha256_file


class LineageError(TextrnnError):
    """An input differs from the one an output was made from; the message names both files."""


def _key(path: Path | str) -> str:
    """`path` as recorded: relative to the working directory when inside it, POSIX separators."""
    path = Path(path)
    absolute = path if path.is_absolute() else Path.cwd() / path
    try:
        return Path(os.path.relpath(absolute, Path.cwd())).as_posix() if absolute.is_relative_to(Path.cwd()) else str(path)
    except ValueError:  # another drive on Windows
        return str(path)


def digests(paths: Iterable[Path | str]) -> dict[str, str]:
    """{recorded path: sha256} for each file in `paths` (which must exist)."""
    return {_key(path): sha256_file(path) for path in paths}


def record(inputs: Iterable[Path | str], config: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The lineage record of an output made from `inputs` with `config` (a JSON-able config slice)."""
    return {"inputs": digests(inputs), "config": dict(config or {})}


def flat(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested mapping as {dotted.key: leaf value}."""
    items: dict[str, Any] = {}
    for key, value in mapping.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping):
            items.update(flat(value, f"{dotted}."))
        else:
            items[dotted] = list(value) if isinstance(value, tuple) else value
    return items


def config_differences(recorded: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """Dotted keys whose values differ between two config slices (sorted; keys on one side only count)."""
    old, new = flat(recorded), flat(current)
    return sorted(key for key in old.keys() | new.keys() if old.get(key, KeyError) != new.get(key, KeyError))


def verify_inputs(lineage: Mapping[str, Any] | None, recorded_in: Path | str, only: Iterable[Path | str] | None = None) -> None:
    """Raise LineageError unless every input in `lineage` (or just those in `only`) still has its recorded
    sha256. `recorded_in` is the file that holds the record, named in the message with the input."""
    if not lineage or "inputs" not in lineage:
        raise LineageError(f"{recorded_in}: records no lineage (made by an older textrnn?); re-run the step that writes it")
    recorded: Mapping[str, str] = lineage["inputs"]
    wanted = recorded.keys() if only is None else [_key(path) for path in only]
    for key in wanted:
        verify_digest(Path(key), recorded.get(key), recorded_in)


def verify_config(lineage: Mapping[str, Any] | None, recorded_in: Path | str, current: Mapping[str, Any]) -> None:
    """Raise LineageError naming the differing keys unless `current` equals the recorded config slice."""
    recorded = (lineage or {}).get("config")
    if recorded is None:
        raise LineageError(f"{recorded_in}: records no config (made by an older textrnn?); re-run the step that writes it")
    changed = config_differences(recorded, current)
    if changed:
        raise LineageError(
            f"{recorded_in} was made with another config ({', '.join(changed[:6])}{' ...' if len(changed) > 6 else ''} "
            "differ); re-run the steps from there"
        )


def outputs(directory: Path | str, exclude: Iterable[str] = ()) -> dict[str, str]:
    """{file name: sha256} of every regular file directly in `directory` (sorted; textrnn's directory
    marker and the names in `exclude` left out). What a step records of the files it wrote, e.g.
    `report["outputs"] = lineage.outputs(staging)` just before writing the report into the same staging
    directory; names are relative to the directory, so the record survives the atomic rename."""
    skip = {MARKER, *exclude}
    directory = Path(directory)
    return {
        path.name: sha256_file(path)
        for path in sorted(directory.iterdir())
        if path.name not in skip and path.is_file() and not path.is_symlink()
    }


def verify_outputs(directory: Path | str, recorded: Mapping[str, str] | None, recorded_in: Path | str,
                   only: Iterable[str] | None = None) -> None:
    """Raise LineageError naming both files unless each file recorded in `recorded` ({name: sha256},
    as `outputs` gives; just the names in `only` when given) is in `directory` with those bytes."""
    if not recorded:
        raise LineageError(f"{recorded_in}: records no output hashes (made by an older textrnn?); re-run the step that writes it")
    for name in recorded if only is None else only:
        verify_digest(Path(directory) / name, recorded.get(name), recorded_in)


def verify_digest(path: Path | str, recorded: str | None, recorded_in: Path | str) -> None:
    """Raise LineageError unless `path` exists and has the sha256 `recorded` in `recorded_in`."""
    if not recorded:
        raise LineageError(f"{recorded_in}: records no hash for {_key(path)}; re-run the step that writes it")
    if not Path(path).is_file():
        raise LineageError(f"{_key(path)}: missing, but {recorded_in} records it")
    actual = sha256_file(path)
    if actual != recorded:
        raise LineageError(
            f"{_key(path)} does not match {recorded_in} (sha256 {actual[:12]}, recorded {recorded[:12]}): "
            "it changed after that step ran; re-run the steps from there"
        )
