"""The bucket sampler: every row exactly once per epoch, little padding, reproducible per (seed, epoch)."""

from __future__ import annotations

import numpy as np
import pytest

from textrnn.bucketing import BucketBatchSampler, bucket_report, padding_efficiency, random_batches


def news_like_lengths(rows: int = 3000, seed: int = 0) -> np.ndarray:
    return np.clip(np.random.default_rng(seed).lognormal(3.3, 0.5, rows).astype(np.int64), 1, 200)


@pytest.mark.parametrize("token_budget", [None, 600])
def test_every_row_is_served_exactly_once_per_epoch(token_budget: int | None) -> None:
    lengths = news_like_lengths()
    sampler = BucketBatchSampler(lengths, batch_size=32, seed=1, chunk_batches=20, token_budget=token_budget)
    for epoch in (1, 2):
        sampler.set_epoch(epoch)
        served = np.concatenate(list(sampler))
        assert np.array_equal(np.sort(served), np.arange(len(lengths)))


def test_token_budget_caps_tokens_per_batch_and_batch_size_caps_rows() -> None:
    lengths = news_like_lengths()
    sampler = BucketBatchSampler(lengths, batch_size=32, seed=1, token_budget=400)
    for batch in sampler.batches():
        assert len(batch) <= 32
        assert len(batch) == 1 or len(batch) * lengths[batch].max() <= 400


def test_bucketing_beats_random_batching_by_far() -> None:
    lengths = news_like_lengths()
    report = bucket_report(lengths, batch_size=64, seed=0, chunk_batches=64)
    assert report["padding_efficiency_bucketed"] > 0.95
    assert report["padding_efficiency_random"] < 0.75


def test_epochs_differ_but_each_epoch_is_reproducible() -> None:
    lengths = news_like_lengths()
    first, again = (BucketBatchSampler(lengths, 16, seed=3) for _ in range(2))
    first.set_epoch(1)
    again.set_epoch(1)
    assert all(np.array_equal(a, b) for a, b in zip(first.batches(), again.batches()))
    again.set_epoch(2)
    assert not all(np.array_equal(a, b) for a, b in zip(first.batches(), again.batches()))


def test_padding_efficiency_definition() -> None:
    lengths = np.array([2, 4, 4, 1])
    # batch [0, 1]: 6 real of 2x4; batch [2, 3]: 5 real of 2x4 -> 11 / 16
    assert padding_efficiency(lengths, [np.array([0, 1]), np.array([2, 3])]) == pytest.approx(11 / 16)
    assert padding_efficiency(lengths, random_batches(4, 1, np.random.default_rng(0))) == 1.0
