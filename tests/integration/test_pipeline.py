"""Pipelines end to end: real papermill executions with the lepton engine, real kernels, the
shared local Ray cluster for sweeps and cached cells."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

pytestmark = pytest.mark.integration

KERNEL = {"name": "python3", "display_name": "Python 3", "language": "python"}


def write_nb(path: Path, *cells: str, params: str | None = None) -> Path:
    """A notebook of code cells (the first one tagged ``parameters`` when given)."""
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": KERNEL})
    if params is not None:
        nb.cells.append(nbformat.v4.new_code_cell(params, metadata={"tags": ["parameters"]}))
    nb.cells += [nbformat.v4.new_code_cell(src) for src in cells]
    nbformat.write(nb, path)
    return path


@pytest.fixture
def pipeline_home(lepton_home):
    from lepton_lab.store import get_store

    return get_store()


def test_run_records_params_env_seed_cells_and_metrics(tmp_path, pipeline_home):
    from lepton_lab.pipeline import RunOptions, run_notebook

    data = tmp_path / "data.csv"
    data.write_text("a,b\n1,2\n")
    nb = write_nb(tmp_path / "metrics.ipynb",
                  "import random, numpy as np, lepton_lab\n"
                  "draw = random.random() + float(np.random.rand())\n"
                  "for i in range(3):\n    lepton_lab.record('loss', lr / (i + 1), step=i)\n"
                  "lepton_lab.record('draw', draw)\n"
                  "lepton_lab.record('table', [{'k': 1}, {'k': 2}])\n"
                  "print('drew', draw)",
                  params="lr = 0.5")
    run = run_notebook(nb, RunOptions(parameters=(("lr", 0.25),), seed=1234,
                                      inputs=("data.csv",)))
    assert run.status == "succeeded" and run.seed == 1234
    assert run.parameters == {"lr": 0.25}
    assert run.series["loss"] == [[0, 0.25], [1, 0.125], [2, 0.25 / 3]]
    assert run.tables["table"] == [{"k": 1}, {"k": 2}]
    # the seed reached the kernel: the same draw as Python and NumPy seeded with 1234 here
    import random

    import numpy as np

    random.seed(1234)
    np.random.seed(1234)
    assert run.metrics["draw"] == pytest.approx(random.random() + float(np.random.rand()))
    assert run.inputs["data.csv"] and run.inputs[str(nb)]
    assert run.env["python"] and run.env["packages"]["papermill"]
    assert run.env["ray"]["version"]
    assert [c["status"] for c in run.cells if c["index"] is not None] == ["completed"] * 2
    out = nbformat.read(run.output, as_version=4)
    assert out.metadata["lepton"]["run_id"] == run.id
    assert out.metadata["lepton"]["metrics"]["draw"] == run.metrics["draw"]


def test_failing_notebook_keeps_outputs_and_records_the_cell(tmp_path, pipeline_home):
    from lepton_lab.pipeline import PipelineFailed, run_notebook

    nb = write_nb(tmp_path / "fails.ipynb", "print('first cell ran')",
                  "x = 1\nraise ValueError('bad value 42')", "print('never')")
    with pytest.raises(PipelineFailed) as info:
        run_notebook(nb)
    run = info.value.run
    assert run.status == "failed" and run.failed_cell == 1
    assert "ValueError: bad value 42" in run.error
    out = nbformat.read(run.output, as_version=4)
    texts = json.dumps([c.get("outputs") for c in out.cells if c.cell_type == "code"])
    assert "first cell ran" in texts and "bad value 42" in texts and "never" not in texts
    assert pipeline_home.get_pipeline_run(run.id).status == "failed"


def test_dead_kernel_is_recorded_without_hanging(tmp_path, pipeline_home):
    from lepton_lab.pipeline import PipelineFailed, run_notebook

    nb = write_nb(tmp_path / "dies.ipynb", "print('alive')", "import os\nos._exit(3)",
                  "print('after')")
    start = time.monotonic()
    with pytest.raises(PipelineFailed) as info:
        run_notebook(nb)
    assert time.monotonic() - start < 90
    run = info.value.run
    assert run.status == "failed" and "kernel died" in run.error and run.failed_cell == 1


def test_reproduce_matches_metrics_and_compare_shows_changes(tmp_path, pipeline_home):
    from lepton_lab.pipeline import RunOptions, compare, reproduce, run_notebook

    nb = write_nb(tmp_path / "repro.ipynb",
                  "import random, lepton_lab\nlepton_lab.record('score', random.random() * k)\n"
                  "lepton_lab.record('wall', __import__('time').time())",
                  params="k = 1")
    first = run_notebook(nb, RunOptions(parameters=(("k", 3),)))
    again, comp = reproduce(first.id, rtol=0.0)
    assert again.reproduces == first.id and again.seed == first.seed
    assert again.parameters == {"k": 3}
    rows = {name: ok for name, *_, ok in comp.metrics}
    assert rows == {"score": True, "wall": False}     # same seed, same draw; the clock moved
    assert not comp.metrics_match
    other = run_notebook(nb, RunOptions(parameters=(("k", 5),), seed=first.seed))
    diff = compare(first, other, rtol=0.0)
    assert diff.parameters == [("k", 3, 5)]
    assert [m[0] for m in diff.metrics if not m[4]] == ["score", "wall"]


def test_papermill_command_line_with_the_lepton_engine(tmp_path, pipeline_home, lepton_home):
    nb = write_nb(tmp_path / "pm.ipynb", "import lepton_lab\nlepton_lab.record('twice', lr * 2)",
                  "import json, ipykernel\n"
                  "info = json.loads(ipykernel.get_connection_info())\n"
                  "lepton_lab.record('curve', int('curve_publickey' in info))",
                  params="lr = 0.5")
    out = tmp_path / "pm-out.ipynb"
    papermill = Path(sys.executable).parent / "papermill"
    proc = subprocess.run([str(papermill), "--engine", "lepton", str(nb), str(out),
                           "-p", "lr", "0.1"], capture_output=True, text=True, timeout=180,
                          env={**os.environ, "LEPTON_HOME": str(lepton_home)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    meta = nbformat.read(out, as_version=4).metadata["lepton"]
    assert meta["status"] == "succeeded" and meta["parameters"] == {"lr": 0.1}
    run = pipeline_home.get_pipeline_run(meta["run_id"])
    assert run.metrics["twice"] == 0.2 and run.output == str(out)
    # the kernel's channels are CurveZMQ-encrypted (python3's kernelspec supports it)
    assert run.metrics["curve"] == 1 and "without encryption" not in proc.stderr
    tags = [c.metadata.get("tags", []) for c in nbformat.read(out, as_version=4).cells]
    assert ["lepton-setup"] in tags


def test_sweep_runs_in_parallel_on_the_cluster_and_survives_a_failure(tmp_path, cluster,
                                                                        pipeline_home):
    from lepton_lab.pipeline import SweepOptions, run_sweep

    nb = write_nb(tmp_path / "grid.ipynb",
                  "import os, lepton_lab\n"
                  "if a == 2 and b == 'y':\n    raise RuntimeError('this combination fails')\n"
                  "lepton_lab.record('score', a * 10 + (1 if b == 'y' else 0))\n"
                  "lepton_lab.record('pid', os.getpid())",
                  params="a = 0\nb = 'x'")
    seen = []
    result = run_sweep(nb, {"a": [1, 2], "b": ["x", "y"]}, SweepOptions(parallel=2),
                       progress=lambda done, total, run: seen.append((done, total, run.status)))
    assert [s[:2] for s in seen] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    by_params = {(r.parameters["a"], r.parameters["b"]): r for r in result.runs}
    assert len(by_params) == 4 and all(r.sweep == result.sweep for r in result.runs)
    failed = by_params[(2, "y")]
    assert failed.status == "failed" and "this combination fails" in failed.error
    assert "this combination fails" in Path(failed.output).read_text()
    ok = [r for r in result.runs if r is not failed]
    assert all(r.status == "succeeded" for r in ok)
    assert result.best.parameters == {"a": 2, "b": "x"} and result.metric == "score"
    # each run had its own kernel: a process of its own, not this one
    assert len({r.metrics["pid"] for r in ok}) == 3 and os.getpid() not in \
        {r.metrics["pid"] for r in ok}
    assert pipeline_home.list_pipeline_runs(sweep=result.sweep, limit=10)


def test_cached_cell_hits_when_source_and_inputs_are_unchanged(tmp_path, cluster,
                                                               pipeline_home):
    from lepton_lab.pipeline import RunOptions, run_notebook

    nb = write_nb(tmp_path / "cached.ipynb", "%load_ext lepton_lab",
                  "%%lepton --cache\nimport os\nresult = [v * 2 for v in data]\n"
                  "where = os.getpid()\nprint('computed on the cluster')",
                  "import lepton_lab\nlepton_lab.record('total', sum(result))\n"
                  "lepton_lab.record('where', where)",
                  params="data = [1, 2, 3]")

    def texts(run):
        out = nbformat.read(run.output, as_version=4)
        return json.dumps([c.get("outputs") for c in out.cells if c.cell_type == "code"])

    jobs_before = len(pipeline_home.list_jobs(limit=1000))
    first = run_notebook(nb, RunOptions(cell_timeout=300))
    assert "computed on the cluster" in texts(first) and "--cache hit" not in texts(first)
    assert len(pipeline_home.list_jobs(limit=1000)) == jobs_before + 1
    second = run_notebook(nb, RunOptions(cell_timeout=300))
    assert "--cache hit" in texts(second) and "computed on the cluster" in texts(second)
    assert second.metrics == first.metrics          # the values came back from the cache
    assert len(pipeline_home.list_jobs(limit=1000)) == jobs_before + 1   # nothing ran
    third = run_notebook(nb, RunOptions(parameters=(("data", [1, 2, 4]),), cell_timeout=300))
    assert "--cache hit" not in texts(third) and third.metrics["total"] == 14
    assert len(pipeline_home.list_jobs(limit=1000)) == jobs_before + 2


def test_interrupting_a_sweep_cancels_its_runs_and_stops_their_kernels(tmp_path, cluster,
                                                                        pipeline_home):
    import _thread
    import threading

    from lepton_lab.pipeline import SweepOptions, run_sweep

    from .conftest import wait_for_free_cpus

    marks = tmp_path / "marks"
    marks.mkdir()
    nb = write_nb(tmp_path / "slow.ipynb",
                  f"import os, time\nopen(os.path.join({str(marks)!r}, f'{{a}}.pid'), 'w')"
                  ".write(str(os.getpid()))\ntime.sleep(300)", params="a = 0")

    def interrupt_when_running() -> None:
        deadline = time.monotonic() + 120
        while len(list(marks.glob("*.pid"))) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        _thread.interrupt_main()

    threading.Thread(target=interrupt_when_running, daemon=True).start()
    start = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        run_sweep(nb, {"a": [1, 2]}, SweepOptions(parallel=2, cell_timeout=600))
    assert time.monotonic() - start < 150
    pids = [int(p.read_text()) for p in marks.glob("*.pid")]
    assert len(pids) == 2
    deadline = time.monotonic() + 20
    while any(Path(f"/proc/{pid}").exists() for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(Path(f"/proc/{pid}").exists() for pid in pids), "a run's kernel survived"
    wait_for_free_cpus(timeout=20)
    runs = pipeline_home.list_pipeline_runs(name="slow", limit=5)
    assert sorted(r.status for r in runs) == ["cancelled", "cancelled"]
