"""`textrnn tune` wall time: one study's N trials run by 2 worker processes sharing one Optuna storage, versus
the same N trials run by 1 worker one after another.

Each arm runs in a fresh scratch working directory (params.yaml copied in), set up before its clock starts:
the data prepared and encoded, the sqlite MLflow store created, the study (sqlite `.cache/optuna.db`, the
default storage) and its MLflow parent run made. Then the clock runs from starting the worker processes
(process start-up plus the trials, each a tracked MLflow child run as shipped) to two ends: the last trial
done (the study's last completion time) and the last worker exited. They differ because a worker that finds
no trial left to start waits for the others' running ones, checking every 2 s (`tune.WAIT_POLL_SECONDS`).
A worker here calls `textrnn.tune.work`, what `textrnn tune` calls after its own prepare and encode.
Before each arm the script waits (up to `--wait-idle` s) for the cores to be idle.

Keeping the arms comparable. Optuna's sampler is seeded per worker process, so the two arms try different
params. Pruning is off (`tune.prune_after_trials` above the trial count) and early stopping too (patience
above the epochs), so every trial trains exactly `--epochs` epochs; and `hidden`, the one option of the
default space that changes the cost of an epoch, is left out of the space (`--full-space` keeps it), so the
arms differ only in learning rate and dropout, which cost nothing. Besides the wall time, each arm reports
its trials' own seconds per epoch (from the study's trial start and end times) and how much CPU other
processes used while it ran (from /proc/stat, niced work apart), so a loaded machine shows in the figures.
One torch thread per worker (`train.threads` 1 as shipped): on an idle machine with 2 free cores, 2 workers
should near 2x.

Writes bench/results/tune_walltime.json and prints a summary.

    .venv/bin/python bench/tune_walltime.py [--variant gru] [--trials 8] [--epochs 4] [--train-rows 4000]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from common import PARAMS, QUIET_ENV, RESULTS, data_overrides, load_average, machine

STUDY = "walltime"
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_busy_seconds() -> tuple[float, float]:
    """(busy, niced) CPU seconds of the whole machine since boot (all cores, /proc/stat's first line); busy
    leaves niced work out, to tell the two apart (niced work in another cgroup still competes fully)."""
    fields = [int(value) for value in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    niced, idle = fields[1], fields[3] + fields[4]  # nice; idle + iowait
    return (sum(fields[:8]) - idle - niced) / TICKS, niced / TICKS  # guest time is already inside user


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def busy_fraction(seconds: float = 3.0) -> float:
    """How busy the machine's cores are now, niced work included: 0 idle, 1 every core (mean over `seconds`)."""
    before = sum(cpu_busy_seconds())
    time.sleep(seconds)
    return (sum(cpu_busy_seconds()) - before) / seconds / (os.cpu_count() or 1)


def wait_until_idle(limit_s: float, threshold: float = 0.15) -> tuple[float, float]:
    """Wait (up to `limit_s`) until the cores are at most `threshold` busy; returns (waited s, busy fraction)."""
    started = time.monotonic()
    busy = busy_fraction()
    while busy > threshold and time.monotonic() - started < limit_s:
        busy = busy_fraction()
    return time.monotonic() - started, busy


def overrides(args: argparse.Namespace) -> list[str]:
    """The config every worker of both arms runs with."""
    _, data_sets = data_overrides("sample", args.train_rows)
    sets = [*data_sets, f"train.epochs={args.epochs}", f"train.patience={args.epochs + 1}", "train.threads=1",
            "train.device=cpu", "tune.prune_after_trials=1000"]
    if not args.full_space:
        space = yaml.safe_load(PARAMS.read_text(encoding="utf-8"))["tune"]["space"]
        space.pop("hidden", None)
        sets.append(f"tune.space={json.dumps(space)}")  # JSON is YAML, as --set reads it
    return sets


def set_up(workdir: Path, variant: str, sets: list[str]) -> None:
    """Everything a worker would otherwise do before its first trial: data, MLflow store, study."""
    from textrnn import config, steps, tune, tune_tracking

    (workdir / "params.yaml").write_text(PARAMS.read_text(encoding="utf-8"), encoding="utf-8")
    with contextlib.chdir(workdir):
        cfg = config.load("params.yaml", sets)
        steps.prepare_step(cfg, wait=True)
        steps.encode_step(cfg, wait=True)
        tune.open_study(cfg, cfg.variant(variant), STUDY)
        tune_tracking.study_run(cfg, cfg.variant(variant), STUDY)  # creates the sqlite store first


def trial_figures(workdir: Path) -> dict[str, Any]:
    """The study's trials as the storage recorded them: states, epochs, seconds, params."""
    import optuna

    study = optuna.load_study(study_name=STUDY, storage=f"sqlite:///{workdir / '.cache' / 'optuna.db'}")
    trials = [{"number": trial.number, "state": trial.state.name, "epochs": len(trial.intermediate_values),
               "seconds": (trial.datetime_complete - trial.datetime_start).total_seconds(),
               "params": trial.params, "best_val_loss": trial.value}
              for trial in study.get_trials(deepcopy=False) if trial.datetime_complete is not None]
    epochs = sum(trial["epochs"] for trial in trials)
    seconds = sum(trial["seconds"] for trial in trials)
    last = max(trial.datetime_complete for trial in study.get_trials(deepcopy=False) if trial.datetime_complete)
    return {"last_complete": last.timestamp(), "states": sorted({trial["state"] for trial in trials}),
            "trial_epochs": epochs, "trial_seconds_sum": seconds, "trial_seconds_per_epoch": seconds / max(epochs, 1),
            "trials": trials}


def run_arm(workers: int, args: argparse.Namespace, sets: list[str]) -> dict[str, Any]:
    """Set up a fresh directory, then time `workers` processes running the study's `args.trials` trials."""
    with tempfile.TemporaryDirectory(prefix=f"textrnn-tune-walltime-{workers}-") as scratch:
        workdir = Path(scratch)
        set_up(workdir, args.variant, sets)
        env = {key: value for key, value in os.environ.items()
               if key not in ("MLFLOW_TRACKING_URI", "TEXTRNN_OPTUNA_STORAGE")}
        env.update(QUIET_ENV)
        argv = [sys.executable, __file__, "--worker", "--variant", args.variant, "--trials", str(args.trials),
                *[arg for item in sets for arg in ("--set", item)]]
        waited, busy_before = wait_until_idle(args.wait_idle)
        load_before = os.getloadavg()
        machine_cpu, ours_cpu = cpu_busy_seconds(), children_cpu_seconds()
        started, started_at = time.perf_counter(), time.time()
        logs = [open(workdir / f"worker-{index}.log", "wb") for index in range(workers)]
        processes = [subprocess.Popen(argv, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT)
                     for log in logs]
        codes = [process.wait() for process in processes]
        seconds = time.perf_counter() - started
        (busy, niced), ours_cpu = cpu_busy_seconds(), children_cpu_seconds() - ours_cpu
        machine_cpu, niced_cpu = busy - machine_cpu[0], niced - machine_cpu[1]
        for log in logs:
            log.close()
        if any(codes):
            tails = "\n".join((workdir / f"worker-{index}.log").read_text(errors="replace")[-2000:]
                              for index in range(workers))
            raise SystemExit(f"a worker failed ({codes}):\n{tails}")
        figures = trial_figures(workdir)
    trials_done = figures.pop("last_complete") - started_at
    arm = {"workers": workers, "seconds": seconds, "seconds_until_trials_done": trials_done,
           "seconds_per_trial_epoch": trials_done / max(figures["trial_epochs"], 1),
           "workers_cpu_seconds": ours_cpu, "other_cpu_seconds": max(machine_cpu - ours_cpu, 0.0),
           "other_niced_cpu_seconds": niced_cpu,
           "waited_for_idle_seconds": waited, "busy_fraction_before": busy_before, "load_average_before": load_before,
           "load_average_after": os.getloadavg(), **figures}
    print(f"{workers} worker(s): {seconds:.1f} s until the workers exited, {trials_done:.1f} s until the "
          f"{len(figures['trials'])} trials ({figures['trial_epochs']} epochs) were done; trials' own "
          f"{figures['trial_seconds_per_epoch']:.2f} s/epoch; other processes' CPU "
          f"{arm['other_cpu_seconds']:.1f} s (+{niced_cpu:.1f} s niced); load {load_before[0]:.2f} -> "
          f"{arm['load_average_after'][0]:.2f}",
          file=sys.stderr, flush=True)
    return arm


def worker(args: argparse.Namespace) -> None:
    """One worker process, in the arm's directory: join the study and run trials until it has enough."""
    from textrnn import config, tune

    cfg = config.load("params.yaml", args.set)
    result = tune.work(cfg, args.variant, STUDY, args.trials)
    print(json.dumps(result["counts"]))


def summary(report: dict[str, Any]) -> str:
    one, two, m = report["arms"]["1"], report["arms"]["2"], report["machine"]
    ratio = two["trial_seconds_per_epoch"] / one["trial_seconds_per_epoch"]
    contention = ("the two workers slowed each other down" if ratio > 1.05 else
                  "the two workers did not slow each other down" if ratio > 0.95 else
                  "faster with 2: the machine's own noise is larger than any slowdown")
    return (
        f"{report['trials']} trials of {report['variant']} ({report['epochs']} epochs each, sample corpus "
        f"{report['train_rows']} rows, MLflow tracking on, {m['cores']} cores, {m['cpu']}): the trials were done "
        f"after {one['seconds_until_trials_done']:.0f} s with 1 worker and {two['seconds_until_trials_done']:.0f} s "
        f"with 2 workers sharing the sqlite study ({report['speedup_trials_done']:.2f}x); the workers exited after "
        f"{one['seconds']:.0f} s and {two['seconds']:.0f} s ({report['speedup']:.2f}x: a worker that runs out of "
        f"trials polls the study every few seconds until the others' trials end). Per trial-epoch: "
        f"{one['seconds_per_trial_epoch']:.2f} s vs {two['seconds_per_trial_epoch']:.2f} s of wall time; inside a "
        f"trial {one['trial_seconds_per_epoch']:.2f} s vs {two['trial_seconds_per_epoch']:.2f} s per epoch "
        f"({contention}). The arms sampled different learning rates and dropouts "
        f"(Optuna seeds each worker) with {'the default space' if report['full_space'] else 'hidden fixed'}, no "
        f"pruning and no early stop, so every trial cost about the same. Other processes used "
        f"{one['other_cpu_seconds']:.0f} and {two['other_cpu_seconds']:.0f} CPU seconds at normal priority "
        f"(and {one['other_niced_cpu_seconds']:.0f} and {two['other_niced_cpu_seconds']:.0f} niced) during the "
        f"arms; 1-min "
        f"load average {one['load_average_before'][0]:.2f} -> {one['load_average_after'][0]:.2f} (1 worker), "
        f"{two['load_average_before'][0]:.2f} -> {two['load_average_after'][0]:.2f} (2 workers).")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="gru")
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--train-rows", type=int, default=4000)
    parser.add_argument("--wait-idle", type=float, default=300,
                        help="before each arm, wait up to this many seconds for the cores to be idle")
    parser.add_argument("--full-space", action="store_true", help="search hidden too (trial costs then vary)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--set", action="append", default=[], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return

    sets = overrides(args)
    start = load_average()
    arms = {str(workers): run_arm(workers, args, sets) for workers in (1, 2)}
    report = {"benchmark": "tune_walltime", "machine": machine(), "variant": args.variant, "trials": args.trials,
              "epochs": args.epochs, "train_rows": args.train_rows, "full_space": args.full_space,
              "storage": "sqlite (.cache/optuna.db)", "tracking": "local sqlite mlflow.db", "threads_per_worker": 1,
              "overrides": sets, "arms": arms, "speedup": arms["1"]["seconds"] / arms["2"]["seconds"],
              "speedup_trials_done": arms["1"]["seconds_until_trials_done"] / arms["2"]["seconds_until_trials_done"],
              "load_average_1min": {"start": start, "end": load_average()}}
    report["summary"] = summary(report)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "tune_walltime.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(report["summary"])


if __name__ == "__main__":
    main()
