"""Screenshots of textrnn in the Prefect and MLflow UIs, for the README: writes docs/images/.

Everything is real and on loopback, in a scratch working directory; the pages are driven in headless Chromium
(docs/browser.py). Two sets, both by default (`--only` picks one):

- pipeline: starts `prefect server start` and `mlflow server` (tests/mlflow_server.py), runs `textrnn pipeline`
  against them (the offline sample corpus, three small variants), then saves
  - prefect-flow-run.png: the pipeline's flow run (its `pipeline-<UTC time>-<commit>` name, tags, the graph of
    its task runs, the task runs with their `variant:`/`stage:` tags);
  - prefect-logs.png: a variant's train task run, its log holding textrnn's per-epoch lines;
  - prefect-comparison.png: the comparison the pipeline publishes as a markdown artifact, linking MLflow runs;
  - mlflow-runs.png: the experiment's runs table (classic "Model training" view), the pipeline's run with its
    per-variant `test_accuracy/<variant>` metrics and, expanded below it, the variants' runs;
  - mlflow-parent-description.png: the pipeline's run page, its Description the comparison table linking every
    variant's run;
  - mlflow-registry.png: the registered model's versions, the best one with the `champion` alias.
- tune: runs a small study (`textrnn tune -v gru`; the shared AG News rows when present, read in place, else the
  sample corpus, which is too easy to show much) into its own sqlite MLflow store, serves it, and saves
  - tune-parallel-coordinates.png: MLflow's compare-runs page for the study's trials, its parallel-coordinates
    plot of the searched params against `val_loss` (`--metric`): the last epoch's, which pruned trials have too
    (MLflow 3.17 draws a run without the metric, as a pruned trial is without `best_val_loss`, at the axis
    maximum + 0.01 rather than leave it out);
  - tune-runs.png: the runs table, the study's run with its trials nested under it and their params, best
    validation loss and Optuna state as columns.
Servers and browser are stopped, and the scratch directory removed, however the script ends. Written against
Prefect 3.9's and MLflow 3.17's UIs: if a later UI moves things, the script names what it did not find.

Needs Chromium (Debian: `apt-get install chromium`).

    .venv/bin/python docs/screenshots.py [--only pipeline|tune] [--epochs 3] [--trials 8] [--data auto|ag_news|sample]
                                         [--metric val_loss] [--workdir DIR] [--chromium /usr/bin/chromium]
                                         [--out docs/images]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "docs"), str(REPO / "tests"), str(REPO / "bench")]
from browser import (CHROMIUM, MLFLOW_ASSISTANT_CLOSED, MLFLOW_CLASSIC, RECT, RUN_NAME, Browser,  # noqa: E402
                     open_mlflow, open_mlflow_runs, open_prefect_tab)
from common import PARAMS, QUIET_ENV, data_overrides  # noqa: E402  (what the benchmarks share)
from mlflow_server import Server, free_port, start_tracking_server  # noqa: E402  (the tests' loopback servers)

from flows.report import COMPARISON_KEY  # noqa: E402

BIN = Path(sys.executable).parent
STUDY = "docs"
VARIANTS = ("lstm", "gru", "bag")
LOGS_OF = "gru"  # the variant whose train task run's log is shown
SAMPLE = ["data.source=sample", "data.sample.train_rows=1000", "data.sample.test_rows=400", "train.threads=1"]
# The runs tables' columns and their widths (CSS px), set through the state the UI keeps in localStorage.
TUNE_COLUMNS = {"metrics.`best_val_loss`": 150, "metrics.`best_val_accuracy`": 160,
                "params.`variant.learning_rate`": 180, "params.`variant.hidden`": 130,
                "params.`variant.dropout`": 160, "tags.`trial_state`": 110}
PIPELINE_COLUMNS = {RUN_NAME: 320, **{f"metrics.`test_accuracy/{v}`": 165 for v in VARIANTS},
                    "metrics.`test_accuracy`": 125, "metrics.`test_macro_f1`": 170, "attributes.`Models`": 170}
SIDEBAR = "document.querySelector('.p-context-sidebar')"  # Prefect's navigation, left of every page


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without what would point a run elsewhere, quiet, with `extra`."""
    leaks = ("MLFLOW_TRACKING_URI", "PREFECT_API_URL", "TEXTRNN_OPTUNA_STORAGE", "TEXTRNN_MLFLOW_PARENT_RUN_ID",
             "DVC_EXP_NAME")
    return {**{key: value for key, value in os.environ.items() if key not in leaks}, **QUIET_ENV, **extra}


def sets_args(sets: list[str]) -> list[str]:
    return [arg for item in sets for arg in ("--set", item)]


# ---------------------------------------------------------------------------------------------- pipeline


@dataclass
class PipelineRun:
    """What one `textrnn pipeline` left on the servers: ids to open pages by."""

    prefect: str  # the UI's base URL
    mlflow: str
    flow_run: str  # the pipeline's flow run id
    train_task_run: str  # LOGS_OF's train task run id
    artifact: str  # the comparison's artifact id
    experiment: str
    parent: str  # the pipeline's MLflow run id
    model: str  # the registered model's name


def launch_prefect_server(root: Path) -> Server:
    """`prefect server start` on a free loopback port, its database in `root`; wait_until_up("/api/health")."""
    port = free_port()
    log = root / "prefect-server.log"
    with open(log, "wb") as handle:
        args = [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)]
        process = subprocess.Popen(args, stdout=handle, stderr=subprocess.STDOUT, cwd=root, start_new_session=True,
                                   env=clean_env(PREFECT_HOME=str(root / "prefect-home"),  # the UI's API too:
                                                 PREFECT_API_URL=f"http://127.0.0.1:{port}/api"))
    return Server(f"http://127.0.0.1:{port}", process, log)


def run_pipeline(workdir: Path, prefect: Server, mlflow: Server, epochs: int) -> PipelineRun:
    """`textrnn pipeline` on the sample corpus in `workdir`, against the servers; the runs it left."""
    from mlflow.tracking import MlflowClient

    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "params.yaml").write_text(PARAMS.read_text(encoding="utf-8"), encoding="utf-8")
    print(f"pipeline: {', '.join(VARIANTS)} on the sample corpus, {epochs} epochs", file=sys.stderr)
    env = clean_env(PREFECT_API_URL=f"{prefect.url}/api", MLFLOW_TRACKING_URI=mlflow.url,
                    PREFECT_HOME=str(workdir.parent / "prefect-home"))
    run_whole([str(BIN / "textrnn"), "pipeline", "--variants", ",".join(VARIANTS),
               *sets_args([*SAMPLE, f"train.epochs={epochs}", f"train.patience={epochs}"])], workdir, env, 900)
    (flow_run,) = prefect_api(prefect.url, "/flow_runs/filter", {"flow_runs": {"name": {"like_": "pipeline-"}}})
    (task_run,) = prefect_api(prefect.url, "/task_runs/filter", {"task_runs": {"name": {"any_": [f"train-{LOGS_OF}"]}}})
    (artifact,) = prefect_api(prefect.url, "/artifacts/filter", {"artifacts": {"key": {"any_": [COMPARISON_KEY]}}})
    client = MlflowClient(mlflow.url)
    experiment = client.get_experiment_by_name("textrnn").experiment_id
    (parent,) = client.search_runs([experiment], "tags.run_kind = 'pipeline'")
    (model,) = client.search_registered_models()
    return PipelineRun(prefect.url, mlflow.url, flow_run["id"], task_run["id"], artifact["id"], experiment,
                       parent.info.run_id, model.name)


def run_whole(args: list[str], cwd: Path, env: dict[str, str], timeout_s: float) -> None:
    """Run `args` to the end in a session of its own (the pipeline's process pool included), which is stopped whole
    if it fails, runs past `timeout_s`, or this script is stopped."""
    process = subprocess.Popen(args, cwd=cwd, env=env, stdout=subprocess.DEVNULL, start_new_session=True)
    try:
        if process.wait(timeout=timeout_s):
            raise SystemExit(f"{' '.join(args[:2])} failed ({process.returncode})")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def prefect_api(server: str, path: str, body: dict[str, Any]) -> Any:
    request = urllib.request.Request(f"{server}/api{path}", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as answer:
        return json.load(answer)


def bottom_of(selector: str) -> str:
    """JS: the lowest bottom edge among the elements `selector` matches (CSS px)."""
    return f"Math.max(...Array.from(document.querySelectorAll({json.dumps(selector)}), " \
           f"e => e.getBoundingClientRect().bottom))"


def shoot_flow_run(browser: Browser, run: PipelineRun, path: Path) -> None:
    """The pipeline's flow run page: name, tags and graph, its Task Runs tab below."""
    browser.open(f"{run.prefect}/runs/flow-run/{run.flow_run}", 1400, 1500)
    browser.wait_for_text("pipeline-", "Task Runs")
    open_prefect_tab(browser, "Task Runs")
    tasks = 3 + len(VARIANTS)  # prepare, encode, variant-<v>..., promote
    browser.wait_for(f"document.querySelectorAll('.state-list-item').length >= {tasks}", f"{tasks} task runs")
    time.sleep(2)  # the graph's drawing
    left = browser.js(f"{SIDEBAR}.getBoundingClientRect().right")
    bottom = browser.js(bottom_of(".state-list-item"))
    browser.screenshot(path, {"x": left, "y": 0, "width": 1400 - left, "height": bottom + 16})


def shoot_logs(browser: Browser, run: PipelineRun, epochs: int, path: Path) -> None:
    """A train task run's page, its log (textrnn's epoch lines) and the run's details beside it."""
    browser.open(f"{run.prefect}/runs/task-run/{run.train_task_run}", 1400, 900)
    browser.wait_for(f"document.body.innerText.split('epoch variant=').length > {epochs}", f"{epochs} epoch lines")
    time.sleep(0.5)
    left = browser.js(f"{SIDEBAR}.getBoundingClientRect().right")
    bottom = browser.js(bottom_of(".log-row"))
    browser.screenshot(path, {"x": left, "y": 0, "width": 1400 - left, "height": bottom + 24})


def shoot_artifact(browser: Browser, run: PipelineRun, path: Path) -> None:
    """The comparison the pipeline published as a markdown artifact, its MLflow runs linked."""
    browser.open(f"{run.prefect}/artifacts/artifact/{run.artifact}", 1900, 900)
    table = "document.querySelector('article.artifact-data-markdown table')"
    browser.wait_for(f"{table} && {table}.querySelectorAll('a').length >= {len(VARIANTS)}", "the comparison table")
    time.sleep(0.5)
    left = browser.js(f"{SIDEBAR}.getBoundingClientRect().right")
    article = browser.js(RECT.format("document.querySelector('article.artifact-data-markdown')"))
    browser.screenshot(path, {"x": left, "y": 0, "width": article["x"] + article["width"] + 16 - left,
                              "height": article["y"] + article["height"] + 16})


def shoot_parent(browser: Browser, run: PipelineRun, path: Path) -> None:
    """The pipeline's MLflow run page, its name, Description (the comparison table linking every variant's run)
    and Metrics (`test_accuracy/<variant>`, ...) and, beside them, its child runs."""
    open_mlflow(browser, f"{run.mlflow}/#/experiments/{run.experiment}/runs/{run.parent}?{MLFLOW_CLASSIC}", 1400, 1600)
    table = "document.querySelector('.note-view-preview table')"
    browser.wait_for(f"{table} && {table}.querySelectorAll('a[href*=\"/runs/\"]').length >= {len(VARIANTS)}",
                     "the description's table of linked runs")
    parameters = "Array.from(document.querySelectorAll('main *'))" \
                 ".find(e => e.children.length === 0 && (e.innerText || '').startsWith('Parameters ('))"
    browser.wait_for(f"!!{parameters}", "the run's parameters")
    time.sleep(1)
    main, below = browser.js(RECT.format("document.querySelector('main')")), browser.js(RECT.format(parameters))
    browser.screenshot(path, {"x": main["x"], "y": main["y"], "width": main["width"],
                              "height": below["y"] - 12 - main["y"]})


def shoot_registry(browser: Browser, run: PipelineRun, path: Path) -> None:
    """The registered model's page: its versions, their tags and aliases, `champion` on the best."""
    open_mlflow(browser, f"{run.mlflow}/#/models/{run.model}?{MLFLOW_CLASSIC}", 1400, 1600)
    rows = "document.querySelectorAll('main [role=table] [role=row]')"
    browser.wait_for(f"{rows}.length > {len(VARIANTS)} && document.body.innerText.includes('champion')",
                     f"{len(VARIANTS)} versions, one of them the champion")
    time.sleep(1)
    main = browser.js(RECT.format("document.querySelector('main')"))
    bottom = browser.js(f"Math.max(...Array.from({rows}, e => e.getBoundingClientRect().bottom))")
    browser.screenshot(path, {"x": main["x"], "y": main["y"], "width": main["width"],
                              "height": bottom + 16 - main["y"]})


def shoot_pipeline(browser: Browser, run: PipelineRun, epochs: int, out: Path) -> None:
    shoot_flow_run(browser, run, out / "prefect-flow-run.png")
    shoot_logs(browser, run, epochs, out / "prefect-logs.png")
    shoot_artifact(browser, run, out / "prefect-comparison.png")
    shoot_runs(browser, run.mlflow, run.experiment, run.parent, 1 + len(VARIANTS), PIPELINE_COLUMNS,
               f"metrics.`test_accuracy/{VARIANTS[0]}`", out / "mlflow-runs.png", width=1960)
    shoot_parent(browser, run, out / "mlflow-parent-description.png")
    shoot_registry(browser, run, out / "mlflow-registry.png")


# -------------------------------------------------------------------------------------------------- tune


def run_study(workdir: Path, trials: int, data: str, epochs: int) -> None:
    """`textrnn tune -v gru` in `workdir` (as shipped: pruning on, MLflow tracking into ./mlflow.db)."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "params.yaml").write_text(PARAMS.read_text(encoding="utf-8"), encoding="utf-8")
    description, sets = data_overrides(data, sample_rows=2000)
    print(f"study: {trials} trials of gru on {description}, {epochs} epochs at most", file=sys.stderr)
    subprocess.run([str(BIN / "textrnn"), "tune", "-v", "gru", "--trials", str(trials), "--study", STUDY,
                    *sets_args([*sets, f"train.epochs={epochs}"])], cwd=workdir, env=clean_env(), check=True,
                   timeout=1800)


def study_runs(workdir: Path) -> tuple[str, str, list[str]]:
    """(experiment id, the study's run id, its trials' run ids by trial number) from the directory's store."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("textrnn").experiment_id
    parent = client.search_runs([experiment], f"tags.run_kind = 'tune' AND tags.tune_study = '{STUDY}'")[0]
    trials = client.search_runs([experiment], f"tags.run_kind = 'trial' AND tags.tune_study = '{STUDY}'")
    trials.sort(key=lambda run: int(run.data.tags["trial_number"]))
    return experiment, parent.info.run_id, [run.info.run_id for run in trials]


def shoot_compare(browser: Browser, server: str, experiment: str, trials: list[str], metric: str,
                  path: Path) -> None:
    """The compare-runs page of the trials, its parallel-coordinates plot coloured by `metric`."""
    runs, experiments = json.dumps(trials, separators=(",", ":")), json.dumps([experiment])
    browser.open(f"{server}/#/compare-runs?runs={runs}&experiments={experiments}", 1400, 1000)
    browser.wait_for("!!document.querySelector('.js-plotly-plot')", "the parallel-coordinates plot")
    browser.js(f"document.querySelector('button[aria-label=Close]')?.click(); {MLFLOW_ASSISTANT_CLOSED}")  # assistant
    metrics = "document.querySelectorAll('.du-bois-light-select')[1]"  # the plot's metric picker (params come first)
    browser.wait_for(f"!!{metrics}", "the plot's metric picker")
    # Its default is the first metric every run has (train_loss here): swap it for `metric`.
    default = browser.js(f"{metrics}.innerText.trim()")
    browser.js(f"{metrics}.querySelector('.du-bois-light-select-selection-item-remove')?.click()")
    box = browser.js(RECT.format(metrics))
    browser.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    browser.call("Input.insertText", text=metric)
    option = f"Array.from(document.querySelectorAll('.du-bois-light-select-item-option'))" \
             f".find(e => e.innerText.trim() === {json.dumps(metric)})"
    browser.wait_for(f"!!{option}", f"{metric} among the metrics")
    browser.js(f"{option}.click()")
    browser.click(700, 30)  # close the dropdown
    plot = "document.querySelector('.js-plotly-plot')"
    shown = f"{plot}.textContent.includes({json.dumps(metric)})"
    if default and default != metric:
        shown += f" && !{plot}.textContent.includes({json.dumps(default)})"
    browser.wait_for(shown, f"{metric} on the plot")
    time.sleep(1.5)  # plotly's transition
    title = "Array.from(document.querySelectorAll('h1, h2')).find(e => e.innerText.startsWith('Comparing'))"
    top, chart = browser.js(RECT.format(title)), browser.js(RECT.format(plot))
    left, upper = top["x"] - 12, top["y"] - 6
    browser.screenshot(path, {"x": left, "y": upper, "width": chart["x"] + chart["width"] + 12 - left,
                              "height": chart["y"] + chart["height"] + 12 - upper})


# ------------------------------------------------------------------------------------------------- shared


def shoot_runs(browser: Browser, server: str, experiment: str, parent: str, rows: int, columns: dict[str, int],
               ready: str, path: Path, width: int = 1780) -> None:
    """The experiment's runs table, classic view, `parent` expanded, with `columns` ({column id: width});
    taken once the column `ready` shows values, in a window `width` px wide."""
    open_mlflow_runs(browser, server, experiment, columns, [parent], rows, width, 330 + 32 * rows)
    cells = f"Array.from(document.querySelectorAll('.ag-row [col-id={json.dumps(ready)}]'))"
    browser.wait_for(f"{cells}.some(e => /[0-9A-Z]/.test(e.innerText))", f"values in the column {ready}")
    time.sleep(1)
    # The grid alone: from its header to its last row, up to its last column.
    box = browser.js("(() => { const r = document.querySelector('.ag-root-wrapper').getBoundingClientRect(); "
                     "const cells = Array.from(document.querySelectorAll('.ag-header-cell, .ag-row'), "
                     "e => e.getBoundingClientRect()); return {x: r.x, y: r.y, "
                     "right: Math.max(...cells.map(c => c.right)), "
                     "bottom: Math.max(...cells.map(c => c.bottom))}; })()")
    browser.screenshot(path, {"x": box["x"], "y": box["y"], "width": box["right"] - box["x"] + 1,
                              "height": box["bottom"] - box["y"] + 1})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=("pipeline", "tune"), help="one set of screenshots (default: both)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs of the pipeline's variants and tune's trials")
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--data", choices=("auto", "ag_news", "sample"), default="auto",
                        help="the study's data; auto: the shared AG News rows when present, else the sample corpus")
    parser.add_argument("--metric", default="val_loss", help="the plot's metric axis and colour")
    parser.add_argument("--workdir", type=Path, help="keep the runs here instead of a temporary directory (a study "
                                                     "there is reused; each pipeline gets a new pipeline-<time>/)")
    parser.add_argument("--chromium", type=Path, default=CHROMIUM)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "images")
    args = parser.parse_args()
    if not args.chromium.is_file():
        raise SystemExit(f"{args.chromium}: not found (Debian: apt-get install chromium)")
    args.out.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the cleanup below runs on a kill too

    with tempfile.TemporaryDirectory(prefix="textrnn-screenshots-") as scratch, contextlib.ExitStack() as stack:
        workdir = (args.workdir or Path(scratch)).resolve()
        if args.only != "tune":
            root = workdir / f"pipeline-{time.strftime('%Y%m%d-%H%M%S')}"  # servers' stores and the run's outputs
            root.mkdir(parents=True)
            prefect = launch_prefect_server(root)  # starting while MLflow's server starts
            stack.callback(prefect.stop)
            mlflow = start_tracking_server(root / "mlflow")
            stack.callback(mlflow.stop)
            prefect.wait_until_up("/api/health", 180)
            started = time.perf_counter()
            run = run_pipeline(root / "work", prefect, mlflow, args.epochs)
            print(f"pipeline: done in {time.perf_counter() - started:.0f} s", file=sys.stderr)
            with Browser(Path(scratch) / "chromium-pipeline", args.chromium) as browser:
                shoot_pipeline(browser, run, args.epochs, args.out)
        if args.only != "pipeline":
            study = workdir / "tune"
            if not (study / "mlflow.db").is_file():
                started = time.perf_counter()
                run_study(study, args.trials, args.data, args.epochs)
                print(f"study: done in {time.perf_counter() - started:.0f} s", file=sys.stderr)
            experiment, parent, trials = study_runs(study)
            server = start_tracking_server(study)
            stack.callback(server.stop)
            with Browser(Path(scratch) / "chromium-tune", args.chromium) as browser:
                shoot_compare(browser, server.url, experiment, trials, args.metric,
                              args.out / "tune-parallel-coordinates.png")
                shoot_runs(browser, server.url, experiment, parent, len(trials) + 1, TUNE_COLUMNS,
                           "tags.`trial_state`", args.out / "tune-runs.png")


if __name__ == "__main__":
    main()
