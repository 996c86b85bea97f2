"""The Voila dashboards in real Chromium, on a store that holds real recorded runs.

One dashboard server (the same ``start`` that ``lepton dashboard`` calls) serves a temporary
Lepton home holding: a pipeline run made by executing a small notebook with the ``lepton``
papermill engine; a training run whose history comes from the real ``TrainMonitor``; a
compression report in the compression job's row format; and a registered model behind an
endpoint. The endpoint is a small local HTTP server speaking the endpoint protocol with the
serving module's own request helpers (token check, ``.npy`` bodies), so the "try it" form is
exercised end to end without starting Ray Serve. Screenshots go to ``docs/``.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import nbformat
import numpy as np
import pytest

TOKEN = "dash-" + hashlib.sha256(os.urandom(16)).hexdigest()[:32]
ENDPOINT_TOKEN = "lep_" + hashlib.sha256(os.urandom(16)).hexdigest()[:43]
STDERR = '[data-mime-type="application/vnd.jupyter.stderr"]'


# -- the recorded runs -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dash_home(lepton_home, tmp_path_factory):
    """A Lepton home of this module's own (the session's stays as it was after)."""
    from lepton_lab.config import reset_config
    from lepton_lab.store import reset_store

    home = tmp_path_factory.mktemp("dashboard-home")
    os.environ["LEPTON_HOME"] = str(home)
    reset_config()
    reset_store()
    yield home
    os.environ["LEPTON_HOME"] = str(lepton_home)
    reset_config()
    reset_store()


def _pipeline_notebook(path: Path) -> Path:
    params = nbformat.v4.new_code_cell("lr = 0.1\nsteps = 6")
    params.metadata["tags"] = ["parameters"]
    body = nbformat.v4.new_code_cell(
        "import math\nimport lepton_lab\nfrom matplotlib.figure import Figure\n"
        "for step in range(steps):\n"
        "    lepton_lab.record('loss', 2.0 * math.exp(-5 * lr * step), step=step)\n"
        "    lepton_lab.record('accuracy', 100 - 50 * math.exp(-5 * lr * step), step=step)\n"
        "fig = Figure(figsize=(4, 3))\nax = fig.add_subplot()\n"
        "ax.bar(range(10), [50, 48, 47, 49, 50, 46, 50, 49, 45, 47])\n"
        "ax.set_xlabel('digit'); ax.set_ylabel('correct'); ax.set_title('per-class correct')\n"
        "lepton_lab.record('per-class', fig)\n"
        "lepton_lab.record('confusion', [{'digit': 0, 'correct': 50}, {'digit': 1, 'correct': 48}])")
    nb = nbformat.v4.new_notebook(cells=[params, body])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nbformat.write(nb, path)
    return path


def _training_run(store) -> str:
    """A finished 2-rank run: history and throughput as the TrainMonitor saw them."""
    import math

    from lepton_lab.remote._monitor import TrainMonitor

    monitor = TrainMonitor()
    for epoch in range(1, 11):
        for rank in (0, 1):
            monitor.add({"rank": rank, "world": 2, "epochs": 10, "points": [[
                epoch * 20, float(epoch), {"loss": 2.3 * math.exp(-epoch / 3),
                                           "val_loss": 2.4 * math.exp(-epoch / 3.5),
                                           "accuracy": 100 - 60 * math.exp(-epoch / 3)}]],
                "samples": 1280 if rank == 0 else 560, "seconds": 0.25})
    store.create_run("7e1a2b3c4d5e", job_id=None, kind="train", name="digits-mlp",
                     config={"workers": 2, "cpus_per_worker": 1.0, "metric": "loss",
                             "mode": "min", "max_failures": 1})
    store.update_run("7e1a2b3c4d5e", status="succeeded", history=monitor.history,
                     metrics=dict(monitor.latest, throughput=monitor.rates()))
    store.create_run("0badc0ffee00", job_id=None, kind="train", name="<b>cnn</b>",
                     config={"workers": 1})
    store.update_run("0badc0ffee00", status="failed", error="RuntimeError: out of memory",
                     history=monitor.history[:3], metrics={"loss": 1.9})
    return "7e1a2b3c4d5e"


def _compression_report(store) -> str:
    from lepton_lab.compress._report import CompressResult, Variant

    variants = [Variant("original", params=4810, size_bytes=20_400, latency_ms_b1=0.081,
                        latency_ms_b64=1.21, accuracy=96.4),
                Variant("pruned-0.5", params=2410, size_bytes=10_300, latency_ms_b1=0.064,
                        latency_ms_b64=0.83, accuracy=95.9),
                Variant("int8", format="onnx", params=2410, size_bytes=3_900,
                        latency_ms_b1=0.052, latency_ms_b64=0.47, accuracy=95.6),
                Variant("prune-0.9", params=480, size_bytes=2_300, latency_ms_b1=0.049,
                        latency_ms_b64=0.41, accuracy=81.0, passed=False)]
    result = CompressResult(variants)               # the best is the last that passed: int8
    return store.add_report("digits:1", result.rows(), target="cpu",
                            settings={"prune": 0.5, "quantize": "int8"}).id


class _Endpoint(BaseHTTPRequestHandler):
    """``/digits-api/healthz`` and ``/digits-api/predict`` with the serving module's own
    helpers; the "model" answers the number of inked cells of a drawn 8x8 digit."""

    token_hash = hashlib.sha256(ENDPOINT_TOKEN.encode()).hexdigest()

    def _send(self, status: int, body: bytes, ctype: str, headers=()) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path == "/digits-api/healthz":
            self._send(200, b'{"status": "ok"}', "application/json")
        else:
            self._send(404, b'{"error": "no route"}', "application/json")

    def do_POST(self) -> None:
        from lepton_lab.serve._app import (
            HttpError,
            authorize,
            encode_outputs,
            error_body,
            parse_inputs,
        )

        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            authorize(self.headers.get("Authorization"), self.token_hash)
            x = parse_inputs(body, self.headers.get("Content-Type"))
            count = np.clip(np.rint(x.reshape(len(x), -1).sum(axis=1) / 16.0), 0, 9)
            logits = -np.abs(np.arange(10)[None, :] - count[:, None]).astype(np.float32)
            out, ctype = encode_outputs(logits, self.headers.get("Accept"))
            self._send(200, out, ctype)
        except HttpError as exc:
            self._send(exc.status, error_body(exc.message), "application/json",
                       exc.headers.items())

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def recorded(dash_home, tmp_path_factory):
    from lepton_lab.pipeline import RunOptions, run_notebook
    from lepton_lab.store import get_store

    store = get_store()
    folder = tmp_path_factory.mktemp("dashboard-nb")
    run = run_notebook(_pipeline_notebook(folder / "digits-pipeline.ipynb"),
                       RunOptions(parameters=(("lr", 0.2),), seed=7, log_output=False))
    assert run.status == "succeeded", run.error
    train_id = _training_run(store)
    report_id = _compression_report(store)
    art = folder / "digits.pt"
    art.write_bytes(b"weights")
    store.register_model("digits", kind="trained", format="torch", path=str(art),
                         sha256=hashlib.sha256(b"weights").hexdigest(), size=7,
                         settings={"input_shape": [64]})
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Endpoint)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    store.put_endpoint("digits-api", model="digits:1", status="running",
                       url=f"http://127.0.0.1:{server.server_port}/digits-api",
                       token_hash=_Endpoint.token_hash, token_hint=ENDPOINT_TOKEN[:8] + "…",
                       config={"replicas": 2, "max_batch": 32})
    yield SimpleNamespace(pipeline_id=run.id, train_id=train_id, failed_id="0badc0ffee00",
                          report_id=report_id)
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def dashboard(recorded, dash_home):
    from lepton_lab.dashboard import DashboardSpec, start

    dash = start(DashboardSpec(port=0, timeout=90), token=TOKEN, home=dash_home)
    yield dash
    dash.stop()


# -- helpers -----------------------------------------------------------------------------------
def open_page(page, dash, name: str, ready: str, **query) -> None:
    page.goto(dash.url(name, **query))
    page.wait_for_selector(".lepton-nav", timeout=60_000)
    page.wait_for_selector(ready, timeout=60_000)


def assert_no_errors(page) -> None:
    assert page.locator(STDERR).count() == 0, page.locator(STDERR).first.inner_text()
    text = page.inner_text("body")
    assert "There was an error when executing cell" not in text
    assert "Traceback" not in text
    # Resources on the internet (Font Awesome's CDN) cannot load here; anything else counts
    bad = [e for e in page.console_errors if "Failed to load resource" not in e]
    assert not bad, bad


def screenshot(page, docs_dir: Path, name: str, height: int) -> None:
    page.set_viewport_size({"width": 1400, "height": height})
    page.wait_for_timeout(300)
    page.screenshot(path=str(docs_dir / name))


def fetch(url: str, headers: dict | None = None) -> tuple[int, str, str]:
    """(status, Location, body) without following redirects."""
    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None

    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(urllib.request.Request(url, headers=headers or {}), timeout=30) as r:
            return r.status, r.headers.get("Location", ""), r.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Location", ""), exc.read().decode(errors="replace")


def open_logged_in(url: str) -> tuple[str, str]:
    """Follow ``url`` as a browser would (cookies kept): (final URL, body)."""
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())
    with opener.open(url, timeout=60) as r:
        return r.geturl(), r.read().decode(errors="replace")


# -- the tests ---------------------------------------------------------------------------------
def test_access_without_the_token_is_refused(dashboard, recorded, page):
    for path in ("/", "/voila/render/runs.ipynb",
                 f"/voila/render/run.ipynb?run={recorded.train_id}"):
        status, location, body = fetch(dashboard.base_url + path)
        assert status == 302 and "/login" in location, (path, status, location)
        assert recorded.train_id not in body
        status, location, _ = fetch(dashboard.base_url + path + "?token=wrong-token")
        assert status == 302 and "/login" in location
        status, _, _ = fetch(dashboard.base_url + path, {"Authorization": "token nope"})
        assert status in (302, 401, 403)
    assert fetch(dashboard.base_url + "/api/kernels")[0] in (403, 404)
    # the browser lands on the login form and sees no run
    page.goto(dashboard.url("runs", with_token=False))
    page.wait_for_selector("input[type=password]", timeout=30_000)
    assert "/login" in page.url and recorded.pipeline_id not in page.content()
    # the token is not on Voila's command line, and page kernels do not inherit it
    cmdline = Path(f"/proc/{dashboard.proc.pid}/cmdline").read_bytes().decode()
    assert TOKEN not in cmdline
    for _, environ in _children(dashboard.proc.pid):
        assert "LEPTON_DASHBOARD_TOKEN" not in environ


def test_the_token_leaves_the_url_and_never_reaches_a_page_kernel(dashboard, recorded, page):
    # the first visit with the right token logs in and is sent on without it, query kept;
    # the login cookie that comes with the redirect is enough for the page
    url = dashboard.url("run", run=recorded.train_id)
    status, location, _ = fetch(url)
    assert status == 302 and TOKEN not in location, (status, location)
    assert location.endswith(f"/voila/render/run.ipynb?run={recorded.train_id}"), location
    final, body = open_logged_in(url)
    assert TOKEN not in final and recorded.train_id in body
    # in the browser: the page renders, its address has no token, and while its kernel is
    # alive that kernel's environment (QUERY_STRING included) does not hold the token
    open_page(page, dashboard, "run", "#lepton-run-id", run=recorded.train_id)
    assert "token=" not in page.url and recorded.train_id in page.url
    environs = [env for cmd, env in _children(dashboard.proc.pid) if "kernel" in cmd]
    assert environs, "no page kernel found under the Voila process"
    for environ in environs:
        assert TOKEN not in environ
    # the page's own parameters still arrive
    assert any(f"QUERY_STRING=run={recorded.train_id}" in e for e in environs)


def _children(pid: int) -> list[tuple[str, str]]:
    """(command line, environment) of each live child process of ``pid``."""
    out = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and _ppid(proc) == pid:
            try:
                out.append(((proc / "cmdline").read_bytes().decode(errors="replace"),
                            (proc / "environ").read_bytes().decode(errors="replace")))
            except OSError:
                continue                  # a child that ended meanwhile
    return out


def _ppid(proc: Path) -> int | None:
    try:
        return int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def test_runs_overview(dashboard, recorded, page, docs_dir):
    open_page(page, dashboard, "runs", "#lepton-runs")
    table = page.locator("#lepton-runs")
    text = table.inner_text()
    for run_id in (recorded.pipeline_id, recorded.train_id, recorded.failed_id):
        assert run_id in text
    assert "<b>cnn</b>" in text                      # a name is shown as text, not markup
    assert "lr=0.2" in text and "pipeline" in text and "train" in text
    assert table.locator("tbody tr").count() == 3
    page.fill("input[placeholder^='filter']", "digits-pipeline")
    page.wait_for_function("document.querySelectorAll('#lepton-runs tbody tr').length == 1")
    assert recorded.pipeline_id in page.locator("#lepton-runs").inner_text()
    page.fill("input[placeholder^='filter']", "")
    page.wait_for_function("document.querySelectorAll('#lepton-runs tbody tr').length == 3")
    page.get_by_text("training runs").click()
    page.wait_for_function("document.querySelectorAll('#lepton-runs tbody tr').length == 2")
    page.get_by_text("all runs").click()
    page.wait_for_function("document.querySelectorAll('#lepton-runs tbody tr').length == 3")
    assert_no_errors(page)
    screenshot(page, docs_dir, "dashboard-runs.png", 520)
    # a run id links to its page
    page.click(f"#lepton-runs a:has-text('{recorded.train_id}')")
    page.wait_for_selector("#lepton-run-id", timeout=60_000)
    assert page.inner_text("#lepton-run-id") == recorded.train_id


def test_training_run_detail(dashboard, recorded, page, docs_dir):
    open_page(page, dashboard, "run", "#lepton-run-id", run=recorded.train_id)
    plots = page.locator("img.lepton-plot")
    assert plots.count() == 2                        # curves and per-rank throughput
    assert plots.nth(0).get_attribute("alt").startswith("Training curves")
    assert plots.nth(1).get_attribute("alt") == "Throughput per rank"
    assert all(plots.nth(i).evaluate("img => img.naturalWidth > 200") for i in range(2))
    body = page.inner_text("body")
    assert "digits-mlp" in body and "max_failures" in body and "succeeded" in body
    assert_no_errors(page)
    screenshot(page, docs_dir, "dashboard-run.png", 1250)


def test_pipeline_run_detail(dashboard, recorded, page, docs_dir):
    open_page(page, dashboard, "run", "#lepton-run-id", run=recorded.pipeline_id)
    assert page.locator("img.lepton-plot").count() == 1      # the recorded series
    assert page.locator("img.lepton-figure").count() == 1    # the recorded figure
    cells = page.inner_text("#lepton-cells")
    assert "parameters" in cells and "completed" in cells
    body = page.inner_text("body")
    for text in ("digits-pipeline", "Environment", "python", "Table: confusion", "sha256"):
        assert text in body
    assert_no_errors(page)
    screenshot(page, docs_dir, "dashboard-pipeline-run.png", 1400)


def test_unknown_run_is_a_one_line_notice(dashboard, page):
    open_page(page, dashboard, "run", ".lepton-warn", run="no-such-run")
    assert "no pipeline or training run 'no-such-run'" in page.inner_text(".lepton-warn")
    assert_no_errors(page)


def test_compression_tradeoff(dashboard, recorded, page, docs_dir):
    open_page(page, dashboard, "compression", "#lepton-variants")
    plot = page.locator("img.lepton-plot")
    assert plot.count() == 1 and "trade-off of digits:1" in plot.get_attribute("alt")
    rows = page.locator("#lepton-variants tbody tr")
    assert rows.count() == 4
    assert "int8" in page.inner_text("#lepton-variants tr.best")
    assert recorded.report_id in page.inner_text("body")
    assert_no_errors(page)
    screenshot(page, docs_dir, "dashboard-compression.png", 820)


def test_endpoints_status_and_try_it(dashboard, page, docs_dir):
    open_page(page, dashboard, "endpoints", "#lepton-endpoints")
    row = page.inner_text("#lepton-endpoints tbody tr")
    assert "digits-api" in row and "answering" in row and "not answering" not in row
    assert re.search(r"\t\d+\.\d\t", row), row          # the health latency in ms
    assert ENDPOINT_TOKEN not in page.content()
    for i in range(3):                                   # draw three cells of the digit
        page.locator(".widget-gridbox button").nth(10 + i).click()
    page.wait_for_function("getComputedStyle(document.querySelectorAll("
                           "'.widget-gridbox button')[12]).backgroundColor"
                           " == 'rgb(31, 35, 40)'")     # inked cells turn dark
    page.fill("input[type=password]", ENDPOINT_TOKEN)
    page.get_by_role("button", name="predict").click()
    page.wait_for_selector("#lepton-predicted", timeout=30_000)
    assert page.inner_text("#lepton-predicted") == "3"
    assert "answered in" in page.inner_text("body")
    assert ENDPOINT_TOKEN not in page.inner_text("body")
    assert_no_errors(page)
    screenshot(page, docs_dir, "dashboard-endpoints.png", 900)
    page.fill("input[type=password]", "lep_wrong")
    page.get_by_role("button", name="predict").click()
    page.wait_for_selector(".lepton-warn", timeout=30_000)
    assert "HTTP 401" in page.inner_text(".lepton-warn")
    assert_no_errors(page)


def test_cluster_page_does_not_start_a_cluster(dashboard, dash_home, page, docs_dir):
    open_page(page, dashboard, "cluster", ".lepton-note")
    assert "disconnected" in page.inner_text("body")
    assert not (dash_home / "cluster.json").exists()
    assert_no_errors(page)


def test_lepton_dashboard_command_prints_the_url_once_and_stops_on_sigterm(dash_home,
                                                                           recorded):
    env = dict(os.environ, LEPTON_HOME=str(dash_home), LEPTON_DASHBOARD_TOKEN=TOKEN)
    proc = subprocess.Popen(
        [sys.executable, "-m", "lepton_lab.cli", "dashboard", "--port", "0", "--run",
         recorded.train_id], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, start_new_session=True)
    try:
        lines = [proc.stdout.readline() for _ in range(2)]
        url = lines[1].split("open ", 1)[1].strip()
        assert url.startswith("http://127.0.0.1:") and f"run={recorded.train_id}" in url
        assert "".join(lines).count(TOKEN) == 1
        final, body = open_logged_in(url)
        assert recorded.train_id in body and TOKEN not in final
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    port = url.split(":")[2].split("/")[0]
    with pytest.raises(OSError):                          # Voila went with it
        urllib.request.urlopen(f"http://127.0.0.1:{port}/login", timeout=5)
