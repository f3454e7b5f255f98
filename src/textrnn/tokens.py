"""Word-level vocabulary (HF `tokenizers`) and the encoded splits training reads.

The tokenizer standardises text the way the lesson's Keras `TextVectorization` does (lowercase, strip
punctuation, split on whitespace), reserves `[PAD]`=0 and `[UNK]`=1, and truncates at `max_len`. It is
saved as one `tokenizer.json`, which is all inference needs to turn raw text into ids.

`encode` publishes one directory (`paths.encoded`) in one atomic swap: the ids of every split, the
tokenizer that made them, the bucket report, and `lineage.json`, which records the prepared files it
read (sha256), the config slice it used and the sha256 of every file it wrote. Ids and tokenizer can
therefore never come from two different runs.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers

from textrnn import lineage
from textrnn.config import Config
from textrnn.errors import TextrnnError
from textrnn.filenames import (
    BUCKETS_FILE, LINEAGE_FILE, PREPARED_REPORT_FILE, TOKENIZER_FILE, encoded_split_file, prepared_split_file,
)
from textrnn.files import atomic_dir, atomic_path, read_json, write_json

PAD_TOKEN, UNK_TOKEN = "[PAD]", "[UNK]"
PAD_ID, UNK_ID = 0, 1
# The batch sizes the bucket report measures: fixed, not the variants' (train.json reports each
# variant's own), so that encoding does not depend on `variants` and changing one variant reruns only
# that variant's stages under DVC.
REPORT_BATCH_SIZES = (8, 16, 32, 64, 128)
# Keras' default `strip_punctuation` set, as one character class.
_PUNCTUATION = Regex("[" + "".join("\\" + c for c in string.punctuation) + "]")


class TokenizerError(TextrnnError):
    """The tokenizer file is missing or unusable."""


def build_tokenizer(texts: list[str], vocab_size: int, min_frequency: int, max_len: int) -> Tokenizer:
    """Fit a WordLevel vocabulary of at most `vocab_size` entries (specials included) on `texts`."""
    tokenizer = Tokenizer(models.WordLevel(unk_token=UNK_TOKEN))
    tokenizer.normalizer = normalizers.Sequence(
        [normalizers.NFKC(), normalizers.Lowercase(), normalizers.Replace(_PUNCTUATION, " ")]
    )
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    trainer = trainers.WordLevelTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=[PAD_TOKEN, UNK_TOKEN], show_progress=False
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    tokenizer.enable_truncation(max_length=max_len)
    return tokenizer


def save_tokenizer(tokenizer: Tokenizer, path: Path) -> None:
    with atomic_path(path) as tmp:
        tokenizer.save(str(tmp))


def load_tokenizer(path: Path | str) -> Tokenizer:
    """Load a saved tokenizer; raises TokenizerError naming the file when it is missing or invalid."""
    path = Path(path)
    if not path.is_file():
        raise TokenizerError(f"{path}: tokenizer not found (run `textrnn encode` first)")
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as error:  # tokenizers raises bare Exceptions with multi-line text
        raise TokenizerError(f"{path}: not a valid tokenizer file ({str(error).splitlines()[0]})") from None
    if tokenizer.token_to_id(PAD_TOKEN) != PAD_ID or tokenizer.token_to_id(UNK_TOKEN) != UNK_ID:
        raise TokenizerError(f"{path}: expected {PAD_TOKEN}=0 and {UNK_TOKEN}=1")
    return tokenizer


@dataclass(frozen=True)
class EncodedTexts:
    """Ragged token ids: row i is `token_ids[offsets[i]:offsets[i + 1]]`, `lengths[i]` long (>= 1)."""

    token_ids: np.ndarray  # int64 [total tokens]
    offsets: np.ndarray  # int64 [rows + 1]
    lengths: np.ndarray  # int64 [rows]

    def __len__(self) -> int:
        return len(self.lengths)

    def padded(self, rows: np.ndarray | list[int]) -> np.ndarray:
        """Rows as an int64 [len(rows), longest] matrix, right-padded with PAD_ID."""
        rows = np.asarray(rows)
        lengths = self.lengths[rows]
        matrix = np.full((len(rows), int(lengths.max())), PAD_ID, dtype=np.int64)
        for out_row, (row, length) in enumerate(zip(rows, lengths)):
            start = self.offsets[row]
            matrix[out_row, :length] = self.token_ids[start : start + length]
        return matrix


def encode_texts(tokenizer: Tokenizer, texts: list[str]) -> EncodedTexts:
    """Encode texts to ragged ids. A text with no tokens becomes one `[UNK]`, so every row has length >= 1
    and every model reads at least one real step (an empty headline still gets a prediction)."""
    encodings = tokenizer.encode_batch(texts, add_special_tokens=False)
    ids = [encoding.ids or [UNK_ID] for encoding in encodings]
    lengths = np.fromiter((len(row) for row in ids), dtype=np.int64, count=len(ids))
    offsets = np.zeros(len(ids) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    token_ids = np.fromiter((token for row in ids for token in row), dtype=np.int64, count=int(offsets[-1]))
    return EncodedTexts(token_ids=token_ids, offsets=offsets, lengths=lengths)


@dataclass(frozen=True)
class EncodedSplit:
    """One encoded split: its texts' ids and their labels."""

    texts: EncodedTexts
    labels: np.ndarray  # int64 [rows]

    def save(self, path: Path) -> None:
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as handle:
                np.savez(
                    handle,
                    token_ids=self.texts.token_ids,
                    offsets=self.texts.offsets,
                    lengths=self.texts.lengths,
                    labels=self.labels,
                )

    @classmethod
    def load(cls, path: Path) -> EncodedSplit:
        if not Path(path).is_file():
            raise TextrnnError(f"{path}: encoded split not found (run `textrnn encode` first)")
        with np.load(path) as arrays:
            texts = EncodedTexts(arrays["token_ids"], arrays["offsets"], arrays["lengths"])
            return cls(texts=texts, labels=arrays["labels"])


def split_path(encoded_dir: Path, split: str) -> Path:
    """An encoded split in `encoded_dir` (`paths.encoded`, or encode's staging directory)."""
    return Path(encoded_dir) / encoded_split_file(split)


def verify_prepared(prepared_dir: Path, splits: tuple[str, ...]) -> Path:
    """Check each prepared split file against the sha256 that `prepare` recorded in report.json (its
    `outputs`); returns the report's path. Raises LineageError naming both files on any difference."""
    report_path = Path(prepared_dir) / PREPARED_REPORT_FILE
    if not report_path.is_file():
        raise TextrnnError(f"{report_path}: not found (run `textrnn prepare` first)")
    try:
        recorded = read_json(report_path).get("outputs")
    except (ValueError, AttributeError):
        raise TextrnnError(f"{report_path}: not a prepare report (run `textrnn prepare` again)") from None
    lineage.verify_outputs(prepared_dir, recorded, report_path, only=[prepared_split_file(split) for split in splits])
    return report_path


def encode_config(cfg: Config) -> dict:
    """The config slice `encode` reads, as recorded in lineage.json (and declared in dvc.yaml)."""
    return {
        "seed": cfg.seed,
        "tokenizer": cfg.tokenizer.model_dump(mode="json"),
        "buckets": cfg.buckets.model_dump(mode="json"),
    }


def encode(cfg: Config) -> dict:
    """The `encode` step: check the prepared splits against prepare's report, fit the vocabulary on the
    train split only, encode every split, and measure bucketing's padding efficiency at
    `REPORT_BATCH_SIZES`.

    Writes `paths.encoded/` in one atomic swap: `{split}.npz`, `tokenizer.json`, `buckets.json` and
    `lineage.json` (inputs' and outputs' sha256, config slice). Returns the bucket report.
    """
    from textrnn.bucketing import bucket_report
    from textrnn.data import SPLITS, read_split

    verify_prepared(cfg.paths.prepared, SPLITS)
    frames = {split: read_split(cfg.paths.prepared, split) for split in SPLITS}
    tokenizer = build_tokenizer(
        frames["train"]["text"].tolist(), cfg.tokenizer.vocab_size, cfg.tokenizer.min_frequency, cfg.tokenizer.max_len
    )
    encoded = {
        split: EncodedSplit(encode_texts(tokenizer, frame["text"].tolist()), frame["label"].to_numpy(np.int64))
        for split, frame in frames.items()
    }
    train_lengths = encoded["train"].texts.lengths
    report = {
        "vocab_size": tokenizer.get_vocab_size(),
        "unknown_token_rate": {
            split: float(np.mean(split_data.texts.token_ids == UNK_ID)) if len(split_data.texts.token_ids) else 0.0
            for split, split_data in encoded.items()
        },
        "truncated_rows": {
            split: int(np.sum(split_data.texts.lengths >= cfg.tokenizer.max_len)) for split, split_data in encoded.items()
        },
        "by_batch_size": [
            bucket_report(train_lengths, size, cfg.seed, cfg.buckets.chunk_batches, cfg.buckets.token_budget)
            for size in REPORT_BATCH_SIZES
        ],
    }
    record = lineage.record([cfg.paths.prepared_split(split) for split in SPLITS], encode_config(cfg))
    with atomic_dir(cfg.paths.encoded, key="encoded") as staging:
        for split, split_data in encoded.items():
            split_data.save(split_path(staging, split))
        save_tokenizer(tokenizer, staging / TOKENIZER_FILE)
        write_json(staging / BUCKETS_FILE, report)
        write_json(staging / LINEAGE_FILE, {**record, "outputs": lineage.outputs(staging)})
    return report
