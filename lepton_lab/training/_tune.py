"""``%%lepton tune``: the cell as a Ray Tune trainable over the ``search_space`` it declares.

The kernel evaluates the cell's imports and its top-level ``search_space = {...}`` (with
``tune`` = :mod:`ray.tune` at hand), so a bad space fails at once. The rest of the cell is the
trainable: each trial runs it with ``config`` set to the trial's sample, and
``lepton.training.report(...)`` feeds Tune (ASHA stops poor trials early; PBT copies the best
trials' checkpoints from :func:`~lepton_lab.training.epochs` and mutates their
hyperparameters). A driving task on the cluster runs ``Tuner.fit()`` and streams a live trials
table; ``best_config`` and ``tune_results`` (a DataFrame) come back into the notebook.
"""

from __future__ import annotations

import ast
import html
import threading
import time
from dataclasses import dataclass
from typing import Any, Iterator

from ..cluster import ensure_connected
from ..errors import CellTimeout, LeptonUsageError
from ..remote._analysis import analyze
from ..remote._executor import Emitter, execute, new_namespace
from ..remote._guard import drive, note_placement_group
from ..remote._runner import (
    CellOutcome,
    Recorder,
    apply_outcome,
    build_payload,
    check_feasible,
    finish_outcome,
    record_submission,
    ship_values,
)
from ..remote._sink import LogTee, Sink
from ..remote._spec import CellSpec
from ..store import get_store

SCHEDULERS = ("asha", "pbt", "fifo")


@dataclass(frozen=True)
class TuneSpec:
    samples: int = 4
    scheduler: str = "asha"
    metric: str = "loss"
    mode: str = "min"
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    max_concurrent: int | None = None
    timeout: float | None = None
    name: str | None = None
    storage: str | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.samples <= 10_000:
            raise LeptonUsageError(f"--samples {self.samples} must be between 1 and 10000")
        if self.scheduler not in SCHEDULERS:
            raise LeptonUsageError(f"--scheduler {self.scheduler!r} must be asha, pbt or fifo")
        if self.mode not in ("min", "max"):
            raise LeptonUsageError(f"--mode {self.mode!r} must be 'min' or 'max'")
        self.cell_spec()

    def cell_spec(self) -> CellSpec:
        return CellSpec(cpus=self.cpus_per_trial, gpus=self.gpus_per_trial,
                        timeout=self.timeout, name=self.name)

    def resources(self) -> dict[str, Any]:
        d = self.cell_spec().resources()
        d.update(samples=self.samples, scheduler=self.scheduler)
        return d

    def config(self) -> dict[str, Any]:
        return dict(self.__dict__)


def split_cell(body: str) -> tuple[str, str]:
    """(the imports plus the ``search_space`` assignment, the trainable's code).

    The trainable keeps its line numbers: the removed statement becomes blank lines.
    """
    tree = ast.parse(body)
    target = None
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "search_space" for t in node.targets):
            target = node
    if target is None:
        raise LeptonUsageError("a %%lepton tune cell must assign `search_space = {...}` at top "
                               "level, e.g. search_space = {\"lr\": tune.loguniform(1e-4, 1e-1)}")
    lines = body.splitlines(keepends=True)
    start, end = target.lineno - 1, target.end_lineno or target.lineno
    space_src = "".join(lines[start:end])
    imports = "".join("".join(lines[n.lineno - 1:n.end_lineno or n.lineno])
                      for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom)))
    rest = "".join(lines[:start]) + "\n" * (end - start) + "".join(lines[end:])
    return imports + space_src, rest


def eval_search_space(source: str, namespace: dict[str, Any]) -> dict[str, Any]:
    from ray import tune

    ns = dict(namespace)
    ns["tune"] = tune
    try:
        exec(compile(source, "<search_space>", "exec"), ns)
    except Exception as exc:  # noqa: BLE001 - the user's expression
        raise LeptonUsageError(f"search_space could not be evaluated: {type(exc).__name__}: "
                               f"{exc}") from None
    space = ns.get("search_space")
    if not isinstance(space, dict) or not space:
        raise LeptonUsageError("search_space must be a non-empty dict of name -> tune domain, "
                               "e.g. {\"lr\": tune.loguniform(1e-4, 1e-1)}")
    return space


# -- cluster side ----------------------------------------------------------------------------
class TrialFailed(Exception):
    def __init__(self, error: dict[str, Any]):
        lines = "".join(error.get("traceback") or [])
        super().__init__(f"{error.get('ename')}: {error.get('evalue')}\n{lines}")
        self.error = error

    def __reduce__(self):
        return (TrialFailed, (self.error,))


def trainable(config: dict[str, Any], payload: dict[str, Any], ledger: Any = None) -> None:
    """One trial: the cell with ``config`` set (its output goes to the trial's log)."""
    from . import _helpers

    note_placement_group(ledger)
    _helpers.configure("tune")
    ns = new_namespace()
    ns["config"] = dict(config)
    result = execute(dict(payload, pull=False, capture_fd=False), ns, Emitter())
    if result.get("status") != "ok":
        raise TrialFailed(result.get("error") or {"ename": "Interrupted", "evalue": ""})


def _trials_html(rows: dict[str, dict[str, Any]], metric: str, keys: list[str]) -> str:
    head = "".join(f"<th>{html.escape(k)}</th>" for k in ["trial", "status", *keys, metric, "iter"])
    body = []
    for tid, r in sorted(rows.items()):
        cfg = r.get("config", {})
        cells = [tid, r.get("status", "")] + [
            f"{cfg.get(k):.4g}" if isinstance(cfg.get(k), float) else str(cfg.get(k, ""))
            for k in keys]
        m = r.get("metric")
        cells += [f"{m:.4g}" if isinstance(m, (int, float)) else "", str(r.get("iter", ""))]
        body.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def run_tune_task(payload: dict[str, Any], opts: dict[str, Any]) -> Iterator[list[tuple]]:
    """The driving task: runs ``Tuner.fit()`` and streams a live trials table."""
    import cloudpickle
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, PopulationBasedTraining

    space = cloudpickle.loads(opts["space"])
    metric, mode = opts["metric"], opts["mode"]
    rows: dict[str, dict[str, Any]] = {}  # trial id -> row (plain dict: Tune pickles callbacks)

    class Table(tune.Callback):
        def on_trial_result(self, iteration, trials, trial, result, **info):
            rows[trial.trial_id] = {"config": trial.config, "status": "RUNNING",
                                    "metric": result.get(metric),
                                    "iter": result.get("training_iteration")}

        def on_trial_complete(self, iteration, trials, trial, **info):
            rows.setdefault(trial.trial_id, {"config": trial.config})["status"] = "DONE"

        def on_trial_error(self, iteration, trials, trial, **info):
            rows.setdefault(trial.trial_id, {"config": trial.config})["status"] = "ERROR"

    if opts["scheduler"] == "asha":
        scheduler = ASHAScheduler(grace_period=1, reduction_factor=2)
    elif opts["scheduler"] == "pbt":
        scheduler = PopulationBasedTraining(perturbation_interval=2,
                                            hyperparam_mutations=space)
    else:
        scheduler = FIFOScheduler()
    fn = tune.with_parameters(trainable, payload=payload, ledger=opts.get("ledger"))
    fn = tune.with_resources(fn, {"cpu": opts["cpus"], "gpu": opts["gpus"]})
    tuner = tune.Tuner(
        fn, param_space=space,
        tune_config=tune.TuneConfig(num_samples=opts["samples"], scheduler=scheduler,
                                    metric=metric, mode=mode,
                                    max_concurrent_trials=opts.get("max_concurrent")),
        run_config=tune.RunConfig(name=opts["run_id"], storage_path=opts["storage"],
                                  callbacks=[Table()], verbose=0))
    box: dict[str, Any] = {}

    def fit() -> None:
        try:
            box["grid"] = tuner.fit()
        except BaseException as exc:  # noqa: BLE001 - reported to the kernel
            box["error"] = exc

    keys = sorted(space)
    emitter = Emitter()
    started = time.time()
    thread = threading.Thread(target=fit, daemon=True, name="lepton-tune-fit")
    thread.start()
    shown, last_table = False, ""
    while True:
        thread.join(timeout=1.0)
        done = not thread.is_alive()
        snapshot = dict(rows)
        table = _trials_html(snapshot, metric, keys)
        n = sum(1 for r in snapshot.values() if r.get("status") in ("DONE", "ERROR"))
        emitter.emit(("progress", "lepton-tune", n, opts["samples"], "trials", 0.0))
        if table != last_table or done:
            last_table = table
            emitter.emit(("display", {"text/html": table,
                                      "text/plain": f"{n}/{opts['samples']} trials done"},
                          {}, "lepton-tune-table", shown))
            shown = True
        yield emitter.drain(0.0)
        if done:
            break
    result: dict[str, Any]
    if "error" in box:
        exc = box["error"]
        result = {"status": "error", "error": {"ename": type(exc).__name__,
                                               "evalue": str(exc)[:2000], "traceback": []}}
    else:
        grid = box["grid"]
        frame = grid.get_dataframe()
        cols = [c for c in frame.columns if c.startswith("config/")] + [
            c for c in (metric, "training_iteration", "trial_id") if c in frame.columns]
        frame = frame[cols].sort_values(metric, ascending=(mode == "min")) \
            if metric in frame.columns else frame[cols]
        try:
            best = grid.get_best_result(metric=metric, mode=mode)
        except Exception as exc:  # noqa: BLE001 - every trial failed
            errors = [str(r.error).splitlines()[0][:300] for r in grid if r.error]
            result = {"status": "error", "error": {
                "ename": "TuneError", "evalue": f"no trial reported {metric!r}: "
                + (errors[0] if errors else str(exc)), "traceback": []}}
        else:
            from ..remote._values import pack_values

            ns = {"best_config": dict(best.config), "tune_results": frame.reset_index(drop=True)}
            values, skipped = pack_values(ns, ["best_config", "tune_results"])
            emitter.display(frame.reset_index(drop=True))
            result = {"status": "ok", "values": values, "skipped": skipped,
                      "best": {"config": dict(best.config),
                               "metrics": {k: v for k, v in (best.metrics or {}).items()
                                           if isinstance(v, (int, float))},
                               "checkpoint": best.checkpoint.path if best.checkpoint else None},
                      "trials": frame.to_dict("records")}
    result["elapsed"] = time.time() - started
    tail = emitter.drain(0.0)
    tail.append(("done", result))
    yield tail


# -- kernel side -----------------------------------------------------------------------------
_TASK = None


def _tune_task():
    global _TASK
    if _TASK is None:
        import ray

        _TASK = ray.remote(num_cpus=0, max_retries=0)(run_tune_task)
    return _TASK


def run_tune(body: str, namespace: dict[str, Any], spec: TuneSpec, sink: Sink, *,
             origin: str | None = None) -> CellOutcome:
    """Search ``search_space`` with the rest of ``body`` as the trainable; ``best_config`` and
    ``tune_results`` come back into ``namespace``; the search is recorded as a run."""
    import cloudpickle

    from ._run import prepare_storage

    an = analyze(body)
    space_src, rest = split_cell(body)
    conn = ensure_connected()
    space = eval_search_space(space_src, namespace)
    check_feasible(spec.cell_spec())
    rest_an = analyze(rest)
    values = ship_values(rest_an.reads - {"config"}, namespace)
    payload = build_payload(rest_an, spec.cell_spec(), values)
    storage = prepare_storage(spec.storage)
    job_id = record_submission("tune", body, an, spec, conn.address, origin)
    store = get_store()
    store.create_run(job_id, job_id=job_id, kind="tune", name=spec.name, config=spec.config(),
                     storage=storage)
    opts = {"space": cloudpickle.dumps(space), "metric": spec.metric, "mode": spec.mode,
            "scheduler": spec.scheduler, "samples": spec.samples, "cpus": spec.cpus_per_trial,
            "gpus": spec.gpus_per_trial, "max_concurrent": spec.max_concurrent,
            "run_id": job_id, "storage": storage}
    tee = LogTee(sink)
    deadline = time.monotonic() + spec.timeout if spec.timeout else None

    def stopped(exc: BaseException) -> None:
        store.update_run(job_id, status="cancelled", error=type(exc).__name__)
        if isinstance(exc, KeyboardInterrupt):
            tee.status("interrupted: every trial was stopped and its resources freed")

    with Recorder(job_id, tee):
        try:
            res = drive(_tune_task(), f"lepton-tune:{job_id}", payload, opts, tee, deadline,
                        stopped)
        except CellTimeout:
            raise CellTimeout(f"the search ran past --timeout {spec.timeout:g} s; every "
                              "trial was stopped and its resources freed") from None
        try:
            outcome = finish_outcome(job_id, {None: res}, lambda _r: "the search")
        except BaseException as exc:
            store.update_run(job_id, status="failed", error=str(exc)[:2000])
            raise
        best = res.get("best") or {}
        store.update_run(job_id, status="succeeded", history=res.get("trials"),
                         metrics=dict(best.get("metrics") or {}, **{
                             f"config/{k}": v for k, v in (best.get("config") or {}).items()
                             if isinstance(v, (int, float))}),
                         best_checkpoint=best.get("checkpoint"),
                         last_checkpoint=best.get("checkpoint"))
        apply_outcome(outcome, namespace, tee, "the cluster")
        tee.status(f"search {job_id}: best {spec.metric} = "
                   f"{(best.get('metrics') or {}).get(spec.metric)} with {best.get('config')}; "
                   "`best_config` and `tune_results` are in the notebook")
        return outcome
