"""What the ``lepton`` papermill engine does around papermill's nbclient engine.

The engine class itself is in :mod:`._papermill` (papermill loads it by entry point; import
``papermill`` rather than that module).

    papermill --engine lepton in.ipynb out.ipynb -p lr 0.1

Before the first cell it records the parameters, the environment, the hashes of the notebook
and of declared input files, and a seed, and injects one cell (tagged ``lepton-setup``) that
seeds Python, NumPy and torch in the kernel. After the last cell (or the failing one, or a
dead kernel, or Ctrl-C) it records each cell's timing and status and what the notebook
recorded with ``lepton_lab.record``. The record goes into the output notebook's metadata
(``metadata.lepton``) and, unless told otherwise, into the shared state store.

Options travel as papermill engine keyword arguments (``lepton_*``); papermill's own
command line passes none, so every one has a default.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nbformat

SETUP_TAG = "lepton-setup"
OPTIONS = ("lepton_run_id", "lepton_seed", "lepton_inputs", "lepton_store", "lepton_sweep",
            "lepton_reproduces", "lepton_artifacts_dir")


def new_run_id() -> str:
    return "p-" + secrets.token_hex(5)


def new_seed() -> int:
    return secrets.randbelow(2**31 - 1)


@dataclass
class RunContext:
    """One pipeline run while its notebook executes."""

    run_id: str
    name: str
    notebook: str
    output: str | None
    parameters: dict[str, Any]
    seed: int
    inputs: dict[str, str]
    env: dict[str, Any]
    store: bool = True
    sweep: str | None = None
    reproduces: str | None = None
    artifacts_dir: Path | None = None
    started: float = field(default_factory=time.time)

    def metadata(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "name": self.name, "notebook": self.notebook,
                "output": self.output, "parameters": self.parameters, "seed": self.seed,
                "inputs": self.inputs, "env": self.env, "sweep": self.sweep,
                "reproduces": self.reproduces, "started": self.started, "status": "running"}


def _notebook_sets_seed(nb: Any) -> bool:
    needles = ("manual_seed(", "random.seed(", "np.random.seed(", "default_rng(", "set_seed(")
    return any(n in "".join(c.get("source", "")) for c in nb.cells
               if c.get("cell_type") == "code" for n in needles)


def begin(nb: Any, output_path: str | None, opts: dict[str, Any]) -> RunContext:
    """Start the record of a run (and write it to the store unless ``lepton_store=False``)."""
    from . import _env

    pm = nb.metadata.get("papermill", {})
    notebook = str(pm.get("input_path") or "<notebook>")
    if Path(notebook).is_file():                  # not for s3://... and other papermill IO
        notebook = str(Path(notebook).resolve())
    params = dict(pm.get("parameters") or {})
    seed = opts.get("lepton_seed")
    if seed is None and isinstance(params.get("seed"), int):
        seed = params["seed"]                     # the notebook's own seed parameter wins
    seed = new_seed() if seed is None else int(seed)
    base = Path(notebook).parent if notebook != "<notebook>" else Path.cwd()
    inputs = dict(opts.get("lepton_inputs") or {})
    if notebook != "<notebook>" and Path(notebook).is_file():
        inputs.setdefault(notebook, _env.sha256_file(notebook))
    env = _env.capture(base)
    env["seeded_by_notebook"] = _notebook_sets_seed(nb)
    run_id = opts.get("lepton_run_id") or new_run_id()
    artifacts = opts.get("lepton_artifacts_dir")
    ctx = RunContext(run_id=run_id, name=Path(notebook).stem or "notebook", notebook=notebook,
                     output=str(output_path) if output_path else None, parameters=params,
                     seed=seed, inputs=inputs, env=env,
                     store=opts.get("lepton_store", True) is not False,
                     sweep=opts.get("lepton_sweep"), reproduces=opts.get("lepton_reproduces"),
                     artifacts_dir=Path(artifacts) if artifacts else None)
    if ctx.store:
        from ..store import get_store
        from ..store._json import current_user

        store = get_store()
        try:
            store.get_pipeline_run(run_id)       # created by the caller (a sweep, reproduce)
        except Exception:  # noqa: BLE001 - not there yet: this engine creates it
            store.create_pipeline_run(run_id, name=ctx.name, notebook=notebook,
                                      user=current_user(), parameters=params, seed=seed,
                                      sweep=ctx.sweep, reproduces=ctx.reproduces,
                                      cluster=env["ray"].get("address"), output=ctx.output)
        store.update_pipeline_run(run_id, status="running", env=env, inputs=inputs,
                                  seed=seed, parameters=params, output=ctx.output)
        store.audit("pipeline", detail=f"{run_id} {notebook}", cluster=env["ray"].get("address"))
    nb.metadata["lepton"] = ctx.metadata()
    return ctx


def inject_setup(nb: Any, ctx: RunContext) -> int:
    """Insert the seeding cell after the (injected) parameters cell; returns its index."""
    at = 0
    for i, cell in enumerate(nb.cells):
        tags = cell.get("metadata", {}).get("tags", [])
        if "parameters" in tags or "injected-parameters" in tags:
            at = i + 1
    source = (f"# Lepton pipeline run {ctx.run_id}: seed {ctx.seed} for Python, NumPy and torch "
              "(a notebook that seeds itself still wins)\n"
              "import lepton_lab.pipeline._kernel as _lepton_setup\n"
              f"_lepton_setup.setup(run={ctx.run_id!r}, seed={ctx.seed})\n"
              "del _lepton_setup")
    cell = nbformat.v4.new_code_cell(source, metadata={"tags": [SETUP_TAG]})
    cell.metadata["papermill"] = {"exception": None, "start_time": None, "end_time": None,
                                  "duration": None, "status": "pending"}
    nb.cells.insert(at, cell)
    return at


def cell_records(nb: Any) -> list[dict[str, Any]]:
    """Timing and status of every code cell of an executed notebook. ``index`` counts the
    cells of the input notebook from 0 (as nbformat does); injected cells have none."""
    cells = []
    source_index = 0
    for cell in nb.cells:
        tags = list(cell.get("metadata", {}).get("tags", []))
        injected = SETUP_TAG in tags or "injected-parameters" in tags
        index = None if injected else source_index
        source_index += 0 if injected else 1
        if cell.get("cell_type") != "code":
            continue
        pm = cell.get("metadata", {}).get("papermill", {})
        entry: dict[str, Any] = {"index": index, "execution_count": cell.get("execution_count"),
                                 "status": pm.get("status", "pending"),
                                 "duration": pm.get("duration")}
        if tags:
            entry["tags"] = tags
        for out in cell.get("outputs", []) or []:
            if out.get("output_type") == "error":
                entry["ename"], entry["evalue"] = out.get("ename"), str(out.get("evalue"))[:500]
                entry["status"] = "failed"
        cells.append(entry)
    return cells


def _where(cell: dict[str, Any] | None) -> str:
    if cell is None:
        return ""
    count = f" (In [{cell['execution_count']}])" if cell["execution_count"] else ""
    if cell["index"] is None:
        return f" in an injected cell{count}"
    return f" in cell {cell['index']}{count}"


def _failure(cells: list[dict[str, Any]], exc: BaseException | None
             ) -> tuple[str, str | None, int | None]:
    """(status, error line, failed cell index) of a finished execution."""
    failed = next((c for c in cells if c["status"] == "failed"), None)
    if failed is not None:
        return ("failed", f"{_where(failed).strip().removeprefix('in ')} raised "
                f"{failed.get('ename')}: {failed.get('evalue')}", failed["index"])
    if exc is None:
        return "succeeded", None, None
    # the cell that was executing: the last one papermill started
    started = [c for c in cells if c["status"] != "pending"]
    last = started[-1] if started else None
    index = last["index"] if last else None
    if isinstance(exc, KeyboardInterrupt):
        return "cancelled", f"interrupted{_where(last)}", index
    name = type(exc).__name__
    if name == "DeadKernelError":
        return "failed", f"the kernel died{_where(last)}", index
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if isinstance(exc, TimeoutError) or name == "CellTimeoutError":
        return "failed", f"timed out{_where(last)}: {text}", index
    return "failed", f"{name}{_where(last)}: {text}", index


def finish(nb: Any, ctx: RunContext, exc: BaseException | None) -> dict[str, Any]:
    """Close the record: cells, status, recorded metrics; metadata and store updated."""
    from ._record import collect

    cells = cell_records(nb)
    status, error, failed_cell = _failure(cells, exc)
    figures_dir = None
    if ctx.artifacts_dir is not None:
        figures_dir = ctx.artifacts_dir / "figures"
    elif ctx.output:
        figures_dir = Path(ctx.output).parent / f"{Path(ctx.output).stem}-figures"
    recorded = collect(nb, figures_dir)
    meta = nb.metadata["lepton"]
    meta.update(status=status, error=error, failed_cell=failed_cell, cells=cells,
                finished=time.time(), **recorded)
    if ctx.store:
        from ..store import get_store

        get_store().update_pipeline_run(ctx.run_id, status=status, error=error,
                                        failed_cell=failed_cell, cells=cells, **recorded)
    return meta
