"""The peer: our own Keras (TensorFlow CPU) implementation of the lesson's four models, trained and timed.

The lesson this project comes from trained four Keras classifiers over a 20,000-word vocabulary:

| variant | Embedding | recurrent layers | masking | batch |
|---|---|---|---|---|
| `rnn` | 64 | SimpleRNN(16) | no (reads the pads: the lesson's first model) | 16 |
| `rnn_masked` | 64 | SimpleRNN(16) | `mask_zero=True` | 16 |
| `lstm` | 64 | LSTM(8) | `mask_zero=True` | 8 |
| `bilstm` | 128 | Bidirectional(LSTM(64)) x 2 | `mask_zero=True` | 16 |

each with a Dense(4) softmax head, Adam(learning_rate=1e-3) and sparse categorical cross-entropy.

Only the framework differs from our side: Keras reads the token ids that textrnn's tokenizer produced (the
`data/encoded/{split}.npz` files of `textrnn encode`), so texts, labels, vocabulary and batch sizes are
identical. Batching is the lesson's: shuffled every epoch, each batch padded *post* with 0 to its own
longest row (what the lesson's `TextVectorization` without `output_sequence_length` did inside the
model), never to the longest row of the whole data set, which would make every step read ~4x more pads
and would turn the unmasked SimpleRNN into a model that mostly reads padding.

Run alone (compare.py runs it in a subprocess, so its memory high-water mark is its own):

    .venv/bin/python bench/peer_keras.py --variant lstm --encoded DIR --vocab-size 20000 --out peer.json

Writes a JSON report: per-epoch training samples/s and validation accuracy, inference timings for every
Keras calling path, the peak RSS of training, and the TensorFlow/Keras versions and thread settings.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from common import b1_latency_ms, batch_throughput, inference_inputs, peak_rss_mb, time_calls
from textrnn.tokens import EncodedSplit, split_path

# Quiet TensorFlow's C++ start-up banner; must be set before TensorFlow is imported.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

LEARNING_RATE = 1e-3
NUM_CLASSES = 4


@dataclass(frozen=True)
class LessonModel:
    """One lesson model; the field names are those of textrnn's `VariantConfig`, so compare.py can check
    that both sides build the same architecture."""

    cell: str  # "rnn" (SimpleRNN) or "lstm"
    embed_dim: int
    hidden: int
    layers: int
    bidirectional: bool
    masked: bool
    batch_size: int


LESSON_MODELS: dict[str, LessonModel] = {
    "rnn": LessonModel("rnn", 64, 16, 1, False, False, 16),
    "rnn_masked": LessonModel("rnn", 64, 16, 1, False, True, 16),
    "lstm": LessonModel("lstm", 64, 8, 1, False, True, 8),
    "bilstm": LessonModel("lstm", 128, 64, 2, True, True, 16),
}


# ----------------------------------------------------------------------------------- validation batches


def length_sorted_batches(lengths: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Row indices sorted by length (stable) and cut into batches: how textrnn's `predict_logits` groups
    the validation split, so both sides score exactly the same padded matrices."""
    order = np.argsort(lengths, kind="stable")
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


# ---------------------------------------------------------------------------------------- TensorFlow side


def load_tensorflow(intra_op: int, inter_op: int):
    """Import TensorFlow with its thread pools fixed; they cannot change once the first op has run."""
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(intra_op)
    tf.config.threading.set_inter_op_parallelism_threads(inter_op)
    return tf


def build_model(spec: LessonModel, vocab_size: int):
    """The lesson's Keras model for `spec`, compiled with Adam(1e-3) and sparse categorical cross-entropy.

    `jit_compile` stays at Keras' default ("auto"), which is off on a CPU-only machine, as the lesson ran.
    """
    import keras

    inputs = keras.Input(shape=(None,), dtype="int64", name="token_ids")
    features = keras.layers.Embedding(vocab_size, spec.embed_dim, mask_zero=spec.masked)(inputs)
    cell = keras.layers.SimpleRNN if spec.cell == "rnn" else keras.layers.LSTM
    for layer in range(spec.layers):
        recurrent = cell(spec.hidden, return_sequences=layer < spec.layers - 1)
        features = (keras.layers.Bidirectional(recurrent) if spec.bidirectional else recurrent)(features)
    outputs = keras.layers.Dense(NUM_CLASSES, activation="softmax")(features)
    model = keras.Model(inputs, outputs)
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=LEARNING_RATE),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


def train_dataset(tf, split: EncodedSplit, batch_size: int, seed: int, threads: int):
    """The lesson's input pipeline over our ids: reshuffled every epoch, each batch padded post with 0
    to its own longest row. tf.data's private thread pool gets the same thread count as the model."""
    texts = split.texts
    ragged = tf.RaggedTensor.from_row_lengths(texts.token_ids, texts.lengths)
    dataset = (
        tf.data.Dataset.from_tensor_slices((ragged, split.labels))
        .shuffle(len(split.labels), seed=seed, reshuffle_each_iteration=True)
        .batch(batch_size)
        .map(lambda ids, labels: (ids.to_tensor(default_value=0), labels))
        .prefetch(tf.data.AUTOTUNE)
    )
    options = tf.data.Options()
    options.threading.private_threadpool_size = threads
    return dataset.with_options(options)


def evaluate(model, split: EncodedSplit) -> dict[str, float]:
    """Validation loss and accuracy over length-sorted batches of 256, the grouping our side uses."""
    probabilities = np.zeros((len(split.labels), NUM_CLASSES), dtype=np.float32)
    for rows in length_sorted_batches(split.texts.lengths, 256):
        probabilities[rows] = np.asarray(model.predict_on_batch(split.texts.padded(rows)))
    picked = probabilities[np.arange(len(split.labels)), split.labels]
    return {
        "val_loss": float(-np.log(np.clip(picked, 1e-7, 1.0)).mean()),
        "val_accuracy": float((probabilities.argmax(1) == split.labels).mean()),
    }


def train(tf, model, spec: LessonModel, train_split: EncodedSplit, val_split: EncodedSplit, epochs: int,
          seed: int, threads: int) -> list[dict[str, float]]:
    """`epochs` calls of `fit(epochs=1)`, each timed alone (validation excluded, as on our side)."""
    dataset = train_dataset(tf, train_split, spec.batch_size, seed, threads)
    history = []
    for epoch in range(1, epochs + 1):
        started = time.perf_counter()
        fitted = model.fit(dataset, epochs=1, verbose=0)
        seconds = time.perf_counter() - started
        history.append({
            "epoch": epoch,
            "train_loss": float(fitted.history["loss"][-1]),
            "train_accuracy": float(fitted.history["accuracy"][-1]),
            "samples_per_second": len(train_split.labels) / seconds,
            "seconds": seconds,
            **evaluate(model, val_split),
        })
        print(f"peer {epoch}/{epochs}: {history[-1]['samples_per_second']:.0f} samples/s, "
              f"val accuracy {history[-1]['val_accuracy']:.4f}", flush=True)
    return history


def calling_paths(tf, model) -> dict[str, Callable[[np.ndarray, np.ndarray], object]]:
    """name -> run(token_ids, lengths) for each way Keras can score a batch (lengths unused: the mask or
    the pads carry them). The fastest is reported as the peer's figure."""
    graph = tf.function(lambda x: model(x, training=False), input_signature=[tf.TensorSpec([None, None], tf.int64)])
    return {
        "model.predict": lambda ids, _: model.predict(ids, batch_size=len(ids), verbose=0),
        "model.predict_on_batch": lambda ids, _: model.predict_on_batch(ids),
        "model(x, training=False)": lambda ids, _: model(ids, training=False),
        "tf.function(model)": lambda ids, _: graph(tf.constant(ids)).numpy(),
    }


def probe(run: Callable[[np.ndarray, np.ndarray], object], singles: list, batches: list) -> dict[str, float]:
    """A quick look at one calling path (7 single rows, the first 2 also as warm-up; 1 batch) to find the
    fastest before timing it fully: eager calls of the bidirectional model take over a second per text,
    too slow to time 200."""
    single_ms = statistics.median(time_calls(run, singles[:7], warmup=2)) * 1000
    batch_s = time_calls(run, batches[:1], warmup=1)[0]
    return {"b1_median_ms": single_ms, "batch_texts_per_s": len(batches[0][1]) / batch_s}


def bench_inference(tf, model, test_split: EncodedSplit, args: argparse.Namespace) -> dict:
    """Probe every calling path on the shared inputs, then time the fastest one for each figure fully."""
    singles, batches = inference_inputs(test_split.texts, args.inference_seed, args.b1_texts, args.batch, args.batches)
    paths = calling_paths(tf, model)
    probes = {name: probe(run, singles, batches) for name, run in paths.items()}
    b1_path = min(probes, key=lambda name: probes[name]["b1_median_ms"])
    batch_path = max(probes, key=lambda name: probes[name]["batch_texts_per_s"])
    return {
        "probes": probes,
        "b1_median_ms": b1_latency_ms(paths[b1_path], singles),
        "b1_path": b1_path,
        "batch_texts_per_s": batch_throughput(paths[batch_path], batches, args.repeats),
        "batch_path": batch_path,
        "batch": args.batch, "batches": args.batches, "b1_texts": args.b1_texts,
    }


def run(args: argparse.Namespace) -> dict:
    """Train the variant, then time inference; returns the report written to `--out`."""
    started_rss = peak_rss_mb()
    tf = load_tensorflow(args.threads, args.inter_op_threads)
    import keras

    keras.utils.set_random_seed(args.seed)
    spec = LESSON_MODELS[args.variant]
    train_split, val_split, test_split = (EncodedSplit.load(split_path(args.encoded, name))
                                          for name in ("train", "val", "test"))
    model = build_model(spec, args.vocab_size)
    after_build = peak_rss_mb()
    history = train(tf, model, spec, train_split, val_split, args.epochs, args.seed, args.threads)
    memory = {"before_import_rss_mb": started_rss["rss_mb"], "after_build_rss_mb": after_build["rss_mb"],
              "train_peak_rss_mb": peak_rss_mb()["peak_rss_mb"]}
    report = {
        "side": "peer", "framework": f"TensorFlow {tf.__version__}, Keras {keras.__version__} (CPU)",
        "variant": args.variant, "model": asdict(spec), "vocab_size": args.vocab_size, "train_rows": len(train_split.labels),
        "threads": {"intra_op": args.threads, "inter_op": args.inter_op_threads, "tf.data private pool": args.threads},
        "batching": "shuffled each epoch, each batch padded post with 0 to its longest row (the lesson's)",
        "epochs": args.epochs, "history": history,
        "samples_per_second": float(np.mean([epoch["samples_per_second"] for epoch in history])),
        "memory": memory,
    }
    if not args.no_inference:
        report["inference"] = bench_inference(tf, model, test_split, args)
    return report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", choices=sorted(LESSON_MODELS), required=True)
    parser.add_argument("--encoded", type=Path, required=True, help="textrnn's data/encoded directory")
    parser.add_argument("--vocab-size", type=int, required=True, help="the tokenizer's vocabulary size")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2, help="TensorFlow intra-op threads")
    parser.add_argument("--inter-op-threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--inference-seed", type=int, default=0)
    parser.add_argument("--b1-texts", type=int, default=200)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--no-inference", action="store_true")
    parser.add_argument("--out", type=Path, required=True)
    return parser.parse_args(argv)


def main() -> None:
    args = parse_args()
    report = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
