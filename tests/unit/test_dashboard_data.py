"""The dashboards' core on a temporary store: rows, run details, compression points, the
endpoint "try it" inputs, the HTML and figures, and how Voila is launched. Ray-free: the
cluster page must say "disconnected" without touching Ray (the unit conftest forbids it)."""

from __future__ import annotations

import argparse
import io
import json
import re
import time

import nbformat
import numpy as np
import pytest

from lepton_lab.dashboard import _data, _endpoints, _html, _launch, _pages, _plots
from lepton_lab.errors import JobNotFound, LeptonUsageError


# -- records made through the real store API ---------------------------------------------------
def training_run(store, run_id="a1b2c3d4e5f6", name="digits-mlp", epochs=4, world=2):
    """A finished training run whose history comes from the real TrainMonitor."""
    from lepton_lab.remote._monitor import TrainMonitor

    monitor = TrainMonitor()
    for epoch in range(1, epochs + 1):
        for rank in range(world):
            monitor.add({"rank": rank, "world": world, "epochs": epochs,
                         "points": [[epoch * 10, float(epoch),
                                     {"loss": 2.0 / epoch, "val_loss": 2.2 / epoch,
                                      "accuracy": 100 - 40 / epoch}]],
                         "samples": 640 if rank == 0 else 320, "seconds": 0.25})
    store.create_run(run_id, job_id=None, kind="train", name=name,
                     config={"workers": world, "cpus_per_worker": 1.0, "bf16": False,
                             "metric": "loss", "mode": "min", "storage": "/x"},
                     storage="/x")
    store.update_run(run_id, status="succeeded", history=monitor.history,
                     metrics=dict(monitor.latest, throughput=monitor.rates()))
    return run_id


def pipeline_run(store, tmp_path, run_id="p-0123456789", status="succeeded"):
    fig = tmp_path / "fig.png"
    from matplotlib.figure import Figure

    Figure(figsize=(2, 2)).savefig(fig)
    store.create_pipeline_run(run_id, name="train-nb", notebook="/nb/train-nb.ipynb",
                              user="ada", parameters={"lr": 0.1, "epochs": 3}, seed=7)
    store.update_pipeline_run(
        run_id, status=status, output="/runs/out.ipynb",
        env={"python": "3.11.7", "key_packages": {"torch": "2.13.0"},
             "packages": {f"pkg{i}": "1.0" for i in range(50)}, "gpu": {}},
        inputs={"/nb/train-nb.ipynb": "ab" * 32},
        cells=[{"index": 0, "execution_count": 1, "status": "completed", "duration": 0.01,
                "tags": ["parameters"]}],
        metrics={"loss": 0.25, "note": "ok"},
        series={"loss": [[0, 1.0], [1, 0.5], [2, 0.25]]},
        tables={"scores": [{"label": 0, "correct": 9}]},
        figures={"curve": str(fig), "gone": str(tmp_path / "missing.png")},
        error="ValueError: boom" if status == "failed" else None,
        failed_cell=1 if status == "failed" else None)
    return run_id


def compression_rows():
    """Rows in the exact format the compression job stores (CompressResult.rows())."""
    from lepton_lab.compress._report import CompressResult, Variant

    variants = [Variant("original", params=4810, size_bytes=20_000, latency_ms_b1=0.08,
                        latency_ms_b64=1.2, accuracy=96.0),
                Variant("pruned", params=2400, size_bytes=10_500, latency_ms_b1=0.06,
                        latency_ms_b64=0.8, accuracy=95.5),
                Variant("int8", format="onnx", params=2400, size_bytes=4_000,
                        latency_ms_b1=0.05, latency_ms_b64=0.5, accuracy=90.0, passed=False)]
    return CompressResult(variants).rows()


@pytest.fixture
def store(lepton_home):
    from lepton_lab.store import get_store

    return get_store()


# -- query and formatting ----------------------------------------------------------------------
def test_query_params_keep_known_keys_and_never_the_token():
    q = _data.query_params("token=s3cret-token&run=abc&run=def&evil=1&report=")
    assert q == {"run": "abc"}


def test_query_params_read_voilas_environment(monkeypatch):
    monkeypatch.setenv("QUERY_STRING", "run=p-1&token=x")
    assert _data.query_params() == {"run": "p-1"}


@pytest.mark.parametrize("seconds, text", [(None, "–"), (5.25, "5.2 s"), (75, "1 min 15 s"),
                                           (7300, "2 h 01 min")])
def test_fmt_duration(seconds, text):
    assert _data.fmt_duration(seconds) == text


# -- runs overview -----------------------------------------------------------------------------
def test_run_rows_hold_pipeline_and_training_runs_newest_first(store, tmp_path):
    training_run(store)
    time.sleep(0.01)
    pipeline_run(store, tmp_path)
    rows = _data.run_rows()
    assert [r["id"] for r in rows] == ["p-0123456789", "a1b2c3d4e5f6"]
    pipe, train = rows
    assert pipe["kind"] == "pipeline" and pipe["params"] == {"lr": 0.1, "epochs": 3}
    assert pipe["metrics"] == {"loss": 0.25}          # text metrics stay on the detail page
    assert train["kind"] == "train" and train["params"]["workers"] == 2
    assert "storage" not in train["params"] and "bf16" not in train["params"]
    assert train["metrics"]["loss"] == pytest.approx(0.5)
    assert [r["id"] for r in _data.run_rows("pipeline")] == ["p-0123456789"]
    assert [r["id"] for r in _data.run_rows("training")] == ["a1b2c3d4e5f6"]
    with pytest.raises(LeptonUsageError):
        _data.run_rows("jobs")


def test_filter_and_sort_rows():
    rows = [{"id": f"r{i}", "kind": "train", "name": n, "status": s, "user": "ada",
             "created": float(i), "duration": d, "params": p, "metrics": m, "sweep": None}
            for i, (n, s, d, p, m) in enumerate([
                ("alpha", "succeeded", 3.0, {"lr": 0.1}, {"acc": 0.9}),
                ("beta", "failed", None, {"lr": 0.01}, {}),
                ("gamma", "succeeded", 1.0, {"lr": 0.1}, {"acc": 0.95})])]
    ids = lambda rs: [r["id"] for r in rs]  # noqa: E731
    assert ids(_data.filter_rows(rows)) == ["r2", "r1", "r0"]
    assert ids(_data.filter_rows(rows, text="LR=0.1")) == ["r2", "r0"]
    assert ids(_data.filter_rows(rows, status="failed")) == ["r1"]
    assert ids(_data.filter_rows(rows, sort="metric:acc")) == ["r2", "r0", "r1"]
    assert ids(_data.filter_rows(rows, sort="metric:acc", descending=False)) == \
        ["r0", "r2", "r1"]
    assert ids(_data.filter_rows(rows, sort="duration", descending=False)) == \
        ["r2", "r0", "r1"]                     # no duration goes last
    assert ids(_data.filter_rows(rows, sort="name", descending=False)) == ["r0", "r1", "r2"]
    assert _data.metric_names(rows) == ["acc"]
    with pytest.raises(LeptonUsageError, match="cannot sort by 'size'"):
        _data.filter_rows(rows, sort="size")


def test_runs_table_escapes_names_and_links_each_run(store):
    training_run(store, name="<script>alert(1)</script>")
    rows = _data.run_rows()
    out = _html.runs_table(rows, _data.metric_names(rows))
    assert "<script>" not in out and "&lt;script&gt;" in out
    assert 'href="run.ipynb?run=a1b2c3d4e5f6"' in out
    assert "No runs match" in _html.runs_table([], [])


# -- run detail --------------------------------------------------------------------------------
def test_training_run_detail_has_curves_throughput_and_environment(store):
    training_run(store)
    d = _data.run_detail("a1b2")                       # a unique id prefix works
    assert d["kind"] == "train" and d["summary"]["status"] == "succeeded"
    assert set(d["curves"]) == {"loss", "val_loss", "accuracy"}
    assert d["curves"]["loss"]["xlabel"] == "epoch"
    assert d["curves"]["loss"]["x"] == [1.0, 2.0, 3.0, 4.0]
    assert d["throughput"] == {0: pytest.approx(2560.0), 1: pytest.approx(1280.0)}
    assert d["env"]["storage"] == "/x"
    page = _pages.run_html(d)
    assert page.count('class="lepton-plot"') == 2      # curves + per-rank throughput
    assert "a1b2c3d4e5f6" in page


def test_throughput_from_history_keys_and_missing():
    hist = [{"step": 1, "samples_per_s/rank0": 10.0, "samples_per_s/rank1": 4.0}]
    assert _data.throughput({}, hist) == {0: 10.0, 1: 4.0}
    assert _data.training_curves(hist) == {}           # per-rank keys are not curves
    assert _data.throughput({}, [{"step": 1, "loss": 1.0}]) == {}


def test_training_run_without_throughput_says_so(store):
    store.create_run("r-nothroughput", job_id=None, kind="train", name="x", config={})
    store.update_run("r-nothroughput", status="failed", error="RuntimeError: boom",
                     history=[{"step": 1, "epoch": None, "loss": 1.0},
                              {"step": 2, "epoch": None, "loss": 0.5}])
    d = _data.run_detail("r-nothroughput")
    assert d["curves"]["loss"]["xlabel"] == "step" and d["throughput"] == {}
    page = _pages.run_html(d)
    assert "per-rank throughput was not recorded" in page
    assert "RuntimeError: boom" in page


def test_pipeline_run_detail(store, tmp_path):
    pipeline_run(store, tmp_path, status="failed")
    d = _data.run_detail("p-0123456789")
    assert d["kind"] == "pipeline" and d["params"] == {"lr": 0.1, "epochs": 3}
    assert d["curves"]["loss"] == {"x": [0.0, 1.0, 2.0], "y": [1.0, 0.5, 0.25],
                                   "xlabel": "step"}
    assert list(d["figures"]) == ["curve"]             # the missing file is left out
    assert d["env"]["packages"] == "50 entries (all in the run record)"
    assert d["env"]["key_packages.torch"] == "2.13.0"
    assert d["error"] == "cell 1: ValueError: boom"
    assert d["metrics"]["note"] == "ok"
    page = _pages.run_html(d)
    assert 'class="lepton-figure"' in page and 'id="lepton-cells"' in page
    assert "Table: scores" in page and "ab" * 32 in page


def test_unknown_run_is_one_line(store):
    with pytest.raises(JobNotFound, match="no pipeline or training run 'nope'") as info:
        _data.run_detail("nope")
    assert "\n" not in str(info.value)
    with pytest.raises(LeptonUsageError, match="no run given"):
        _data.run_detail("")


# -- compression --------------------------------------------------------------------------------
def test_compression_report_points(store):
    assert _data.compression_report() is None
    store.add_report("digits:1", compression_rows(), settings={"prune": 0.5}, target="cpu")
    time.sleep(0.01)
    newest = store.add_report("other:1", compression_rows()[:1])
    assert _data.compression_report()["id"] == newest.id
    rep = _data.compression_report(model="digits")
    assert rep["model"] == "digits:1" and len(rep["points"]) == 3
    orig, pruned, int8 = rep["points"]
    assert orig["size_mb"] == pytest.approx(20_000 / 2**20)
    assert pruned["best"] and not int8["passed"] and int8["format"] == "onnx"
    assert [c["id"] for c in _data.report_choices()] == [newest.id, rep["id"]]
    page = _pages.compression_html(rep)
    assert 'class="lepton-plot"' in page and 'id="lepton-variants"' in page
    assert 'tr class="best"' in page
    assert "No compression reports" in _pages.compression_html(None)


# -- figures -----------------------------------------------------------------------------------
def test_curves_put_splits_of_a_metric_in_one_panel_with_a_legend():
    curves = {name: {"x": [1, 2], "y": [1.0, 0.5], "xlabel": "epoch"}
              for name in ("loss", "val_loss", "accuracy")}
    fig = _plots.curves_figure(curves, "Training curves")
    axes = fig.get_axes()
    assert [a.get_title() for a in axes] == ["loss", "accuracy"]
    assert axes[0].get_legend() is not None and axes[1].get_legend() is None
    assert axes[0].get_xlabel() == "epoch" and axes[1].get_ylabel() == "accuracy (fraction)"
    assert fig.get_suptitle() == "Training curves"
    tag = _plots.img(fig, 'a "quoted" alt')
    assert tag.startswith('<img class="lepton-plot" alt="a &quot;quoted&quot; alt"')
    assert "data:image/png;base64," in tag


def test_tradeoff_and_utilisation_figures_are_labelled():
    rep_points = [dict(p, size_mb=p["size_bytes"] / 2**20, variant=p["variant"])
                  for p in compression_rows()]
    fig = _plots.tradeoff_figure(rep_points, "trade-off")
    left, right = fig.get_axes()
    assert left.get_xlabel() == "model size (MB)" and left.get_ylabel() == "accuracy (%)"
    assert right.get_xlabel() == "latency at batch 1 (ms)"
    labels = {t.get_text() for t in left.get_legend().get_texts()}
    assert labels == {"passed", "best (registered)", "failed accuracy check"}
    st = {"total": {"CPU": 4.0, "GPU": 0.0, "memory": 8 * 2**30},
          "used": {"CPU": 1.0, "GPU": 0.0, "memory": 2 * 2**30}}
    ax = _plots.utilisation_figure(st).get_axes()[0]
    assert ax.get_xlabel() == "in use (% of the cluster)"
    assert [t.get_text() for t in ax.texts] == ["1/4", "none", "2/8 GiB"]


# -- cluster -----------------------------------------------------------------------------------
def test_cluster_page_is_disconnected_without_touching_ray(lepton_home):
    st = _data.cluster_summary()
    assert st["connected"] is False and "does not start one" in st["reason"]
    assert "disconnected" in _pages.cluster_html(st)


# -- endpoints ---------------------------------------------------------------------------------
def test_endpoint_rows_and_input_shape(store, tmp_path):
    art = tmp_path / "m.pt"
    art.write_bytes(b"x")
    store.register_model("digits", kind="trained", format="torch", path=str(art),
                         sha256="0" * 64, size=1, settings={"input_shape": [64]})
    store.put_endpoint("digits-api", model="digits:1", status="running",
                       url="http://127.0.0.1:9/digits-api", token_hash="f" * 64,
                       token_hint="lep_AbCd…", config={"replicas": 2, "max_batch": 32})
    rows = _endpoints.endpoint_rows(probe=False)
    assert rows[0]["name"] == "digits-api" and rows[0]["replicas"] == "2"
    assert rows[0]["auth"] and rows[0]["health"] == "not checked"
    [probed] = _endpoints.endpoint_rows(timeout=0.5)    # port 9: nothing answers
    assert probed["health"] == "not answering" and probed["latency_ms"] is None
    assert _endpoints.input_shape("digits-api") == (64,)
    assert _endpoints.default_ink((64,)) == 16.0
    table = _html.endpoints_table(rows)
    assert "lep_AbCd…" in table and "f" * 64 not in table


def test_drawn_digit_becomes_one_model_row():
    cells = [False] * 64
    cells[3] = cells[11] = True
    x = _endpoints.to_model_input(_endpoints.grid_to_pixels(cells), (64,))
    assert x.shape == (1, 64) and x.dtype == np.float32
    assert x[0, 3] == 16.0 and x.sum() == 32.0
    img = _endpoints.to_model_input(_endpoints.grid_to_pixels(cells), (1, 28, 28), ink=1.0)
    assert img.shape == (1, 1, 28, 28) and 0 < img.max() <= 1.0
    with pytest.raises(LeptonUsageError, match="not a square image"):
        _endpoints.to_model_input(np.zeros((8, 8)), (10,))
    with pytest.raises(LeptonUsageError):
        _endpoints.grid_to_pixels([True] * 10)


def test_uploads_image_and_npy():
    from PIL import Image

    buf = io.BytesIO()
    dark_on_light = np.full((16, 16), 255, np.uint8)
    dark_on_light[4:12, 7:9] = 0                       # a dark stroke on white paper
    Image.fromarray(dark_on_light).save(buf, format="PNG")
    px = _endpoints.image_to_pixels(buf.getvalue())
    assert px[8, 7] == pytest.approx(1.0) and px[0, 0] == pytest.approx(0.0)
    x = _endpoints.prepare_upload("digit.png", buf.getvalue(), (64,))
    assert x.shape == (1, 64) and x.max() <= 16.0
    npy = io.BytesIO()
    np.save(npy, np.arange(64, dtype=np.float32))
    assert _endpoints.prepare_upload("row.npy", npy.getvalue(), (64,)).shape == (1, 64)
    with pytest.raises(LeptonUsageError, match="not an image"):
        _endpoints.prepare_upload("notes.txt", b"hello", (64,))


def test_try_endpoint_error_is_one_line_without_the_token(store):
    store.put_endpoint("gone-api", model="digits:1", status="running",
                       url="http://127.0.0.1:9/gone-api")
    token = "lep_" + "S" * 43
    res = _endpoints.try_endpoint("gone-api", np.zeros((1, 64), np.float32), token,
                                  timeout=1.0)
    assert res["ok"] is False and "\n" not in res["error"] and token not in res["error"]
    assert "does not answer" in _html.prediction(res)


# -- launching Voila ---------------------------------------------------------------------------
def test_voila_command_line_is_loopback_with_no_token_and_no_code_execution(tmp_path):
    argv = _launch.voila_argv(tmp_path, 9999, runtime_dir=tmp_path / "rt")
    assert "--Voila.ip=127.0.0.1" in argv and "--Voila.port=9999" in argv
    assert "--VoilaConfiguration.show_tracebacks=False" in argv
    assert not any("token" in a.lower() for a in argv)
    # settings that would let a viewer (or the tree) run code of their own stay off
    assert not any(re.search(r"enable_nbextensions|preheat|extension_language_mapping"
                             r"|allow_origin", a) for a in argv)


def test_dashboard_spec_validation_and_paths():
    with pytest.raises(LeptonUsageError, match="--port"):
        _launch.DashboardSpec(port=70000)
    with pytest.raises(LeptonUsageError, match="--page"):
        _launch.DashboardSpec(page="nope")
    assert _launch.page_path("run", run="p-1 x") == "/voila/render/run.ipynb?run=p-1+x"
    assert _launch.page_path("runs", run=None) == "/voila/render/runs.ipynb"
    assert "DashboardSpec(port=0" in repr(_launch.DashboardSpec(port=0))


def test_voila_entry_point_refuses_to_serve_without_a_token(monkeypatch, capsys):
    from lepton_lab.dashboard import _voila_main

    monkeypatch.delenv(_launch.TOKEN_ENV, raising=False)
    assert _voila_main.main(["x"]) == 2
    assert "refusing to serve without a token" in capsys.readouterr().err
    monkeypatch.setenv(_launch.TOKEN_ENV, "t" * 20)
    assert _voila_main.main(["x", "--token=abc"]) == 2


@pytest.mark.parametrize("path, query, url", [
    ("/voila/render/run.ipynb", "token=abc&run=r1", "/voila/render/run.ipynb?run=r1"),
    ("/voila/render/run.ipynb", "run=r1&token=abc&token=def&q=a+b",
     "/voila/render/run.ipynb?run=r1&q=a+b"),
    ("/", "token=abc", "/"),
    ("/voila/render/runs.ipynb", "tokens=1&token=", "/voila/render/runs.ipynb?tokens=1"),
])
def test_without_token_drops_only_the_token(path, query, url):
    from lepton_lab.dashboard._voila_main import without_token

    assert without_token(path, query) == url


def test_voila_app_swaps_the_page_handlers_for_token_free_ones(monkeypatch):
    """Voila's own handler list, with its page and directory handlers replaced (the real
    redirect is tested in Chromium, tests/integration/browser/test_dashboard.py)."""
    from voila.app import Voila
    from voila.tornado.handler import TornadoVoilaHandler
    from voila.tornado.treehandler import TornadoVoilaTreeHandler

    from lepton_lab.dashboard._voila_main import _voila_app

    other = object()
    upstream = [("/", TornadoVoilaTreeHandler, {"a": 1}), ("/voila/render/(.*)",
                TornadoVoilaHandler, {"b": 2}), ("/api/x", other), "not-a-tuple"]
    monkeypatch.setattr(Voila, "init_handlers", lambda self: list(upstream))
    handlers = _voila_app()().init_handlers()
    assert handlers[2:] == upstream[2:]
    for (path, cls, kw), (up_path, up_cls, up_kw) in zip(handlers[:2], upstream[:2]):
        assert (path, kw) == (up_path, up_kw)
        assert issubclass(cls, up_cls) and cls is not up_cls and cls.__name__.startswith("Token")


def test_start_rejects_a_short_token_and_a_busy_port(lepton_home, monkeypatch):
    import socket

    monkeypatch.setenv(_launch.TOKEN_ENV, "short")
    with pytest.raises(LeptonUsageError, match="too short"):
        _launch.start(_launch.DashboardSpec(port=0))
    monkeypatch.delenv(_launch.TOKEN_ENV)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with pytest.raises(LeptonUsageError, match="is in use"):
            _launch.start(_launch.DashboardSpec(port=busy.getsockname()[1]))


def test_cli_parser():
    from lepton_lab.cli import _dashboard as _cli

    parser = argparse.ArgumentParser(prog="lepton")
    _cli.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["dashboard", "--port", "0", "--run", "abc"])
    assert (args.port, args.run, args.page, args.timeout) == (0, "abc", "runs", 60.0)


def test_dashboard_notebooks_are_thin_and_valid():
    folder = _launch.dashboard_dir()
    names = sorted(p.stem for p in folder.glob("*.ipynb"))
    assert names == sorted(_launch.PAGES)
    assert [p for p, _ in _html.PAGES] == [f"{n}.ipynb" for n in _launch.PAGES]
    for name in names:
        nb = nbformat.read(folder / f"{name}.ipynb", as_version=4)
        nbformat.validate(nb)
        src = "\n".join(c.source for c in nb.cells)
        assert all(c.cell_type == "code" and not c.get("outputs") for c in nb.cells)
        assert "_data.query_params()" in src and "os.environ" not in src
        imports = set(re.findall(r"^\s*(?:from|import) ([\w.]+)", src, re.M))
        assert imports <= {"IPython.display", "ipywidgets", "lepton_lab.errors",
                           "lepton_lab.dashboard"}, imports
        assert json.loads((folder / f"{name}.ipynb").read_text())["metadata"][
            "kernelspec"]["name"] == "python3"
