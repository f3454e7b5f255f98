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

    .venv/bin/python bench/compare.py [--epochs 2] [--threads 2] [--variants rnn,lstm] [--data sample]

Writes bench/results/compare.json and bench/results/compare.md (which states machine, threads, data and
epochs for every figure) and prints the markdown.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
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

from peer_keras import LESSON_MODELS, b1_latency_ms, batch_throughput, inference_inputs, peak_rss_mb
from textrnn.tokens import EncodedSplit, split_path

REPO = Path(__file__).resolve().parent.parent
PARAMS = REPO / "params.yaml"
AG_NEWS = REPO.parent / "shared" / "data" / "ag_news" / "train_head_10429.csv"
RESULTS = REPO / "bench" / "results"
PEER_SCRIPT = Path(__file__).resolve().parent / "peer_keras.py"
TARGETS = {"train_ratio": 3.0, "inference_ratio": 2.0, "padding_efficiency": 0.95}
# Quiet, offline libraries in every process we start (the Makefile exports the same).
QUIET_ENV = {"MLFLOW_DISABLE_TELEMETRY": "true", "ORT_DISABLE_TELEMETRY": "1", "DVC_NO_ANALYTICS": "1",
             "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "HF_HUB_DISABLE_TELEMETRY": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
PATH_KEYS = ("prepared", "encoded", "artifacts", "models", "metrics", "plots", "cache")


# ------------------------------------------------------------------------------------------------- data


def data_overrides(choice: str, sample_rows: int) -> tuple[str, list[str]]:
    """(description, config overrides) of the data both sides read."""
    if choice in ("auto", "ag_news") and AG_NEWS.is_file():
        # The file is the train source (a stratified 10% becomes val) and, unused for accuracy here, the
        # test source, whose rows only feed the inference timings.
        return (f"AG News, {AG_NEWS.name} (the head of the official train split; stratified 90/10 train/val)",
                ["data.source=csv", f"data.train_path={AG_NEWS}", f"data.test_path={AG_NEWS}"])
    if choice == "ag_news":
        raise SystemExit(f"{AG_NEWS}: not found (use --data sample)")
    return (f"textrnn sample corpus ({sample_rows} train rows, stratified 90/10 train/val)",
            ["data.source=sample", f"data.sample.train_rows={sample_rows}"])


def base_overrides(workdir: Path, data_sets: list[str], args: argparse.Namespace) -> list[str]:
    """Overrides shared by every run of ours: data, paths under `workdir`, epochs, threads, CPU."""
    paths = [f"paths.{name}={workdir / name}" for name in PATH_KEYS]
    # patience above the epoch count: both sides run exactly `epochs` epochs, no early stop.
    return [*data_sets, *paths, "tracking.enabled=false", f"train.epochs={args.epochs}",
            f"train.patience={args.epochs + 1}", f"train.threads={args.threads}", "train.device=cpu"]


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
        ours = cfg.variant(name).model_dump(include=set(lesson))
        if ours != lesson:
            raise SystemExit(f"variant {name}: params.yaml has {ours}, the lesson's model is {LESSON_MODELS[name]}")


# ------------------------------------------------------------------------------------- subprocess sides


def run_child(command: list[str], out: Path, log: Path) -> dict[str, Any]:
    """Run one side in a fresh interpreter; return the JSON it wrote to `out` (output goes to `log`), with
    the process's wall time and the load average around it, to tell which runs other work disturbed."""
    env = {**os.environ, **QUIET_ENV}
    load_before, started = os.getloadavg()[0], time.perf_counter()
    with open(log, "a", encoding="utf-8") as handle:
        finished = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    if finished.returncode != 0:
        raise SystemExit(f"{' '.join(command[:4])}... failed (exit {finished.returncode}); see {log}")
    report = json.loads(out.read_text(encoding="utf-8"))
    report["process"] = {"wall_seconds": time.perf_counter() - started,
                         "load_average_1min": [load_before, os.getloadavg()[0]]}
    return report


def inference_options(args: argparse.Namespace) -> list[str]:
    return ["--inference-seed", str(args.seed), "--b1-texts", str(args.b1_texts), "--batch", str(args.batch),
            "--batches", str(args.batches), "--repeats", str(args.repeats)]


def run_ours(variant: str, batching: str, overrides: list[str], workdir: Path, args: argparse.Namespace,
             log: Path) -> dict[str, Any]:
    out = workdir / f"ours_{variant}_{batching}.json"
    command = [sys.executable, __file__, "--child-ours", variant, "--batching", batching, "--out", str(out),
               "--child-overrides", json.dumps(overrides), "--threads", str(args.threads), *inference_options(args)]
    if batching != "bucketed":
        command.append("--no-inference")  # the model is the same; only training throughput differs
    return run_child(command, out, log)


def run_peer(variant: str, data: dict[str, Any], workdir: Path, args: argparse.Namespace, log: Path) -> dict[str, Any]:
    """The peer on the encoded data in `workdir`, seeded like ours (config `seed`)."""
    out = workdir / f"peer_{variant}.json"
    command = [args.peer_python, str(PEER_SCRIPT), "--variant", variant, "--encoded", str(workdir / "encoded"),
               "--vocab-size", str(data["vocab_size"]), "--epochs", str(args.epochs), "--threads", str(args.threads),
               "--inter-op-threads", "1", "--seed", str(data["seed"]), "--out", str(out), *inference_options(args)]
    return run_child(command, out, log)


def ours_child(args: argparse.Namespace) -> None:
    """Our side, in its own process: train one variant, record peak RSS, export, time onnxruntime."""
    from textrnn import config
    from textrnn.train import train_variant

    before = peak_rss_mb()["rss_mb"]
    enabled = "true" if args.batching == "bucketed" else "false"
    cfg = config.load(PARAMS, [*json.loads(args.child_overrides), f"buckets.enabled={enabled}"])
    summary = train_variant(cfg, args.child_ours)
    report = {"side": "ours", "variant": args.child_ours, "batching": args.batching, "history": summary["history"],
              "memory": {"before_import_rss_mb": before, "train_peak_rss_mb": peak_rss_mb()["peak_rss_mb"]}}
    if not args.no_inference:
        report["inference"] = ours_inference(cfg, args)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


def ours_inference(cfg, args: argparse.Namespace) -> dict[str, Any]:
    """Export the trained model (parity-checked) and time the raw onnxruntime session on the shared ids."""
    import onnxruntime as ort

    from textrnn.export import export_variant, onnx_path
    from textrnn.inference import CPU_PROVIDER, session_options

    export = export_variant(cfg, args.child_ours)
    options = session_options(args.threads)
    options.inter_op_num_threads = 1  # sequential execution: the inter-op pool is unused anyway
    session = ort.InferenceSession(str(onnx_path(cfg.paths.model_dir(args.child_ours))), sess_options=options,
                                   providers=[CPU_PROVIDER])

    def run(token_ids: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        return session.run(["logits"], {"token_ids": token_ids, "lengths": lengths})[0]

    test = EncodedSplit.load(split_path(cfg.paths.encoded, "test"))
    singles, batches = inference_inputs(test, args.inference_seed, args.b1_texts, args.batch, args.batches)
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


# The same stages as the CLI's, in one interpreter with tracking off: what remains of the pipeline's time
# once neither Prefect, MLflow nor a process start per stage is paid.
IN_PROCESS_STAGES = """
from textrnn import config, steps
cfg = config.load("params.yaml", ["tracking.enabled=false"])
steps.prepare_step(cfg)
steps.encode_step(cfg)
for variant in cfg.variants:
    steps.train_step(cfg, variant)
    steps.export_step(cfg, variant)
    steps.evaluate_step(cfg, variant)
"""


def orchestration_overhead(variants: list[str], args: argparse.Namespace, log: Path) -> dict[str, Any]:
    """Wall time of `textrnn pipeline` (Prefect flow + MLflow tracking) against the bare CLI stages (prepare,
    encode, then train/export/evaluate per variant, tracking off, one process per stage) and against the
    same stages in one process; each run in a fresh directory on the sample corpus."""
    gap = pipeline_available()
    if gap is not None:
        return {"measured": False, "reason": gap}
    textrnn = str(Path(sys.executable).parent / "textrnn")
    off = ["--set", "tracking.enabled=false"]
    stages = [[textrnn, "prepare", *off], [textrnn, "encode", *off]]
    for variant in variants:
        stages += [[textrnn, stage, "--variant", variant, *off] for stage in ("train", "export", "evaluate")]
    runs = {"bare_cli": stages, "in_process": [[sys.executable, "-c", IN_PROCESS_STAGES]],
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
            "in_process": "the same stages through textrnn.steps in one Python process, tracking off",
            "pipeline": ("textrnn pipeline: the Prefect training_pipeline flow (temporary local Prefect server, "
                         "orchestration.max_concurrency=1) with MLflow tracking in a fresh sqlite store; it also "
                         "registers each model and promotes a champion, which the bare stages cannot do without MLflow")}


# ------------------------------------------------------------------------------------------- reporting


def machine() -> dict[str, Any]:
    """What the figures ran on: CPU model, cores, memory, and the load average (other work on the CPUs)."""
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor() or platform.machine())
    mem_kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                  if line.startswith("MemTotal"))
    return {"cpu": model, "cores": os.cpu_count(), "memory_gib": round(mem_kb / 2**20, 1),
            "python": platform.python_version(), "os": platform.platform()}


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
        "besides the framework: ours clips the gradient norm at 1.0 and uses PyTorch's default initialisation; "
        "the peer is the lesson's Keras defaults (Glorot/orthogonal init, no clipping).",
        "",
        "| variant | ours (bucketed) | ours (random batches) | peer (Keras) | ours - peer, last epoch | ≥ peer |",
        "|---|---|---|---|---:|---|",
    ]
    for r in report["variants"]:
        a = r["val_accuracy"]
        lines.append(f"| {r['variant']} | {fmt_acc(a['ours'])} | {fmt_acc(a['ours_random_batches'])} | {fmt_acc(a['peer'])} | "
                     f"{a['ours'][-1] - a['peer'][-1]:+.3f} | {yes_no(r['targets']['accuracy_at_least_equal'])} |")
    se = (0.25 / cond["rows"]["val"]) ** 0.5
    lines += [f"", f"One standard error of an accuracy near 0.5 on {cond['rows']['val']} rows is {se:.3f}.", ""]
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
            *([f"", f"Note: {orch['note']}"] if orch.get("note") else []),
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
                 orchestration: dict[str, Any], load_start: tuple[float, ...]) -> dict[str, Any]:
    """The JSON report: machine, versions, conditions, per-variant results and the orchestration figure."""
    peer_report = results[0]["runs"]["peer"] if results else None
    return {
        "benchmark": "compare",
        "machine": machine(),
        "versions": versions(peer_report),
        "conditions": {
            "data": data_name, "data_short": "AG News" if "AG News" in data_name else "sample corpus",
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
    try:
        overrides = base_overrides(workdir, data_sets, args)
        check_same_architecture(overrides, variants)
        data = prepare_data(overrides)
        results = []
        pending = {"measured": False, "reason": "not measured: the run stopped before this step"}
        for variant in variants:
            results.append(run_variant(variant, overrides, data, workdir, args, log))
            save_report(build_report(args, data_name, data, results, pending, load_start), args.out_dir)
        orchestration = ({"measured": False, "reason": "not measured: skipped (--skip-orchestration)"}
                         if args.skip_orchestration else orchestration_overhead(variants, args, log))
    except BaseException:
        print(f"kept {workdir} for inspection (children's output in {log})", file=sys.stderr)
        raise
    shutil.rmtree(workdir)  # it holds prepared AG News text: never leave it behind
    return save_report(build_report(args, data_name, data, results, orchestration, load_start), args.out_dir)


def main() -> None:
    args = parse_args()
    if args.child_ours:
        ours_child(args)
        return
    print(compare(args))


if __name__ == "__main__":
    main()
