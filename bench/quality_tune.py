"""The sweep that chose `bilstm_mean`'s width, learning rate and dropouts, under bench/quality.py's protocol.

`textrnn tune --variant bilstm_mean` runs on the pool alone: the held-out fold is split off first
(`quality.split_fold`) and no trial reads it (trials train and validate on the pool's seed-42 split and are
judged by validation loss). Two studies ran, the second over a space moved to where the first's best trials
sat at its edges; every trial of both is written to bench/results/quality_tune.json, and the best trial of
the last study became `bilstm_mean` in config.py. bench/quality.py then reports it on seeds 1-3.

    .venv/bin/python bench/quality_tune.py [--workdir DIR] [--trials 16] [--export-only]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from common import AG_NEWS, RESULTS, machine
from quality import TUNING_SEED, split_fold

VARIANT = "bilstm_mean"
# (study, search space): the first around the hand-chosen recipe, the second moved to the first's edges.
STUDIES = [
    ("agnews-bilstm-mean", "{learning_rate: {low: 0.0005, high: 0.005, log: true}, hidden: {low: 32, high: 128, "
                           "log: true}, dropout: {low: 0.2, high: 0.6}, token_dropout: {low: 0.1, high: 0.5}, "
                           "embed_dropout: {low: 0.1, high: 0.5}}"),
    ("agnews-bilstm-mean-2", "{learning_rate: {low: 0.002, high: 0.01, log: true}, hidden: {low: 16, high: 64, "
                             "log: true}, dropout: {low: 0.2, high: 0.6}, token_dropout: {low: 0.3, high: 0.7}, "
                             "embed_dropout: {low: 0.0, high: 0.4}}"),
]
# The recipe the studies started from (bilstm_mean before them); the space's keys replace its values.
BASE = ("{cell: lstm, embed_dim: 64, hidden: 64, layers: 1, bidirectional: true, masked: true, batch_size: 16, "
        "pool: mean, dropout: 0.5, embed_dropout: 0.3, token_dropout: 0.4, label_smoothing: 0.1, warmup_epochs: 0.5, "
        "schedule: cosine, sparse_embedding: false}")


def overrides(scratch: Path, space: str) -> list[str]:
    return [f"seed={TUNING_SEED}", "data.source=csv", f"data.train_path={scratch / 'pool.csv'}",
            f"data.test_path={scratch / 'fold.csv'}", "train.threads=1", "train.device=cpu",
            f"variants.{VARIANT}={BASE}", f"tune.space={space}", "tune.prune_after_trials=3",
            "tune.prune_after_epochs=2"]


def run_study(workdir: Path, scratch: Path, study: str, space: str, trials: int) -> None:
    sets = [arg for value in overrides(scratch, space) for arg in ("--set", value)]
    subprocess.run([sys.executable, "-m", "textrnn.cli", "tune", "--variant", VARIANT, "--study", study,
                    "--trials", str(trials), "--no-progress", *sets], cwd=workdir, check=True)


def export(workdir: Path) -> dict:
    import optuna

    storage = f"sqlite:///{workdir / '.cache' / 'optuna.db'}"
    studies = []
    for name, space in STUDIES:
        study = optuna.load_study(study_name=name, storage=storage)
        trials = [{"number": trial.number, "state": trial.state.name, "val_loss": trial.value,
                   "val_accuracy": trial.user_attrs.get("val_accuracy"), "best_epoch": trial.user_attrs.get("best_epoch"),
                   "pruned_at_epoch": max(trial.intermediate_values) if trial.state.name == "PRUNED" else None,
                   "params": trial.params} for trial in study.trials]
        complete = [trial for trial in trials if trial["state"] == "COMPLETE"]
        best = min(complete, key=lambda trial: trial["val_loss"]) if complete else None
        studies.append({"study": name, "space": space, "trials": trials, "best": best})
    return {"variant": VARIANT, "base": BASE, "selection": "lowest validation loss (seed 42's split of the pool)",
            "machine": machine(), "studies": studies}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=None, help="keep the studies here (default: a temp dir)")
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--export-only", action="store_true", help="only write the studies already in --workdir")
    args = parser.parse_args()
    if not AG_NEWS.is_file():
        raise SystemExit(f"{AG_NEWS}: not found; this benchmark needs the shared AG News rows")
    with tempfile.TemporaryDirectory(prefix="textrnn-quality-tune-") as temp:
        workdir = args.workdir or Path(temp)
        scratch = workdir / "fold"  # the pool and the fold (inputs: outside every output directory)
        if not args.export_only:
            scratch.mkdir(parents=True, exist_ok=True)
            split_fold(AG_NEWS, scratch)
            workdir.mkdir(parents=True, exist_ok=True)
            for name, space in STUDIES:
                run_study(workdir, scratch, name, space, args.trials)
        report = export(workdir)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "quality_tune.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    for study in report["studies"]:
        print(study["study"], "best:", json.dumps(study["best"]))


if __name__ == "__main__":
    main()
