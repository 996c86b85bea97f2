"""Run a notebook as a recorded pipeline run (``lepton run``), and re-run a recorded one."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import LeptonError, LeptonUsageError


class PipelineFailed(LeptonError):
    """A pipeline run that ended failed or cancelled; ``run`` is its record."""

    def __init__(self, message: str, run: Any):
        super().__init__(message)
        self.run = run


@dataclass(frozen=True)
class RunOptions:
    """How to execute one notebook. Built by the CLI, a sweep or reproduce."""

    parameters: tuple[tuple[str, Any], ...] = ()
    output: Path | None = None
    seed: int | None = None
    inputs: tuple[str, ...] = ()
    kernel: str | None = None
    cell_timeout: float | None = 1800.0
    cluster: str | None = None
    run_id: str | None = None
    reproduces: str | None = None
    log_output: bool = True

    def __post_init__(self) -> None:
        if self.cell_timeout is not None and self.cell_timeout <= 0:
            raise LeptonUsageError("--timeout must be more than 0 seconds")
        if self.seed is not None and not 0 <= self.seed < 2**63:
            raise LeptonUsageError("--seed must be a non-negative integer")


def runs_dir() -> Path:
    from ..config import get_config

    return get_config().home_path / "runs"


def check_notebook(path: str | os.PathLike[str]) -> Path:
    nb = Path(path).expanduser()
    if not nb.is_file():
        raise LeptonUsageError(f"no notebook at {path}; give the path of an .ipynb file")
    if nb.suffix != ".ipynb":
        raise LeptonUsageError(f"{path} is not a notebook (.ipynb)")
    return nb.resolve()


#: papermill's inferred parameter types -> the Python types a value given for it may have
_ACCEPTS: dict[str, tuple[type, ...]] = {
    "int": (int,), "float": (int, float), "str": (str,), "bool": (bool,),
    "list": (list, tuple), "dict": (dict,),
}


def check_parameters(nb: Path, parameters: dict[str, Any], kernel: str | None = None) -> None:
    """A one-line usage error when the notebook does not parse, names no kernel (and none is
    given), or when a given parameter's type differs from its default's in the notebook's
    ``parameters`` cell (an int for an int, a number for a float, and so on; parameters
    without a default take anything)."""
    import nbformat

    try:
        doc = nbformat.read(str(nb), as_version=4)
    except Exception as exc:  # noqa: BLE001 - JSON, schema or encoding errors alike
        text = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise LeptonUsageError(f"{nb.name} is not a valid notebook ({text}); open it in "
                               "Jupyter and save it again, or fix the file") from None
    if not kernel and not (doc.metadata.get("kernelspec") or {}).get("name"):
        raise LeptonUsageError(f"{nb.name} names no kernel; give one with -k (e.g. -k python3 "
                               "or -k lepton), or pick a kernel in Jupyter and save it")
    if not parameters:
        return
    from papermill.inspection import _infer_parameters
    from papermill.iorw import load_notebook_node

    try:
        declared = {p.name: p for p in _infer_parameters(load_notebook_node(str(nb)),
                                                         name=kernel)}
    except Exception:  # noqa: BLE001 - an unreadable parameters cell: papermill decides
        return
    for name, value in parameters.items():
        p = declared.get(name)
        kind = _declared_type(p) if p is not None else None
        accepts = _ACCEPTS.get(kind or "")
        if accepts is None:
            continue
        ok = isinstance(value, accepts) and not (isinstance(value, bool) and bool not in accepts)
        if not ok:
            raise LeptonUsageError(
                f"parameter {name} of {nb.name} is {kind} ({name} = {p.default}), not "
                f"{type(value).__name__} {value!r}; give e.g. -p {name} {p.default}")


def _declared_type(p: Any) -> str | None:
    """The type of a parameter: its annotation (``lr: float = 0.1``), else its default's."""
    import ast

    if p.inferred_type_name and p.inferred_type_name != "None":
        return str(p.inferred_type_name)
    try:
        default = ast.literal_eval(p.default)
    except (ValueError, SyntaxError, TypeError):
        return None
    if default is None:
        return None
    kind = type(default).__name__
    return "list" if kind == "tuple" else kind


def run_notebook(notebook: str | os.PathLike[str], opts: RunOptions = RunOptions()) -> Any:
    """Execute ``notebook`` with papermill's ``lepton`` engine; returns the PipelineRun.

    Raises :class:`PipelineFailed` (with the record) when a cell fails, the kernel dies or
    the run is interrupted; the executed notebook keeps every output up to the error. Bad
    input (a notebook that does not parse, a parameter of the wrong type, a missing input
    file) is a one-line :class:`LeptonUsageError`, and the run is recorded as failed.
    """
    import papermill as pm

    from . import _env
    from ._engine import new_run_id

    run_id = opts.run_id or new_run_id()
    try:
        nb = check_notebook(notebook)
        check_parameters(nb, dict(opts.parameters), opts.kernel)
        inputs = _env.hash_inputs(list(opts.inputs), nb.parent)
    except LeptonUsageError as exc:
        _record_refused(run_id, Path(notebook), opts, str(exc))
        raise
    out = opts.output or runs_dir() / run_id / f"{nb.stem}.ipynb"
    out = Path(out).expanduser().resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    saved = os.environ.get("RAY_ADDRESS")
    if opts.cluster:
        os.environ["RAY_ADDRESS"] = opts.cluster   # the kernel's %%lepton cells go there
    from ..store import get_store

    store = get_store()
    failure = ""
    try:
        pm.execute_notebook(
            str(nb), str(out), parameters=dict(opts.parameters), kernel_name=opts.kernel,
            execution_timeout=opts.cell_timeout, progress_bar=False,
            log_output=opts.log_output, cwd=str(nb.parent), engine_name="lepton",
            lepton_run_id=run_id, lepton_seed=opts.seed, lepton_inputs=inputs,
            lepton_reproduces=opts.reproduces, lepton_artifacts_dir=str(out.parent))
    except pm.PapermillExecutionError:
        pass                                  # the record says which cell; raised below
    except KeyboardInterrupt:
        _mark_if_running(store, run_id, "cancelled", "interrupted")
        raise
    except Exception as exc:  # noqa: BLE001 - dead kernel, timeout, missing kernel...
        failure = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        _mark_if_running(store, run_id, "failed", f"{type(exc).__name__}: {failure}")
    finally:
        if opts.cluster:
            if saved is None:
                os.environ.pop("RAY_ADDRESS", None)
            else:
                os.environ["RAY_ADDRESS"] = saved
    try:
        run = store.get_pipeline_run(run_id)
    except LeptonError:
        why = failure or "see the messages above"
        _record_refused(run_id, nb, opts, f"did not start: {why}")
        raise LeptonError(f"the run of {nb.name} did not start: {why}") from None
    if run.status != "succeeded":
        raise PipelineFailed(f"run {run.id} of {nb.name} {run.status}: {run.error}; the "
                             f"executed notebook is {run.output}", run)
    return run


def _record_refused(run_id: str, nb: Path, opts: RunOptions, error: str) -> None:
    """A run that was refused before it started, recorded as failed (with its reason)."""
    from ..store import get_store
    from ..store._json import current_user

    store = get_store()
    try:
        store.get_pipeline_run(run_id)          # created by the caller (a sweep, reproduce)
    except LeptonError:
        store.create_pipeline_run(run_id, name=nb.stem, notebook=str(nb.expanduser()),
                                  user=current_user(), parameters=dict(opts.parameters),
                                  seed=opts.seed, reproduces=opts.reproduces,
                                  cluster=opts.cluster)
    store.update_pipeline_run(run_id, status="failed", error=error[:500])


def _mark_if_running(store: Any, run_id: str, status: str, error: str) -> None:
    try:
        run = store.get_pipeline_run(run_id)
    except LeptonError:
        return
    if not run.done:
        store.update_pipeline_run(run_id, status=status, error=error[:500])


def rerun(key: str) -> str:
    """Start re-executing a recorded run in the background (``lepton reproduce``, as the
    sidebar's "rerun" does); returns the new run's id at once. Its output goes to
    ``$LEPTON_HOME/runs/<id>/reproduce.log``."""
    from ..store import get_store
    from ._engine import new_run_id

    original = get_store().get_pipeline_run(key)
    check_notebook(original.notebook)
    run_id = new_run_id()
    log_dir = runs_dir() / run_id
    log_dir.mkdir(parents=True, exist_ok=True)
    with open(log_dir / "reproduce.log", "wb") as log:
        subprocess.Popen([sys.executable, "-m", "lepton_lab.cli", "reproduce", original.id,
                          "--run-id", run_id], stdout=log, stderr=subprocess.STDOUT,
                         stdin=subprocess.DEVNULL, start_new_session=True)
    # the child creates the record; wait briefly so a caller listing runs sees it
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            get_store().get_pipeline_run(run_id)
            break
        except LeptonError:
            time.sleep(0.1)
    return run_id
