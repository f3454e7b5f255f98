"""Length bucketing: batches of similar-length rows, so little compute is spent on padding.

Sort-within-chunks: shuffle all rows, cut them into chunks of `chunk_batches` batches, sort each chunk by
length, cut it into batches, then shuffle the batches. Rows of a batch have near-equal lengths, yet every
epoch sees a different grouping. Each epoch's order is a pure function of (seed, epoch), so a resumed run
replays exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np


def padding_efficiency(lengths: np.ndarray, batches: list[np.ndarray]) -> float:
    """Real tokens / (batch rows x longest row), summed over all batches: 1.0 means no padding."""
    real = sum(int(lengths[batch].sum()) for batch in batches)
    padded = sum(len(batch) * int(lengths[batch].max()) for batch in batches)
    return real / padded if padded else 1.0


def random_batches(n_rows: int, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Plain shuffled batching, the baseline that bucketing is measured against."""
    order = rng.permutation(n_rows)
    return [order[start : start + batch_size] for start in range(0, n_rows, batch_size)]


class BucketBatchSampler:
    """Yields arrays of row indices; every row exactly once per epoch.

    With `enabled=False` it serves plain shuffled batches, the baseline. `token_budget`, when set, caps rows x longest row per batch (at least one row), so a batch of long
    rows holds fewer of them; `batch_size` still caps the rows.
    """

    def __init__(
        self,
        lengths: np.ndarray,
        batch_size: int,
        seed: int,
        chunk_batches: int = 64,
        token_budget: int | None = None,
        enabled: bool = True,
    ) -> None:
        self.lengths = np.asarray(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.chunk_batches = chunk_batches
        self.token_budget = token_budget
        self.enabled = enabled
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def batches(self) -> list[np.ndarray]:
        """This epoch's batches, in the order they are served."""
        rng = np.random.default_rng([self.seed, self.epoch])
        if not self.enabled:
            return random_batches(len(self.lengths), self.batch_size, rng)
        order = rng.permutation(len(self.lengths))
        chunk_rows = self.batch_size * self.chunk_batches
        batches: list[np.ndarray] = []
        for start in range(0, len(order), chunk_rows):
            chunk = order[start : start + chunk_rows]
            # A stable sort keeps the shuffled order among equal lengths, so ties still vary by epoch.
            chunk = chunk[np.argsort(self.lengths[chunk], kind="stable")]
            batches.extend(self._cut(chunk))
        return [batches[i] for i in rng.permutation(len(batches))]

    def _cut(self, sorted_rows: np.ndarray) -> Iterator[np.ndarray]:
        if self.token_budget is None:
            for start in range(0, len(sorted_rows), self.batch_size):
                yield sorted_rows[start : start + self.batch_size]
            return
        start = 0
        while start < len(sorted_rows):
            end = start + 1
            # Rows are sorted ascending, so the newest row is always the longest of the batch.
            while (
                end < len(sorted_rows)
                and end - start < self.batch_size
                and (end - start + 1) * self.lengths[sorted_rows[end]] <= self.token_budget
            ):
                end += 1
            yield sorted_rows[start:end]
            start = end

    def __iter__(self) -> Iterator[np.ndarray]:
        return iter(self.batches())

    def __len__(self) -> int:
        return len(self.batches())


def bucket_report(
    lengths: np.ndarray, batch_size: int, seed: int, chunk_batches: int, token_budget: int | None = None
) -> dict[str, float | int]:
    """Padding efficiency of random vs bucketed batching for one epoch at `batch_size`."""
    sampler = BucketBatchSampler(lengths, batch_size, seed, chunk_batches, token_budget)
    bucketed = sampler.batches()
    return {
        "batch_size": batch_size,
        "rows": int(len(lengths)),
        "batches_bucketed": len(bucketed),
        "padding_efficiency_random": padding_efficiency(lengths, random_batches(len(lengths), batch_size, np.random.default_rng(seed))),
        "padding_efficiency_bucketed": padding_efficiency(lengths, bucketed),
    }
