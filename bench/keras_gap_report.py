"""What bench/keras_gap.py reports: the summary statistics of its runs, the record it writes to
bench/results/keras_gap.json, and the markdown (bench/results/keras_gap.md) rendered from that record.

Everything here reads the runs' JSON only, so `keras_gap.py --render` rewrites the markdown without training.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from common import REPO, load_average, machine
from keras_gap_child import DEFAULT_VARIANTS, FACTORS, factors_of, source_sha256
from peer_keras import LESSON_MODELS

# The report's closing notes; `--render` writes them into keras_gap.json as well as the markdown.
NOTES = [
    "`pad_row` cannot change what a masked model computes: the classifier reads each row's state at "
    "lengths - 1, so pad positions get exactly zero gradient and Adam (dense or lazy) never moves row 0 "
    "(pad_row_l2_moved is 0 in the JSON). It still changes the floating-point path (the embedding's sparse "
    "gradient then carries row-0 entries of zero, so sums run in another order), and two epochs of these small "
    "models are chaotic: its spread around `ours` is the noise floor of a semantically null change.",
    "Our runs are deterministic for a given seed and thread count (the same seed twice gives the same figure "
    "to the last digit), but not across thread counts: compare.json ran ours and Keras with 2 threads, this "
    "benchmark with 1, so the same seed gives other figures (e.g. rnn_masked seed 42: ours 0.716 there, 0.712 "
    "here; Keras 0.843 there, 0.796 here at 1 thread, where the encoding also differs slightly: next note).",
    "compare.json's Keras figures are not reused (data check above): same rows, split seed and vocabulary, but its "
    "recorded padding figures differ from this encoding's in the 5th significant digit (e.g. batch 16, random "
    "batches: 0.5932513 there, 0.5932465 here), so a few rows tokenize to other lengths with the current "
    "tokenizer; Keras was re-run here on these ids, with this benchmark's thread count.",
    "Keras' SimpleRNN/LSTM with mask_zero and post-padding return the state at the last unmasked step, what our "
    "masked formulation reads; head (Glorot uniform, zero bias), embedding (uniform ±0.05), kernel (Glorot "
    "uniform), recurrent kernel (orthogonal) and LSTM forget bias (+1) are already Keras' on our side "
    "(src/textrnn/models.py), and the loss is the same mean cross-entropy.",
    "Keras adds its epsilon to the uncorrected sqrt(v): an effective epsilon of 1e-7 / sqrt(1 - 0.999^t), "
    "3e-6 at the first step and about 1.2e-7 after 1,000; `adam_eps` uses a flat 1e-7, the closest torch option.",
    "Keras 3's Adam turns the embedding's IndexedSlices gradient dense in its moment updates (m, v of every row "
    "decay and every row moves on its momentum at every step): the dense Adam that `dense_adam` selects. Lazy "
    "Adam moves a row only in the steps whose batch holds its token, once per sighting; dense Adam keeps moving "
    "it for tens of steps after (m decays by 0.9, v by 0.999 per step), so a token seen once moves about 7x "
    "further in two epochs (the `emb. moved` column).",
    "`keras_all` and `random_batches` change the batch order, so their pairing with `ours` is looser (same "
    "initial weights, other batches) and their paired standard errors are larger.",
]


# ------------------------------------------------------------------------------------------- statistics


def mean_sd(values: list[float]) -> tuple[float, float | None]:
    return float(np.mean(values)), (float(np.std(values, ddof=1)) if len(values) > 1 else None)


def summarise_variant(runs: list[dict], baseline: dict[int, float], keras: list[float]) -> dict[str, Any]:
    """Mean ± sd, the difference to ours paired by seed (mean ± standard error) and to Keras (Welch)."""
    accs = [run["val_accuracy"] for run in runs]
    mean, sd = mean_sd(accs)
    paired = [run["val_accuracy"] - baseline[run["seed"]] for run in runs if run["seed"] in baseline]
    p_mean, p_sd = mean_sd(paired) if paired else (None, None)
    row = {"n": len(accs), "mean": mean, "sd": sd, "per_seed": {str(run["seed"]): run["val_accuracy"] for run in runs},
           "vs_ours_paired": {"mean": p_mean, "se": p_sd / math.sqrt(len(paired)) if p_sd is not None else None,
                              "n": len(paired)}}
    if keras:
        k_mean, k_sd = mean_sd(keras)
        se = math.sqrt((sd or 0) ** 2 / len(accs) + (k_sd or 0) ** 2 / len(keras))
        row["vs_keras"] = {"mean": mean - k_mean, "se": se}
        # Share of the ours -> Keras gap this variant closes (paired change / gap in means).
        gap = k_mean - float(np.mean(list(baseline.values()))) if baseline else None
        row["share_of_gap_closed"] = (p_mean / gap) if (gap and p_mean is not None and abs(gap) > 1e-9) else None
    diag = [run["diagnostics"] for run in runs]
    clip_key = next(key for key in diag[0] if key.startswith("share_of_steps_above"))
    row["diagnostics"] = {
        "grad_norm_median": float(np.mean([d["grad_norm_median"] for d in diag])),
        "share_of_steps_above_clip": float(np.mean([d[clip_key] for d in diag])),
        "embedding_l2_moved_by_train_count": {
            band: float(np.mean([d["embedding_l2_moved_by_train_count"][band]["mean_l2_moved"] for d in diag]))
            for band in diag[0]["embedding_l2_moved_by_train_count"]
            if diag[0]["embedding_l2_moved_by_train_count"][band]["mean_l2_moved"] is not None},
        "effective_bias_abs_mean": float(np.mean([next(iter(d["cells"].values()))["effective_bias_abs_mean"]
                                                  for d in diag])) if diag[0]["cells"] else None,
        "train_seconds_mean": float(np.mean([run["train_seconds"] for run in runs])),
    }
    return row


# ------------------------------------------------------------------------------------------- the record


def versions() -> dict[str, str]:
    import torch

    found = {"torch": torch.__version__}
    try:
        from importlib.metadata import version

        found["keras"] = f"TensorFlow {version('tensorflow-cpu')}, Keras {version('keras')} (CPU)"
    except Exception:  # noqa: BLE001 - the peer is optional
        pass
    return found


def build_report(args, data, data_name, todo, ours, keras, load_start, started, notes,
                 previous: dict[str, Any] | None = None) -> dict[str, Any]:
    models = {}
    # With --resume, models of the earlier report that this call does not run stay in it.
    carried = {model: block for model, block in (previous or {}).get("models", {}).items() if model not in todo}
    for model, spec in todo.items():
        runs = ours.get(model, {})
        baseline = {run["seed"]: run["val_accuracy"] for run in runs.get("ours", [])}
        k_accs = [run["val_accuracy"] for run in keras.get(model, {}).get("runs", [])]
        models[model] = {
            "seeds": spec["seeds"],
            "keras": keras.get(model, {"runs": [], "data_check": "not run yet"}),
            "variants": {variant: {"factors": factors_of(variant), **summarise_variant(runs[variant], baseline, k_accs)}
                         for variant in spec["variants"] if runs.get(variant)},
            "runs": runs,
        }
    return {
        "benchmark": "keras_gap", "issue": 14, "machine": machine(), "versions": versions(),
        "conditions": {
            "data": data_name, "rows": data["rows"], "split_seed": data["split_seed"], "vocab_size": data["vocab_size"],
            "val_fraction": data["val_fraction"], "encoded_sha256": data["encoded_sha256"], "epochs": args.epochs,
            "padding_by_batch_size": data["padding_by_batch_size"],
            "threads": args.threads,
            "threads_text": (f"torch.set_num_threads({args.threads}) (train.threads), OMP/MKL {args.threads}; "
                             f"TensorFlow intra-op {args.threads}, inter-op 1, tf.data private pool {args.threads}"),
            "seeds": {**{model: block["seeds"] for model, block in carried.items()},
                      **{model: spec["seeds"] for model, spec in todo.items()}},
            "load_average": {"start": load_start, "end": load_average()},
        },
        "textrnn_source": {"sha256": os.environ.get("KERAS_GAP_SOURCE"), "pinned_copy": os.environ.get("PYTHONPATH"),
                           "live_checkout_sha256_at_end": source_sha256(REPO / "src" / "textrnn")},
        "factors": FACTORS, "models": {**carried, **models},
        "wall_seconds": time.perf_counter() - started + (previous or {}).get("wall_seconds", 0.0),
        "wall_seconds_this_call": time.perf_counter() - started, "notes": notes,
    }


def save(report: dict[str, Any], out_dir: Path) -> str:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "keras_gap.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    text = markdown(report)
    (out_dir / "keras_gap.md").write_text(text, encoding="utf-8")
    return text


# --------------------------------------------------------------------------------------------- markdown


def pm(mean: float | None, sd: float | None, sign: bool = False) -> str:
    """`mean ± sd` to three decimals; the mean alone without an sd, `n/a` without a mean."""
    if mean is None:
        return "n/a"
    text = f"{mean:+.3f}" if sign else f"{mean:.3f}"
    return f"{text} ± {sd:.3f}" if sd is not None else text


def ordered(items: dict[str, Any], order: list[str]) -> list[tuple[str, Any]]:
    """`items` in `order`, names not in it (combinations) last in their own order."""
    rank = {name: index for index, name in enumerate(order)}
    return sorted(items.items(), key=lambda item: rank.get(item[0], len(order)))


def summary_lines(report: dict[str, Any]) -> list[str]:
    """Per model: the ours-to-Keras gap, then every ablation's paired effect in units of its standard error."""
    lines = ["## Summary", ""]
    for model, block in ordered(report["models"], list(LESSON_MODELS)):
        k_accs = [run["val_accuracy"] for run in block["keras"]["runs"]]
        base = block["variants"].get("ours")
        if not base:
            continue
        text = f"- **{model}**: ours {pm(base['mean'], base['sd'])} (n={base['n']})"
        if k_accs:
            k_mean, k_sd = mean_sd(k_accs)
            text += (f", Keras {pm(k_mean, k_sd)} (n={len(k_accs)}): gap "
                     f"{pm(base['vs_keras']['mean'], base['vs_keras']['se'], sign=True)}")
        effects = []
        for variant, row in ordered(block["variants"], DEFAULT_VARIANTS):
            paired = row["vs_ours_paired"]
            if variant == "ours" or paired["se"] in (None, 0):
                continue
            effects.append(f"`{variant}` {paired['mean']:+.3f} ± {paired['se']:.3f} "
                           f"({paired['mean'] / paired['se']:+.1f} se, n={paired['n']})")
        lines.append(text + ". Paired effect of each ablation: " + "; ".join(effects) + ".")
    return [*lines, ""]


def markdown(report: dict[str, Any]) -> str:
    m, cond = report["machine"], report["conditions"]
    lines = [
        "# Issue 14: what separates our recurrent models from the lesson's Keras ones (bench/keras_gap.py)",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores (shared with other work), {m['memory_gib']} GiB, Python {m['python']}; "
        f"torch {report['versions']['torch']}, {report['versions'].get('keras', 'Keras not loaded')}. "
        f"Load average (1 min) {cond['load_average']['start']:.1f} at start, {cond['load_average']['end']:.1f} at end.",
        f"Threads: {cond['threads_text']}; one process at a time.",
        f"Data: {cond['data']}; {cond['rows']['train']} train / {cond['rows']['val']} val rows, split seed "
        f"{cond['split_seed']}, vocabulary {cond['vocab_size']}; ours and Keras read the same encoded ids "
        f"(sha256 train {cond['encoded_sha256']['train'][:12]}…, val {cond['encoded_sha256']['val'][:12]}…).",
        f"Recipe: {cond['epochs']} epochs, no early stopping; figure = last epoch's validation accuracy. Seeds (n per "
        "variant in the tables): "
        f"{', '.join(f'{model}: {seeds}' for model, seeds in cond['seeds'].items())} (a seed sets initial weights and "
        "batch order; our variants of one seed start from the same weights, so their differences to `ours` are paired).",
        f"Total wall time {report['wall_seconds'] / 60:.1f} min (all calls of the script that made these runs). "
        f"Code: a frozen copy of src/textrnn, sha256 {str(report['textrnn_source']['sha256'])[:12]}… (the checkout "
        f"was {report['textrnn_source']['live_checkout_sha256_at_end'][:12]}… at the end).",
        "",
        "Factors (each moves our recipe one step towards Keras'):",
        "",
        *(f"- `{name}`: {text}" for name, text in FACTORS.items()),
        "- `keras_all`: all of them together.",
        "",
    ]
    lines += summary_lines(report)
    for model, block in ordered(report["models"], list(LESSON_MODELS)):
        keras = block["keras"]
        k_accs = [run["val_accuracy"] for run in keras["runs"]]
        k_mean, k_sd = mean_sd(k_accs) if k_accs else (None, None)
        lines += [
            f"## {model} ({LESSON_MODELS[model].cell}, hidden {LESSON_MODELS[model].hidden}, batch "
            f"{LESSON_MODELS[model].batch_size})",
            "",
            f"Keras (bench/peer_keras.py): {pm(k_mean, k_sd)} over {len(k_accs)} runs: "
            + (", ".join(f"seed {run['seed']} {run['val_accuracy']:.3f} ({'compare.json' if run['source'] != 'run here' else 'here'}, "
                         f"{run.get('threads', '?')} thr)" for run in keras["runs"]) or "not run")
            + f". Data check against compare.json: {json.dumps(keras['data_check'])}.",
            "",
            "Diff vs ours: paired by seed, mean ± standard error. Diff vs Keras: difference of means ± its standard "
            "error. Gap closed: the paired change over the ours-to-Keras gap. Clipped: share of steps whose gradient "
            "norm exceeded 1.0 (clipped only where `no_clip` is absent). Embedding moved: mean L2 distance from the "
            "initial row, for tokens seen once / 20+ times in the train split.",
            "",
            "| variant | n | val accuracy | diff vs ours | diff vs Keras | gap closed | clipped | emb. moved (1× / 20+×) | eff. bias, mean abs | per seed |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for variant, row in ordered(block["variants"], DEFAULT_VARIANTS):
            d, p = row["diagnostics"], row["vs_ours_paired"]
            vk = row.get("vs_keras")
            closed = row.get("share_of_gap_closed")
            moved = d["embedding_l2_moved_by_train_count"]
            lines.append(
                f"| `{variant}` | {row['n']} | {pm(row['mean'], row['sd'])} | "
                f"{'—' if variant == 'ours' else pm(p['mean'], p['se'], sign=True)} | "
                f"{pm(vk['mean'], vk['se'], sign=True) if vk else 'n/a'} | "
                f"{'—' if variant == 'ours' or closed is None else f'{closed:.0%}'} | {d['share_of_steps_above_clip']:.0%} | "
                f"{moved.get('1', float('nan')):.3f} / {moved.get('20+', float('nan')):.3f} | "
                f"{d['effective_bias_abs_mean']:.3f} | {' / '.join(f'{v:.3f}' for v in row['per_seed'].values())} |")
        lines.append("")
    if report.get("notes"):
        lines += ["## Notes", "", *(f"- {note}" for note in report["notes"]), ""]
    return "\n".join(lines) + "\n"
