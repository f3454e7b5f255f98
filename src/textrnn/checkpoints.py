"""The files training writes and reads back: `model.pt` and `checkpoint.pt`, and one-line write errors.

Both hold only tensors and plain values (dicts, lists, numbers, strings) and load with
`torch.load(weights_only=True)`: a file that would need more, such as a crafted pickle that runs code, is
refused before any of it runs (`load_torch`). A truncated, empty or foreign file is one `CheckpointError`
line naming it. Writes go through `writing`, which names the file when the disk is full or read-only.

`model.pt` also carries the lineage record of the run that made it (inputs' sha256 and training config),
which export and register verify; `checkpoint.pt` carries it too, and `--resume` refuses a checkpoint made
from other inputs or another training config (`ResumePoint`).
"""

from __future__ import annotations

import contextlib
import pickle
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from textrnn import lineage
from textrnn.config import VariantConfig
from textrnn.errors import TextrnnError
from textrnn.files import atomic_path
from textrnn.models import TextRNN, build_model
from textrnn.optim import SplitAdam, SplitSchedule

CHECKPOINT_FORMAT = 2  # 1: pickled objects (loaded with weights_only=False, refused now)
_LOOP_STATE = ("epoch", "history", "best_val_loss", "best_epoch", "bad_epochs", "best_state", "wall_seconds")


class CheckpointError(TextrnnError):
    """`checkpoint.pt` or `model.pt` is unreadable, unsafe, or made from other inputs/config."""


class OutputError(TextrnnError):
    """An output could not be written or removed (full disk, read-only directory); names the file."""


def _os_error_in(error: BaseException) -> OSError | None:
    """The OSError behind `error` (itself, its cause or context), or None."""
    while error is not None:
        if isinstance(error, OSError):
            return error
        error = error.__cause__ or error.__context__
    return None


@contextlib.contextmanager
def writing(path: Path | str, action: str = "write") -> Iterator[None]:
    """Turn an OSError (ENOSPC, EROFS, EACCES, ...) while writing `path` into one line naming it.

    torch.save reports a failed write as a RuntimeError from its zip writer (the OSError as its
    context); that counts too."""
    try:
        yield
    except (OSError, RuntimeError) as error:
        cause = _os_error_in(error)
        if cause is None and not any(marker in str(error) for marker in ("PytorchStreamWriter", "write failed")):
            raise
        reason = (cause.strerror or str(cause)) if cause is not None else f"{str(error).splitlines()[0]}; is the disk full?"
        raise OutputError(f"{path}: cannot {action} ({reason})") from None


def save_torch(payload: dict[str, Any], path: Path) -> None:
    # Through a file object: torch.save names the zip archive after a path it is given, and the temporary
    # name would make two identical models differ byte for byte.
    with writing(path), atomic_path(path) as tmp, open(tmp, "wb") as handle:
        torch.save(payload, handle)


def load_torch(path: Path | str, what: str) -> dict[str, Any]:
    """The dict saved in `path`, loaded with `weights_only=True` (tensors and plain values only).

    Raises CheckpointError in one line naming the file when it is missing, truncated, not a torch file,
    or holds anything else (a pickle that would run code is refused before any of it runs)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: {what} not found (run `textrnn train` first)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(
            f"{path}: refused: holds objects other than tensors and plain values (loading it could run code); "
            "delete it and train again"
        ) from None
    except Exception as error:  # truncated zip (RuntimeError), empty file (EOFError), garbage (KeyError), ...
        detail = (str(error).splitlines() or [""])[0][:80] or type(error).__name__
        raise CheckpointError(f"{path}: not a readable {what}, truncated or corrupt ({detail}); train again") from None
    if not isinstance(payload, dict):
        raise CheckpointError(f"{path}: not a textrnn {what}; train again")
    return payload


def save_model(model: TextRNN, state_dict: dict[str, torch.Tensor], classes: tuple[str, ...], path: Path,
               record: dict[str, Any] | None = None) -> None:
    """Write `model.pt`: weights, variant config, vocabulary size, class names and, when given, the
    lineage record (inputs' sha256 and the training config slice) that later steps verify."""
    payload = {
        "state_dict": state_dict,
        "variant": model.variant.model_dump(),
        "vocab_size": model.vocab_size,
        "classes": list(classes),
    }
    if record is not None:
        payload["lineage"] = record
    save_torch(payload, path)


def model_lineage(path: Path | str) -> dict[str, Any]:
    """The lineage record stored in a `model.pt` ({} when it records none)."""
    return load_torch(path, "model").get("lineage") or {}


def load_model(path: Path | str, device: torch.device | str = "cpu") -> tuple[TextRNN, list[str]]:
    """Rebuild a trained model from its `model.pt` alone; returns (model in eval mode, class names).

    Raises CheckpointError (one line naming the file) when it is missing, truncated, unsafe or malformed."""
    payload = load_torch(path, "model")
    try:
        model = build_model(VariantConfig(**payload["variant"]), payload["vocab_size"], len(payload["classes"]))
        model.load_state_dict(payload["state_dict"])
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        detail = (str(error).splitlines() or [""])[0][:80] or type(error).__name__
        raise CheckpointError(f"{path}: not a textrnn model ({detail}); train again") from None
    return model.to(device).eval(), payload["classes"]


@dataclass
class ResumePoint:
    """A checkpoint validated for `--resume`: its payload, read with weights_only=True."""

    path: Path
    payload: dict[str, Any]

    @classmethod
    def load(cls, path: Path, record: dict[str, Any]) -> ResumePoint:
        """Load `path` and check it was made from the inputs and training config in `record`.

        Raises CheckpointError naming the changed config keys (or the changed input file)."""
        payload = load_torch(path, "checkpoint")
        if payload.get("format") != CHECKPOINT_FORMAT or not isinstance(payload.get("lineage"), dict):
            raise CheckpointError(f"{path}: made by an older textrnn (or not a checkpoint); train without --resume")
        changed = lineage.config_differences(payload["lineage"].get("config", {}), record["config"])
        if changed:
            raise CheckpointError(
                f"{path}: cannot resume, the training config changed: {', '.join(changed)}; restore "
                "them or train without --resume"
            )
        recorded_inputs = payload["lineage"].get("inputs", {})
        for key, digest in record["inputs"].items():
            if recorded_inputs.get(key) != digest:
                raise CheckpointError(f"{key} changed since {path} was written; train without --resume")
        return cls(path, payload)

    def restore(self, model: TextRNN, optimizer: SplitAdam, schedule: SplitSchedule | None = None,
                average: nn.Module | None = None) -> dict[str, Any]:
        """Put the saved weights, optimizer, learning-rate schedule, weight average and RNG state back;
        return the loop state."""
        try:
            model.load_state_dict(self.payload["model"])
            optimizer.load_state_dict(self.payload["optimizer"])
            if schedule is not None:
                schedule.load_state_dict(self.payload["schedule"])
            if average is not None:
                average.load_state_dict(self.payload["average"])
            torch.set_rng_state(self.payload["torch_rng"])
            state = dict(self.payload["state"])
            missing = sorted(set(_LOOP_STATE) - set(state))
            if missing:
                raise KeyError(", ".join(missing))
        except (KeyError, TypeError, ValueError, RuntimeError) as error:
            detail = (str(error).splitlines() or [""])[0][:80] or type(error).__name__
            raise CheckpointError(f"{self.path}: malformed checkpoint ({detail}); train without --resume") from None
        return state
