"""Pipeline runs in the state store: one papermill execution of a notebook, with what it
needs to be compared and reproduced (parameters, environment, input hashes, seed), how each
cell went, and what the notebook recorded with ``lepton_lab.record``."""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass, field
from typing import Any

from ..errors import LeptonUsageError
from ._json import dumps as _dumps

PIPELINE_STATES = ("queued", "running", "succeeded", "failed", "cancelled", "lost")
PIPELINE_FINAL_STATES = ("succeeded", "failed", "cancelled", "lost")
_JSON_COLUMNS = ("parameters", "env", "inputs", "cells", "metrics", "series", "tables",
                 "figures", "artifacts")
_PLAIN_COLUMNS = ("status", "output", "seed", "error", "failed_cell", "cluster")


class PipelineRunNotFound(LeptonUsageError):
    """A run id, id prefix or notebook name that no pipeline run has."""


@dataclass
class PipelineRun:
    id: str
    name: str
    user: str
    status: str
    created: float
    notebook: str
    finished: float | None = None
    output: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    env: dict[str, Any] = field(default_factory=dict)
    inputs: dict[str, str] = field(default_factory=dict)
    seed: int | None = None
    cells: list[dict[str, Any]] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    series: dict[str, list] = field(default_factory=dict)
    tables: dict[str, list] = field(default_factory=dict)
    figures: dict[str, str] = field(default_factory=dict)
    artifacts: dict[str, str] = field(default_factory=dict)
    error: str | None = None
    failed_cell: int | None = None
    sweep: str | None = None
    reproduces: str | None = None
    cluster: str | None = None

    @property
    def done(self) -> bool:
        return self.status in PIPELINE_FINAL_STATES

    @property
    def duration(self) -> float | None:
        return None if self.finished is None else self.finished - self.created

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class PipelinesMixin:
    """Pipeline-run methods of :class:`~lepton_lab.store.Store`."""

    def create_pipeline_run(self, run_id: str, *, name: str, notebook: str, user: str,
                            parameters: dict[str, Any] | None = None,
                            seed: int | None = None, sweep: str | None = None,
                            reproduces: str | None = None, cluster: str | None = None,
                            output: str | None = None) -> PipelineRun:
        """Record a pipeline run that is starting (status ``running``)."""
        with self._tx() as db:
            db.execute(
                "INSERT INTO pipeline_runs (id, name, user, status, created, notebook, output,"
                " parameters, seed, sweep, reproduces, cluster) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (run_id, name, user, "running", time.time(), notebook, output,
                 _dumps(parameters or {}), seed, sweep, reproduces, cluster))
        return self.get_pipeline_run(run_id)

    def update_pipeline_run(self, run_id: str, **fields: Any) -> bool:
        """Set the given columns of a run; a final ``status`` also sets ``finished`` (once).
        False when no run has that id."""
        unknown = set(fields) - set(_JSON_COLUMNS) - set(_PLAIN_COLUMNS)
        if unknown:
            raise ValueError(f"unknown pipeline run fields: {sorted(unknown)}")
        status = fields.get("status")
        if status is not None and status not in PIPELINE_STATES:
            raise ValueError(f"pipeline run status must be one of {PIPELINE_STATES}, "
                             f"not {status!r}")
        sets, args = [], []
        for column, value in fields.items():
            if value is None and column != "error":
                continue
            sets.append(f"{column}=?")
            args.append(_dumps(value) if column in _JSON_COLUMNS else value)
        if status in PIPELINE_FINAL_STATES:
            sets.append("finished=COALESCE(finished, ?)")
            args.append(time.time())
        with self._tx() as db:
            if not sets:
                return db.execute("SELECT 1 FROM pipeline_runs WHERE id=?",
                                  (run_id,)).fetchone() is not None
            cur = db.execute(f"UPDATE pipeline_runs SET {', '.join(sets)} WHERE id=?",
                             (*args, run_id))
            return cur.rowcount > 0

    def get_pipeline_run(self, key: str) -> PipelineRun:
        """A pipeline run by id, unique id prefix, or notebook name (the newest run)."""
        conn = self._conn()
        row = conn.execute("SELECT * FROM pipeline_runs WHERE id=?", (key,)).fetchone()
        if row is None and key:
            rows = conn.execute("SELECT * FROM pipeline_runs WHERE substr(id, 1, ?) = ?"
                                " LIMIT 2", (len(key), key)).fetchall()
            if len(rows) > 1:
                raise PipelineRunNotFound(f"{key!r} matches several runs; give more of the id "
                                          "(`lepton runs` lists them)")
            row = rows[0] if rows else None
        if row is None:
            row = conn.execute("SELECT * FROM pipeline_runs WHERE name=? ORDER BY created DESC,"
                               " rowid DESC LIMIT 1", (key,)).fetchone()
        if row is None:
            raise PipelineRunNotFound(f"no pipeline run {key!r}; `lepton runs` lists them")
        return _pipeline_from_row(row)

    def list_pipeline_runs(self, *, status: str | None = None, name: str | None = None,
                           sweep: str | None = None, limit: int = 100) -> list[PipelineRun]:
        """Pipeline runs, newest first, filtered by status, notebook name and sweep."""
        sql, where, args = "SELECT * FROM pipeline_runs", [], []
        for column, value in (("status", status), ("name", name), ("sweep", sweep)):
            if value:
                where.append(f"{column}=?")
                args.append(value)
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created DESC, rowid DESC LIMIT ?"
        args.append(int(limit))
        return [_pipeline_from_row(r) for r in self._conn().execute(sql, args)]


def _pipeline_from_row(row: sqlite3.Row) -> PipelineRun:
    d = dict(row)
    for column in _JSON_COLUMNS:
        empty: Any = [] if column == "cells" else {}
        d[column] = json.loads(d[column]) if d.get(column) else empty
    return PipelineRun(**d)
