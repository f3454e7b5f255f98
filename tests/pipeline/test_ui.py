"""The Prefect and MLflow UIs as a browser renders them: what the README's "Watch it in the UIs" shows, checked on
the pages themselves (the other tests read the same facts through the servers' APIs).

A module fixture starts `prefect server start` and `mlflow server` on loopback (as test_prefect_logs does) and runs
`textrnn pipeline` against them as a user would (two variants, two epochs on the sample, in a process of its own);
another starts headless Chromium (docs/browser.py, driven over the DevTools protocol). Each test opens a page and
reads its rendered text and links; the APIs only give the ids that pages are opened by, and the values to expect.
Every wait is bounded; servers, pipeline processes and Chromium are stopped by their process groups, even when the
set-up fails. Skipped where Chromium is not installed (Debian: `apt-get install chromium`; .ci/run installs it).
"""

from __future__ import annotations

import contextlib
import json
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from conftest import PARAMS, REPO_ROOT, path_overrides
from mlflow_server import free_port, start_tracking_server
from test_prefect_integration import BIN, Stack, _client_env, _wait_for_http
from test_prefect_logs import (
    EPOCHS,
    SMALL,
    PipelineRuns,
    _pipeline_ids,
    _run_in_own_session,
    expected_lines,
    prefect_client,
    wait_for_lines,
)
from test_scale_out import _stop_with_descendants

sys.path.insert(0, str(REPO_ROOT / "docs"))
from browser import (  # noqa: E402  (docs/, beside the screenshot script that shares it)
    CHROMIUM,
    MLFLOW_CLASSIC,
    MLFLOW_ROWS,
    RUN_NAME,
    Browser,
    open_mlflow,
    open_mlflow_runs,
    open_prefect_tab,
)

if not CHROMIUM.is_file():
    pytest.skip(f"{CHROMIUM} is not installed (Debian package chromium; .ci/run installs it)", allow_module_level=True)

pytestmark = pytest.mark.slow

VARIANTS = ["bag", "gru"]
RUN_TIMEOUT_S = 300
PAGE_TIMEOUT_S = 30  # for a page to show what is waited for


@dataclass
class Pipeline:
    """One `textrnn pipeline` run as the servers' APIs have it, and where their UIs are."""

    prefect: str  # the Prefect UI's base URL
    mlflow: str
    runs: PipelineRuns
    artifact_id: str  # the comparison's markdown artifact
    experiment: str
    parent: Any  # the pipeline's MLflow run
    variant_runs: dict[str, Any]  # variant -> its MLflow run
    champion: Any  # the registered model version with the `champion` alias

    def run_url(self, run_id: str) -> str:
        """An MLflow run's page."""
        return f"{self.mlflow}/#/experiments/{self.experiment}/runs/{run_id}"


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    from mlflow.tracking import MlflowClient
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from flows.report import COMPARISON_KEY

    root = tmp_path_factory.mktemp("ui")
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    with contextlib.ExitStack() as cleanup:  # every callback runs, last registered first, even if one raises
        stack = Stack(root=root, env=_client_env(root, api_url, ""), api_url=api_url, mlflow_url="")
        cleanup.callback(lambda: _stop_with_descendants(stack.stop, list(stack.processes.values())))
        stack.start("server", [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)])
        mlflow = start_tracking_server(root / "mlflow")  # while Prefect's server starts
        cleanup.callback(mlflow.stop)
        stack.mlflow_url = stack.env["MLFLOW_TRACKING_URI"] = mlflow.url
        _wait_for_http(f"{api_url}/health", stack.processes["server"], 180, stack)

        workdir = root / "work"
        workdir.mkdir()
        sets = [arg for override in [*SMALL, "orchestration.max_concurrency=2", *path_overrides(workdir)]
                for arg in ("--set", override)]
        answer = _run_in_own_session([str(BIN / "textrnn"), "pipeline", "--params", str(PARAMS), "--variants",
                                      ",".join(VARIANTS), *sets], stack, workdir, RUN_TIMEOUT_S)
        assert answer.returncode == 0, f"{answer.stdout}\n{answer.stderr}\n{stack.logs()}"
        with prefect_client(stack) as client:
            (pipeline_id,) = _pipeline_ids(client)
            runs = wait_for_lines(client, pipeline_id, expected_lines(VARIANTS))  # every log line is in
            comparison = ArtifactFilter(key=ArtifactFilterKey(any_=[COMPARISON_KEY]))
            (artifact,) = client.read_artifacts(artifact_filter=comparison)
        tracking = MlflowClient(mlflow.url)
        experiment = tracking.get_experiment_by_name("textrnn").experiment_id
        (parent,) = tracking.search_runs([experiment], "tags.run_kind = 'pipeline'")
        variant_runs = {run.data.tags["variant"]: run
                        for run in tracking.search_runs([experiment], "tags.variant != ''")}
        assert sorted(variant_runs) == sorted(VARIANTS)
        champion = tracking.get_model_version_by_alias("agnews-rnn", "champion")
        yield Pipeline(prefect=api_url.removesuffix("/api"), mlflow=mlflow.url, runs=runs, artifact_id=str(artifact.id),
                       experiment=experiment, parent=parent, variant_runs=variant_runs, champion=champion)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    with Browser(tmp_path_factory.mktemp("chromium")) as chromium:
        yield chromium


def js_list(selector: str, value: str = "e.innerText") -> str:
    """JS: `value` of every element `selector` matches (e: the element)."""
    return f"Array.from(document.querySelectorAll({json.dumps(selector)}), e => {value})"


# ------------------------------------------------------------------------------------------------------ Prefect


def test_the_pipelines_flow_run_page_shows_its_name_its_tag_and_its_task_runs_tagged(
    pipeline: Pipeline, browser: Browser
) -> None:
    flow_run = pipeline.runs.pipeline
    browser.open(f"{pipeline.prefect}/runs/flow-run/{flow_run.id}")
    heading = "document.querySelector('header.page-heading')"
    browser.wait_for(f"{heading} && {heading}.innerText.includes({json.dumps(flow_run.name)})", "the run's name",
                     PAGE_TIMEOUT_S)
    commit = pipeline.parent.data.tags["git_commit"][:8]  # the code that ran, as MLflow has it
    assert re.search(rf"^pipeline-\d{{4}}-\d\d-\d\d-\d{{4}}-{commit}$", browser.js(f"{heading}.innerText"), re.M)
    assert browser.js(js_list("header.page-heading .p-tag-wrapper__tag:not(.p-tag-wrapper__tag--hidden)")) == \
        ["textrnn"]

    open_prefect_tab(browser, "Task Runs")
    names = ["prepare", "encode", *(f"variant-{v}" for v in VARIANTS), "promote"]
    browser.wait_for(f"document.querySelectorAll('.state-list-item').length >= {len(names)}", "the task runs",
                     PAGE_TIMEOUT_S)
    tags = "Array.from(e.querySelectorAll('.p-tag-wrapper__tag:not(.p-tag-wrapper__tag--hidden)'), t => t.innerText)"
    shown = {item["name"]: set(item["tags"]) for item in browser.js(js_list(
        ".state-list-item", f"({{name: e.querySelector('.state-list-item__name').innerText.trim(), tags: {tags}}})"))}
    assert sorted(shown) == sorted(names)
    for step in ("prepare", "encode", "promote"):
        assert shown[step] == {"textrnn", f"stage:{step}"}, (step, shown[step])
    for variant in VARIANTS:
        assert shown[f"variant-{variant}"] == {"textrnn", "stage:train-variant", f"variant:{variant}"}


def test_a_train_task_runs_page_shows_textrnns_epoch_lines_in_its_log(pipeline: Pipeline, browser: Browser) -> None:
    task_run = pipeline.runs.task_runs["train-gru/train-gru"]
    browser.open(f"{pipeline.prefect}/runs/task-run/{task_run.id}")
    browser.wait_for(f"{js_list('.log-row')}.filter(line => line.includes('epoch variant=gru ')).length >= {EPOCHS}",
                     f"{EPOCHS} epoch lines", PAGE_TIMEOUT_S)
    epochs = [line for line in browser.js(js_list(".log-row")) if "epoch variant=gru " in line]
    assert len(epochs) == EPOCHS, epochs
    for number, line in enumerate(epochs, 1):
        assert re.search(rf"epoch variant=gru epoch={number} train_loss=\S+ .*val_loss=\S+ val_accuracy=\S+",
                         line), line
    assert "stage:train" in browser.text() and "variant:gru" in browser.text(), "the task run's tags, beside its log"


def test_the_comparison_artifact_links_every_variants_mlflow_run(pipeline: Pipeline, browser: Browser) -> None:
    browser.open(f"{pipeline.prefect}/artifacts/artifact/{pipeline.artifact_id}")
    table = "article.artifact-data-markdown table"
    browser.wait_for(f"document.querySelectorAll('{table} a').length >= {len(VARIANTS)}", "the comparison's links",
                     PAGE_TIMEOUT_S)
    rows = {row[0]: row[1] for row in browser.js(js_list(
        f"{table} tbody tr", "[e.cells[0].innerText.trim(), Array.from(e.querySelectorAll('a'), a => a.href)]"))}
    for variant, run in pipeline.variant_runs.items():
        assert rows[variant] == [pipeline.run_url(run.info.run_id)]


def test_the_link_beside_a_variant_run_in_mlflow_opens_its_flow_run_in_prefect(
    pipeline: Pipeline, browser: Browser
) -> None:
    run = pipeline.variant_runs["gru"]
    open_mlflow(browser, f"{pipeline.run_url(run.info.run_id)}?{MLFLOW_CLASSIC}")
    text = browser.wait_for_text("prefect.flow_run_url", timeout_s=PAGE_TIMEOUT_S)
    (url,) = set(re.findall(r"http://127\.0\.0\.1:\d+/\S*flow-run/[0-9a-f-]{36}", text))
    assert url == run.data.tags["prefect.flow_run_url"]
    browser.open(url)
    heading = "document.querySelector('header.page-heading')"
    browser.wait_for(f"{heading} && {heading}.innerText.includes('train-gru')", "the variant's flow run",
                     PAGE_TIMEOUT_S)
    assert {"variant:gru", "stage:train-variant", "textrnn"} <= set(browser.js(js_list(
        "header.page-heading .p-tag-wrapper__tag:not(.p-tag-wrapper__tag--hidden)")))
    browser.wait_for_text("Parent Run", pipeline.runs.pipeline.name, timeout_s=PAGE_TIMEOUT_S)  # the pipeline's


# ------------------------------------------------------------------------------------------------------- MLflow


def test_the_pipelines_mlflow_run_page_describes_the_comparison_linking_every_variants_run(
    pipeline: Pipeline, browser: Browser
) -> None:
    parent = pipeline.parent.info.run_id
    open_mlflow(browser, f"{pipeline.run_url(parent)}?{MLFLOW_CLASSIC}")
    table = ".note-view-preview table"
    browser.wait_for(f"document.querySelectorAll('{table} a').length >= {len(VARIANTS)}", "the description's links",
                     PAGE_TIMEOUT_S)
    rows = {row[0]: row[1] for row in browser.js(js_list(
        f"{table} tbody tr", "[e.cells[0].innerText.trim(), Array.from(e.querySelectorAll('a'), a => a.href)]"))}
    assert sorted(rows) == sorted(VARIANTS)
    for variant, run in pipeline.variant_runs.items():
        assert rows[variant] == [pipeline.run_url(run.info.run_id)]


def test_the_runs_table_shows_each_variants_test_accuracy_on_the_collapsed_pipeline_run(
    pipeline: Pipeline, browser: Browser
) -> None:
    columns = [f"metrics.`test_accuracy/{v}`" for v in VARIANTS]
    open_mlflow_runs(browser, pipeline.mlflow, pipeline.experiment, dict.fromkeys(columns), expanded=[], rows=1)
    for column in columns:
        browser.wait_for(f"{js_list(f'.ag-row [col-id={json.dumps(column)}]')}.some(text => /[0-9]/.test(text))",
                         f"a value under {column}", PAGE_TIMEOUT_S)
    assert browser.js(f"{MLFLOW_ROWS}.size") == 1, "the variants' runs folded under the pipeline's"
    cells = dict(browser.js(js_list(".ag-row [col-id]", "[e.getAttribute('col-id'), e.innerText]")))
    assert cells[RUN_NAME].strip().endswith(pipeline.parent.info.run_name)
    headers = browser.js(js_list(".ag-header-cell[col-id]", "e.innerText.trim()"))
    for variant, column in zip(VARIANTS, columns):
        assert f"test_accuracy/{variant}" in headers
        assert float(cells[column]) == pytest.approx(pipeline.parent.data.metrics[f"test_accuracy/{variant}"])


def test_a_logged_model_is_named_after_its_variant_and_lists_its_test_accuracy_on_the_test_set(
    pipeline: Pipeline, browser: Browser
) -> None:
    run = pipeline.variant_runs["gru"]
    model_id = run.data.tags["model_id"]
    open_mlflow(browser, f"{pipeline.mlflow}/#/experiments/{pipeline.experiment}/models/{model_id}?{MLFLOW_CLASSIC}")
    browser.wait_for_text("test_accuracy", "sample-test", timeout_s=PAGE_TIMEOUT_S)
    assert browser.js("document.querySelector('main h2').innerText.trim()") == "gru"
    rows = [row.split("\n") for row in browser.js(js_list("main [role=row]"))]
    (accuracy,) = [[cell.strip() for cell in row if cell.strip()] for row in rows if row[0].strip() == "test_accuracy"]
    assert accuracy[1].startswith("sample-test"), accuracy
    assert float(accuracy[-1]) == pytest.approx(run.data.metrics["test_accuracy"])


def test_the_registry_shows_the_champion_alias_on_the_best_version(pipeline: Pipeline, browser: Browser) -> None:
    open_mlflow(browser, f"{pipeline.mlflow}/#/models/agnews-rnn?{MLFLOW_CLASSIC}")
    rows = "main [role=table] [role=row]"
    browser.wait_for(f"{js_list(rows)}.filter(row => row.startsWith('Version ')).length >= {len(VARIANTS)}",
                     "the model's versions", PAGE_TIMEOUT_S)
    (row,) = [row for row in browser.js(js_list(rows)) if "champion" in row]
    assert row.startswith(f"Version {pipeline.champion.version}\n"), row
    best = max(run.data.metrics["test_accuracy"] for run in pipeline.variant_runs.values())
    champion_run = next(run for run in pipeline.variant_runs.values() if run.info.run_id == pipeline.champion.run_id)
    assert champion_run.data.metrics["test_accuracy"] == best
    assert f": {champion_run.data.tags['variant']}\n" in row, "its variant, among its tags"
