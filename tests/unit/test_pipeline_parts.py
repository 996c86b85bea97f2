"""Pipeline pieces without Ray or kernels: records, grids, comparisons, failures, cache keys,
and the pipeline_runs table."""

from __future__ import annotations

import math
from pathlib import Path

import nbformat
import pytest

from lepton_lab.errors import LeptonUsageError
from lepton_lab.pipeline._cache import cache_key
from lepton_lab.pipeline._compare import compare, format_comparison
from lepton_lab.pipeline._engine import _failure, cell_records
from lepton_lab.pipeline._record import MIME, bundle, collect
from lepton_lab.pipeline._sweep import _best, expand_grid
from lepton_lab.store import PipelineRun, PipelineRunNotFound


def test_bundle_kinds():
    import numpy as np

    assert bundle("acc", np.float32(0.5))[MIME] == {"name": "acc", "kind": "scalar", "value": 0.5}
    assert bundle("n", 3, step=2)[MIME]["step"] == 2
    assert bundle("note", "hello")[MIME]["kind"] == "text"
    assert bundle("ckpt", Path("x.pt"))[MIME]["value"].endswith("x.pt")
    assert bundle("t", [{"a": 1}])[MIME] == {"name": "t", "kind": "table", "value": [{"a": 1}]}
    assert bundle("bad", math.nan)[MIME]["value"] == "nan"
    with pytest.raises(LeptonUsageError, match="cannot be recorded"):
        bundle("obj", object())
    with pytest.raises(LeptonUsageError, match="non-empty"):
        bundle("", 1)
    with pytest.raises(LeptonUsageError, match="step must be a number"):
        bundle("x", 1, step="one")


def test_figure_record_and_collect(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([1, 2, 3])
    outs = [bundle("loss", 1.0, step=0), bundle("loss", 0.5, step=1), bundle("acc", 0.9),
            bundle("curve", fig), bundle("rows", [{"k": 1}]), bundle("w", Path("/m.pt"))]
    nb = {"cells": [{"cell_type": "code", "outputs": [
        {"output_type": "display_data", "data": d, "metadata": {}} for d in outs]}]}
    got = collect(nb, tmp_path / "figs")
    assert got["metrics"] == {"loss": 0.5, "acc": 0.9}
    assert got["series"] == {"loss": [[0, 1.0], [1, 0.5]]}       # a single value is no curve
    assert got["tables"] == {"rows": [{"k": 1}]} and got["artifacts"] == {"w": "/m.pt"}
    png = Path(got["figures"]["curve"])
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_expand_grid_and_errors():
    assert expand_grid({"lr": [0.1, 0.01], "e": [2, 4]}) == [
        {"lr": 0.1, "e": 2}, {"lr": 0.1, "e": 4}, {"lr": 0.01, "e": 2}, {"lr": 0.01, "e": 4}]
    with pytest.raises(LeptonUsageError, match="at least one parameter"):
        expand_grid({})
    with pytest.raises(LeptonUsageError, match="has no values"):
        expand_grid({"lr": []})
    with pytest.raises(LeptonUsageError, match="at most"):
        expand_grid({"a": list(range(100)), "b": list(range(11))})


def _run(rid, status="succeeded", **kw):
    return PipelineRun(id=rid, name="nb", user="u", status=status, created=0.0,
                       notebook="nb.ipynb", **kw)


def test_best_picks_by_metric_and_mode():
    runs = [_run("a", metrics={"val_loss": 0.3, "acc": 0.7}),
            _run("b", metrics={"val_loss": 0.1, "acc": 0.6}),
            _run("c", status="failed", metrics={"val_loss": 0.0})]
    assert _best(runs, None, None)[0].id == "b"             # first metric, minimised (a loss)
    assert _best(runs, "acc", None)[0].id == "a"
    assert _best(runs, "val_loss", "min")[0].id == "b"      # failed runs never win
    assert _best(runs, "missing", None)[0] is None


def test_compare_tolerances_and_env():
    a = _run("a", parameters={"lr": 0.1}, metrics={"acc": 0.9, "note": "x"},
             env={"python": "3.11", "ray": {"address": "1", "version": "2.6"}})
    b = _run("b", parameters={"lr": 0.2}, metrics={"acc": 0.9000001, "note": "x"},
             env={"python": "3.12", "ray": {"address": "2", "version": "2.6"}})
    comp = compare(a, b, rtol=1e-3)
    assert comp.parameters == [("lr", 0.1, 0.2)] and comp.metrics_match
    assert comp.env == [("python", "3.11", "3.12")]        # the address is not a difference
    assert not compare(a, b, rtol=0.0).metrics_match
    assert "lr" in format_comparison(comp) and "python" in format_comparison(comp)


def _cell(src, status, tags=(), outputs=(), count=1):
    cell = nbformat.v4.new_code_cell(src, metadata={"tags": list(tags),
                                                    "papermill": {"status": status,
                                                                  "duration": 0.1}})
    cell.execution_count, cell.outputs = count, list(outputs)
    return cell


def test_cell_records_and_failures():
    nb = nbformat.v4.new_notebook()
    err = nbformat.v4.new_output("error", ename="KeyError", evalue="'k'", traceback=[])
    nb.cells = [_cell("p", "completed", ["parameters"]), _cell("i", "completed",
                ["injected-parameters"]), _cell("s", "completed", ["lepton-setup"]),
                nbformat.v4.new_markdown_cell("text"), _cell("x", "failed", outputs=[err], count=4),
                _cell("y", "pending", count=None)]
    cells = cell_records(nb)
    assert [c["index"] for c in cells] == [0, None, None, 2, 3]
    status, error, index = _failure(cells, None)
    assert (status, index) == ("failed", 2) and error == "cell 2 (In [4]) raised KeyError: 'k'"

    class DeadKernelError(RuntimeError):
        pass

    ok = [c for c in cells if c["status"] != "failed"]
    assert _failure(ok, DeadKernelError("gone"))[1] == "the kernel died in an injected cell (In [1])"
    assert _failure(ok, KeyboardInterrupt())[0] == "cancelled"
    assert _failure(ok, None) == ("succeeded", None, None)


def test_cache_key_follows_source_inputs_and_flags():
    import numpy as np

    ns = {"x": np.arange(3), "np": np, "other": 1}
    key, _ = cache_key("y = x * 2", ns, {"x"}, {})
    assert key == cache_key("y = x * 2", dict(ns), {"x"}, {})[0]
    assert key != cache_key("y = x * 3", ns, {"x"}, {})[0]
    assert key != cache_key("y = x * 2", {**ns, "x": np.arange(4)}, {"x"}, {})[0]
    assert key != cache_key("y = x * 2", ns, {"x"}, {"workers": 2})[0]
    assert key == cache_key("y = x * 2", {**ns, "other": 2}, {"x"}, {})[0]  # not read
    import threading

    none, why = cache_key("y = lock", {"lock": threading.Lock()}, {"lock"}, {})
    assert none is None and "'lock' cannot be pickled" in why


def test_store_pipeline_runs(lepton_home):
    from lepton_lab.store import get_store

    store = get_store()
    store.create_pipeline_run("p-0001", name="nb", notebook="/x/nb.ipynb", user="u",
                              parameters={"lr": 1}, seed=5, sweep="s-1")
    store.create_pipeline_run("p-0002", name="nb", notebook="/x/nb.ipynb", user="u")
    assert store.update_pipeline_run("p-0001", status="failed", error="boom", failed_cell=2,
                                     metrics={"acc": 0.5}, cells=[{"index": 0}])
    run = store.get_pipeline_run("p-0001")
    assert (run.status, run.failed_cell, run.metrics, run.seed) == ("failed", 2, {"acc": 0.5}, 5)
    assert run.finished is not None and run.done
    assert [r.id for r in store.list_pipeline_runs(sweep="s-1")] == ["p-0001"]
    assert [r.id for r in store.list_pipeline_runs(status="running")] == ["p-0002"]
    assert store.get_pipeline_run("nb").id == "p-0002"                # newest of that name
    with pytest.raises(PipelineRunNotFound, match="several runs"):
        store.get_pipeline_run("p-000")
    with pytest.raises(PipelineRunNotFound, match="lepton runs"):
        store.get_pipeline_run("nope")
    with pytest.raises(ValueError, match="status"):
        store.update_pipeline_run("p-0002", status="weird")
    assert not store.update_pipeline_run("p-9999", status="failed")


def test_cache_key_is_stable_for_equal_tensors_and_modules():
    # torch pickles carry a fresh serialization id each time: hashing them would never hit
    import torch

    def key(value):
        return cache_key("y = v", {"v": value}, {"v"}, {})[0]

    assert key((torch.arange(6.0), [torch.ones(2)])) == key((torch.arange(6.0), [torch.ones(2)]))
    assert key(torch.arange(6.0)) != key(torch.arange(6.0) + 1)
    assert key(torch.arange(6.0)) != key(torch.arange(6.0).reshape(2, 3))
    torch.manual_seed(0)
    a = torch.nn.Linear(2, 2)
    torch.manual_seed(0)
    b = torch.nn.Linear(2, 2)
    assert key(a) == key(b) and key(a) != key(torch.nn.Linear(2, 2))


def _param_notebook(path: Path, source: str, kernelspec: bool = True) -> Path:
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell(source)
    cell.metadata["tags"] = ["parameters"]
    nb.cells = [cell, nbformat.v4.new_code_cell("print(lr)")]
    if kernelspec:
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                     "language": "python"}
        nb.metadata["language_info"] = {"name": "python"}
    nbformat.write(nb, path)
    return path


@pytest.mark.parametrize("params, needle", [
    ({"epochs": "abc"}, "parameter epochs of nb.ipynb is int (epochs = 2), not str 'abc'"),
    ({"epochs": 2.5}, "is int (epochs = 2), not float 2.5"),
    ({"lr": True}, "parameter lr of nb.ipynb is float"),
    ({"name": 3}, "is str"),
    ({"layers": "x"}, "is list"),
    ({"size": "big"}, "is int"),                         # an annotation wins over nothing
])
def test_a_parameter_of_the_wrong_type_is_one_line(tmp_path, params, needle):
    from lepton_lab.pipeline._run import check_parameters

    nb = _param_notebook(tmp_path / "nb.ipynb", "lr = 0.1\nepochs = 2\nname = 'a'\n"
                         "layers = [1, 2]\nanything = None\nsize: int = 4")
    with pytest.raises(LeptonUsageError) as err:
        check_parameters(nb, params)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_parameters_of_the_right_type_or_unknown_pass(tmp_path):
    from lepton_lab.pipeline._run import check_parameters

    nb = _param_notebook(tmp_path / "nb.ipynb", "lr = 0.1\nepochs = 2\nanything = None")
    check_parameters(nb, {"lr": 1, "epochs": 3, "anything": "x", "not_declared": [1]})


def test_bad_pipeline_input_is_one_line_and_a_failed_record(tmp_path, lepton_home):
    """No kernel starts for any of these: each is refused first, and recorded as failed."""
    from lepton_lab.pipeline._run import RunOptions, run_notebook
    from lepton_lab.store import get_store

    broken = tmp_path / "broken.ipynb"
    broken.write_text('{"cells": [')
    ok = _param_notebook(tmp_path / "ok.ipynb", "lr = 0.1")
    nokernel = _param_notebook(tmp_path / "nokernel.ipynb", "lr = 0.1", kernelspec=False)
    cases = [
        (broken, RunOptions(), "broken.ipynb is not a valid notebook"),
        (ok, RunOptions(parameters=(("lr", "fast"),)), "parameter lr of ok.ipynb is float"),
        (ok, RunOptions(inputs=("missing.csv",)), "input file missing.csv does not exist"),
        (nokernel, RunOptions(), "nokernel.ipynb names no kernel"),
        (tmp_path / "absent.ipynb", RunOptions(), "no notebook at"),
    ]
    for path, opts, needle in cases:
        with pytest.raises(LeptonUsageError) as err:
            run_notebook(path, opts)
        assert needle in str(err.value) and "\n" not in str(err.value)
    runs = get_store().list_pipeline_runs(limit=50)
    assert len(runs) == len(cases)
    assert {r.status for r in runs} == {"failed"}
    assert sorted(r.name for r in runs) == ["absent", "broken", "nokernel", "ok", "ok"]
    assert all(r.error for r in runs)


def test_papermill_used_directly_refuses_a_wrong_type_and_records_the_failed_run(tmp_path,
                                                                                lepton_home):
    """`papermill --engine lepton` (not `lepton run`): the same one-line refusal, before any
    kernel starts, and a failed run record."""
    import papermill as pm

    from lepton_lab.store import get_store

    nb = _param_notebook(tmp_path / "direct.ipynb", "lr = 0.1\nepochs = 2")
    with pytest.raises(LeptonUsageError) as err:
        pm.execute_notebook(str(nb), str(tmp_path / "out.ipynb"), parameters={"epochs": "ten"},
                            engine_name="lepton", progress_bar=False)
    assert "parameter epochs of direct.ipynb is int (epochs = 2), not str 'ten'" in str(err.value)
    run = get_store().list_pipeline_runs(limit=1)[0]
    assert run.status == "failed" and "parameter epochs" in (run.error or ""), run
