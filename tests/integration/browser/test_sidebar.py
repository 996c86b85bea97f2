"""The JupyterLab sidebar in real Chromium against a real `jupyter lab` (token auth on) and
the session's Ray cluster: a %%lepton cell's job shows up in the Jobs panel and finishes
there; a job started with "Run cell on cluster…" is cancelled from the sidebar and stops."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

from tests.integration.conftest import free_port, wait_for_free_cpus

pytestmark = pytest.mark.integration

# The quick job runs until the test has seen it running in the sidebar and opens its gate
# (a file: the cluster's workers are on this machine), so no poll can fall between its start
# and its end however slow a 2-core CI machine is; it gives up on its own after two minutes.
QUICK = ('%%lepton --name sidebar-quick\nimport os, time\nprint("hello from the cluster")\n'
         'deadline = time.monotonic() + 120\n'
         'while not os.path.exists({gate!r}) and time.monotonic() < deadline:\n'
         '    time.sleep(0.2)\n'
         'answer = 42')
LONG = ('import time\nprint("long job started", flush=True)\nfor _ in range(3000):\n'
        '    time.sleep(0.1)')


def _write_settings(settings: Path) -> None:
    """Poll every second, and no news or update checks (no network, no toasts)."""
    files = {
        "lepton-lab/plugin.jupyterlab-settings": {"pollInterval": 1, "maxPollInterval": 5},
        "@jupyterlab/apputils-extension/notification.jupyterlab-settings":
            {"fetchNews": "false", "checkForUpdates": False},
    }
    for name, data in files.items():
        path = settings / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data))


@pytest.fixture
def lab(cluster, tmp_path):
    """A `jupyter lab` subprocess on a free loopback port with a random token; it shares the
    session's LEPTON_HOME (so its kernels and server see the shared cluster and store)."""
    root = tmp_path / "root"
    root.mkdir()
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("%load_ext lepton_lab"),
        nbformat.v4.new_code_cell(QUICK.format(gate=str(tmp_path / "gate"))),
        nbformat.v4.new_code_cell("print('answer is', answer)"),
        nbformat.v4.new_code_cell(LONG),
    ])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nbformat.write(nb, root / "sidebar.ipynb")
    _write_settings(tmp_path / "settings")
    token, port = secrets.token_hex(16), free_port()
    env = dict(os.environ, JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"), PYTHONUNBUFFERED="1")
    log = open(tmp_path / "lab.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1",
         f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
         f"--LabApp.user_settings_dir={tmp_path / 'settings'}",
         f"--LabApp.workspaces_dir={tmp_path / 'workspaces'}",
         "--LabApp.expose_app_in_browser=True", "--allow-root"],
        cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 90
    while True:
        try:
            with urllib.request.urlopen(f"{url}api/status?token={token}", timeout=2):
                break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                log.close()
                raise AssertionError("jupyter lab did not start:\n"
                                     + (tmp_path / "lab.log").read_text()[-3000:])
            time.sleep(0.3)
    yield {"url": url, "token": token, "root": root, "gate": tmp_path / "gate"}
    try:  # a clean shutdown also stops the notebook's kernel
        req = urllib.request.Request(f"{url}api/shutdown?token={token}", method="POST")
        urllib.request.urlopen(req, timeout=10).close()
        proc.wait(timeout=20)
    except Exception:  # noqa: BLE001 - then by force
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    log.close()


def _run_cell(page, index: int, wait: bool = True) -> None:
    """Run one cell; with wait=False return once it is sent (the command's promise resolves
    only when the cell has finished)."""
    page.evaluate(
        """async ([i, wait]) => {
            const nb = window.jupyterapp.shell.currentWidget;
            nb.content.activeCellIndex = i;
            const done = window.jupyterapp.commands.execute('notebook:run-cell');
            if (wait) { await done; }
        }""", [index, wait])


def _cell_output(page, index: int) -> str:
    return page.locator(".jp-Notebook .jp-Cell").nth(index).locator(".jp-OutputArea") \
        .inner_text()


def _job(page, name: str):
    return page.locator(f"#lepton-section-jobs li.lp-item:has(.lp-name:text-is('{name}'))")


def test_sidebar_follows_and_cancels_jobs(lab, page, docs_dir):
    """The whole round trip in one Lab session (starting Lab and a kernel is most of the cost)."""
    page.goto(f"{lab['url']}lab/tree/sidebar.ipynb?token={lab['token']}")
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)

    # open the sidebar from its icon in the left bar: the cluster shows as connected
    page.click(".jp-SideBar.jp-mod-left [data-id='lepton-sidebar']")
    page.wait_for_selector("#lepton-section-cluster .lp-pill[data-status='connected']",
                           timeout=60_000)
    assert page.locator("#lepton-section-cluster a[data-role='dashboard']").count() == 1

    # a %%lepton cell: its job appears while it runs and finishes in the Jobs panel
    page.wait_for_function("window.jupyterapp.shell.currentWidget"
                           ".sessionContext.session?.kernel?.status === 'idle'", timeout=60_000)
    _run_cell(page, 0)
    _run_cell(page, 1, wait=False)
    quick = _job(page, "sidebar-quick")
    quick.and_(page.locator("[data-status='running']")).wait_for(timeout=60_000)
    lab["gate"].touch()
    quick.and_(page.locator("[data-status='succeeded']")).wait_for(timeout=60_000)
    assert "hello from the cluster" in _cell_output(page, 1)
    _run_cell(page, 2)
    page.wait_for_function("document.querySelectorAll('.jp-Notebook .jp-Cell')[2]"
                           ".innerText.includes('answer is 42')", timeout=30_000)
    # its row opens to the log tail
    quick.locator(".lp-item-head").click()
    quick.locator("pre[data-role='log']").filter(has_text="hello from the cluster") \
        .wait_for(timeout=15_000)

    # "Run cell on cluster…" on a plain cell: detached, named, then cancelled from the sidebar
    page.evaluate("window.jupyterapp.shell.currentWidget.content.activeCellIndex = 3")
    page.click(".jp-NotebookPanel-toolbar [data-jp-item-name='lepton-run-cell'] button")
    dialog = page.locator(".jp-Dialog")
    dialog.locator("input[data-field='name']").fill("sidebar-long")
    dialog.locator("input[data-field='detach']").check()
    dialog.locator("button.jp-mod-accept").click()
    long_job = _job(page, "sidebar-long")
    long_job.and_(page.locator("[data-status='running']")).wait_for(timeout=60_000)
    source = page.evaluate("window.jupyterapp.shell.currentWidget.content.widgets[3]"
                           ".model.sharedModel.getSource()")
    assert source.startswith("%%lepton --name sidebar-long --detach\n")
    long_job.locator("button[data-action='cancel']").click()
    page.locator(".jp-Dialog button.jp-mod-accept").click()
    long_job.and_(page.locator("[data-status='cancelled']")).wait_for(timeout=60_000)

    # it really stopped: the cluster's CPUs are free, and the cell's live view says so
    wait_for_free_cpus(timeout=30)
    page.wait_for_function("document.querySelectorAll('.jp-Notebook .jp-Cell')[3]"
                           ".innerText.includes('cancelled')", timeout=30_000)
    from lepton_lab.store import get_store

    assert get_store().find_job("sidebar-long").status == "cancelled"
    assert any(e["action"] == "cancel"
               for e in get_store().audit_entries(job_id=get_store().find_job("sidebar-long").id))

    page.evaluate("window.jupyterapp.commands.execute('lepton:refresh')")
    all_free = r"CPUs (\\d+)/\\1 free"          # a regex: as many CPUs free as in total
    page.wait_for_selector(f"#lepton-section-cluster .lp-kv span:text-matches('{all_free}')")
    page.screenshot(path=str(docs_dir / "sidebar.png"))
    errors = [e for e in page.console_errors if "lepton" in e.lower()]
    assert not errors, errors
