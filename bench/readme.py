"""Write the benchmark tables into README.md from bench/results/*.json (the last step of `make bench`).

Only the generated blocks are replaced: between the two `bench:` markers (Benchmarks) and the two
`quality:` markers (the Models section's held-out results); the prose around them, which
explains the figures, is written by hand. Every table states the machine, threads, data, epochs and load
average its figures were measured under. A results file that is missing leaves a line saying so.

    .venv/bin/python bench/readme.py [--readme README.md] [--check]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path
from typing import Any

from common import REPO, RESULTS
from compare import fmt, fmt_acc, seeds_row, yes_no

START = "<!-- bench:start: written by `make bench` (bench/readme.py) from bench/results/*.json; do not edit -->"
END = "<!-- bench:end -->"
QUALITY_START = "<!-- quality:start: written by bench/readme.py from bench/results/quality.json; do not edit -->"
QUALITY_END = "<!-- quality:end -->"


def load(name: str) -> dict[str, Any] | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def machine_text(machine: dict[str, Any]) -> str:
    return f"{machine['cpu']}, {machine['cores']} cores, {machine['memory_gib']} GiB"


def load_text(start: float, end: float) -> str:
    return f"load average {start:.1f} → {end:.1f}"


def compare_tables(report: dict[str, Any]) -> list[str]:
    cond, load = report["conditions"], report["conditions"]["load_average"]
    rows = report["variants"]
    lines = [
        f"**Against the lesson's Keras models** (`bench/compare.py`; {machine_text(report['machine'])}; "
        f"{cond['threads']} threads on both sides; {cond['data_short']}, {cond['rows']['train']:,} train / "
        f"{cond['rows']['val']:,} val rows, vocabulary {cond['vocab_size']:,}; {cond['epochs']} epochs per side, "
        f"the lesson's batch sizes; {report['versions']['peer']}; {load_text(load['start'][0], load['end'][0])}). "
        "Training samples/s are the last epoch's; accuracy is on the validation split after each epoch.",
        "",
        "| variant | batch | ours samples/s | Keras samples/s | ours/Keras | ≥3x | ours val acc by epoch | Keras val acc by epoch | ≥ Keras |",
        "|---|---:|---:|---:|---:|---|---|---|---|",
    ]
    for r in rows:
        t, a = r["train_samples_per_s"], r["val_accuracy"]
        lines.append(f"| {r['variant']} | {r['batch_size']} | {t['ours_bucketed']:,.0f} | {t['peer']:,.0f} | "
                     f"{r['ratios']['train_ours_vs_peer']:.1f}x | {yes_no(r['targets']['train_3x'])} | "
                     f"{fmt_acc(a['ours'])} | {fmt_acc(a['peer'])} | "
                     f"{yes_no(r['targets']['accuracy_at_least_equal'])} |")
    seeded = report.get("accuracy_over_seeds") or []
    if seeded:
        lines += ["", "Accuracy over seeds (training-only reruns on the same split; a seed sets initial weights and "
                      "batch order on both sides; mean ± standard deviation of the last epoch's validation accuracy):",
                  "", "| variant | seeds | ours | Keras | ours - Keras (means) | per seed, ours | per seed, Keras |",
                  "|---|---|---:|---:|---:|---|---|", *(seeds_row(row) for row in seeded)]
    lines += [
        "",
        f"Serving the same trained models (batch {cond['batch']}: {cond['batches']} batches of random test rows, "
        f"each padded to its longest, best of {cond['repeats']} passes; batch 1: median of {cond['b1_texts']} single "
        "rows). Ours is the onnxruntime session; Keras is the fastest of its four calling paths. Peak RSS is the "
        "training process's high-water mark, framework included.",
        "",
        f"| variant | ORT b{cond['batch']} texts/s | Keras b{cond['batch']} texts/s | ratio | ≥2x | ORT b1 ms | Keras b1 ms | "
        "peak RSS ours / Keras MiB | padding eff. bucketed / random |",
        "|---|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        o, p, mem, pad = r["inference"]["ours"], r["inference"]["peer"], r["peak_rss_mb"], r["padding_efficiency"]
        lines.append(f"| {r['variant']} | {o['batch_texts_per_s']:,.0f} | {p['batch_texts_per_s']:,.0f} | "
                     f"{r['ratios']['inference_batch_ours_vs_peer']:.1f}x | {yes_no(r['targets']['inference_2x'])} | "
                     f"{o['b1_median_ms']:.3f} | {p['b1_median_ms']:.3f} | {mem['ours']:,.0f} / {mem['peer']:,.0f} | "
                     f"{pad['bucketed']:.3f} / {fmt(pad['random'], '.3f')} |")
    return lines


def orchestration_lines(report: dict[str, Any]) -> list[str]:
    orch = report["orchestration"]
    if not orch["measured"]:
        return [f"**Orchestration overhead**: {orch['reason']}."]
    return [
        f"**Orchestration overhead** (`bench/compare.py`; {orch['data']}, variants {', '.join(orch['variants'])}, "
        f"{orch['epochs']} epochs, {report['conditions']['threads']} threads): wall seconds of the same work three ways.",
        "",
        "| bare CLI stages, one process each | same stages in one process | `textrnn pipeline` (Prefect + MLflow) | pipeline / bare CLI |",
        "|---:|---:|---:|---:|",
        f"| {orch['bare_cli_seconds']:.1f} | {orch['in_process_seconds']:.1f} | {orch['pipeline_seconds']:.1f} | "
        f"{orch['ratio']:.2f}x |",
    ]


def bucketing_table(report: dict[str, Any]) -> list[str]:
    load = report["load_average_1min"]
    lines = [
        f"**Bucketing and sparse embedding updates** (`bench/train_throughput.py`; {machine_text(report['machine'])}; "
        f"{report['threads']} threads; {report['data_short']}, {report['train_rows']:,} train rows; {report['epochs']} "
        f"epochs per run, the fastest after the first; torch {report['torch']}; {load_text(load['start'], load['end'])}): our "
        "training samples/s as shipped (bucketed batches, sparse embedding updates), with plain shuffled batches "
        "instead, and with dense Adam on the embedding table instead (`train.sparse_embedding=false`).",
        "",
        "| variant | batch | default samples/s | random batches | bucketing speed-up | dense embedding | "
        "sparse-update speed-up | padding eff. bucketed / random |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["results"]:
        lines.append(f"| {r['variant']} | {r['batch_size']} | {r['bucketed_samples_per_second']:,.0f} | "
                     f"{r['random_samples_per_second']:,.0f} | {r['speedup']:.2f}x | "
                     f"{r['dense_embedding_samples_per_second']:,.0f} | {r['sparse_embedding_speedup']:.2f}x | "
                     f"{r['bucketed_padding_efficiency']:.3f} / {r['random_padding_efficiency']:.3f} |")
    return lines


def inference_table(report: dict[str, Any]) -> list[str]:
    batch, load = report["batch"], report["load_average_1min"]
    threads = sorted({r["threads"] for r in report["results"]})
    lines = [
        f"**ONNX Runtime vs PyTorch eager** (`bench/inference.py`; {machine_text(report['machine'])}; "
        f"{', '.join(map(str, threads))} thread(s) on both sides; {report['data']}, median "
        f"{report['tokens_per_text']['median']:.0f} tokens; untrained seeded weights, as latency depends on shapes; "
        f"torch {report['versions']['torch']}, onnxruntime {report['versions']['onnxruntime']}; "
        f"{load_text(load['before'], load['after'])}). `predict()` is the shipped path end to end: tokenizer, "
        "length sorting and token-budget batches included.",
        "",
        f"| variant | torch b1 ms | ORT b1 ms | b1 speed-up | torch b{batch} texts/s | ORT b{batch} texts/s | "
        f"b{batch} speed-up | predict() texts/s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["results"]:
        lines.append(f"| {r['variant']} | {r['torch_eager_b1_ms']:.3f} | {r['onnxruntime_b1_ms']:.3f} | {r['speedup_b1']:.1f}x | "
                     f"{r[f'torch_eager_b{batch}_texts_per_s']:,.0f} | {r[f'onnxruntime_b{batch}_texts_per_s']:,.0f} | "
                     f"{r[f'speedup_b{batch}']:.1f}x | {r['predict_texts_per_s']:,.0f} |")
    return lines


def concurrency_lines(report: dict[str, Any]) -> list[str]:
    load = report["load_average_1min"]
    lines = [
        f"**Concurrency** (`bench/concurrency.py`; {machine_text(report['machine'])}; {report['data']}; "
        f"{report['epochs']} epochs; {load_text(load['start'], load['end'])})."
    ]
    if "pipeline" in report:
        pipe = report["pipeline"]
        lines += [
            "",
            f"`textrnn pipeline` over {', '.join(report['variants'])} (tracking off), a process per variant, "
            f"`train.threads` as shipped: {pipe['seconds_concurrency_1']:.0f} s at `orchestration.max_concurrency` 1, "
            f"{pipe['seconds_concurrency_2']:.0f} s at 2 ({pipe['speedup']:.2f}x).",
        ]
    lines += [
        "",
        "Training samples/s (mean of the epochs after the first) idle and beside competing busy processes:",
        "",
        "| variant | competing | setup | idle | loaded | loaded / idle |",
        "|---|---:|---|---:|---:|---:|",
    ]
    for r in report["under_load"]:
        setups = [("ours", "ours as shipped (`train.threads` 1)"),
                  (f"ours_{r['threads']}_threads", f"ours, {r['threads']} intra-op threads"),
                  ("keras", f"Keras lesson model, {report['machine']['cores']} threads")]
        for key, label in setups:
            idle, loaded = r.get(f"{key}_idle"), r.get(f"{key}_loaded")
            if idle and loaded:
                lines.append(f"| {r['variant']} | {r['competing_processes']} | {label} | {idle:,.0f} | {loaded:,.0f} | "
                             f"{loaded / idle:.2f} |")
    return lines


def quality_lines(report: dict[str, Any]) -> list[str]:
    """The Models section's results table: held-out accuracy by the protocol of bench/quality.py."""
    protocol, summary = report["protocol"], report["summary"]
    bag = next((entry["test_accuracy"]["each"] for entry in summary if entry["variant"] == "bag"), None)
    seeds = ", ".join(str(seed) for seed in protocol["seeds"])
    lines = [
        f"**Held-out accuracy on real AG News** (`bench/quality.py`; {machine_text(report['machine'])}). The "
        f"{protocol['rows']:,} shared rows were split once, before any option was chosen, into a stratified "
        f"{protocol['fold_fraction']:.0%} held-out fold ({protocol['fold_rows']:,} rows, seed {protocol['fold_seed']}) and "
        f"the pool ({protocol['pool_rows']:,} rows). Each variant trains on the pool as the pipeline does (its own "
        f"stratified 90/10 train/val split, up to {protocol['epochs']} epochs, early stopping on validation loss with "
        f"patience {protocol['patience']}), is exported to ONNX and scored on the fold. Seeds {seeds} (each a new "
        "val split, initialisation and batch order); mean ± sample standard deviation. The new variants' options "
        "were chosen on validation splits only, never on the fold: `bilstm_mean`'s on seed 42's, `bilstm_adv`'s "
        "on those of tuning seeds 42-46, paired with `bag` (every trial is in "
        "`bench/results/quality_trials.json`, and `bilstm_mean`'s `textrnn tune` studies in "
        f"`bench/results/quality_tune.json`). The run took {report['wall_seconds'] / 60:.0f} min with "
        f"{report['jobs']} variants at a time ({load_text(*report['load_average'])}).",
        "",
        "| variant | held-out accuracy | − bag (paired by seed, ± s.e.) | held-out macro-F1 | val accuracy | best epoch | per seed |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for entry in summary:
        accuracy = entry["test_accuracy"]
        versus = paired_difference(accuracy["each"], bag) if bag is not None else "–"
        lines.append(
            f"| `{entry['variant']}` | {accuracy['mean']:.3f} ± {accuracy['sd']:.3f} | {versus} | "
            f"{entry['test_macro_f1']['mean']:.3f} ± {entry['test_macro_f1']['sd']:.3f} | "
            f"{entry['best_val_accuracy']['mean']:.3f} | {entry['best_epoch']['mean']:.1f} | "
            f"{' / '.join(f'{value:.3f}' for value in accuracy['each'])} |")
    return lines


def paired_difference(each: list[float], baseline: list[float]) -> str:
    """Mean ± standard error of the per-seed differences (the same seeds, in the same order)."""
    differences = [value - base for value, base in zip(each, baseline, strict=True)]
    error = statistics.stdev(differences) / math.sqrt(len(differences)) if len(differences) > 1 else 0.0
    return f"{statistics.fmean(differences):+.3f} ± {error:.3f}"


def quality_block() -> str:
    report = load("quality")
    return "\n".join(quality_lines(report)) if report else "`bench/results/quality.json` is missing: run `bench/quality.py`."


def block() -> str:
    """The generated Markdown between the markers."""
    reports = {name: load(name) for name in ("compare", "train_throughput", "inference", "concurrency")}
    renderers = {"compare": compare_tables, "train_throughput": bucketing_table, "inference": inference_table,
                 "concurrency": concurrency_lines}
    sections = [renderers[name](report) if report else [f"`bench/results/{name}.json` is missing: run `make bench`."]
                for name, report in reports.items()]
    if reports["compare"]:
        sections.append(orchestration_lines(reports["compare"]))
    return "\n\n".join("\n".join(lines) for lines in sections)


# Each generated block of the README: (start marker, end marker) -> what goes between them.
BLOCKS = {
    (START, END): block,
    (QUALITY_START, QUALITY_END): quality_block,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readme", type=Path, default=REPO / "README.md")
    parser.add_argument("--check", action="store_true", help="exit 1 if the README's tables are out of date")
    args = parser.parse_args()
    text = args.readme.read_text(encoding="utf-8")
    updated = text
    for (start, end), render in BLOCKS.items():
        if start not in updated or end not in updated:
            raise SystemExit(f"{args.readme}: no generated block (the lines {start!r} and {end!r})")
        head, rest = updated.split(start, 1)
        _, tail = rest.split(end, 1)
        updated = f"{head}{start}\n{render()}\n{end}{tail}"
    if args.check:
        sys.exit(0 if updated == text else 1)
    args.readme.write_text(updated, encoding="utf-8")
    print(f"{args.readme}: benchmark tables updated from {RESULTS}")


if __name__ == "__main__":
    main()
