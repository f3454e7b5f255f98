"""Benchmark: onnxruntime vs PyTorch eager, same model, same inputs, same thread count, on CPU.

Per variant:
- batch-1 latency: median wall time of one forward pass on one text (no padding), over `--b1-texts`
  texts drawn at random, so lengths follow the data's spread;
- batch-256 throughput: texts/s over `--batches` random batches of 256 mixed-length texts, each padded to
  its longest row (no length sorting: the same worst case for both runtimes);
- the two runtimes alternate call by call and each input keeps its fastest of `--repeats` calls, so
  background load on a shared machine hits both alike and is mostly filtered out;
- for reference, the shipped path end to end (tokenizer included): `predict_b1_ms`, the median of
  `OnnxClassifier.predict([text])`, and `predict_texts_per_s`, `OnnxClassifier.predict` over the same texts
  as the batch-256 runs (it sorts by length and batches by token budget, so it pads far less).

Texts: the shared AG News rows (`../shared/data/ag_news/train_head_10429.csv`, parsed by `textrnn.data`)
when present, else the embedded sample corpus. Models are untrained (seeded) with the vocabulary fitted
on those texts: latency does not depend on the weights' values, only on the shapes. Each model is
exported with `textrnn.export.write_onnx` and parity-checked before timing.

    .venv/bin/python bench/inference.py [--threads 1 2] [--variants gru bilstm]

Writes bench/results/inference.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from common import AG_NEWS, REPO, RESULTS, load_average, machine
from textrnn import data
from textrnn.config import Config, DataConfig
from textrnn.export import parity_check, write_onnx
from textrnn.inference import CPU_PROVIDER, OnnxClassifier, session_options
from textrnn.models import build_model
from textrnn.tokens import EncodedTexts, build_tokenizer, encode_texts



def load_texts(path: Path, seed: int) -> tuple[list[str], str]:
    """(texts, description): AG News rows at `path` when it exists, else the sample corpus."""
    if path.is_file():
        frame, _ = data.read_csv(path, DataConfig(), "bench")
        return frame["text"].tolist(), f"AG News ({path.name}, {len(frame)} rows)"
    train, _, _ = data.load_source(DataConfig(source="sample"), seed, REPO / ".cache")
    return train["text"].tolist(), f"textrnn sample corpus ({len(train)} rows)"


def padded_batch(encoded: EncodedTexts, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return encoded.padded(rows), np.ascontiguousarray(encoded.lengths[rows])


def interleaved_timings(runs: dict[str, Callable], inputs: list[tuple[np.ndarray, np.ndarray]], repeats: int,
                        warmup: int = 3) -> dict[str, np.ndarray]:
    """Seconds per call, [len(inputs)] per runtime: each input's fastest of `repeats` calls.

    The runtimes alternate call by call, so both see the same background load on a shared machine; the
    minimum over repeats drops the calls that other processes slowed down.
    """
    for token_ids, lengths in inputs[:warmup]:
        for run in runs.values():
            run(token_ids, lengths)
    best = {name: np.full(len(inputs), np.inf) for name in runs}
    for _ in range(repeats):
        for index, (token_ids, lengths) in enumerate(inputs):
            for name, run in runs.items():
                started = time.perf_counter()
                run(token_ids, lengths)
                best[name][index] = min(best[name][index], time.perf_counter() - started)
    return best


def runners(model: torch.nn.Module, session: ort.InferenceSession) -> dict[str, Callable]:
    """name -> run(token_ids int64 [B, T], lengths int64 [B]) -> logits, for each runtime."""

    @torch.inference_mode()
    def torch_eager(token_ids: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        return model(torch.from_numpy(token_ids), torch.from_numpy(lengths)).numpy()

    def onnxruntime(token_ids: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        return session.run(["logits"], {"token_ids": token_ids, "lengths": lengths})[0]

    return {"torch_eager": torch_eager, "onnxruntime": onnxruntime}


def bench_variant(name: str, cfg: Config, encoded: EncodedTexts, texts: list[str], workdir: Path,
                  tokenizer_file: Path, args: argparse.Namespace, threads: int) -> dict:
    torch.manual_seed(0)
    model = build_model(cfg.variant(name).config, args.vocab_size, len(cfg.data.classes)).eval()
    onnx_file = workdir / f"{name}.onnx"
    write_onnx(model, onnx_file, {"textrnn.classes": json.dumps(list(cfg.data.classes))})
    parity = parity_check(model, onnx_file)
    session = ort.InferenceSession(str(onnx_file), sess_options=session_options(threads), providers=[CPU_PROVIDER])
    rng = np.random.default_rng(args.seed)
    single = [padded_batch(encoded, np.array([row])) for row in rng.choice(len(encoded), args.b1_texts, replace=False)]
    batch_rows = [rng.choice(len(encoded), args.batch, replace=False) for _ in range(args.batches)]
    batches = [padded_batch(encoded, rows) for rows in batch_rows]
    result = {"variant": name, "threads": threads, "parity_max_abs_diff": parity["max_abs_diff"]}
    runs = runners(model, session)
    single_times = interleaved_timings(runs, single, args.repeats)
    batch_times = interleaved_timings(runs, batches, args.repeats, warmup=1)
    for runtime in runs:
        result[f"{runtime}_b1_ms"] = float(np.median(single_times[runtime])) * 1000
        result[f"{runtime}_b{args.batch}_texts_per_s"] = args.batch * args.batches / float(batch_times[runtime].sum())
    classifier = OnnxClassifier(tokenizer_file, onnx_file, device="cpu", threads=threads)
    sample = [texts[i] for i in rng.choice(len(texts), args.b1_texts, replace=False)]
    result["predict_b1_ms"] = float(np.median(_predict_timings(classifier, sample, args.repeats))) * 1000
    batch_texts = [texts[i] for rows in batch_rows for i in rows]
    classifier.predict(batch_texts[: args.batch])
    passes = []
    for _ in range(args.repeats):
        started = time.perf_counter()
        classifier.predict(batch_texts)
        passes.append(time.perf_counter() - started)
    result["predict_texts_per_s"] = len(batch_texts) / min(passes)
    result["speedup_b1"] = result["torch_eager_b1_ms"] / result["onnxruntime_b1_ms"]
    key = f"b{args.batch}_texts_per_s"
    result[f"speedup_b{args.batch}"] = result[f"onnxruntime_{key}"] / result[f"torch_eager_{key}"]
    return result


def _predict_timings(classifier: OnnxClassifier, texts: list[str], repeats: int) -> np.ndarray:
    """Per text, the fastest of `repeats` calls of `classifier.predict([text])`, in seconds."""
    for text in texts[:3]:
        classifier.predict([text])
    best = np.full(len(texts), np.inf)
    for _ in range(repeats):
        for index, text in enumerate(texts):
            started = time.perf_counter()
            classifier.predict([text])
            best[index] = min(best[index], time.perf_counter() - started)
    return best


def markdown_table(results: list[dict], batch: int) -> str:
    header = (f"| variant | threads | torch b1 ms | ORT b1 ms | b1 speedup | torch b{batch} texts/s | "
              f"ORT b{batch} texts/s | b{batch} speedup | predict() b1 ms | predict() texts/s |")
    lines = [header, "|" + "---|" * 10]
    for r in results:
        lines.append(
            f"| {r['variant']} | {r['threads']} | {r['torch_eager_b1_ms']:.3f} | {r['onnxruntime_b1_ms']:.3f} | "
            f"{r['speedup_b1']:.1f}x | {r[f'torch_eager_b{batch}_texts_per_s']:,.0f} | "
            f"{r[f'onnxruntime_b{batch}_texts_per_s']:,.0f} | {r[f'speedup_b{batch}']:.1f}x | {r['predict_b1_ms']:.3f} | "
            f"{r['predict_texts_per_s']:,.0f} |"
        )
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=AG_NEWS)
    parser.add_argument("--variants", nargs="+", default=list(Config().variants))
    parser.add_argument("--threads", nargs="+", type=int, default=[1])
    parser.add_argument("--b1-texts", type=int, default=300)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--vocab-size", type=int, default=20000)
    parser.add_argument("--max-len", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS / "inference.json")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    cfg = Config()
    texts, source = load_texts(args.data, args.seed)
    tokenizer = build_tokenizer(texts, args.vocab_size, 1, args.max_len)
    args.vocab_size = tokenizer.get_vocab_size()
    encoded = encode_texts(tokenizer, texts)
    results = []
    load_before = load_average()
    with tempfile.TemporaryDirectory(prefix="textrnn-bench-") as tmp:
        tokenizer_file = Path(tmp) / "tokenizer.json"
        tokenizer.save(str(tokenizer_file))
        for threads in args.threads:
            torch.set_num_threads(threads)
            for name in args.variants:
                results.append(bench_variant(name, cfg, encoded, texts, Path(tmp), tokenizer_file, args, threads))
                print(json.dumps(results[-1]), flush=True)
    lengths = encoded.lengths
    payload = {
        "data": source,
        "weights": "untrained (seeded); latency depends on shapes, not weight values",
        "tokens_per_text": {"median": float(np.median(lengths)), "p95": float(np.percentile(lengths, 95)),
                            "max": int(lengths.max())},
        "vocab_size": args.vocab_size,
        "batch": args.batch, "batches": args.batches, "b1_texts": args.b1_texts,
        "versions": {"torch": torch.__version__, "onnxruntime": ort.__version__, "python": platform.python_version()},
        "machine": machine(),
        # Other work on the machine slows both runtimes; the 1-minute load average says how much there was.
        "load_average_1min": {"before": load_before, "after": load_average()},
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    print(f"\n{source}; untrained weights; torch.set_num_threads == ORT intra_op_num_threads; "
          f"load average {payload['load_average_1min']['before']:.1f} -> {payload['load_average_1min']['after']:.1f} "
          f"on {os.cpu_count()} CPUs\n")
    print(markdown_table(results, args.batch))


if __name__ == "__main__":
    main()
