"""Issue 14: which recipe difference makes our masked SimpleRNN (and LSTM) trail the lesson's Keras models?

Question. bench/results/compare.md: at the lesson's recipe (2 epochs on the 10,429 shared AG News rows),
our `rnn_masked` reaches 0.726 ± 0.051 validation accuracy against Keras' 0.790 ± 0.047 (5 seeds), our
`lstm` 0.853 against 0.864. Both sides read the same token ids and split; what else differs, and which of
those differences accounts for the gap?

Method. One-factor-at-a-time ablations, each moving *our* recipe one step towards the Keras lesson's
(bench/peer_keras.py), plus combinations. Every factor is applied from here, by config override or by
monkeypatching `textrnn.train` in a child process; nothing under src/ changes:

| factor | ours | Keras | how it is applied here |
|---|---|---|---|
| `single_bias` | two biases per cell (bias_ih + bias_hh) | one | bias_hh zeroed and frozen (requires_grad False) |
| `no_clip` | gradient norm clipped at 1.0 | no clipping | `clip_grad_norm` with max_norm=inf (norm still logged) |
| `dense_adam` | lazy Adam (SparseAdam) on the embedding | dense Adam | `train.sparse_embedding=false` |
| `random_batches` | length-bucketed batches | shuffled batches | `buckets.enabled=false` |
| `pad_row` | pad row zero and frozen (padding_idx=0) | row 0 random, masked | padding_idx None, row 0 ~U(±0.05) |
| `adam_eps` | Adam eps 1e-8 | 1e-7 | eps=1e-7 in both Adam instances |

A variant is `ours`, one factor, factors joined with `+`, or `keras_all` (every factor). Each (model,
variant, seed) trains in its own interpreter with one torch thread (TensorFlow intra-op and inter-op 1 on
the Keras side), one process at a time. Data: the shared AG News rows (`../shared/data/ag_news/`, read in
place; the prepared and encoded copies live in a scratch directory, deleted at the end), prepared and
encoded once by textrnn with config seed 42 exactly as bench/compare.py does, so every run, ours and the
peer's, reads the same token ids and the same stratified 90/10 train/val split; a run's seed changes only
initial weights and batch order. The figure is the last epoch's validation accuracy, as compare.py reports.

Each run also logs diagnostics: the pre-clipping gradient norm (median, share of steps above 1.0), how far
the embedding rows moved from their initial values, grouped by how often the token occurs in the train split,
and the cell's effective bias (bias_ih + bias_hh).

Keras reference. `--keras auto` (default) reuses compare.json's per-seed Keras figures only when the data
provably match (same rows, vocabulary and epochs, and the same train split: compare.json's seeded padding
figures, a function of every train row's length in row order, equal ours to the last digit); otherwise, and
for seeds compare.json lacks, it runs bench/peer_keras.py with this run's thread count. `--keras run` always
runs it, `cached` never does, `skip` omits it, `reuse` keeps an earlier report's Keras runs (with --resume);
a mode per model reads `--keras rnn_masked=run,lstm=cached`.

    .venv/bin/python bench/keras_gap.py [--models rnn_masked,lstm] [--seeds 42,1,2,3,4] [--epochs 2]
        [--variants ours,single_bias,no_clip,...] [--threads 1] [--keras auto] [--resume]

`--resume` reuses the runs of an earlier bench/results/keras_gap.json made on the same data (sha256 of the
encoded files), epochs and threads, and the same frozen copy of src/textrnn, so adding a variant or seeds
reruns only those; `--render` only rewrites the markdown. bench/results/keras_gap.* were made by three calls
(27 min of wall time on 2 shared cores):

    .venv/bin/python bench/keras_gap.py --models rnn_masked --seeds 42,1,2,3,4,5,6,7,8,9 --keras rnn_masked=run
    .venv/bin/python bench/keras_gap.py --resume --models lstm --seeds 42,1,2,3,4 --keras lstm=run \
        --variants ours,single_bias,no_clip,dense_adam,adam_eps,keras_all
    .venv/bin/python bench/keras_gap.py --resume --models rnn_masked --variants ours,dense_adam,keras_all \
        --seeds 42,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19 --keras rnn_masked=reuse

Writes bench/results/keras_gap.json and bench/results/keras_gap.md (machine, threads, data, seeds; per
variant mean ± sd, difference against ours paired by seed and against Keras).

Code: this file is the entry point (arguments, the frozen copy of src/textrnn, one child process per run,
the Keras reference); bench/keras_gap_child.py holds the factors and what a child process runs (started as
`keras_gap.py --child-model ...`); bench/keras_gap_report.py the statistics, the JSON record and the markdown.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from common import PARAMS, QUIET_ENV, RESULTS, data_overrides, load_average, run_overrides
from keras_gap_child import DEFAULT_VARIANTS, child, factors_of, source_sha256
from keras_gap_report import NOTES, build_report, save
from peer_keras import LESSON_MODELS

SCRATCH = Path("/tmp/keras_gap")
REPO_SRC = Path(__file__).resolve().parent.parent / "src"
PEER_SCRIPT = Path(__file__).resolve().parent / "peer_keras.py"
COMPARE_JSON = RESULTS / "compare.json"


def pin_source(args: argparse.Namespace) -> None:
    """Run the whole benchmark on a frozen copy of src/textrnn (others may edit the checkout meanwhile).

    Copies the package to /tmp/keras_gap/src/<sha>/textrnn (or, with --resume, reuses the copy the earlier
    report names, so added runs use the same code) and re-executes this script with that copy first on
    PYTHONPATH; every child inherits it. Does nothing in the re-executed process."""
    if os.environ.get("KERAS_GAP_SOURCE"):
        return
    live = REPO_SRC / "textrnn"
    sha = source_sha256(live)
    previous = args.out_dir / "keras_gap.json"
    if args.resume and previous.is_file():
        recorded = json.loads(previous.read_text(encoding="utf-8")).get("textrnn_source", {}).get("sha256")
        if recorded and (SCRATCH / "src" / recorded[:16] / "textrnn").is_dir():
            sha = recorded
    root = SCRATCH / "src" / sha[:16]
    if not (root / "textrnn").is_dir():
        shutil.copytree(live, root / "textrnn", ignore=shutil.ignore_patterns("__pycache__"))
    env = {**os.environ, "KERAS_GAP_SOURCE": sha,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
    os.execve(sys.executable, [sys.executable, str(Path(__file__).resolve()), *sys.argv[1:]], env)


# --------------------------------------------------------------------------------------------- the runs


def run_child(command: list[str], out: Path, log: Path, cwd: Path, threads: int) -> dict[str, Any]:
    """One run in a fresh interpreter (one thread everywhere); its JSON report with wall time and load."""
    env = {**os.environ, **QUIET_ENV, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "OPENBLAS_NUM_THREADS": str(threads)}
    load_before, started = load_average(), time.perf_counter()
    with open(log, "a", encoding="utf-8") as handle:
        handle.write(f"\n$ {' '.join(command)}\n")
        handle.flush()
        finished = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=cwd)
    if finished.returncode != 0:
        raise SystemExit(f"{' '.join(command[:6])}... failed (exit {finished.returncode}); see {log}")
    report = json.loads(out.read_text(encoding="utf-8"))
    report["process"] = {"wall_seconds": time.perf_counter() - started, "load_average_1min": [load_before, load_average()]}
    return report


def run_ours(model: str, variant: str, seed: int, overrides: list[str], workdir: Path, args, log: Path) -> dict:
    out = workdir / "runs" / f"ours_{model}_{variant}_{seed}.json"
    out.parent.mkdir(exist_ok=True)
    command = [sys.executable, __file__, "--child-model", model, "--child-variant", variant, "--child-seed", str(seed),
               "--child-overrides", json.dumps(overrides), "--threads", str(args.threads), "--out", str(out)]
    return run_child(command, out, log, workdir, args.threads)


def run_peer(model: str, seed: int, data: dict[str, Any], workdir: Path, args, log: Path) -> dict[str, Any]:
    out = workdir / "runs" / f"peer_{model}_{seed}.json"
    out.parent.mkdir(exist_ok=True)
    command = [sys.executable, str(PEER_SCRIPT), "--variant", model, "--encoded", str(workdir / "encoded"),
               "--vocab-size", str(data["vocab_size"]), "--epochs", str(args.epochs), "--threads", str(args.threads),
               "--inter-op-threads", "1", "--seed", str(seed), "--no-inference", "--out", str(out)]
    report = run_child(command, out, log, workdir, args.threads)
    return {"seed": seed, "val_accuracy": report["history"][-1]["val_accuracy"], "source": "run here", "threads": args.threads,
            "train_seconds": sum(epoch["seconds"] for epoch in report["history"]), "framework": report["framework"],
            "process": report["process"]}


def prepare_data(overrides: list[str]) -> dict[str, Any]:
    """textrnn's prepare and encode, once (config seed 42: the split compare.py uses); sha256 of the ids."""
    from textrnn import config
    from textrnn.data import prepare
    from textrnn.tokens import encode

    cfg = config.load(PARAMS, overrides)
    report = prepare(cfg)
    buckets = encode(cfg)
    sha = {split: hashlib.sha256(cfg.paths.encoded_split(split).read_bytes()).hexdigest() for split in ("train", "val")}
    return {"split_seed": cfg.seed, "rows": report["rows"], "vocab_size": buckets["vocab_size"],
            "val_fraction": cfg.data.val_fraction, "encoded_sha256": sha,
            # Padding of seeded random and bucketed batches over the train rows' lengths, in row order: a
            # fingerprint of the train split that compare.json also records.
            "padding_by_batch_size": buckets["by_batch_size"]}


# ---------------------------------------------------------------------------------- the Keras reference


def keras_mode(spec: str, model: str) -> str:
    """`auto`, or `model=mode,...` (models not named: auto) -> this model's mode."""
    if "=" not in spec:
        return spec
    modes = dict(item.split("=", 1) for item in spec.split(",") if item)
    return modes.get(model, "auto")


def compare_accuracies(model: str, side: str) -> dict[int, float]:
    """compare.json's per-seed figures for `model`, seed -> last-epoch val accuracy, of `side`: "peer" (Keras)
    or "ours"."""
    if not COMPARE_JSON.is_file():
        return {}
    for row in json.loads(COMPARE_JSON.read_text(encoding="utf-8")).get("accuracy_over_seeds") or []:
        if row["variant"] == model:
            return dict(zip(row["seeds"], row[side]))
    return {}


def compare_data_matches(data: dict[str, Any], epochs: int) -> dict[str, bool]:
    """Whether compare.json was made on these data: same rows, vocabulary and epochs, and the same train
    split down to every row's length in row order (its seeded padding figures, to the last float digit)."""
    if not COMPARE_JSON.is_file():
        return {"compare.json": False}
    compare = json.loads(COMPARE_JSON.read_text(encoding="utf-8"))
    cond = compare["conditions"]
    return {"rows_vocab_epochs": (cond["rows"] == data["rows"] and cond["vocab_size"] == data["vocab_size"]
                                  and cond["epochs"] == epochs and cond["data_short"] == "AG News"),
            "train_split_fingerprint": compare.get("padding_by_batch_size") == data["padding_by_batch_size"]}


def keras_reference(model: str, seeds: list[int], ours_runs: dict[int, dict], data: dict[str, Any], workdir: Path,
                    args, log: Path, previous: dict[str, Any] | None) -> dict[str, Any]:
    """Keras' per-seed figures for `model`: cached from compare.json when provably the same data, else run."""
    mode = keras_mode(args.keras, model)
    if mode == "skip":
        return {"runs": [], "data_check": "skipped"}
    if mode == "reuse":  # --resume: the earlier report's Keras runs as they are, nothing run
        return previous or {"runs": [], "data_check": "none to reuse"}
    cache, ours_cached = compare_accuracies(model, "peer"), compare_accuracies(model, "ours")
    matches = compare_data_matches(data, args.epochs)
    same = all(matches.values())
    check = {**matches, "same_data_and_split": same,
             # Informational: compare.json ran ours with its own thread count; another count changes the
             # floating-point sums and, the training being chaotic, the figures (not the data).
             "ours_reproduced_exactly": {str(seed): run["val_accuracy"] == ours_cached[seed]
                                         for seed, run in ours_runs.items() if seed in ours_cached}}
    use_cache = mode == "cached" or (mode == "auto" and same)
    reused = {run["seed"]: run for run in (previous or {}).get("runs", []) if run["source"] == "run here"}
    runs = []
    for seed in seeds:
        if use_cache and seed in cache:
            threads = json.loads(COMPARE_JSON.read_text(encoding="utf-8"))["conditions"]["threads"]
            runs.append({"seed": seed, "val_accuracy": cache[seed], "source": "bench/results/compare.json",
                         "threads": threads})
        elif mode == "cached":
            continue
        elif seed in reused:
            runs.append(reused[seed])
        else:
            print(f"{model}: keras, seed {seed}", file=sys.stderr, flush=True)
            runs.append(run_peer(model, seed, data, workdir, args, log))
    return {"runs": runs, "data_check": check}


# ------------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="rnn_masked,lstm", help="lesson models, comma-separated")
    parser.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                        help="ablations for every model: ours, a factor, factors joined with +, keras_all")
    parser.add_argument("--lstm-variants", default=None,
                        help="ablations for lstm only (default: --variants)")
    parser.add_argument("--seeds", default="42,1,2,3,4")
    parser.add_argument("--lstm-seeds", default=None, help="seeds for lstm (default: --seeds)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch / TensorFlow threads per process")
    parser.add_argument("--keras", default="auto",
                        help="auto | run | cached | skip | reuse (--resume: keep the earlier runs, run none), for "
                             "every model, or per model: rnn_masked=run,lstm=cached")
    parser.add_argument("--resume", action="store_true", help="reuse runs of an earlier keras_gap.json on the same data")
    parser.add_argument("--keep-workdir", action="store_true", help=f"keep {SCRATCH}/work (holds prepared AG News text)")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    parser.add_argument("--render", action="store_true",
                        help="only rewrite keras_gap.md (and the notes in keras_gap.json) from keras_gap.json")
    # Internal: one of our runs, in a child process.
    parser.add_argument("--child-model", help=argparse.SUPPRESS)
    parser.add_argument("--child-variant", help=argparse.SUPPRESS)
    parser.add_argument("--child-seed", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--child-overrides", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def plan(args: argparse.Namespace) -> dict[str, dict[str, list]]:
    models = [name for name in args.models.split(",") if name]
    unknown = [name for name in models if name not in LESSON_MODELS]
    if unknown:
        raise SystemExit(f"unknown model(s) {', '.join(unknown)}")
    result = {}
    for model in models:
        variants = (args.lstm_variants if model == "lstm" and args.lstm_variants else args.variants).split(",")
        seeds = (args.lstm_seeds if model == "lstm" and args.lstm_seeds else args.seeds).split(",")
        if "ours" not in variants:
            variants.insert(0, "ours")  # every difference is measured against it
        for variant in variants:
            factors_of(variant)
        result[model] = {"variants": variants, "seeds": [int(seed) for seed in seeds]}
    return result


def main() -> None:
    args = parse_args()
    if args.child_model:
        child(args)
        return
    if args.render:
        report = json.loads((args.out_dir / "keras_gap.json").read_text(encoding="utf-8"))
        report["notes"] = NOTES
        print(save(report, args.out_dir))
        return
    todo = plan(args)
    for model in todo:
        if keras_mode(args.keras, model) not in ("auto", "run", "cached", "skip", "reuse"):
            raise SystemExit(f"--keras: unknown mode for {model}")
    pin_source(args)
    started, load_start = time.perf_counter(), load_average()
    data_name, data_sets = data_overrides("ag_news")
    workdir = SCRATCH / "work"
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    log = SCRATCH / "children.log"
    os.chdir(workdir)  # textrnn writes only inside its working directory
    overrides = run_overrides(workdir, data_sets, args.epochs, args.threads)
    try:
        data = prepare_data(overrides)
        previous = None
        out_json = args.out_dir / "keras_gap.json"
        if args.resume and out_json.is_file():
            previous = json.loads(out_json.read_text(encoding="utf-8"))
            pc = previous["conditions"]
            if (pc["encoded_sha256"], pc["epochs"], pc["threads"]) != (data["encoded_sha256"], args.epochs, args.threads):
                print("--resume: earlier keras_gap.json is from other data/epochs/threads; not reused", file=sys.stderr)
                previous = None
        ours: dict[str, dict[str, list]] = {}
        keras: dict[str, dict] = {}
        for model, spec in todo.items():
            ours[model] = {}
            old_runs = (previous or {}).get("models", {}).get(model, {}).get("runs", {})
            # With --resume, variants run earlier but not listed now stay in the report with their runs.
            carried = [variant for variant in old_runs if variant not in spec["variants"]]
            spec["variants"] += carried
            for variant in spec["variants"]:
                ours[model][variant] = []
                done = {run["seed"]: run for run in old_runs.get(variant, [])}
                if variant in carried:
                    ours[model][variant] = list(done.values())
                    continue
                for seed in spec["seeds"]:
                    if seed in done:
                        ours[model][variant].append(done[seed])
                        continue
                    print(f"{model}: {variant}, seed {seed}", file=sys.stderr, flush=True)
                    run = run_ours(model, variant, seed, overrides, workdir, args, log)
                    print(f"  val accuracy {run['val_accuracy']:.4f} ({run['process']['wall_seconds']:.0f} s)",
                          file=sys.stderr, flush=True)
                    ours[model][variant].append(run)
                    save(build_report(args, data, data_name, todo, ours, keras, load_start, started, NOTES, previous), args.out_dir)
            ours_runs = {run["seed"]: run for run in ours[model]["ours"]}
            old_keras = (previous or {}).get("models", {}).get(model, {}).get("keras")
            keras[model] = keras_reference(model, spec["seeds"], ours_runs, data, workdir, args, log, old_keras)
            save(build_report(args, data, data_name, todo, ours, keras, load_start, started, NOTES, previous), args.out_dir)
    except BaseException:
        print(f"kept {workdir} for inspection (children's output in {log})", file=sys.stderr)
        raise
    if not args.keep_workdir:
        shutil.rmtree(workdir)  # it holds prepared AG News text: never leave it behind
    print(save(build_report(args, data, data_name, todo, ours, keras, load_start, started, NOTES, previous), args.out_dir))


if __name__ == "__main__":
    main()
