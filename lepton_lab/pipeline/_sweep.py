"""``lepton sweep``: a parameter grid as parallel papermill runs on the Ray cluster.

Each run is one Ray task with its own resources; the notebook's kernel starts on the worker
that runs the task (papermill with the ``lepton`` engine, there). The task sends the executed
notebook back and this process records the run, so a sweep on a remote cluster records into
the same store as one on the embedded cluster. A failing run is recorded failed and the
others go on; Ctrl-C cancels the runs still going.
"""

from __future__ import annotations

import itertools
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..errors import LeptonUsageError

MAX_RUNS = 1000


def expand_grid(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """``{"lr": [0.1, 0.01], "epochs": [2, 4]}`` -> the 4 combinations, in a stable order."""
    if not grid:
        raise LeptonUsageError("a sweep needs at least one parameter: -p NAME VALUE [VALUE ...]")
    for name, values in grid.items():
        if not values:
            raise LeptonUsageError(f"-p {name} has no values; give one or more")
    names = list(grid)
    combos = [dict(zip(names, values)) for values in itertools.product(*grid.values())]
    if len(combos) > MAX_RUNS:
        raise LeptonUsageError(f"the grid has {len(combos)} runs; at most {MAX_RUNS} per sweep")
    return combos


@dataclass(frozen=True)
class SweepOptions:
    parallel: int | None = None        # runs in flight at once (None: as many as fit)
    cpus: float = 1.0
    gpus: float = 0.0
    memory: int | None = None
    seed: int | None = None            # one seed for every run (None: one each)
    cell_timeout: float | None = 1800.0
    kernel: str | None = None
    metric: str | None = None
    mode: str | None = None            # max | min (None: min for loss/error, else max)

    def __post_init__(self) -> None:
        if self.parallel is not None and self.parallel < 1:
            raise LeptonUsageError("--parallel must be at least 1")
        if self.mode not in (None, "max", "min"):
            raise LeptonUsageError("--mode must be max or min")


@dataclass
class SweepResult:
    sweep: str
    runs: list[Any] = field(default_factory=list)
    best: Any = None
    metric: str | None = None
    mode: str | None = None
    elapsed: float = 0.0

    @property
    def failed(self) -> list[Any]:
        return [r for r in self.runs if r.status != "succeeded"]


def _remote_fn():
    import ray

    @ray.remote(max_retries=0)
    def lepton_pipeline_run(nb_text: str, name: str, parameters: dict, options: dict) -> dict:
        # On the worker: papermill with the lepton engine; the kernel is a child of this task.
        import os
        import tempfile

        import papermill as pm

        with tempfile.TemporaryDirectory(prefix="lepton-run-") as tmp:
            src, out = Path(tmp) / f"{name}.ipynb", Path(tmp) / "out" / f"{name}.ipynb"
            src.write_text(nb_text)
            out.parent.mkdir()
            cwd = options.get("cwd")
            cwd = cwd if cwd and os.path.isdir(cwd) else tmp
            error = None
            try:
                pm.execute_notebook(str(src), str(out), parameters=parameters,
                                    kernel_name=options.get("kernel"), progress_bar=False,
                                    execution_timeout=options.get("cell_timeout"), cwd=cwd,
                                    engine_name="lepton", lepton_store=False,
                                    lepton_run_id=options["run_id"],
                                    lepton_seed=options.get("seed"),
                                    lepton_sweep=options["sweep"],
                                    lepton_inputs=options.get("inputs") or {})
            except pm.PapermillExecutionError:
                pass                           # recorded in the notebook's metadata
            except Exception as exc:  # noqa: BLE001 - dead kernel, timeout: sent back
                error = f"{type(exc).__name__}: {str(exc).strip()[:300]}"
            text = out.read_text() if out.exists() else None
        return {"notebook": text, "error": error}

    return lepton_pipeline_run


def _best(runs: list[Any], metric: str | None, mode: str | None
          ) -> tuple[Any, str | None, str | None]:
    ok = [r for r in runs if r.status == "succeeded"]
    if metric is None:
        names = [n for n in (ok[0].metrics if ok else {})
                 if all(isinstance(r.metrics.get(n), (int, float)) for r in ok)]
        metric = names[0] if names else None
    if metric is None:
        return None, None, None
    if mode is None:
        mode = "min" if any(w in metric.lower() for w in ("loss", "error", "time")) else "max"
    scored = [r for r in ok if isinstance(r.metrics.get(metric), (int, float))]
    if not scored:
        return None, metric, mode
    pick = max if mode == "max" else min
    return pick(scored, key=lambda r: r.metrics[metric]), metric, mode


def run_sweep(notebook: str | Path, grid: dict[str, list[Any]], opts: SweepOptions = SweepOptions(),
              *, inputs: tuple[str, ...] = (),
              progress: Callable[[int, int, Any], None] | None = None) -> SweepResult:
    """Run every combination of ``grid``; ``progress(done, total, run)`` after each."""
    import ray

    from ..cluster import ensure_connected
    from ..remote._runner import check_feasible
    from ..remote._spec import CellSpec
    from ..store import get_store
    from ..store._json import current_user
    from . import _env
    from ._engine import new_run_id, new_seed
    from ._run import check_notebook, runs_dir

    nb = check_notebook(notebook)
    combos = expand_grid(grid)
    hashes = _env.hash_inputs(list(inputs), nb.parent)
    conn = ensure_connected()
    check_feasible(CellSpec(cpus=opts.cpus, gpus=opts.gpus, memory=opts.memory))
    store = get_store()
    sweep_id = "s-" + new_run_id()[2:]
    nb_text = nb.read_text()
    fn = _remote_fn().options(num_cpus=opts.cpus, num_gpus=opts.gpus,
                              **({"memory": opts.memory} if opts.memory else {}))
    queue: list[tuple[str, dict]] = []
    for params in combos:
        run_id = new_run_id()
        store.create_pipeline_run(run_id, name=nb.stem, notebook=str(nb), user=current_user(),
                                  parameters=params, sweep=sweep_id, cluster=conn.address,
                                  seed=opts.seed if opts.seed is not None else new_seed())
        store.update_pipeline_run(run_id, status="queued")
        queue.append((run_id, params))
    store.audit("sweep", detail=f"{sweep_id} {nb} {len(combos)} runs", cluster=conn.address)
    limit = opts.parallel or len(queue)
    pending: dict[Any, str] = {}
    done = 0
    start = time.monotonic()
    try:
        while queue or pending:
            while queue and len(pending) < limit:
                run_id, params = queue.pop(0)
                run = store.get_pipeline_run(run_id)
                options = {"run_id": run_id, "sweep": sweep_id, "seed": run.seed,
                           "cell_timeout": opts.cell_timeout, "kernel": opts.kernel,
                           "cwd": str(nb.parent), "inputs": hashes}
                store.update_pipeline_run(run_id, status="running")
                pending[fn.remote(nb_text, nb.stem, params, options)] = run_id
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=0.5)
            for ref in ready:
                run_id = pending.pop(ref)
                try:
                    result = ray.get(ref, timeout=60)
                except Exception as exc:  # noqa: BLE001 - worker died: this run only
                    result = {"notebook": None, "error": f"{type(exc).__name__}: "
                              f"{str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ''}"}
                run = _finish_remote(store, run_id, result, runs_dir())
                done += 1
                if progress is not None:
                    progress(done, len(combos), run)
    except KeyboardInterrupt:
        _cancel(pending, store)
        for run_id, _ in queue:
            store.update_pipeline_run(run_id, status="cancelled", error="sweep interrupted")
        raise
    runs = store.list_pipeline_runs(sweep=sweep_id, limit=len(combos))[::-1]
    best, metric, mode = _best(runs, opts.metric, opts.mode)
    return SweepResult(sweep_id, runs, best, metric, mode, time.monotonic() - start)


def _finish_remote(store: Any, run_id: str, result: dict[str, Any], root: Path) -> Any:
    """Save the executed notebook the task sent back and close the run's record from it."""
    text = result.get("notebook")
    if text is None:
        store.update_pipeline_run(run_id, status="failed",
                                  error=result.get("error") or "the run sent nothing back")
        return store.get_pipeline_run(run_id)
    nb = json.loads(text)
    meta = nb.get("metadata", {}).get("lepton", {})
    out = root / run_id / f"{Path(meta.get('notebook') or 'notebook').stem}.ipynb"
    out.parent.mkdir(parents=True, exist_ok=True)
    # figures travel inside the notebook; they are written next to it on this machine
    from ._record import collect

    recorded = collect(nb, out.parent / "figures")
    meta["output"] = str(out)
    out.write_text(json.dumps(nb, indent=1))
    status = meta.get("status", "failed")
    if status == "running":                      # the engine never finished: say why
        status = "failed"
    error = meta.get("error") or result.get("error")
    store.update_pipeline_run(run_id, status=status, error=error, output=str(out),
                              failed_cell=meta.get("failed_cell"), env=meta.get("env"),
                              inputs=meta.get("inputs"), cells=meta.get("cells"), **recorded)
    return store.get_pipeline_run(run_id)


def _cancel(pending: dict[Any, str], store: Any, grace: float = 10.0) -> None:
    """Interrupt the runs in flight (their kernels shut down), then force what is left."""
    import ray

    for ref in pending:
        ray.cancel(ref, force=False)
    deadline = time.monotonic() + grace
    left = list(pending)
    while left and time.monotonic() < deadline:
        _, left = ray.wait(left, num_returns=len(left), timeout=0.5)
    for ref in left:
        ray.cancel(ref, force=True)
    for run_id in pending.values():
        store.update_pipeline_run(run_id, status="cancelled", error="sweep interrupted")
