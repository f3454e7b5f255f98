"""The DVC pipeline (dvc.yaml), run by real DVC in a temporary git copy of the working tree, on the sample.

One module-scoped copy runs `dvc repro` once (two variants, one epoch, MLflow on a temporary SQLite
store) and commits; a fresh clone of that commit then reproduces one variant in the background while
the tests check what DVC users rely on: nothing reruns without a change, a change to one variant reruns
only that variant, `dvc metrics`, `dvc params diff`, `dvc plots show` and `dvc exp run -S` work, every
stage declares exactly the params and code modules it uses, and the clone got the same results bit for
bit. `dvc plots show` writes a page that needs no network (headless Chromium renders it where installed),
with a colour per variant on the learning curves and one confusion matrix per variant in data.classes order.

DVC is kept hermetic: no analytics, its site cache and global/system config in temporary directories.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
import yaml

from config_access import covering, recording
from conftest import PARAMS, REPO_ROOT, path_overrides
from textrnn import config, steps

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent  # dvc and the `textrnn` console script the stages run
DVC_YAML = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text(encoding="utf-8"))
VARIANTS = ("bag", "gru")
CHANGED = "bag"  # the variant whose hyperparameter one test changes
CLONED = "gru"  # the variant a fresh clone reproduces (the recurrent one; `bag` runs the same stages' code)
SMALL = {"train_rows": 1000, "test_rows": 200}
# Timings differ between runs by nature; everything else in the metrics files must be bit-identical.
TIMING = re.compile(r"samples_per_second|seconds|latency|wall")
# The page template .dvc/config names for `dvc plots` (vega inlined; `make install` builds it, git ignores it).
PLOTS_PAGE = Path(".vega/dvc_plots.html")
LEARNING_CURVES = ("Validation accuracy by epoch", "Validation loss by epoch")  # dvc.yaml's top-level plots
CHROMIUM = Path("/usr/bin/chromium")

# Written into the copy's PYTHONPATH: every `textrnn` process appends the textrnn modules it imported.
IMPORT_HOOK = textwrap.dedent(
    """
    import atexit, json, os, sys

    def _log_textrnn_imports():
        if os.path.basename(sys.argv[0]) == "textrnn":
            modules = sorted(m for m in sys.modules if m.split(".")[0] == "textrnn")
            with open(os.environ["TEXTRNN_IMPORT_LOG"], "a", encoding="utf-8") as log:
                log.write(json.dumps({"argv": sys.argv[1:], "modules": modules}) + "\\n")

    if os.environ.get("TEXTRNN_IMPORT_LOG"):
        atexit.register(_log_textrnn_imports)
    """
)


# ------------------------------------------------------------------------------------------ dvc.yaml


def _fill(node: Any, variant: str) -> Any:
    if isinstance(node, str):
        return node.replace("${key}", variant)
    if isinstance(node, list):
        return [_fill(item, variant) for item in node]
    if isinstance(node, dict):
        return {_fill(key, variant): _fill(value, variant) for key, value in node.items()}
    return node


def stage_definition(stage: str, variant: str | None = None) -> dict[str, Any]:
    """A stage of dvc.yaml; for the stages that fan out over variants, as generated for `variant`."""
    definition = DVC_YAML["stages"][stage]
    return _fill(definition["do"], variant) if "foreach" in definition else definition


def stage_names(variants: tuple[str, ...] = VARIANTS) -> dict[str, dict[str, Any]]:
    """Every generated stage (`train@bag`, ...) and its definition."""
    names = {}
    for stage, definition in DVC_YAML["stages"].items():
        for variant in variants if "foreach" in definition else [None]:
            names[f"{stage}@{variant}" if variant else stage] = stage_definition(stage, variant)
    return names


def commands(definition: dict[str, Any]) -> list[str]:
    cmd = definition["cmd"]
    return [cmd] if isinstance(cmd, str) else list(cmd)


# -------------------------------------------------------------------------------- the copy and DVC


@dataclass
class Clone:
    """`dvc repro evaluate@<CLONED>` in a fresh clone, started in the background (its own process group)."""

    root: Path
    process: subprocess.Popen
    log: Path

    def output(self) -> str:
        """Wait for the run to finish; its output (raises AssertionError when it failed)."""
        returncode = self.process.wait(timeout=900)
        output = self.log.read_text(encoding="utf-8")
        assert returncode == 0, f"dvc repro in the clone failed ({returncode}):\n{output[-6000:]}"
        return output

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=60)


@dataclass
class Project:
    root: Path
    env: dict[str, str]
    import_log: Path
    first_repro: str  # output of the first `dvc repro`
    first_metrics: dict[str, Any]  # metrics/*/*.json after it
    first_lock: dict[str, str]  # every output's md5 after it
    clone: Clone  # a fresh clone reproducing CLONED, running in the background meanwhile

    def cached(self, md5: str) -> Path:
        """A file in the copy's DVC cache."""
        return self.root / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]

    def dvc(self, *args: str, cwd: Path | None = None, check: bool = True) -> str:
        return run(["dvc", *args], cwd or self.root, self.env, check=check)

    def git(self, *args: str, cwd: Path | None = None) -> str:
        return run(["git", *args], cwd or self.root, self.env)


def run(argv: list[str], cwd: Path, env: dict[str, str], check: bool = True) -> str:
    result = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    output = result.stdout + result.stderr
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed ({result.returncode}):\n{output[-6000:]}")
    return output


def hermetic_env(base: Path, hook_dir: Path, import_log: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items()
           if key not in ("DVC_EXP_NAME", "TEXTRNN_MLFLOW_PARENT_RUN_ID", "MLFLOW_TRACKING_URI")}
    env.update(
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        # `src` (relative: each stage runs in its repository's root) makes the stages run the copy's
        # code, which DVC hashes, rather than the editable install's.
        PYTHONPATH=os.pathsep.join(filter(None, [str(hook_dir), "src", env.get("PYTHONPATH")])),
        TEXTRNN_IMPORT_LOG=str(import_log),
        DVC_NO_ANALYTICS="1",
        DVC_SITE_CACHE_DIR=str(base / "dvc-site-cache"),
        DVC_GLOBAL_CONFIG_DIR=str(base / "dvc-global-config"),
        DVC_SYSTEM_CONFIG_DIR=str(base / "dvc-system-config"),
        DVC_STUDIO_OFFLINE="true",
        MLFLOW_TRACKING_URI=f"sqlite:///{base / 'mlflow.db'}",
        MLFLOW_DISABLE_TELEMETRY="true",
        ORT_DISABLE_TELEMETRY="1",
        HF_HUB_OFFLINE="1",
    )
    return env


PIPELINE_OUTPUTS = ("metrics/", "dvc.lock")


def copy_working_tree(target: Path) -> None:
    """Every file git would see in the repository right now (tracked or untracked, not ignored)."""
    listing = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO_ROOT, capture_output=True, check=True,
    ).stdout.decode().split("\0")
    for name in filter(None, listing):
        if name.startswith(PIPELINE_OUTPUTS):
            continue  # a local run's results (metrics/ is not git-ignored: DVC keeps metrics in git)
        source = REPO_ROOT / name
        if source.is_file():  # tracked files deleted in the working tree are skipped
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)


def write_small_params(root: Path) -> None:
    params = yaml.safe_load((root / "params.yaml").read_text(encoding="utf-8"))
    params["data"].update(source="sample", sample=SMALL)
    params["train"].update(epochs=1, threads=1)
    params["variants"] = {name: params["variants"][name] for name in VARIANTS}
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")


def edit_params(root: Path, dotted: str, value: Any) -> None:
    params = yaml.safe_load((root / "params.yaml").read_text(encoding="utf-8"))
    *parents, leaf = dotted.split(".")
    node = params
    for part in parents:
        node = node[part]
    node[leaf] = value
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")


def ran_stages(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


def read_metrics(root: Path) -> dict[str, Any]:
    return {str(path.relative_to(root)): json.loads(path.read_text())
            for path in sorted((root / "metrics").glob("*/*.json"))}


def without_timings(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: without_timings(item) for key, item in value.items() if not TIMING.search(key)}
    if isinstance(value, list):
        return [without_timings(item) for item in value]
    return value


def lock_hashes(root: Path) -> dict[str, str]:
    """Every output's md5 in dvc.lock."""
    lock = yaml.safe_load((root / "dvc.lock").read_text(encoding="utf-8"))
    return {out["path"]: out["md5"] for stage in lock["stages"].values() for out in stage.get("outs", [])}


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Project]:
    """A git + DVC copy of the working tree on the small sample, after one `dvc repro`, committed; and a
    fresh clone of that commit reproducing one variant in the background while the tests run."""
    base = tmp_path_factory.mktemp("dvc")
    root, hook_dir, import_log = base / "repo", base / "hook", base / "imports.jsonl"
    hook_dir.mkdir()
    (hook_dir / "sitecustomize.py").write_text(IMPORT_HOOK, encoding="utf-8")
    env = hermetic_env(base, hook_dir, import_log)
    copy_working_tree(root)
    if (REPO_ROOT / PLOTS_PAGE).is_file():  # git-ignored: built by `make install` (test_plots_page_is_offline says)
        (root / PLOTS_PAGE).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO_ROOT / PLOTS_PAGE, root / PLOTS_PAGE)
    write_small_params(root)
    for argv in (["git", "init", "-q"], ["git", "config", "user.name", "textrnn tests"],
                 ["git", "config", "user.email", "tests@textrnn.invalid"]):
        run(argv, root, env)
    if not (root / ".dvc").is_dir():
        run(["dvc", "init", "-q"], root, env)
    run(["git", "add", "-A"], root, env)
    run(["git", "commit", "-qm", "textrnn on the small sample"], root, env)
    output = run(["dvc", "repro"], root, env)
    run(["git", "add", "-A"], root, env)
    run(["git", "commit", "-qm", "dvc repro"], root, env)
    clone = start_clone(root, base, env)
    try:
        yield Project(root, env, import_log, output, read_metrics(root), lock_hashes(root), clone)
    finally:
        clone.stop()


def start_clone(root: Path, base: Path, env: dict[str, str]) -> Clone:
    """Clone `root` (no DVC cache comes with it) and start `dvc repro evaluate@<CLONED>` there, with its
    own MLflow store and import log so that it shares no file with the tests running meanwhile."""
    clone, log = base / "clone", base / "clone.log"
    run(["git", "clone", "-q", str(root), str(clone)], base, env)
    clone_env = {**env, "MLFLOW_TRACKING_URI": f"sqlite:///{base / 'mlflow-clone.db'}",
                 "TEXTRNN_IMPORT_LOG": str(base / "imports-clone.jsonl")}
    with open(log, "w", encoding="utf-8") as output:
        process = subprocess.Popen(["dvc", "repro", f"evaluate@{CLONED}"], cwd=clone, env=clone_env,
                                   stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
    return Clone(clone, process, log)


# ------------------------------------------------------------------------------------------- tests


def test_repro_runs_every_stage(project: Project) -> None:
    assert ran_stages(project.first_repro) == set(stage_names()), project.first_repro[-3000:]


def test_second_repro_runs_nothing(project: Project) -> None:
    output = project.dvc("repro")
    assert not ran_stages(output), output
    assert "Data and pipelines are up to date" in output, output


def test_metrics_are_not_git_ignored(project: Project) -> None:
    """cache: false metrics live in git: without them `dvc exp show` and `dvc metrics diff` show nothing."""
    ignored = subprocess.run(["git", "check-ignore", "-q", f"metrics/{CHANGED}/eval.json"], cwd=project.root,
                             env=project.env).returncode == 0
    assert not ignored, ".gitignore must not ignore metrics/: DVC's metrics are committed to git"


def test_metrics_show_lists_every_variant_in_120_columns(project: Project) -> None:
    shown = json.loads(project.dvc("metrics", "show", "--json"))
    files = shown[""]["data"]
    assert set(files) == {f"metrics/{variant}/headline.json" for variant in VARIANTS}
    for variant in VARIANTS:
        headline = files[f"metrics/{variant}/headline.json"]["data"]
        evaluated = project.first_metrics[f"metrics/{variant}/eval.json"]
        assert headline["test_accuracy"] == evaluated["test_accuracy"]
        assert headline["test_macro_f1"] == evaluated["test_macro_f1"]
        assert headline["best_val_accuracy"] == project.first_metrics[f"metrics/{variant}/train.json"]["best_val_accuracy"]
        assert all(isinstance(value, float) for value in headline.values())
    table = project.dvc("metrics", "show").splitlines()
    # Rows are files, so the width grows only with the longest path: allow for the defaults' longest name.
    longer_names = max(len(name) for name in config.Config().variants) - max(len(name) for name in VARIANTS)
    assert len(table) == 1 + len(VARIANTS), "\n".join(table)
    assert max(len(line) for line in table) + longer_names <= 120, "\n".join(table)


def test_params_diff_shows_a_change(project: Project) -> None:
    edit_params(project.root, "train.learning_rate", 0.002)
    try:
        diff = json.loads(project.dvc("params", "diff", "--json"))
    finally:
        project.git("checkout", "--", "params.yaml")
    change = diff["params.yaml"]["train.learning_rate"]
    assert (change["old"], change["new"]) == (0.001, 0.002)


# ------------------------------------------------------------------------------------- dvc plots


@dataclass(eq=False)
class Element:
    tag: str
    attrs: dict[str, str]
    parents: tuple[Element, ...]
    text: str = ""

    @property
    def classes(self) -> list[str]:
        return self.attrs.get("class", "").split()


class Page(HTMLParser):
    """An HTML page's elements in document order, each with its ancestors (script and style bodies are text)."""

    VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}

    def __init__(self, html: str) -> None:
        super().__init__()
        self.elements: list[Element] = []
        self._open: list[Element] = []
        self.feed(html)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        element = Element(tag, {name: value or "" for name, value in attrs}, tuple(self._open))
        self.elements.append(element)
        if tag not in self.VOID:
            self._open.append(element)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append(Element(tag, {name: value or "" for name, value in attrs}, tuple(self._open)))

    def handle_endtag(self, tag: str) -> None:
        for depth in range(len(self._open) - 1, -1, -1):
            if self._open[depth].tag == tag:
                del self._open[depth:]
                return

    def handle_data(self, data: str) -> None:
        if self._open:
            self._open[-1].text += data

    def by_id(self, element_id: str) -> Element:
        (element,) = [e for e in self.elements if e.attrs.get("id") == element_id]
        return element

    def inside(self, ancestor: Element, css_class: str | None = None) -> list[Element]:
        """The elements under `ancestor` (with `css_class`, if given)."""
        return [e for e in self.elements if any(p is ancestor for p in e.parents)
                and (css_class is None or css_class in e.classes)]

    def texts(self, ancestor: Element, css_class: str) -> list[str]:
        """The texts of the <text> elements under `ancestor`'s groups of `css_class` (vega's SVG labels)."""
        return [e.text for group in self.inside(ancestor, css_class) for e in self.inside(group) if e.tag == "text"]


@pytest.fixture(scope="module")
def plots_page(project: Project, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`dvc plots show -o DIR` in the copy (once): DIR/index.html."""
    assert (REPO_ROOT / PLOTS_PAGE).is_file(), (
        f"{PLOTS_PAGE} (the page template .dvc/config names for `dvc plots`) is missing: run `make install`")
    out = tmp_path_factory.mktemp("dvc-plots") / "plots"
    project.dvc("plots", "show", "-o", str(out))
    return out / "index.html"


def shown_plots(project: Project) -> dict[str, Any]:
    """`dvc plots show --json`'s plots (stdout only: DVC warns on stderr about the plots of variants that
    params.yaml's copy leaves out)."""
    result = subprocess.run(["dvc", "plots", "show", "--json"], cwd=project.root, env=project.env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return json.loads(result.stdout)["data"]


def plot_id(name: str) -> str:
    """The id of a plot's element on DVC's page (its name, punctuation and spaces replaced by `_`)."""
    return re.sub(r"[^A-Za-z0-9-]", "_", name)


def test_plots_show_renders_the_declared_plots(plots_page: Path) -> None:
    html = plots_page.read_text(encoding="utf-8")
    for fragment in LEARNING_CURVES:
        assert fragment in html
    for variant in VARIANTS:
        assert f"{variant}/train.json" in html  # its learning curves (DVC shortens the file names)
        assert f"{variant}: confusion matrix" in html  # .dvc/plots/class_confusion.json over predictions.json
        assert f"plots/{variant}/learning_curves.png" in html


def test_plots_page_is_offline(project: Project, plots_page: Path) -> None:
    """The page loads nothing from the network (DVC's own loads vega from a CDN): vega, vega-lite and
    vega-embed are inlined, and every file it references (the PNGs) is there beside it."""
    assert os.path.normpath(Path(".dvc", project.dvc("config", "plots.html_template").strip())) == str(PLOTS_PAGE)
    page = Page(plots_page.read_text(encoding="utf-8"))
    scripts = [e for e in page.elements if e.tag == "script"]
    for package in ("vega", "vega-lite", "vega-embed"):
        assert any(e.text.startswith(f"/* {package}@") for e in scripts), f"{package} is not inlined in the page"
    referenced = [(e.tag, e.attrs[name]) for e in page.elements for name in ("src", "href") if e.attrs.get(name)]
    assert not [ref for ref in referenced if ref[0] in ("script", "link")], referenced
    assert any(tag == "img" for tag, _ in referenced), "the learning-curve PNGs are missing from the page"
    for tag, url in referenced:
        assert not re.match(r"[a-z][a-z0-9+.-]*:|//", url, re.IGNORECASE), f"<{tag}> loads {url}"
        assert (plots_page.parent / url).is_file(), f"<{tag}> references {url}, which is not there"


def test_learning_curves_give_each_variant_its_colour(project: Project) -> None:
    """The learning-curve specs (`dvc plots show --json`) colour by variant, named in the legend, from a scheme
    with a colour for every variant of params.yaml; each curve's points belong to exactly one variant."""
    shown = shown_plots(project)
    schemes = {"tableau10": 10}  # the colours in vega's categorical schemes that we use
    all_variants = yaml.safe_load(PARAMS.read_text(encoding="utf-8"))["variants"]
    for title in LEARNING_CURVES:
        (plot,) = shown[title]
        spec = plot["content"]
        colour = spec["encoding"]["color"]
        assert (colour["field"], colour["type"], colour["title"]) == ("variant", "nominal", "variant"), colour
        assert len(all_variants) <= schemes[colour["scale"]["scheme"]], "more variants than colours"
        (derive,) = [step["calculate"] for step in spec["transform"] if step.get("as") == "variant"]
        pattern = re.fullmatch(r"replace\(datum\.filename, regexp\('(.+)'\), '\$2'\)", derive).group(1)
        variants = {re.sub(pattern, r"\2", point["filename"]) for point in spec["data"]["values"]}
        assert variants == set(VARIANTS), (title, variants)


def test_one_confusion_matrix_per_variant_in_class_order(project: Project) -> None:
    """Each variant's confusion matrix is shown once (DVC's interactive one; evaluate's PNG is a plain output),
    its axes sorted by the classes' positions in data.classes, which predictions.json records."""
    classes = yaml.safe_load(PARAMS.read_text(encoding="utf-8"))["data"]["classes"]
    shown = shown_plots(project)
    for variant in VARIANTS:
        matrices = [name for name, plots in shown.items() for plot in plots
                    if variant in Path(name).parts and "confusion" in json.dumps(plot.get("content", plot))]
        assert matrices == [f"plots/{variant}/predictions.json"], matrices
        assert f"plots/{variant}/confusion_matrix.png" not in shown
        (plot,) = shown[f"plots/{variant}/predictions.json"]
        spec = plot["content"]["spec"]
        assert spec["encoding"]["x"]["sort"] == {"field": "x_index", "op": "min"}
        assert spec["encoding"]["y"]["sort"] == {"field": "y_index", "op": "min"}
        for record in plot["content"]["data"]["values"]:
            assert classes.index(record["actual"]) == record["actual_index"]
            assert classes.index(record["predicted"]) == record["predicted_index"]


@pytest.mark.skipif(not CHROMIUM.is_file(),
                    reason=f"{CHROMIUM} is not installed (Debian package chromium; .ci/run installs it)")
def test_plots_page_renders_offline_in_chromium(plots_page: Path, tmp_path: Path) -> None:
    """Headless Chromium, with no network (no host name resolves), draws every vega plot of the page as SVG:
    each variant's learning curve in its own colour with its legend entry, and each confusion matrix with
    data.classes on both axes."""
    classes = yaml.safe_load(PARAMS.read_text(encoding="utf-8"))["data"]["classes"]
    result = subprocess.run(
        [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-quic",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--host-resolver-rules=MAP * ~NOTFOUND",
         f"--user-data-dir={tmp_path / 'chromium'}", "--virtual-time-budget=10000", "--dump-dom",
         plots_page.as_uri()],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    page = Page(result.stdout)
    for title in LEARNING_CURVES:
        plot = page.by_id(plot_id(title))
        assert page.inside(plot, "marks"), f"{title}: not drawn"
        legends = [g for g in page.inside(plot, "role-legend") if page.texts(g, "role-legend-title") == ["variant"]]
        assert len(legends) == 1 and page.texts(legends[0], "role-legend-label") == sorted(VARIANTS), title
        strokes: dict[str, set[str]] = {}
        for line in page.inside(plot):
            if line.tag == "path" and line.attrs.get("aria-roledescription") == "line mark":
                variant = re.search(r"variant: ([^;]+)", line.attrs["aria-label"]).group(1)
                strokes.setdefault(variant, set()).add(line.attrs["stroke"])
        assert set(strokes) == set(VARIANTS), strokes
        assert all(len(colours) == 1 for colours in strokes.values()), strokes
        assert len(set.union(*strokes.values())) == len(VARIANTS), f"{title}: variants share a colour: {strokes}"
    for variant in VARIANTS:
        plot = page.by_id(plot_id(f"plots/{variant}/predictions.json"))
        assert page.inside(plot, "marks"), f"{variant}'s confusion matrix: not drawn"
        axes = {axis.attrs.get("aria-label", "")[:6]: page.texts(axis, "role-axis-label")
                for axis in page.inside(plot, "role-axis")}
        assert axes == {"X-axis": classes, "Y-axis": classes}, axes


def test_learning_curve_plots_cover_every_variant() -> None:
    variants = set(yaml.safe_load(PARAMS.read_text(encoding="utf-8"))["variants"])
    for plot in DVC_YAML["plots"]:
        (title, definition), = plot.items()
        plotted = {Path(path).parent.name for path in definition["y"]}
        assert plotted == variants, f"dvc.yaml plot '{title}' must list metrics/<V>/train.json for {sorted(variants)}"


def imports_by_stage(project: Project) -> dict[str, set[str]]:
    """{stage: the textrnn module files its commands imported during the first repro}."""
    by_command = {command.removeprefix("textrnn ").strip(): name
                  for name, definition in stage_names().items() for command in commands(definition)}
    imported: dict[str, set[str]] = {name: set() for name in stage_names()}
    for line in project.import_log.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        stage = by_command.get(" ".join(record["argv"]))
        if stage is not None:
            imported[stage] |= {"src/" + m.replace(".", "/") + (".py" if "." in m else "/__init__.py")
                                for m in record["modules"]}
    return imported


def test_stages_import_exactly_their_declared_modules(project: Project) -> None:
    imported = imports_by_stage(project)
    problems = []
    for name, definition in stage_names().items():
        declared = {dep for dep in definition["deps"] if dep.startswith("src/textrnn/")}
        if missing := sorted(imported[name] - declared):
            problems.append(f"stage {name} imports undeclared {', '.join(missing)}")
        if unused := sorted(declared - imported[name]):
            problems.append(f"stage {name} declares {', '.join(unused)} but does not import it")
    assert not problems, "\n".join(problems)


def test_editing_a_module_reruns_the_same_steps_under_dvc_and_prefect(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Prefect's cache keys come from dvc.yaml (flows.caching). Edit each textrnn module any stage imports,
    in the copy: `dvc status` must list exactly the stages whose commands imported it, and exactly those
    steps' Prefect cache keys must change (promote is never cached by Prefect)."""
    from flows import caching

    imported = imports_by_stage(project)
    monkeypatch.setattr(caching, "SOURCE_DIR", project.root / "src" / "textrnn")
    monkeypatch.setattr(caching, "DVC_FILE", project.root / "dvc.yaml")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", project.env["MLFLOW_TRACKING_URI"])
    caching.dvc_stages.cache_clear()
    monkeypatch.chdir(project.root)
    cfg = config.load(project.root / "params.yaml")

    def prefect_keys() -> dict[str, str]:
        keys = {}
        for name in stage_names():
            step, _, variant = name.partition("@")
            if step in caching.CACHED_STEPS:
                device = "auto" if step == "evaluate" else None
                keys[name] = caching.step_files(cfg, step, variant or None, device).key(step)
        return keys

    assert not json.loads(project.dvc("status", "--json")), "the copy must be up to date before the edits"
    before = prefect_keys()
    mismatches = []
    for module in sorted(set().union(*imported.values())):
        path = project.root / module
        original = path.read_bytes()
        path.write_bytes(original + b"\n# edited by test_dvc\n")
        try:
            dvc_reruns = set(json.loads(project.dvc("status", "--json")))
            after = prefect_keys()
        finally:
            path.write_bytes(original)
        importers = {stage for stage, modules in imported.items() if module in modules}
        prefect_reruns = {stage for stage, key in after.items() if key != before[stage]}
        if dvc_reruns != importers:
            mismatches.append(f"{module}: dvc reruns {sorted(dvc_reruns)}, imported by {sorted(importers)}")
        if prefect_reruns != importers & set(before):
            mismatches.append(f"{module}: prefect reruns {sorted(prefect_reruns)}, imported by {sorted(importers)}")
    assert not mismatches, "\n".join(mismatches)
    assert prefect_keys() == before


def test_changing_one_variant_reruns_only_that_variant(project: Project) -> None:
    edit_params(project.root, f"variants.{CHANGED}.embed_dim", 32)
    try:
        output = project.dvc("repro")
    finally:
        project.git("checkout", "--", "params.yaml")
    expected = {f"train@{CHANGED}", f"export@{CHANGED}", f"evaluate@{CHANGED}", "promote"}
    assert ran_stages(output) == expected, output[-3000:]


def test_a_failing_prepare_under_dvc_keeps_the_data_it_would_replace(project: Project) -> None:
    """The README's first command offline (the Hub source, no network): DVC must not delete data/prepared
    before `textrnn prepare` fails, or a demo's data is gone (the outs are `persist: true`)."""
    prepared = project.root / "data" / "prepared"
    before = {path.name: path.read_bytes() for path in prepared.iterdir() if path.is_file()}
    edit_params(project.root, "data.source", "hf")
    try:
        failed = run(["dvc", "repro", "--single-item", "prepare"], project.root,
                     {**project.env, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}, check=False)
    finally:
        project.git("checkout", "--", "params.yaml")
    assert "failed to reproduce 'prepare'" in failed.lower() or "error" in failed.lower(), failed[-2000:]
    assert {path.name: path.read_bytes() for path in prepared.iterdir() if path.is_file()} == before


def test_exp_run_with_more_epochs(project: Project) -> None:
    from mlflow.tracking import MlflowClient

    """`dvc exp run -S train.epochs=2`, for one variant's stages (`evaluate@bag`) to keep the test short."""
    name, variant = "textrnn-epochs-2", CHANGED
    output = project.dvc("exp", "run", "-n", name, "-S", "train.epochs=2", f"evaluate@{variant}")
    assert ran_stages(output) >= {f"train@{variant}", f"export@{variant}", f"evaluate@{variant}"}, output[-3000:]

    path = f"metrics/{variant}/train.json"
    trained = read_metrics(project.root)[path]
    assert trained["epochs_run"] == 2
    assert trained["best_val_loss"] != project.first_metrics[path]["best_val_loss"]

    rows = json.loads(project.dvc("exp", "show", "--json"))
    experiments = {rev.get("name"): rev for row in rows for group in row.get("experiments") or [] for rev in group["revs"]}
    assert name in experiments, [*experiments]
    headline = experiments[name]["data"]["metrics"][f"metrics/{variant}/headline.json"]["data"]
    assert headline["best_val_accuracy"] == trained["best_val_accuracy"]

    client = MlflowClient(project.env["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("textrnn")
    runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.dvc_exp_name = '{name}'")
    variant_runs = [run for run in runs if run.data.tags.get("run_kind") == "variant"]
    parents = [run for run in runs if run.data.tags.get("run_kind") == "pipeline"]
    assert [run.data.tags["variant"] for run in variant_runs] == [variant]
    assert len(parents) == 1 and parents[0].info.run_name == f"dvc {name}"
    assert variant_runs[0].data.tags["mlflow.parentRunId"] == parents[0].info.run_id
    assert variant_runs[0].data.metrics["epochs_run"] == 2 and "test_accuracy" in variant_runs[0].data.metrics


# ------------------------------------------------------------------------- declared params == reads


def test_every_stage_declares_exactly_the_params_it_reads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run each stage's steps (as its CLI command does) on a recording Config and compare the keys read
    with the stage's `params:` in dvc.yaml. `paths.*` are left out: dvc.yaml spells paths as deps/outs."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    for variable in ("DVC_EXP_NAME", "TEXTRNN_MLFLOW_PARENT_RUN_ID"):
        monkeypatch.delenv(variable, raising=False)
    cfg = config.load(PARAMS, ["data.source=sample", "data.sample.train_rows=400", "data.sample.test_rows=80",
                               "train.epochs=1", "train.threads=1", *path_overrides(tmp_path)])
    variant = CHANGED
    stage_steps = {
        "prepare": [lambda c: steps.prepare_step(c)],
        "encode": [lambda c: steps.encode_step(c)],
        "train": [lambda c: steps.train_step(c, variant)],
        "export": [lambda c: steps.export_step(c, variant)],
        "evaluate": [lambda c: steps.evaluate_step(c, variant), lambda c: steps.register_step(c, variant)],
        "promote": [lambda c: steps.promote_step(c)],
    }
    assert set(stage_steps) == set(DVC_YAML["stages"]), "a dvc.yaml stage without its steps here (or vice versa)"
    problems = []
    for stage, calls in stage_steps.items():
        proxy, keys = recording(cfg)
        for call in calls:
            call(proxy)
        read = {key for key in keys if key.split(".")[0] != "paths"}
        declared = stage_definition(stage, variant).get("params", [])
        problems += [f"stage {stage} reads undeclared key '{key}'" for key in sorted(read) if not covering(key, declared)]
        problems += [f"stage {stage} declares '{key}' but never reads it" for key in declared
                     if not any(covering(item, [key]) for item in read)]
    assert not problems, "\n".join(problems)


# Last: the clone has been reproducing in the background since the fixture ran.
def test_fresh_clone_reproduces_bit_identical_results(project: Project) -> None:
    """A clone of the committed repository, with no DVC cache, reruns the pipeline for one variant and
    gets the first run's results bit for bit (on CPU)."""
    import torch

    variant, clone = CLONED, project.clone.root
    output = project.clone.output()
    assert ran_stages(output) == {"prepare", "encode", f"train@{variant}", f"export@{variant}",
                                  f"evaluate@{variant}"}, output[-3000:]
    for name in ("train.json", "eval.json"):
        path = f"metrics/{variant}/{name}"
        assert without_timings(read_metrics(clone)[path]) == without_timings(project.first_metrics[path])
    # Every other output has the same md5 (data, tokenizer, ONNX graph, predictions, plots), except:
    # the MLflow run id; model.pt, a zip archive that torch.save names after the temporary file it
    # writes (so its weights are compared instead); export.json, which records model.pt's sha256.
    clone_lock = lock_hashes(clone)
    volatile = re.compile(r"metrics/|mlflow_run\.json$|model\.pt$|export\.json$")
    compared = [path for path in clone_lock if not volatile.search(path)]
    assert {path: clone_lock[path] for path in compared} == {path: project.first_lock[path] for path in compared}
    weights = f"models/{variant}/model.pt"
    first = torch.load(project.cached(project.first_lock[weights]), weights_only=True)["state_dict"]
    again = torch.load(clone / weights, weights_only=True)["state_dict"]
    assert first.keys() == again.keys() and all(torch.equal(first[key], again[key]) for key in first)

