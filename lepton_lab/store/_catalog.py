"""The model registry, compression reports and endpoints of the state store.

A model is ``name:version`` (versions count up from 1 per name) with its lineage: the
training run and checkpoint it came from, the model it was derived from and the compression
settings, and the artifact's SHA-256. Endpoints are keyed by name; only a hash of their token
is kept.
"""

from __future__ import annotations

import json
import re
import sqlite3
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from ..errors import LeptonUsageError
from ._json import current_user
from ._json import dumps as _dumps

MODEL_KINDS = ("trained", "compressed", "imported")
MODEL_FORMATS = ("torch", "onnx")
ENDPOINT_STATES = ("deploying", "running", "failed", "deleted")
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")


class ModelNotFound(LeptonUsageError):
    """A ``name[:version]`` that the registry does not hold."""


class EndpointNotFound(LeptonUsageError):
    """An endpoint name that is not deployed."""


def check_name(name: str, what: str = "model") -> str:
    """``name`` if it is a valid model/endpoint name, else a one-line usage error."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise LeptonUsageError(
            f"{what} name {name!r} is not valid: use a letter, then letters, digits, '_', "
            "'.' or '-' (at most 64 characters)")
    return name


def split_ref(ref: str) -> tuple[str, int | None]:
    """``"digits:3"`` -> ``("digits", 3)``; ``"digits"`` -> ``("digits", None)`` (latest)."""
    name, sep, version = str(ref).partition(":")
    check_name(name)
    if not sep:
        return name, None
    if not version.isdigit() or int(version) < 1:
        raise LeptonUsageError(f"model version in {ref!r} must be a positive integer, "
                               "e.g. digits:2")
    return name, int(version)


@dataclass
class ModelRecord:
    name: str
    version: int
    user: str
    created: float
    kind: str
    format: str
    path: str
    sha256: str
    size: int
    params: int | None = None
    parent: str | None = None
    run_id: str | None = None
    checkpoint: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    description: str | None = None

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__, ref=self.ref)


@dataclass
class ReportRecord:
    id: str
    created: float
    user: str
    model: str
    job_id: str | None
    target: str | None
    settings: dict[str, Any] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class EndpointRecord:
    name: str
    model: str
    user: str
    status: str
    created: float
    updated: float
    url: str | None = None
    token_hash: str | None = None
    token_hint: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d.pop("token_hash")      # never leaves the store, not even hashed
        return d


class CatalogMixin:
    """Registry, reports and endpoints; mixed into :class:`~lepton_lab.store.Store`."""

    # -- models -----------------------------------------------------------------------------
    def register_model(self, name: str, *, kind: str, format: str, path: str, sha256: str,
                       size: int, params: int | None = None, parent: str | None = None,
                       run_id: str | None = None, checkpoint: str | None = None,
                       settings: dict[str, Any] | None = None,
                       metrics: dict[str, Any] | None = None,
                       description: str | None = None) -> ModelRecord:
        """Add the next version of ``name`` (1 for a new name) and return it."""
        check_name(name)
        if kind not in MODEL_KINDS:
            raise ValueError(f"model kind must be one of {MODEL_KINDS}, not {kind!r}")
        if format not in MODEL_FORMATS:
            raise ValueError(f"model format must be one of {MODEL_FORMATS}, not {format!r}")
        with self._tx() as db:
            row = db.execute("SELECT MAX(version) FROM models WHERE name=?", (name,)).fetchone()
            version = int(row[0] or 0) + 1
            db.execute(
                "INSERT INTO models (name, version, user, created, kind, format, path, sha256,"
                " size, params, parent, run_id, checkpoint, settings, metrics, description)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (name, version, current_user(), time.time(), kind, format, str(path), sha256,
                 int(size), params, parent, run_id, checkpoint, _dumps(settings or {}),
                 _dumps(metrics or {}), description))
        return self.get_model(f"{name}:{version}")

    def get_model(self, ref: str) -> ModelRecord:
        """``name:version``, or ``name`` for its latest version."""
        name, version = split_ref(ref)
        conn = self._conn()
        if version is None:
            row = conn.execute("SELECT * FROM models WHERE name=? ORDER BY version DESC"
                               " LIMIT 1", (name,)).fetchone()
        else:
            row = conn.execute("SELECT * FROM models WHERE name=? AND version=?",
                               (name, version)).fetchone()
        if row is None:
            have = [r[0] for r in conn.execute(
                "SELECT version FROM models WHERE name=? ORDER BY version", (name,))]
            if have:
                raise ModelNotFound(f"model {name!r} has no version {version}; it has "
                                    f"{', '.join(f'{name}:{v}' for v in have)}")
            raise ModelNotFound(f"no model {name!r} in the registry; `%lepton models` lists "
                                "them (compress or register one first)")
        return _model_from_row(row)

    def list_models(self, name: str | None = None, limit: int = 200) -> list[ModelRecord]:
        """Registered models, newest first (all versions, or those of ``name``)."""
        sql, args = "SELECT * FROM models", []
        if name:
            sql += " WHERE name=?"
            args.append(name)
        sql += " ORDER BY created DESC, version DESC LIMIT ?"
        args.append(limit)
        return [_model_from_row(r) for r in self._conn().execute(sql, args)]

    def update_model_metrics(self, ref: str, metrics: dict[str, Any]) -> None:
        """Merge ``metrics`` into a model's recorded metrics."""
        rec = self.get_model(ref)
        with self._tx() as db:
            db.execute("UPDATE models SET metrics=? WHERE name=? AND version=?",
                       (_dumps(dict(rec.metrics, **metrics)), rec.name, rec.version))

    # -- compression reports ----------------------------------------------------------------
    def add_report(self, model: str, rows: list[dict[str, Any]], *,
                   settings: dict[str, Any] | None = None, target: str | None = None,
                   job_id: str | None = None) -> ReportRecord:
        report_id = uuid.uuid4().hex[:12]
        with self._tx() as db:
            db.execute("INSERT INTO reports (id, created, user, model, job_id, target, settings,"
                       " rows) VALUES (?,?,?,?,?,?,?,?)",
                       (report_id, time.time(), current_user(), model, job_id, target,
                        _dumps(settings or {}), _dumps(rows)))
        return self.get_report(report_id)

    def get_report(self, report_id: str) -> ReportRecord:
        row = self._conn().execute("SELECT * FROM reports WHERE id=?", (report_id,)).fetchone()
        if row is None:
            raise LeptonUsageError(f"no compression report {report_id!r}")
        return _report_from_row(row)

    def list_reports(self, model: str | None = None, limit: int = 50) -> list[ReportRecord]:
        sql, args = "SELECT * FROM reports", []
        if model:
            sql += " WHERE model=? OR model LIKE ?"
            args += [model, f"{model}:%"]
        sql += " ORDER BY created DESC LIMIT ?"
        args.append(limit)
        return [_report_from_row(r) for r in self._conn().execute(sql, args)]

    # -- endpoints --------------------------------------------------------------------------
    def put_endpoint(self, name: str, *, model: str, status: str, url: str | None = None,
                     token_hash: str | None = None, token_hint: str | None = None,
                     config: dict[str, Any] | None = None,
                     error: str | None = None) -> EndpointRecord:
        """Create or replace the endpoint ``name`` (a redeploy keeps its creation time)."""
        check_name(name, "endpoint")
        if status not in ENDPOINT_STATES:
            raise ValueError(f"endpoint status must be one of {ENDPOINT_STATES}")
        now = time.time()
        with self._tx() as db:
            old = db.execute("SELECT created FROM endpoints WHERE name=?", (name,)).fetchone()
            db.execute(
                "INSERT OR REPLACE INTO endpoints (name, model, user, status, created, updated,"
                " url, token_hash, token_hint, config, error) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (name, model, current_user(), status, old[0] if old else now, now, url,
                 token_hash, token_hint, _dumps(config or {}), error))
        return self.get_endpoint(name)

    def set_endpoint_status(self, name: str, status: str, *, error: str | None = None,
                            url: str | None = None) -> None:
        if status not in ENDPOINT_STATES:
            raise ValueError(f"endpoint status must be one of {ENDPOINT_STATES}")
        with self._tx() as db:
            db.execute("UPDATE endpoints SET status=?, updated=?, error=COALESCE(?, error),"
                       " url=COALESCE(?, url) WHERE name=?",
                       (status, time.time(), error, url, name))

    def get_endpoint(self, name: str) -> EndpointRecord:
        row = self._conn().execute("SELECT * FROM endpoints WHERE name=?", (name,)).fetchone()
        if row is None:
            raise EndpointNotFound(f"no endpoint {name!r}; `%lepton endpoints` lists them")
        return _endpoint_from_row(row)

    def list_endpoints(self, include_deleted: bool = False) -> list[EndpointRecord]:
        sql = "SELECT * FROM endpoints"
        if not include_deleted:
            sql += " WHERE status != 'deleted'"
        sql += " ORDER BY created DESC"
        return [_endpoint_from_row(r) for r in self._conn().execute(sql)]


def _model_from_row(row: sqlite3.Row) -> ModelRecord:
    d = dict(row)
    d["settings"] = json.loads(d["settings"]) if d["settings"] else {}
    d["metrics"] = json.loads(d["metrics"]) if d["metrics"] else {}
    return ModelRecord(**d)


def _report_from_row(row: sqlite3.Row) -> ReportRecord:
    d = dict(row)
    d["settings"] = json.loads(d["settings"]) if d["settings"] else {}
    d["rows"] = json.loads(d["rows"]) if d["rows"] else []
    return ReportRecord(**d)


def _endpoint_from_row(row: sqlite3.Row) -> EndpointRecord:
    d = dict(row)
    d["config"] = json.loads(d["config"]) if d["config"] else {}
    return EndpointRecord(**d)
