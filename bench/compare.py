"""Side by side: textrnn (PyTorch training, onnxruntime serving) vs the lesson's Keras models, one run.

For each lesson variant (`rnn`, `rnn_masked`, `lstm`, `bilstm`) this trains, in turn and each in its own
subprocess (so each side's memory high-water mark is its own):
1. ours with length-bucketed batches (our default), then exported to ONNX and timed in onnxruntime;
2. the peer, `bench/peer_keras.py`: the lesson's Keras model on the same token ids, then timed in Keras;
3. ours again with plain shuffled batches (`buckets.enabled=false`): the effect of bucketing, and a
   framework-only comparison with the peer, which batches the same way.

Everything reads the same encoded data: the shared AG News rows (`../shared/data/ag_news/`, read in place,
never copied into the repo) through textrnn's csv source and stratified validation split, else the
embedded sample corpus. Both sides get the same thread count: torch and onnxruntime intra-op on ours,
TensorFlow intra-op on the peer; onnxruntime and TensorFlow inter-op 1. The orchestration overhead (`textrnn pipeline`, i.e. Prefect + MLflow, over
the bare CLI stages on the sample) is measured when the pipeline command exists, else marked as a gap.

A single seed says little about accuracy after two epochs (the small models swing by 0.1 between seeds),
so the variants in `--accuracy-variants` are retrained on both sides from each of `--accuracy-seeds`
(training only, same data and split) and compared by mean and spread.

    .venv/bin/python bench/compare.py [--epochs 2] [--threads 2] [--variants rnn,lstm] [--data sample]

Writes bench/results/compare.json and bench/results/compare.md (which states machine, threads, data and
epochs for every figure) and prints the markdown.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from common import (PARAMS, QUIET_ENV, RESULTS, b1_latency_ms, batch_throughput, data_overrides, inference_inputs,
                    load_average, machine, peak_rss_mb, run_overrides, short_name)
from peer_keras import LESSON_MODELS
from textrnn.pipeline import DATA_STEPS, VARIANT_STEPS
from textrnn.tokens import EncodedSplit, split_path

PEER_SCRIPT = Path(__file__).resolve().parent / "peer_keras.py"
TARGETS = {"train_ratio": 3.0, "inference_ratio": 2.0, "padding_efficiency": 0.95}


# ------------------------------------------------------------------------------------------------- data


def prepare_data(overrides: list[str]) -> dict[str, Any]:
    """Run textrnn's prepare and encode steps once; both sides then read `paths.encoded`."""
    from textrnn import config
    from textrnn.data import prepare
    from textrnn.tokens import encode

    cfg = config.load(PARAMS, overrides)
    report = prepare(cfg)
    buckets = encode(cfg)
    lengths = EncodedSplit.load(split_path(cfg.paths.encoded, "train")).texts.lengths
    return {"seed": cfg.seed, "rows": report["rows"], "token_length_quantiles": report["token_length_quantiles"]["train"],
            "vocab_size": buckets["vocab_size"], "padding_by_batch_size": buckets["by_batch_size"],
            # Had the peer padded every row to the data's longest (a fixed output_sequence_length).
            "padding_efficiency_global_max": float(lengths.mean() / lengths.max())}


def check_same_architecture(overrides: list[str], variants: list[str]) -> None:
    """Stop unless our config of each variant builds what the peer builds (params.yaml may drift)."""
    from textrnn import config

    cfg = config.load(PARAMS, overrides)
    for name in variants:
        lesson = asdict(LESSON_MODELS[name])
        ours = cfg.variant(name).config.model_dump(include=set(lesson))
        if ours != lesson:
            raise SystemExit(f"variant {name}: params.yaml has {ours}, the lesson's model is {LESSON_MODELS[name]}")


# ------------------------------------------------------------------------------------- subprocess sides


def run_child(command: list[str], out: Path, log: Path) -> dict[str, Any]:
    """Run one side in a fresh interpreter; return the JSON it wrote to `out` (output goes to `log`), with
    the process's wall time and the load average around it, to tell which runs other work disturbed."""
    env = {**os.environ, **QUIET_ENV}
    load_before, started = load_average(), time.perf_counter()
    with open(log, "a", encoding="utf-8") as handle:
        # In the run's working directory: textrnn writes only inside the directory it runs in.
        finished = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=log.parent)
    if finished.returncode != 0:
        raise SystemExit(f"{' '.join(command[:4])}... failed (exit {finished.returncode}); see {log}")
    report = json.loads(out.read_text(encoding="utf-8"))
    report["process"] = {"wall_seconds": time.perf_counter() - started,
                         "load_average_1min": [load_before, load_average()]}
    return report


def inference_options(args: argparse.Namespace) -> list[str]:
    return ["--inference-seed", str(args.seed), "--b1-texts", str(args.b1_texts), "--batch", str(args.batch),
            "--batches", str(args.batches), "--repeats", str(args.repeats)]


def run_ours(variant: str, batching: str, overrides: list[str], workdir: Path, args: argparse.Namespace,
             log: Path, seed: int | None = None) -> dict[str, Any]:
    """Ours in a child process; with `seed`, a training-only rerun from that seed (same data and split)."""
    out = workdir / f"ours_{variant}_{batching}{'' if seed is None else f'_seed{seed}'}.json"
    seeded = overrides if seed is None else [*overrides, f"seed={seed}"]
    command = [sys.executable, __file__, "--child-ours", variant, "--batching", batching, "--out", str(out),
               "--child-overrides", json.dumps(seeded), "--threads", str(args.threads), *inference_options(args)]
    if batching != "bucketed" or seed is not None:
        command.append("--no-inference")  # the same model shape: only training figures differ
    return run_child(command, out, log)


def run_peer(variant: str, data: dict[str, Any], workdir: Path, args: argparse.Namespace, log: Path,
             seed: int | None = None) -> dict[str, Any]:
    """The peer on the encoded data in `workdir`, seeded like ours (config `seed`, or `seed` for a
    training-only rerun)."""
    out = workdir / f"peer_{variant}{'' if seed is None else f'_seed{seed}'}.json"
    command = [args.peer_python, str(PEER_SCRIPT), "--variant", variant, "--encoded", str(workdir / "encoded"),
               "--vocab-size", str(data["vocab_size"]), "--epochs", str(args.epochs), "--threads", str(args.threads),
               "--inter-op-threads", "1", "--seed", str(data["seed"] if seed is None else seed), "--out", str(out),
               *(["--no-inference"] if seed is not None else inference_options(args))]
    return run_child(command, out, log)


def accuracy_over_seeds(variant: str, main: dict[str, Any], overrides: list[str], data: dict[str, Any],
                        workdir: Path, args: argparse.Namespace, log: Path) -> dict[str, Any]:
    """Last-epoch validation accuracy of both sides over the main run's seed and `--accuracy-seeds` (same
    data and split; each seed changes initial weights and batch order): one seed's gap is mostly noise for
    the small recurrent models, whose accuracy after two epochs swings by 0.1 between seeds."""
    seeds = [data["seed"], *(int(seed) for seed in args.accuracy_seeds.split(",") if seed)]
    ours, peer = [main["val_accuracy"]["ours"][-1]], [main["val_accuracy"]["peer"][-1]]
    for seed in seeds[1:]:
        print(f"{variant}: accuracy, seed {seed}", file=sys.stderr, flush=True)
        ours.append(run_ours(variant, "bucketed", overrides, workdir, args, log, seed)["history"][-1]["val_accuracy"])
        peer.append(run_peer(variant, data, workdir, args, log, seed)["history"][-1]["val_accuracy"])
    return {"variant": variant, "seeds": seeds, "ours": ours, "peer": peer,
            "ours_mean": float(np.mean(ours)), "peer_mean": float(np.mean(peer)),
            "ours_std": float(np.std(ours, ddof=1)) if len(ours) > 1 else None,
            "peer_std": float(np.std(peer, ddof=1)) if len(peer) > 1 else None}


def ours_child(args: argparse.Namespace) -> None:
    """Our side, in its own process: train one variant, record peak RSS, export, time onnxruntime."""
    from textrnn import config
    from textrnn.train import train_variant

    before = peak_rss_mb()["rss_mb"]
    enabled = "true" if args.batching == "bucketed" else "false"
    cfg = config.load(PARAMS, [*json.loads(args.child_overrides), f"buckets.enabled={enabled}"])
    summary = train_variant(cfg, cfg.variant(args.child_ours))
    report = {"side": "ours", "variant": args.child_ours, "batching": args.batching, "history": summary["history"],
              "memory": {"before_import_rss_mb": before, "train_peak_rss_mb": peak_rss_mb()["peak_rss_mb"]}}
    if not args.no_inference:
        report["inference"] = ours_inference(cfg, args)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


def ours_inference(cfg, args: argparse.Namespace) -> dict[str, Any]:
    """Export the trained model (parity-checked) and time the raw onnxruntime session on the shared ids."""
    import onnxruntime as ort

    from textrnn.export import export_variant
    from textrnn.inference import CPU_PROVIDER, session_options

    export = export_variant(cfg, cfg.variant(args.child_ours))
    options = session_options(args.threads)
    options.inter_op_num_threads = 1  # sequential execution: the inter-op pool is unused anyway
    session = ort.InferenceSession(str(cfg.paths.onnx_file(args.child_ours)), sess_options=options,
                                   providers=[CPU_PROVIDER])

    def run(token_ids: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        return session.run(["logits"], {"token_ids": token_ids, "lengths": lengths})[0]

    test = EncodedSplit.load(split_path(cfg.paths.encoded, "test"))
    singles, batches = inference_inputs(test.texts, args.inference_seed, args.b1_texts, args.batch, args.batches)
    return {"path": f"onnxruntime {ort.__version__} InferenceSession.run (CPU provider), same ids as the peer",
            "parity_max_abs_diff": export["max_abs_diff"],
            "b1_median_ms": b1_latency_ms(run, singles),
            "batch_texts_per_s": batch_throughput(run, batches, args.repeats)}


# ----------------------------------------------------------------------------------------- per variant


def steady(history: list[dict[str, Any]]) -> float:
    """Samples/s of the last epoch: steady state, past Keras' one-time graph tracing in epoch 1."""
    return float(history[-1]["samples_per_second"])


def summarise(variant: str, ours: dict, ours_random: dict | None, peer: dict) -> dict[str, Any]:
    """One variant's figures and ratios from its runs' reports; the random-batch figures are None when that
    run was skipped (`--skip-random`)."""
    inference = {"ours": ours["inference"], "peer": peer["inference"]}
    random_rate = steady(ours_random["history"]) if ours_random else None
    return {
        "variant": variant,
        "batch_size": LESSON_MODELS[variant].batch_size,
        "train_samples_per_s": {"ours_bucketed": steady(ours["history"]), "ours_random": random_rate,
                                "peer": steady(peer["history"])},
        "val_accuracy": {
            "ours": [epoch["val_accuracy"] for epoch in ours["history"]],
            "ours_random_batches": [epoch["val_accuracy"] for epoch in ours_random["history"]] if ours_random else None,
            "peer": [epoch["val_accuracy"] for epoch in peer["history"]],
        },
        "padding_efficiency": {"bucketed": ours["history"][-1]["padding_efficiency"],
                               "random": ours_random["history"][-1]["padding_efficiency"] if ours_random else None},
        "inference": inference,
        "peak_rss_mb": {"ours": ours["memory"]["train_peak_rss_mb"], "peer": peer["memory"]["train_peak_rss_mb"],
                        "ours_random": ours_random["memory"]["train_peak_rss_mb"] if ours_random else None},
        "ratios": {
            "train_ours_vs_peer": steady(ours["history"]) / steady(peer["history"]),
            "train_ours_random_vs_peer": random_rate / steady(peer["history"]) if random_rate else None,
            "bucketing_speedup": steady(ours["history"]) / random_rate if random_rate else None,
            "inference_batch_ours_vs_peer": inference["ours"]["batch_texts_per_s"] / inference["peer"]["batch_texts_per_s"],
            "inference_b1_latency_peer_vs_ours": inference["peer"]["b1_median_ms"] / inference["ours"]["b1_median_ms"],
        },
        "runs": {"ours_bucketed": ours, "ours_random": ours_random, "peer": peer},
    }


def targets(result: dict[str, Any]) -> dict[str, bool]:
    ratios = result["ratios"]
    return {
        "train_3x": ratios["train_ours_vs_peer"] >= TARGETS["train_ratio"],
        "accuracy_at_least_equal": result["val_accuracy"]["ours"][-1] >= result["val_accuracy"]["peer"][-1],
        "inference_2x": ratios["inference_batch_ours_vs_peer"] >= TARGETS["inference_ratio"],
        "padding_0.95": result["padding_efficiency"]["bucketed"] >= TARGETS["padding_efficiency"],
    }


# --------------------------------------------------------------------------------------- orchestration


def pipeline_available() -> str | None:
    """None when `textrnn pipeline` exists; else why the overhead cannot be measured."""
    textrnn = Path(sys.executable).parent / "textrnn"
    probe = subprocess.run([str(textrnn), "pipeline", "--help"], capture_output=True, text=True,
                           env={**os.environ, **QUIET_ENV})
    if probe.returncode != 0:
        return "not measured: `textrnn pipeline` (the Prefect training_pipeline flow) is not available yet"
    return None


def orchestration_params(workdir: Path, variants: list[str], args: argparse.Namespace) -> Path:
    """A params.yaml in `workdir`: the repo's, on the sample, with only the benchmarked variants, trained one
    at a time (the bare CLI runs them in sequence; two concurrent trainings would share the 2 cores)."""
    raw = yaml.safe_load(PARAMS.read_text(encoding="utf-8"))
    raw["variants"] = {name: raw["variants"][name] for name in variants}
    raw["data"]["source"] = "sample"
    raw["data"].setdefault("sample", {})["train_rows"] = args.sample_rows
    raw.setdefault("orchestration", {})["max_concurrency"] = 1
    raw["train"].update(epochs=args.epochs, patience=args.epochs + 1, threads=args.threads, device="cpu")
    path = workdir / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return path


def timed_commands(commands: list[list[str]], workdir: Path, log: Path) -> float:
    """Wall seconds of running `commands` one after another in `workdir`, each with its own state."""
    env = {**os.environ, **QUIET_ENV, "MLFLOW_TRACKING_URI": f"sqlite:///{workdir / 'mlflow.db'}",
           "PREFECT_HOME": str(workdir / ".prefect")}
    started = time.perf_counter()
    with open(log, "a", encoding="utf-8") as handle:
        for command in commands:
            if subprocess.run(command, cwd=workdir, env=env, stdout=handle, stderr=subprocess.STDOUT).returncode:
                raise SystemExit(f"{' '.join(command)} failed in {workdir}; see {log}")
    return time.perf_counter() - started


# The pipeline of textrnn.pipeline in one interpreter with tracking off (no Prefect, no MLflow, no process
# start per stage): what remains of the pipeline's time once no orchestration is paid.
IN_PROCESS_PIPELINE = ("from textrnn import config, pipeline; "
                       "pipeline.run_in_process(config.load('params.yaml', ['tracking.enabled=false']))")
# Registering needs MLflow, so the bare CLI stages stop at evaluate.
UNTRACKED_VARIANT_STEPS = [step for step in VARIANT_STEPS if step != "register"]


def orchestration_overhead(variants: list[str], args: argparse.Namespace, log: Path) -> dict[str, Any]:
    """Wall time of `textrnn pipeline` (Prefect flow + MLflow tracking) against the bare CLI stages (prepare,
    encode, then train/export/evaluate per variant, tracking off, one process per stage) and against the
    same stages in one process; each run in a fresh directory on the sample corpus."""
    gap = pipeline_available()
    if gap is not None:
        return {"measured": False, "reason": gap}
    textrnn = str(Path(sys.executable).parent / "textrnn")
    off = ["--set", "tracking.enabled=false"]
    stages = [[textrnn, step, *off] for step in DATA_STEPS]
    for variant in variants:
        stages += [[textrnn, step, "--variant", variant, *off] for step in UNTRACKED_VARIANT_STEPS]
    runs = {"bare_cli": stages, "in_process": [[sys.executable, "-c", IN_PROCESS_PIPELINE]],
            "pipeline": [[textrnn, "pipeline"]]}
    seconds = {}
    for name, commands in runs.items():
        with tempfile.TemporaryDirectory(prefix=f"textrnn-{name}-") as directory:
            orchestration_params(Path(directory), variants, args)
            seconds[name] = timed_commands(commands, Path(directory), log)
    return {"measured": True, "bare_cli_seconds": seconds["bare_cli"], "in_process_seconds": seconds["in_process"],
            "pipeline_seconds": seconds["pipeline"],
            "overhead_seconds": seconds["pipeline"] - seconds["bare_cli"], "ratio": seconds["pipeline"] / seconds["bare_cli"],
            "overhead_vs_in_process_seconds": seconds["pipeline"] - seconds["in_process"],
            "variants": variants, "epochs": args.epochs, "data": f"textrnn sample corpus ({args.sample_rows} train rows)",
            "bare": f"textrnn prepare, encode, then train/export/evaluate per variant (tracking.enabled=false): "
                    f"{len(stages)} processes",
            "in_process": "textrnn.pipeline.run_in_process in one Python process, tracking off",
            "pipeline": ("textrnn pipeline: the Prefect training_pipeline flow (temporary local Prefect server, "
                         "orchestration.max_concurrency=1) with MLflow tracking in a fresh sqlite store; it also "
                         "registers each model and promotes a champion, which the bare stages cannot do without MLflow")}


# ------------------------------------------------------------------------------------------- reporting


def versions(peer_report: dict[str, Any] | None) -> dict[str, str]:
    import onnxruntime
    import torch

    found = {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__}
    if peer_report is not None:
        found["peer"] = peer_report["framework"]
    return found


def fmt_acc(values: list[float] | None) -> str:
    return " / ".join(f"{value:.3f}" for value in values) if values else "not run"


def fmt(value: float | None, spec: str, suffix: str = "") -> str:
    """`value` formatted, or "not run" for a figure whose run was skipped."""
    return f"{value:{spec}}{suffix}" if value is not None else "not run"


def yes_no(value: bool) -> str:
    return "yes" if value else "**no**"


def seeds_markdown(seeded: list[dict[str, Any]], cond: dict[str, Any]) -> list[str]:
    """The last-epoch accuracy of both sides over several seeds, when measured."""
    if not seeded:
        return []
    lines = [f"## Validation accuracy over seeds (after {cond['epochs']} epochs, {cond['data_short']})", "",
             "Training-only reruns on the same data and split; a seed sets initial weights and batch order on both "
             "sides. Mean ± sample standard deviation, then each seed's figure.", "",
             "| variant | seeds | ours | Keras | ours - Keras (means) | per seed, ours | per seed, Keras |",
             "|---|---|---:|---:|---:|---|---|"]
    return [*lines, *(seeds_row(row) for row in seeded), ""]


def seeds_row(row: dict[str, Any]) -> str:
    """One markdown table row of `accuracy_over_seeds` (bench/readme.py writes the same rows)."""
    def spread(mean: float, std: float | None) -> str:
        return f"{mean:.3f} ± {std:.3f}" if std is not None else f"{mean:.3f}"

    return (f"| {row['variant']} | {', '.join(map(str, row['seeds']))} | {spread(row['ours_mean'], row['ours_std'])} | "
            f"{spread(row['peer_mean'], row['peer_std'])} | {row['ours_mean'] - row['peer_mean']:+.3f} | "
            f"{fmt_acc(row['ours'])} | {fmt_acc(row['peer'])} |")


def markdown(report: dict[str, Any]) -> str:
    """The tables, each preceded by the conditions its figures were measured under."""
    m, cond = report["machine"], report["conditions"]
    load = cond["load_average"]
    # Before the run nothing of ours is running; during it we keep about `threads` cores busy.
    busy = load["start"][0] > 1.0 or load["end"][0] > cond["threads"] + 1.0
    shared = ("the machine was shared with other work, so timings are noisy" if busy
              else "no other work to speak of")
    lines = [
        "# textrnn vs the lesson's Keras models",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, Python {m['python']}; "
        f"load average (1 min) {load['start'][0]:.1f} at start, {load['end'][0]:.1f} at end: {shared}.",
        f"Versions: torch {report['versions']['torch']}, onnxruntime {report['versions']['onnxruntime']}, "
        f"peer {report['versions'].get('peer', '?')}.",
        f"Threads, equal for both sides: {cond['threads_text']}.",
        f"Data: {cond['data']}; {cond['rows']['train']} train / {cond['rows']['val']} val rows; vocabulary "
        f"{cond['vocab_size']} ids; the peer reads the same token ids our tokenizer produced (only the framework "
        f"differs). Epochs: {cond['epochs']} per side, no early stopping.",
        "",
        f"## Training ({cond['epochs']} epoch(s), CPU, {cond['threads']} threads, {cond['data_short']})",
        "",
        "Samples/s of the last epoch (steady state: Keras traces its graph in epoch 1). Ours bucketed is our "
        "default; ours random uses the same shuffled batching as the peer, so that ratio is the framework alone. "
        "The peer's batches are reshuffled every epoch and each is padded post with 0 to its own longest row, as "
        "the lesson's TextVectorization without output_sequence_length did; padding every row to the data's "
        f"longest instead would leave a padding efficiency of {cond['padding_efficiency_global_max']:.2f} and "
        "slow the peer further, so the peer gets the faster, fairer option.",
        "",
        "| variant | batch | ours bucketed | ours random | peer (Keras) | ours/peer | ours random/peer | bucketing speed-up | ≥3x |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in report["variants"]:
        t, q = r["train_samples_per_s"], r["ratios"]
        lines.append(f"| {r['variant']} | {r['batch_size']} | {t['ours_bucketed']:,.0f} | {fmt(t['ours_random'], ',.0f')} | "
                     f"{t['peer']:,.0f} | {q['train_ours_vs_peer']:.1f}x | {fmt(q['train_ours_random_vs_peer'], '.1f', 'x')} | "
                     f"{fmt(q['bucketing_speedup'], '.2f', 'x')} | {yes_no(r['targets']['train_3x'])} |")
    lines += [
        "",
        f"## Validation accuracy after each epoch ({cond['rows']['val']} val rows, {cond['data_short']})",
        "",
        "Both sides score the validation split in the same length-sorted batches of 256. Recipe differences "
        "besides the framework: ours clips the gradient norm at 1.0 and, with train.sparse_embedding, updates "
        "the embedding table with lazy Adam (SparseAdam: only the rows a batch used); both start from Keras' "
        "initialisation (uniform ±0.05 embeddings, Glorot input and orthogonal recurrent weights, LSTM forget "
        "bias 1); the peer is the lesson's Keras defaults (dense Adam, no clipping).",
        "",
        "| variant | ours (bucketed) | ours (random batches) | peer (Keras) | ours - peer, last epoch | ≥ peer |",
        "|---|---|---|---|---:|---|",
    ]
    for r in report["variants"]:
        a = r["val_accuracy"]
        lines.append(f"| {r['variant']} | {fmt_acc(a['ours'])} | {fmt_acc(a['ours_random_batches'])} | {fmt_acc(a['peer'])} | "
                     f"{a['ours'][-1] - a['peer'][-1]:+.3f} | {yes_no(r['targets']['accuracy_at_least_equal'])} |")
    se = (0.25 / cond["rows"]["val"]) ** 0.5
    lines += ["", f"One standard error of an accuracy near 0.5 on {cond['rows']['val']} rows is {se:.3f}.", ""]
    lines += seeds_markdown(report.get("accuracy_over_seeds") or [], cond)
    inf = report["variants"][0]["inference"]["ours"] if report["variants"] else {}
    lines += [
        f"## Inference (CPU, {cond['threads']} threads, trained models, {cond['data_short']} test rows)",
        "",
        f"Same token ids on both sides: batch {cond['batch']} = {cond['batches']} batches of random rows, each padded "
        f"to its longest (texts/s, best of {cond['repeats']} passes); batch 1 = median over {cond['b1_texts']} single "
        f"unpadded rows. Ours: {inf.get('path', 'onnxruntime')}. Peer: the fastest of model.predict, "
        "predict_on_batch, model(x, training=False) and a tf.function around the model, probed per variant (named).",
        "",
        f"| variant | ORT b{cond['batch']} texts/s | Keras b{cond['batch']} texts/s (path) | ratio | ≥2x | ORT b1 ms | Keras b1 ms (path) | b1 ratio |",
        "|---|---:|---:|---:|---|---:|---:|---:|",
    ]
    for r in report["variants"]:
        o, p, q = r["inference"]["ours"], r["inference"]["peer"], r["ratios"]
        lines.append(f"| {r['variant']} | {o['batch_texts_per_s']:,.0f} | {p['batch_texts_per_s']:,.0f} ({p['batch_path']}) | "
                     f"{q['inference_batch_ours_vs_peer']:.1f}x | {yes_no(r['targets']['inference_2x'])} | "
                     f"{o['b1_median_ms']:.3f} | {p['b1_median_ms']:.3f} ({p['b1_path']}) | {q['inference_b1_latency_peer_vs_ours']:.1f}x |")
    lines += [
        "",
        f"## Peak memory and padding ({cond['epochs']} epoch(s) of training, {cond['data_short']})",
        "",
        "Peak RSS: the training process's VmHWM after its last epoch (each side in its own fresh interpreter, "
        "framework import included). Padding efficiency = real tokens / (batch rows x longest row) over the last "
        "epoch's training batches; the peer batches at random, like ours random.",
        "",
        "| variant | peak RSS ours MiB | peak RSS peer MiB | padding eff. bucketed | padding eff. random | ≥0.95 |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for r in report["variants"]:
        mem, pad = r["peak_rss_mb"], r["padding_efficiency"]
        lines.append(f"| {r['variant']} | {mem['ours']:,.0f} | {mem['peer']:,.0f} | {pad['bucketed']:.3f} | "
                     f"{fmt(pad['random'], '.3f')} | {yes_no(r['targets']['padding_0.95'])} |")
    lines += ["", "## Orchestration overhead (sample corpus)", ""]
    orch = report["orchestration"]
    if orch["measured"]:
        lines += [
            f"Data: {orch['data']}; variants {', '.join(orch['variants'])}, {orch['epochs']} epoch(s), "
            f"{cond['threads']} threads, wall seconds:",
            "",
            "| bare CLI stages | same stages in one process | `textrnn pipeline` (Prefect + MLflow) | pipeline - bare CLI | pipeline / bare CLI | pipeline - one process |",
            "|---:|---:|---:|---:|---:|---:|",
            f"| {orch['bare_cli_seconds']:.1f} | {orch['in_process_seconds']:.1f} | {orch['pipeline_seconds']:.1f} | "
            f"{orch['overhead_seconds']:+.1f} | {orch['ratio']:.2f}x | {orch['overhead_vs_in_process_seconds']:+.1f} |",
            "",
            f"Bare: {orch['bare']}. One process: {orch['in_process']}. Pipeline: {orch['pipeline']}.",
            *(["", f"Note: {orch['note']}"] if orch.get("note") else []),
        ]
    else:
        lines.append(f"**{orch['reason']}.**")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------ main


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--variants", default=",".join(LESSON_MODELS))
    parser.add_argument("--data", choices=("auto", "ag_news", "sample"), default="auto")
    parser.add_argument("--sample-rows", type=int, default=4000, help="train rows of the sample corpus")
    parser.add_argument("--seed", type=int, default=0, help="seed of the inference inputs")
    parser.add_argument("--b1-texts", type=int, default=200)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--peer-python", default=sys.executable, help="interpreter with tensorflow-cpu installed")
    parser.add_argument("--skip-random", action="store_true", help="skip ours with random batches (saves time)")
    parser.add_argument("--skip-orchestration", action="store_true")
    parser.add_argument("--accuracy-seeds", default="1,2,3,4",
                        help="more seeds for the accuracy comparison (training only), comma-separated; '' for none")
    parser.add_argument("--accuracy-variants", default="rnn_masked,lstm",
                        help="variants the extra seeds run for (the bidirectional peer takes minutes per run)")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    # Internal: compare.py runs our side in a child process through these.
    parser.add_argument("--child-ours", help=argparse.SUPPRESS)
    parser.add_argument("--batching", default="bucketed", help=argparse.SUPPRESS)
    parser.add_argument("--child-overrides", help=argparse.SUPPRESS)
    parser.add_argument("--inference-seed", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--no-inference", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args()


def build_report(args: argparse.Namespace, data_name: str, data: dict[str, Any], results: list[dict[str, Any]],
                 orchestration: dict[str, Any], load_start: tuple[float, ...],
                 seeded: list[dict[str, Any]]) -> dict[str, Any]:
    """The JSON report: machine, versions, conditions, per-variant results and the orchestration figure."""
    peer_report = results[0]["runs"]["peer"] if results else None
    return {
        "benchmark": "compare",
        "machine": machine(),
        "versions": versions(peer_report),
        "conditions": {
            "data": data_name, "data_short": short_name(data_name),
            "rows": data["rows"], "vocab_size": data["vocab_size"],
            "padding_efficiency_global_max": data["padding_efficiency_global_max"],
            "train_token_length_quantiles": data["token_length_quantiles"],
            "epochs": args.epochs, "threads": args.threads,
            "threads_text": (f"torch.set_num_threads({args.threads}); onnxruntime intra_op_num_threads={args.threads}, "
                             f"inter_op 1 (sequential); TensorFlow intra-op {args.threads}, inter-op 1, "
                             f"tf.data private pool {args.threads}"),
            "batch": args.batch, "batches": args.batches, "b1_texts": args.b1_texts, "repeats": args.repeats,
            "load_average": {"start": list(load_start), "end": list(os.getloadavg())},
        },
        "targets": TARGETS,
        "variants": results,
        "accuracy_over_seeds": seeded,
        "padding_by_batch_size": data["padding_by_batch_size"],
        "orchestration": orchestration,
    }


def save_report(report: dict[str, Any], out_dir: Path) -> str:
    """Write compare.json and compare.md into `out_dir`; returns the markdown."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "compare.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    text = markdown(report)
    (out_dir / "compare.md").write_text(text, encoding="utf-8")
    return text


def run_variant(variant: str, overrides: list[str], data: dict[str, Any], workdir: Path, args: argparse.Namespace,
                log: Path) -> dict[str, Any]:
    """A variant's runs, alternating sides (ours bucketed, peer, ours random), summarised with its targets."""
    print(f"{variant}: ours (bucketed)", file=sys.stderr, flush=True)
    ours = run_ours(variant, "bucketed", overrides, workdir, args, log)
    print(f"{variant}: peer (Keras)", file=sys.stderr, flush=True)
    peer = run_peer(variant, data, workdir, args, log)
    ours_random = None
    if not args.skip_random:
        print(f"{variant}: ours (random batches)", file=sys.stderr, flush=True)
        ours_random = run_ours(variant, "random", overrides, workdir, args, log)
    result = summarise(variant, ours, ours_random, peer)
    result["targets"] = targets(result)
    return result


def compare(args: argparse.Namespace) -> str:
    """Every variant's runs plus the orchestration figure; the report is saved after each variant, so an
    interrupted run keeps what it finished. Returns the final markdown."""
    variants = args.variants.split(",")
    unknown = [name for name in variants if name not in LESSON_MODELS]
    if unknown:
        raise SystemExit(f"unknown variant(s) {', '.join(unknown)} (lesson variants: {', '.join(LESSON_MODELS)})")
    load_start = os.getloadavg()
    data_name, data_sets = data_overrides(args.data, args.sample_rows)
    workdir = Path(tempfile.mkdtemp(prefix="textrnn-compare-"))
    log = workdir / "children.log"
    os.chdir(workdir)  # textrnn writes only inside its working directory
    try:
        overrides = run_overrides(workdir, data_sets, args.epochs, args.threads)
        check_same_architecture(overrides, variants)
        data = prepare_data(overrides)
        results = []
        pending = {"measured": False, "reason": "not measured: the run stopped before this step"}
        seeded: list[dict[str, Any]] = []
        for variant in variants:
            results.append(run_variant(variant, overrides, data, workdir, args, log))
            save_report(build_report(args, data_name, data, results, pending, load_start, seeded), args.out_dir)
        for result in results:
            if result["variant"] in args.accuracy_variants.split(",") and args.accuracy_seeds:
                seeded.append(accuracy_over_seeds(result["variant"], result, overrides, data, workdir, args, log))
                save_report(build_report(args, data_name, data, results, pending, load_start, seeded), args.out_dir)
        orchestration = ({"measured": False, "reason": "not measured: skipped (--skip-orchestration)"}
                         if args.skip_orchestration else orchestration_overhead(variants, args, log))
    except BaseException:
        print(f"kept {workdir} for inspection (children's output in {log})", file=sys.stderr)
        raise
    shutil.rmtree(workdir)  # it holds prepared AG News text: never leave it behind
    return save_report(build_report(args, data_name, data, results, orchestration, load_start, seeded), args.out_dir)


def main() -> None:
    args = parse_args()
    if args.child_ours:
        ours_child(args)
        return
    print(compare(args))


if __name__ == "__main__":
    main()
