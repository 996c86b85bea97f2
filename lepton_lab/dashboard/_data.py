"""What each dashboard page shows, as plain dicts and lists read from the state store.

No IPython, tornado or ipywidgets here: the Voila notebooks in ``templates/dashboards/`` turn
these into widgets, tables (:mod:`._html`) and figures (:mod:`._plots`), and the unit tests
call them directly on a temporary store.

Two kinds of run show side by side: *pipeline* runs (papermill executions recorded by
``lepton run``) and *training* runs (``%%lepton train`` / ``tune``). Both become the same row
shape (:func:`run_rows`) and the same detail shape (:func:`run_detail`).
"""

from __future__ import annotations

import math
import os
import time
from typing import Any, Iterable
from urllib.parse import parse_qs

from ..errors import JobNotFound, LeptonError, LeptonUsageError
from ..store import get_store

#: Training-run settings worth a column in the overview (the rest is on the detail page).
TRAIN_PARAMS = ("workers", "cpus_per_worker", "gpus_per_worker", "max_failures", "bf16",
                "metric", "mode", "samples", "scheduler")
#: Columns the overview can sort by (besides ``metric:<name>``).
SORT_KEYS = ("created", "name", "status", "duration", "kind")
#: Query parameters a page may read; anything else in the query (the token!) is dropped.
QUERY_KEYS = ("run", "report", "model", "endpoint", "kind", "status", "q", "sort")


# -- small helpers ----------------------------------------------------------------------------
def query_params(query: str | None = None) -> dict[str, str]:
    """The page's URL parameters (``?run=ID``), from Voila's ``QUERY_STRING``.

    Voila hands each page's kernel the request's query string in the environment. Only the
    keys in :data:`QUERY_KEYS` are kept, so the access token in ``?token=`` never reaches a
    page (or its output); the first value of each key wins.
    """
    if query is None:
        query = os.environ.get("QUERY_STRING", "")
    parsed = parse_qs(query or "", keep_blank_values=False)
    return {k: v[0].strip() for k, v in parsed.items() if k in QUERY_KEYS and v and v[0].strip()}


def fmt_time(ts: float | None) -> str:
    return "–" if not ts else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def fmt_duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "–"
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{seconds // 60:.0f} min {seconds % 60:02.0f} s"
    return f"{seconds // 3600:.0f} h {seconds % 3600 // 60:02.0f} min"


def fmt_value(v: Any) -> str:
    """A metric or parameter as a short string: 4 significant digits for floats."""
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4g}"
    if isinstance(v, (list, tuple, dict)):
        text = str(v)
        return text if len(text) <= 60 else text[:57] + "..."
    return str(v)


def _scalars(d: dict[str, Any] | None) -> dict[str, float]:
    """The numeric (finite or not) entries of a metrics dict; bools and strings dropped."""
    out = {}
    for k, v in (d or {}).items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            out[str(k)] = float(v)
    return out


def _duration(created: float | None, finished: float | None, status: str) -> float | None:
    if not created:
        return None
    if finished:
        return finished - created
    return time.time() - created if status == "running" else None


# -- the runs overview --------------------------------------------------------------------------
def has_pipeline_runs() -> bool:
    """Whether the store records pipeline runs (the pipelines capability is installed)."""
    return callable(getattr(get_store(), "list_pipeline_runs", None))


def _pipeline_dicts(limit: int) -> list[dict[str, Any]]:
    lister = getattr(get_store(), "list_pipeline_runs", None)
    if lister is None:
        return []
    return [_as_dict(r) for r in lister(limit=limit)]


def _as_dict(rec: Any) -> dict[str, Any]:
    return rec.to_dict() if hasattr(rec, "to_dict") else dict(rec)


def _pipeline_row(d: dict[str, Any]) -> dict[str, Any]:
    return {"id": d["id"], "kind": "pipeline", "name": d.get("name") or "",
            "status": d.get("status") or "", "user": d.get("user") or "",
            "created": d.get("created"), "finished": d.get("finished"),
            "duration": _duration(d.get("created"), d.get("finished"), d.get("status") or ""),
            "params": dict(d.get("parameters") or {}), "metrics": _scalars(d.get("metrics")),
            "sweep": d.get("sweep"), "error": d.get("error")}


def _train_row(d: dict[str, Any]) -> dict[str, Any]:
    config = d.get("config") or {}
    params = {k: config[k] for k in TRAIN_PARAMS if config.get(k) not in (None, False, "")}
    return {"id": d["id"], "kind": d.get("kind") or "train", "name": d.get("name") or "",
            "status": d.get("status") or "", "user": d.get("user") or "",
            "created": d.get("created"), "finished": d.get("finished"),
            "duration": _duration(d.get("created"), d.get("finished"), d.get("status") or ""),
            "params": params, "metrics": _scalars(d.get("metrics")), "sweep": None,
            "error": d.get("error")}


def run_rows(kind: str = "all", limit: int = 200) -> list[dict[str, Any]]:
    """Every recorded run, newest first: ``kind`` is ``all``, ``pipeline`` or ``training``.

    A row: id, kind (pipeline | train | tune), name, status, user, created, finished,
    duration (s), params (dict), metrics (name -> number), sweep, error.
    """
    if kind not in ("all", "pipeline", "training"):
        raise LeptonUsageError(f"run kind {kind!r} must be all, pipeline or training")
    rows: list[dict[str, Any]] = []
    if kind in ("all", "pipeline"):
        rows += [_pipeline_row(d) for d in _pipeline_dicts(limit)]
    if kind in ("all", "training"):
        rows += [_train_row(r.to_dict()) for r in get_store().list_runs(limit=limit)]
    rows.sort(key=lambda r: r["created"] or 0, reverse=True)
    return rows[:limit]


def metric_names(rows: Iterable[dict[str, Any]], limit: int = 8) -> list[str]:
    """The metric names of ``rows``, most common first (ties by name), at most ``limit``."""
    count: dict[str, int] = {}
    for r in rows:
        for k in r["metrics"]:
            count[k] = count.get(k, 0) + 1
    return sorted(count, key=lambda k: (-count[k], k))[:limit]


def filter_rows(rows: list[dict[str, Any]], *, text: str = "", status: str = "",
                sort: str = "created", descending: bool = True) -> list[dict[str, Any]]:
    """Rows whose id, name, user, kind or parameters contain ``text`` (case-insensitive)
    and whose status is ``status`` (empty: any), sorted by ``sort`` (a :data:`SORT_KEYS`
    column or ``metric:NAME``; rows without that metric go last)."""
    needle = text.strip().lower()

    def match(r: dict[str, Any]) -> bool:
        if status and r["status"] != status:
            return False
        if not needle:
            return True
        hay = " ".join([r["id"], r["name"], r["user"], r["kind"], r.get("sweep") or ""]
                       + [f"{k}={v}" for k, v in r["params"].items()])
        return needle in hay.lower()

    out = [r for r in rows if match(r)]
    if sort.startswith("metric:"):
        name = sort[len("metric:"):]
        have = [r for r in out if name in r["metrics"] and not math.isnan(r["metrics"][name])]
        rest = [r for r in out if r not in have]
        have.sort(key=lambda r: r["metrics"][name], reverse=descending)
        return have + rest
    if sort not in SORT_KEYS:
        raise LeptonUsageError(f"cannot sort by {sort!r}; use one of {', '.join(SORT_KEYS)} "
                               "or metric:NAME")
    blank = [r for r in out if r[sort] in (None, "")]
    have = [r for r in out if r[sort] not in (None, "")]
    have.sort(key=lambda r: r[sort], reverse=descending)
    return have + blank


# -- one run ------------------------------------------------------------------------------------
def _find_pipeline(key: str) -> dict[str, Any] | None:
    getter = getattr(get_store(), "get_pipeline_run", None)
    if getter is None:
        return None
    try:
        return _as_dict(getter(key))
    except LeptonError:
        return None


def run_detail(key: str) -> dict[str, Any]:
    """Everything the run page shows for a pipeline or training run id (or unique prefix or
    name); a one-line :class:`JobNotFound` when neither kind has it.

    Keys: kind, summary (dict of label -> text), params, metrics, curves (name -> {x, y,
    xlabel}), throughput (rank -> samples/s), env (label -> text), cells, trials, figures
    (name -> existing image path), artifacts, inputs, error.
    """
    key = (key or "").strip()
    if not key:
        raise LeptonUsageError("no run given: open a run from the runs overview, or add "
                               "?run=ID to the address")
    d = _find_pipeline(key)
    if d is not None:
        return _pipeline_detail(d)
    try:
        rec = get_store().get_run(key)
    except JobNotFound:
        what = "pipeline or training run" if has_pipeline_runs() else "training run"
        raise JobNotFound(f"no {what} {key!r}; the runs overview lists them") from None
    return _train_detail(rec.to_dict())


def _summary(d: dict[str, Any], kind: str) -> dict[str, str]:
    dur = _duration(d.get("created"), d.get("finished"), d.get("status") or "")
    return {"run": d["id"], "kind": kind, "name": d.get("name") or "–",
            "status": d.get("status") or "–", "user": d.get("user") or "–",
            "started": fmt_time(d.get("created")), "finished": fmt_time(d.get("finished")),
            "duration": fmt_duration(dur)}


def _pipeline_detail(d: dict[str, Any]) -> dict[str, Any]:
    summary = _summary(d, "pipeline")
    for label, key in (("notebook", "notebook"), ("output", "output"), ("seed", "seed"),
                       ("sweep", "sweep"), ("reproduces", "reproduces")):
        if d.get(key) not in (None, ""):
            summary[label] = str(d[key])
    curves = {}
    for name, points in (d.get("series") or {}).items():
        pts = [(float(p[0]), float(p[1])) for p in points or ()
               if isinstance(p, (list, tuple)) and len(p) == 2 and _is_num(p[0])
               and _is_num(p[1])]
        if pts:
            curves[str(name)] = {"x": [p[0] for p in pts], "y": [p[1] for p in pts],
                                 "xlabel": "step"}
    error = d.get("error")
    if error and d.get("failed_cell") is not None:
        error = f"cell {d['failed_cell']}: {error}"
    return {"kind": "pipeline", "id": d["id"], "summary": summary,
            "params": dict(d.get("parameters") or {}), "metrics": dict(d.get("metrics") or {}),
            "curves": curves, "throughput": {}, "env": _flat_env(d.get("env") or {}),
            "cells": list(d.get("cells") or []), "trials": [],
            "figures": {str(k): str(v) for k, v in (d.get("figures") or {}).items()
                        if v and os.path.isfile(str(v))},
            "tables": dict(d.get("tables") or {}),
            "artifacts": {str(k): str(v) for k, v in (d.get("artifacts") or {}).items()},
            "inputs": {str(k): str(v) for k, v in (d.get("inputs") or {}).items()},
            "error": error}


def _is_num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _flat_env(env: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested environment facts as ``label -> text`` (``packages.torch -> 2.13.0``)."""
    out: dict[str, str] = {}
    for k, v in env.items():
        label = f"{prefix}{k}"
        if isinstance(v, dict) and len(v) > 20:     # the full package list: a count here
            out[label] = f"{len(v)} entries (all in the run record)"
        elif isinstance(v, dict) and v:
            out.update(_flat_env(v, label + "."))
        elif isinstance(v, dict):
            out[label] = "–"
        elif isinstance(v, list):
            out[label] = ", ".join(fmt_value(x) for x in v) or "–"
        else:
            out[label] = fmt_value(v)
    return out


def training_curves(history: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Metric name -> {x, y, xlabel} over a training run's history points (``step``,
    ``epoch`` and the reported metrics); x is the epoch when every point has one, else the
    step. Per-rank throughput keys are left to :func:`throughput`."""
    points = [p for p in history if isinstance(p, dict)]
    by_epoch = bool(points) and all(_is_num(p.get("epoch")) for p in points)
    xkey = "epoch" if by_epoch else "step"
    curves: dict[str, dict[str, Any]] = {}
    for i, p in enumerate(points):
        x = p.get(xkey)
        x = float(x) if _is_num(x) else float(i)
        for k, v in p.items():
            if k in ("step", "epoch") or not _is_num(v) or _rank_key(k) is not None:
                continue
            c = curves.setdefault(k, {"x": [], "y": [], "xlabel": xkey})
            c["x"].append(x)
            c["y"].append(float(v))
    return curves


def _rank_key(key: str) -> int | None:
    """The rank in a per-rank throughput key (``samples_per_s/rank1`` -> 1), else None."""
    for prefix in ("samples_per_s/rank", "throughput/rank"):
        if key.startswith(prefix) and key[len(prefix):].isdigit():
            return int(key[len(prefix):])
    return None


def throughput(metrics: dict[str, Any], history: list[dict[str, Any]]) -> dict[int, float]:
    """Rank -> samples/s of a training run: the metrics' ``throughput`` dict (rank ->
    samples/s) when recorded, else the latest ``samples_per_s/rankN`` values in history."""
    out: dict[int, float] = {}
    recorded = metrics.get("throughput")
    if isinstance(recorded, dict):
        for k, v in recorded.items():
            if str(k).isdigit() and _is_num(v):
                out[int(k)] = float(v)
    if out:
        return dict(sorted(out.items()))
    for p in history:
        if isinstance(p, dict):
            for k, v in p.items():
                rank = _rank_key(str(k))
                if rank is not None and _is_num(v):
                    out[rank] = float(v)
    return dict(sorted(out.items()))


def _train_detail(d: dict[str, Any]) -> dict[str, Any]:
    kind = d.get("kind") or "train"
    summary = _summary(d, kind)
    if d.get("job_id"):
        summary["job"] = d["job_id"]
    config = d.get("config") or {}
    history = [p for p in d.get("history") or [] if isinstance(p, dict)]
    env: dict[str, str] = {}
    for label, value in (("storage", d.get("storage")),
                         ("best checkpoint", d.get("best_checkpoint")),
                         ("last checkpoint", d.get("last_checkpoint"))):
        if value:
            env[label] = str(value)
    try:
        job = get_store().get_job(d["job_id"]) if d.get("job_id") else None
    except JobNotFound:
        job = None
    if job is not None:
        env["cluster"] = job.cluster or "–"
        env.update({f"resources.{k}": fmt_value(v) for k, v in job.resources.items()})
        if job.warnings:
            env["warnings"] = "; ".join(job.warnings[-5:])
    trials = history if kind == "tune" else []
    return {"kind": kind, "id": d["id"], "summary": summary,
            "params": {k: v for k, v in config.items() if v not in (None, "", [], {})},
            "metrics": _scalars(d.get("metrics")),
            "curves": {} if kind == "tune" else training_curves(history),
            "throughput": throughput(d.get("metrics") or {}, history), "env": env,
            "cells": [], "trials": trials, "figures": {}, "tables": {}, "artifacts": {},
            "inputs": {}, "error": d.get("error")}


# -- compression trade-off ----------------------------------------------------------------------
def report_choices(limit: int = 50) -> list[dict[str, Any]]:
    """Compression reports, newest first: id, model, created (text), variants, target."""
    return [{"id": r.id, "model": r.model, "created": fmt_time(r.created),
             "variants": len(r.rows), "target": r.target or "cpu"}
            for r in get_store().list_reports(limit=limit)]


def compression_report(report_id: str | None = None, model: str | None = None
                       ) -> dict[str, Any] | None:
    """One report (by id, else the newest for ``model``, else the newest of all) as
    {id, model, created, target, settings, points}; None when there is none.

    A point per variant: variant, format, params, size_mb, latency_ms_b1, latency_ms_b64,
    accuracy (percent or None), accuracy_change, size_ratio, passed, best.
    """
    store = get_store()
    if report_id:
        rec = store.get_report(report_id)
    else:
        recs = store.list_reports(model=model or None, limit=1)
        if not recs:
            return None
        rec = recs[0]
    points = []
    for row in rec.rows:
        size = row.get("size_bytes")
        points.append({
            "variant": str(row.get("variant", "?")), "format": row.get("format") or "",
            "params": row.get("params"),
            "size_mb": size / 2**20 if _is_num(size) else None,
            "latency_ms_b1": _num_or_none(row.get("latency_ms_b1")),
            "latency_ms_b64": _num_or_none(row.get("latency_ms_b64")),
            "accuracy": _num_or_none(row.get("accuracy")),
            "accuracy_change": _num_or_none(row.get("accuracy_change")),
            "size_ratio": _num_or_none(row.get("size_ratio")),
            "passed": bool(row.get("passed", True)), "best": bool(row.get("best", False))})
    return {"id": rec.id, "model": rec.model, "created": fmt_time(rec.created),
            "target": rec.target or "cpu", "settings": rec.settings, "points": points}


def _num_or_none(v: Any) -> float | None:
    return float(v) if _is_num(v) and math.isfinite(v) else None


# -- cluster utilisation ------------------------------------------------------------------------
def cluster_summary() -> dict[str, Any]:
    """The cluster's nodes, resources and running jobs, or ``{"connected": False, "reason":
    ...}`` when no cluster is running. Never starts one: without a running embedded cluster,
    a configured address or a live connection in this process, it does not touch Ray."""
    from ..cluster import current, embedded_state
    from ..config import get_config

    if current() is None and not get_config().address and embedded_state() is None:
        return {"connected": False,
                "reason": "no cluster is running (the dashboard does not start one); "
                          "`lepton cluster start` starts the embedded cluster"}
    try:
        from ..remote._status import cluster_status

        st = cluster_status(probe=False)
    except LeptonError as exc:
        return {"connected": False, "reason": str(exc).splitlines()[0] if str(exc) else
                type(exc).__name__}
    if st.get("state") == "starting":
        from ..remote._status import starting_text

        return {"connected": False, "reason": starting_text(st)}
    st["connected"] = True
    total, free = st.get("total", {}), st.get("free", {})
    st["used"] = {k: max(0.0, float(total.get(k, 0.0)) - float(free.get(k, 0.0)))
                  for k in ("CPU", "GPU", "memory")}
    return st
