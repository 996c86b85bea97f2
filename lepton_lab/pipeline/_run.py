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


def run_notebook(notebook: str | os.PathLike[str], opts: RunOptions = RunOptions()) -> Any:
    """Execute ``notebook`` with papermill's ``lepton`` engine; returns the PipelineRun.

    Raises :class:`PipelineFailed` (with the record) when a cell fails, the kernel dies or
    the run is interrupted; the executed notebook keeps every output up to the error.
    """
    import papermill as pm

    from . import _env
    from ._engine import new_run_id

    nb = check_notebook(notebook)
    run_id = opts.run_id or new_run_id()
    out = opts.output or runs_dir() / run_id / f"{nb.stem}.ipynb"
    out = Path(out).expanduser().resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    inputs = _env.hash_inputs(list(opts.inputs), nb.parent)
    saved = os.environ.get("RAY_ADDRESS")
    if opts.cluster:
        os.environ["RAY_ADDRESS"] = opts.cluster   # the kernel's %%lepton cells go there
    from ..store import get_store

    store = get_store()
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
        _mark_if_running(store, run_id, "failed", f"{type(exc).__name__}: {exc}")
    finally:
        if opts.cluster:
            if saved is None:
                os.environ.pop("RAY_ADDRESS", None)
            else:
                os.environ["RAY_ADDRESS"] = saved
    try:
        run = store.get_pipeline_run(run_id)
    except LeptonError:
        raise LeptonError(f"the run of {nb.name} did not start (see the messages above)") \
            from None
    if run.status != "succeeded":
        raise PipelineFailed(f"run {run.id} of {nb.name} {run.status}: {run.error}; the "
                             f"executed notebook is {run.output}", run)
    return run


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
