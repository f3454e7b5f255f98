"""The embedded sample corpus: news-like headlines whose label depends on word order.

Every text is filler words around topic keywords. Most texts name two topics, and the label is the
topic named *last* ("... coverage moved from the election to the playoffs" is Sports). Both keywords
are in the text either way round, so a bag-of-embeddings model sees the same bag for both labels and
cannot beat ~50% on those rows; a recurrent model that reads in order, and stops at the true last
token, can. The rest name one topic, as easy rows. Lengths spread from a few tokens to ~120, with a
long tail like real news, so bucketing and masking matter.

Deterministic: the same seed and sizes give the same rows.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from textrnn.config import DataConfig

# Keywords per topic, in the order of AG News' classes (World, Sports, Business, Sci/Tech).
TOPIC_KEYWORDS: tuple[tuple[str, ...], ...] = (
    ("election", "minister", "embassy", "ceasefire", "parliament", "refugees", "summit", "diplomats",
     "sanctions", "protesters", "troops", "referendum"),
    ("playoffs", "quarterback", "striker", "tournament", "championship", "coach", "olympics", "pitcher",
     "goalkeeper", "marathon", "league", "semifinal"),
    ("earnings", "shareholders", "merger", "inflation", "stocks", "retailer", "bankruptcy", "investors",
     "dividend", "tariffs", "acquisition", "revenue"),
    ("software", "satellite", "microchip", "browser", "genome", "robotics", "telescope", "broadband",
     "encryption", "smartphone", "algorithm", "spacecraft"),
)

# Words that carry no topic: joining phrases and a Zipf-distributed pool of pseudo-words.
CONNECTORS: tuple[str, ...] = (
    "then", "but", "later", "before", "after", "while", "as", "and", "yet", "until", "then turned to",
    "gave way to", "moved from", "shifted to", "instead of",
)
COMMON_WORDS: tuple[str, ...] = (
    "the", "a", "on", "in", "of", "to", "for", "with", "said", "report", "officials", "today", "week",
    "new", "late", "early", "monday", "tuesday", "friday", "reuters", "ap", "news", "update", "after",
    "year", "first", "over", "more", "people", "plans", "could", "would", "may", "says", "amid",
)
_SYLLABLES = ("ka", "lo", "ren", "ti", "mar", "sol", "ve", "dun", "pra", "gel", "os", "qui", "bar",
              "nel", "tor", "fi", "zam", "ul", "hest", "cor")
N_PSEUDO_WORDS = 600
TWO_TOPIC_FRACTION = 0.7


def _pseudo_words(rng: np.random.Generator, count: int) -> list[str]:
    words: set[str] = set()
    while len(words) < count:
        n_syllables = int(rng.integers(2, 4))
        words.add("".join(rng.choice(_SYLLABLES, size=n_syllables)))
    # Shuffled so the Zipf ranks below fall on unrelated spellings, not alphabetical neighbours.
    return [str(word) for word in rng.permutation(sorted(words))]


def _filler(rng: np.random.Generator, vocabulary: list[str], zipf_p: np.ndarray, length: int) -> list[str]:
    if length <= 0:
        return []
    common = rng.random(length) < 0.35
    pseudo = rng.choice(len(vocabulary), size=length, p=zipf_p)
    return [str(rng.choice(COMMON_WORDS)) if c else vocabulary[i] for c, i in zip(common, pseudo)]


def _lead_length(rng: np.random.Generator) -> int:
    # Log-normal with a long right tail: median ~20 filler words, a few near 110.
    return int(min(110, rng.lognormal(mean=3.0, sigma=0.65)))


def generate(rows: int, n_classes: int, seed: int) -> pd.DataFrame:
    """`rows` texts over the first `n_classes` topics (2..4): columns text (str), label (int64)."""
    if not 2 <= n_classes <= len(TOPIC_KEYWORDS):
        raise ValueError(f"the sample corpus has 2 to {len(TOPIC_KEYWORDS)} classes, not {n_classes}")
    rng = np.random.default_rng(seed)
    vocabulary = _pseudo_words(rng, N_PSEUDO_WORDS)
    zipf_p = 1.0 / np.arange(1, len(vocabulary) + 1)
    zipf_p /= zipf_p.sum()

    texts: list[str] = []
    labels = rng.integers(0, n_classes, size=rows)
    for label in labels:
        last_keyword = str(rng.choice(TOPIC_KEYWORDS[label]))
        words = _filler(rng, vocabulary, zipf_p, _lead_length(rng))
        if rng.random() < TWO_TOPIC_FRACTION:
            other = int(rng.choice([c for c in range(n_classes) if c != label]))
            words += [str(rng.choice(TOPIC_KEYWORDS[other]))]
            words += _filler(rng, vocabulary, zipf_p, int(rng.integers(0, 4)))
            words += [str(rng.choice(CONNECTORS))]
        words += [last_keyword]
        words += _filler(rng, vocabulary, zipf_p, int(rng.integers(0, 6)))
        text = " ".join(words)
        texts.append(text[:1].upper() + text[1:] + ".")
    return pd.DataFrame({"text": texts, "label": labels.astype(np.int64)})


def generate_splits(data_cfg: DataConfig, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Train and test corpora for `data_cfg.sample` sizes and `data_cfg.classes`.

    Test rows come from their own random stream, so changing the train size leaves the test set alone.
    """
    n_classes = len(data_cfg.classes)
    train = generate(data_cfg.sample.train_rows, n_classes, seed)
    test = generate(data_cfg.sample.test_rows, n_classes, seed + 1_000_003)
    return train, test
