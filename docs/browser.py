"""Headless Chromium, one page of it, driven over the DevTools protocol: for docs/screenshots.py and the UI tests
(tests/pipeline/test_ui.py).

The `websockets` package (which Prefect already brings) speaks the protocol; a plain `chromium --screenshot`
or `--dump-dom` cannot wait for a single-page app to fetch its data, click, or read the rendered text. Chromium
runs with a new empty profile (the caller's directory) and nothing that reaches beyond loopback, in a session
of its own that `close()` stops whole.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

CHROMIUM = Path("/usr/bin/chromium")  # Debian's package `chromium`
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--hide-scrollbars", "--remote-debugging-port=0",
         "--remote-allow-origins=*"]
# A JS expression's element -> its bounding box in CSS px (or null): RECT.format("document.querySelector(...)").
RECT = "(() => {{ const e = {}; if (!e) return null; const r = e.getBoundingClientRect(); " \
       "return {{x: r.x, y: r.y, width: r.width, height: r.height}}; }})()"


class Browser:
    """Headless Chromium and one page of it. A context manager: leaving it stops Chromium."""

    def __init__(self, profile: Path, chromium: Path | str = CHROMIUM, timeout_s: float = 30) -> None:
        from websockets.sync.client import connect

        self.socket, self.calls, self.timeout_s = None, 0, timeout_s
        profile.mkdir(parents=True, exist_ok=True)
        port_file = profile / "DevToolsActivePort"
        port_file.unlink(missing_ok=True)  # a reused profile's is stale
        self.process = subprocess.Popen([str(chromium), *FLAGS, f"--user-data-dir={profile}", "about:blank"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                                        env={**os.environ, "TMPDIR": str(profile)})  # its temporary files too
        try:
            deadline = time.monotonic() + timeout_s
            while not (port_file.is_file() and port_file.read_text().strip()):
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{chromium} did not start its DevTools endpoint")
                time.sleep(0.1)
            port = port_file.read_text().split()[0]
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as answer:
                page = next(target for target in json.load(answer) if target["type"] == "page")
            self.socket = connect(page["webSocketDebuggerUrl"], max_size=2**28, open_timeout=timeout_s)
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """One DevTools command; its result (events that arrive in between are dropped)."""
        self.calls += 1
        self.socket.send(json.dumps({"id": self.calls, "method": method, "params": params}))
        deadline = time.monotonic() + self.timeout_s
        while True:
            message = json.loads(self.socket.recv(timeout=max(deadline - time.monotonic(), 0.1)))
            if message.get("id") == self.calls:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]

    def js(self, expression: str) -> Any:
        """The value of a JS expression in the page (a promise is awaited)."""
        answer = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in answer:
            error = answer["exceptionDetails"].get("exception", {}).get("description")
            raise RuntimeError(f"{expression[:80]}: {error}")
        return answer["result"].get("value")

    def wait_for(self, expression: str, what: str, timeout_s: float = 60) -> Any:
        """The first truthy value of `expression`, polled; RuntimeError naming `what` after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if value := self.js(expression):
                return value
            time.sleep(0.3)
        url = self.js("location.href")
        raise RuntimeError(f"{url} did not show {what} within {timeout_s:.0f} s; it shows:\n{self.text()[:2000]}")

    def wait_for_text(self, *texts: str, timeout_s: float = 60) -> str:
        """The page's text once it contains every one of `texts`."""
        wanted = " && ".join(f"t.includes({json.dumps(text)})" for text in texts)
        self.wait_for(f"(t => {wanted})(document.body ? document.body.innerText : '')",
                      " and ".join(map(repr, texts)), timeout_s)
        return self.text()

    def text(self) -> str:
        """What the page shows, as text (`innerText`)."""
        return self.js("document.body ? document.body.innerText : ''") or ""

    def open(self, url: str, width: int = 1400, height: int = 1000) -> None:
        """Load `url` in a window of width x height CSS px (screenshots at twice that)."""
        self.resize(width, height)
        # Through a blank page: a new document each time, even where only the URL's #fragment changes (a route of
        # a single-page app), so nothing of the page before can pass for the new one.
        self.call("Page.navigate", url="about:blank")
        self.wait_for("location.href === 'about:blank'", "a blank page", self.timeout_s)
        self._load(lambda: self.call("Page.navigate", url=url))

    def reload(self) -> None:
        self._load(lambda: self.call("Page.reload"))

    def _load(self, start: Any) -> None:
        """start() a navigation and return once the new document is there (a single-page app then still fetches
        its data: wait_for what should show)."""
        self.js("window.__textrnnOldPage = true")
        start()
        self.wait_for("!window.__textrnnOldPage && document.readyState !== 'loading'", "a new page", self.timeout_s)
        time.sleep(0.5)

    def resize(self, width: int, height: int) -> None:
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=2, mobile=False)

    def click(self, x: float, y: float) -> None:
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)

    def screenshot(self, path: Path, clip: dict[str, float] | None = None) -> None:
        """A PNG of the window, or of `clip` ({x, y, width, height} in CSS px, from the page's top)."""
        params = {"format": "png", **({"clip": {**clip, "scale": 1}} if clip else {})}
        path.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", **params)["data"]))
        print(f"wrote {path}", file=sys.stderr)

    def close(self) -> None:
        if self.socket is not None:
            with contextlib.suppress(Exception):
                self.socket.close()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)


# ------------------------------------------------------------- the UIs' particulars (Prefect 3.9, MLflow 3.17)

MLFLOW_CLASSIC = "workflowType=machine_learning"  # MLflow 3.17 opens in its GenAI mode; this is the classic view
MLFLOW_ASSISTANT_CLOSED = "localStorage.setItem('mlflow.assistant.panelOpen_v1', 'false')"
RUN_NAME = "attributes.`Run Name`"  # the runs table's column of run names, always shown
# The runs table's row indices (AG Grid splits a row among containers: pinned columns, the others).
MLFLOW_ROWS = "new Set(Array.from(document.querySelectorAll('.ag-row'), e => e.getAttribute('row-index')))"


def open_prefect_tab(browser: Browser, tab: str) -> None:
    """Click one of the tabs of a Prefect run page (Logs, Task Runs, Subflow Runs, Artifacts, ...)."""
    item = f"Array.from(document.querySelectorAll('li.p-tab')).find(e => e.innerText.trim() === {json.dumps(tab)})"
    browser.wait_for(f"!!{item}", f"the tab {tab}")
    browser.js(f"{item}.click()")
    browser.wait_for(f"{item}.classList.contains('p-tab__active')", f"the tab {tab} open")


def open_mlflow(browser: Browser, url: str, width: int = 1400, height: int = 1000) -> None:
    """An MLflow page, its assistant panel closed (a setting the UI keeps in localStorage)."""
    browser.open(url, width, height)
    if browser.js(f"localStorage.getItem('mlflow.assistant.panelOpen_v1') !== 'false' && "
                  f"({MLFLOW_ASSISTANT_CLOSED}, true)"):
        browser.reload()


def open_mlflow_runs(browser: Browser, server: str, experiment: str, columns: dict[str, int | None],
                     expanded: list[str], rows: int, width: int = 1780, height: int = 1000) -> None:
    """The experiment's runs table, classic view, showing `columns` ({column id: width in px or None}) in that
    order after the fixed ones (RUN_NAME's width alone is set), the runs `expanded` unfolded, once it has at least
    `rows` rows. The table's set-up is the state the UI keeps in localStorage, as a user's choices leave it."""
    browser.open(f"{server}/#/experiments/{experiment}/runs?{MLFLOW_CLASSIC}", width, height)
    key = f"MLflowLocalStorage-1.1-ExperimentPage-{json.dumps([experiment])}-ReactComponentState"
    raw = browser.wait_for(f"localStorage.getItem({json.dumps(key)})", "the runs table's saved state")
    shown = [column for column in columns if column != RUN_NAME]
    state = {**json.loads(raw), "selectedColumns": shown, "runsExpanded": {run: True for run in expanded}}
    widths = {column: px for column, px in columns.items() if px}
    for _ in range(4):
        browser.js(f"localStorage.setItem({json.dumps(key)}, {json.dumps(json.dumps(state))}); "
                   f"{MLFLOW_ASSISTANT_CLOSED}")
        browser.reload()
        browser.wait_for(f"{MLFLOW_ROWS}.size >= {rows}", f"{rows} rows in the runs table")
        order = browser.js("Array.from(document.querySelectorAll('.ag-header-cell[col-id]'))"
                           ".sort((a, b) => a.getBoundingClientRect().x - b.getBoundingClientRect().x)"
                           ".map(e => e.getAttribute('col-id'))")
        if not set(shown) <= set(order):
            continue  # the page saved its own state over ours before the reload
        if not widths or state.get("columnWidths") == widths:
            return
        # Widths apply along with the full order, known now that the columns show.
        order = [column for column in order if column not in shown] + shown
        state.update(columnOrder=order, columnWidths=widths)
    raise RuntimeError(f"the runs table did not take the columns {shown}")
