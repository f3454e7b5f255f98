"""The Hugging Face Hub source: a dataset's train and test splits as frames, or one line saying why not.

`textrnn.data` validates what this returns like any other source. The Hub is asked once, with a short
timeout and no retries, so an offline machine fails in seconds with a line that says how to point the
pipeline at local files instead.

Caches: the datasets cache goes under the project's `paths.cache/hf`. The Hub's download cache follows the
user's own `HF_HOME` or `HF_HUB_CACHE` when set, and moves under the project otherwise (`HF_HUB_CACHE`), so a
fresh checkout writes nothing outside its working directory. `HF_HOME` itself is never set: it is where the
Hub keeps the user's token (`~/.cache/huggingface/token` by default), which a gated dataset needs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pandas as pd

from textrnn.config import DataConfig
from textrnn.data import DataError

HF_TIMEOUT_S = "10"
SPLITS = ("train", "test")


def _offline_message(hf_name: str, cause: str) -> str:
    """The one line for an unreachable Hub: what failed and how to point the pipeline at local data."""
    from huggingface_hub import constants

    cache_hint = ("HF_HUB_OFFLINE is set and no usable cached copy was found" if constants.HF_HUB_OFFLINE
                  else "or set HF_HUB_OFFLINE=1 to use a cached copy")
    return (
        f"cannot download {hf_name} from the Hugging Face Hub (offline? {cause}): use data.source=csv with "
        f"data.train_path/data.test_path, or data.source=sample ({cache_hint})"
    )


def _hub_revision(hf_name: str) -> str | None:
    """The dataset's current commit on the Hub, asked once with a short timeout and no retries.

    `load_dataset` retries an unreachable Hub for ~25 s; this probe fails in at most HF_TIMEOUT_S.
    Returns None in offline mode (HF_HUB_OFFLINE), where `load_dataset` reads the local cache.
    """
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

    if constants.HF_HUB_OFFLINE:
        return None
    try:
        return HfApi().dataset_info(hf_name, timeout=float(HF_TIMEOUT_S)).sha
    except RepositoryNotFoundError:
        raise DataError(f"{hf_name}: dataset not found on the Hugging Face Hub, or gated (data.hf_name)") from None
    except HfHubHTTPError as error:
        status = error.response.status_code if error.response is not None else "?"
        raise DataError(_offline_message(hf_name, f"HTTP {status}")) from error
    except Exception as error:  # the HTTP client's connection and timeout errors have no common public base
        raise DataError(_offline_message(hf_name, type(error).__name__)) from error


def _check_classes(part: Any, cfg: DataConfig) -> None:
    """DataError when the dataset names its classes and they differ from `data.classes`."""
    names = getattr(part.features.get("label"), "names", None)
    if names is not None and tuple(names) != tuple(cfg.classes):
        raise DataError(
            f"{cfg.hf_name}: its classes ({', '.join(names)}) differ from data.classes ({', '.join(cfg.classes)})"
        )


def download_splits(cfg: DataConfig, cache_dir: Path) -> dict[str, tuple[pd.DataFrame, dict[str, Any]]]:
    """{split: (raw frame, report fields)} for `train` and `test` of `data.hf_name`; the report fields name
    the dataset, its Hub revision and its datasets fingerprint. Raises DataError (one line) otherwise."""
    cache = Path(cache_dir).resolve() / "hf"
    # huggingface_hub reads these when first imported, so they are set before the lazy imports below.
    if not os.environ.get("HF_HOME") and not os.environ.get("HF_HUB_CACHE"):
        os.environ["HF_HUB_CACHE"] = str(cache / "hub")
    os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", HF_TIMEOUT_S)
    os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", HF_TIMEOUT_S)
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    import datasets

    revision = _hub_revision(cfg.hf_name)
    try:
        dataset = datasets.load_dataset(cfg.hf_name, revision=revision, cache_dir=str(cache / "datasets"))
    except Exception as error:  # network, cache and format errors all mean: this source is unusable now
        raise DataError(_offline_message(cfg.hf_name, type(error).__name__)) from error
    splits = {}
    for split in SPLITS:
        if split not in dataset:
            raise DataError(f"{cfg.hf_name}: no '{split}' split (has {', '.join(dataset)}) (data.hf_name)")
        part = dataset[split]
        _check_classes(part, cfg)
        meta = {"hf_name": cfg.hf_name, "split": split, "revision": revision,
                "fingerprint": getattr(part, "_fingerprint", None), "format": "hf"}
        splits[split] = (part.to_pandas(), meta)
    return splits
