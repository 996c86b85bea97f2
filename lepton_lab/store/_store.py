"""SQLite-backed store shared by every kernel, the CLI and the server extension."""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from ..config import get_config
from ..errors import JobNotFound, StoreUnavailable
from ._catalog import CatalogMixin
from ._json import current_user
from ._json import dumps as _dumps
from ._pipelines import PipelinesMixin
from ._schema import MIGRATIONS

#: Largest log tail kept per job in the store (characters).
LOG_LIMIT = 256 * 1024
FINAL_STATES = ("succeeded", "failed", "cancelled", "timeout", "lost")
#: Most warnings kept per job (the newest win).
WARNINGS_LIMIT = 100
#: Most history points kept per training run (the newest win).
HISTORY_LIMIT = 20_000
RUN_KINDS = ("train", "tune")
RUN_STATES = ("running", "succeeded", "failed", "cancelled")
RUN_FINAL_STATES = ("succeeded", "failed", "cancelled")


@dataclass
class JobRecord:
    id: str
    name: str | None
    kind: str
    status: str
    user: str
    created: float
    started: float | None = None
    finished: float | None = None
    cluster: str | None = None
    resources: dict[str, Any] = field(default_factory=dict)
    source: str | None = None
    source_hash: str | None = None
    origin: str | None = None
    error: str | None = None
    log: str | None = None
    warnings: list[str] = field(default_factory=list)
    progress: dict[str, Any] | None = None

    @property
    def elapsed(self) -> float | None:
        if self.started is None:
            return None
        return (self.finished or time.time()) - self.started

    @property
    def done(self) -> bool:
        return self.status in FINAL_STATES

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["elapsed"] = self.elapsed
        return d


@dataclass
class RunRecord:
    """One training run (a train or tune call inside a job), JSON columns decoded."""

    id: str
    job_id: str | None
    kind: str
    name: str | None
    user: str
    status: str
    created: float
    finished: float | None = None
    config: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    best_checkpoint: str | None = None
    last_checkpoint: str | None = None
    storage: str | None = None
    error: str | None = None

    @property
    def done(self) -> bool:
        return self.status in RUN_FINAL_STATES

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class Store(CatalogMixin, PipelinesMixin):
    """Jobs, runs, models, reports, endpoints, pipeline runs and the audit log in one SQLite
    file, safe for concurrent writers."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        self._local = threading.local()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _unavailable(self.path, exc) from None
        with self._tx() as db:
            self._migrate(db, self.path)

    # -- plumbing ---------------------------------------------------------------------------
    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            try:
                conn = self._open()
            except (sqlite3.Error, OSError) as exc:
                raise _unavailable(self.path, exc) from None
            self._local.conn = conn
        return conn

    def _open(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA busy_timeout=30000")
        # Switching a new file to WAL needs a moment of exclusive access and SQLite does
        # not wait for it on busy: serialise that step between processes with a file lock.
        with open(str(self.path) + ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            deadline = time.monotonic() + 30.0
            while True:  # a writer that is not a Store (sqlite3 CLI...) may hold the file
                try:
                    conn.execute("PRAGMA journal_mode=WAL")
                    break
                except sqlite3.OperationalError as exc:
                    if "locked" not in str(exc) or time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA busy_timeout=30000")
        return conn

    class _Tx:
        """One write transaction (BEGIN IMMEDIATE ... COMMIT). A failure of SQLite itself (a
        read-only or full disk, a damaged file) leaves as :class:`StoreUnavailable` naming
        the file, after the transaction was rolled back: nothing half-written stays."""

        def __init__(self, conn: sqlite3.Connection, path: Path):
            self.conn, self.path = conn, path

        def __enter__(self) -> sqlite3.Connection:
            try:
                self.conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                raise _unavailable(self.path, exc) from None
            return self.conn

        def __exit__(self, exc_type, exc, tb) -> None:
            if exc_type is None:
                try:
                    self.conn.execute("COMMIT")
                    return
                except sqlite3.Error as commit_exc:
                    exc = commit_exc
            if self.conn.in_transaction:
                try:
                    self.conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
            if isinstance(exc, (sqlite3.OperationalError, sqlite3.DatabaseError)) \
                    and not isinstance(exc, sqlite3.IntegrityError):
                raise _unavailable(self.path, exc) from None

    def _tx(self) -> "Store._Tx":
        return Store._Tx(self._conn(), self.path)

    @staticmethod
    def _migrate(db: sqlite3.Connection, path: Path) -> None:
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > len(MIGRATIONS):
            raise StoreUnavailable(
                f"the store {path} was written by a newer Lepton Lab (schema {version}; this "
                f"release knows up to {len(MIGRATIONS)}); upgrade lepton-lab, or set "
                "LEPTON_HOME to another directory (the store was left as it is)")
        for i, script in enumerate(MIGRATIONS[version:], start=version + 1):
            for statement in script.split(";"):
                if statement.strip():
                    db.execute(statement)
            db.execute(f"PRAGMA user_version={i}")

    # -- jobs -------------------------------------------------------------------------------
    def create_job(
        self,
        job_id: str,
        *,
        kind: str,
        name: str | None,
        cluster: str | None,
        resources: dict[str, Any],
        source: str,
        source_hash: str,
        origin: str | None = None,
        fetch: bool = True,
    ) -> JobRecord | None:
        """Record a submission and append its audit entry, in one transaction; return the new
        record (``fetch=False``: nothing, and no read after the write)."""
        now = time.time()
        user = current_user()
        res = json.dumps(resources, sort_keys=True)
        with self._tx() as db:
            db.execute(
                "INSERT INTO jobs (id, name, kind, status, user, created, started, cluster,"
                " resources, source, source_hash, origin) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (job_id, name, kind, "running", user, now, now, cluster, res, source,
                 source_hash, origin),
            )
            db.execute(
                "INSERT INTO audit (ts, user, action, job_id, source_hash, resources, cluster,"
                " outcome) VALUES (?,?,?,?,?,?,?,?)",
                (now, user, "submit", job_id, source_hash, res, cluster, "submitted"),
            )
        return self.get_job(job_id) if fetch else None

    def finish_job(
        self, job_id: str, status: str, *, error: str | None = None, log: str | None = None
    ) -> None:
        """Set a job's final state (once) and append the outcome to the audit log."""
        now = time.time()
        if log is not None and len(log) > LOG_LIMIT:
            log = log[-LOG_LIMIT:]
        with self._tx() as db:
            row = db.execute("SELECT status, source_hash, cluster FROM jobs WHERE id=?",
                             (job_id,)).fetchone()
            if row is None or row["status"] in FINAL_STATES:
                return
            db.execute(
                "UPDATE jobs SET status=?, finished=?, error=?, log=COALESCE(?, log) WHERE id=?",
                (status, now, error, log, job_id),
            )
            db.execute(
                "INSERT INTO audit (ts, user, action, job_id, source_hash, cluster, outcome,"
                " detail) VALUES (?,?,?,?,?,?,?,?)",
                (now, current_user(), "outcome", job_id, row["source_hash"], row["cluster"],
                 status, (error or "")[:500] or None),
            )

    def set_job_log(self, job_id: str, log: str) -> None:
        with self._tx() as db:
            db.execute("UPDATE jobs SET log=? WHERE id=?", (log[-LOG_LIMIT:], job_id))

    def set_job_progress(self, job_id: str, progress: dict[str, Any]) -> None:
        """The latest progress of a running job (``n``, ``total``, ``desc``, ``rate``)."""
        with self._tx() as db:
            db.execute("UPDATE jobs SET progress=? WHERE id=?", (_dumps(progress), job_id))

    def add_job_warning(self, job_id: str, text: str) -> None:
        """Append a warning to a job (identical text is kept once; the newest 100 are kept)."""
        with self._tx() as db:
            row = db.execute("SELECT warnings FROM jobs WHERE id=?", (job_id,)).fetchone()
            if row is None:
                return
            warnings = json.loads(row["warnings"]) if row["warnings"] else []
            if text in warnings:
                return
            warnings = (warnings + [text])[-WARNINGS_LIMIT:]
            db.execute("UPDATE jobs SET warnings=? WHERE id=?", (json.dumps(warnings), job_id))

    def get_job(self, job_id: str) -> JobRecord:
        row = self._conn().execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone()
        if row is None:
            raise JobNotFound(f"no job {job_id!r}; `%lepton jobs` lists the recorded jobs")
        return _job_from_row(row)

    def find_job(self, ref: str) -> JobRecord:
        """A job by id, unique id prefix, or name (the newest job of that name)."""
        conn = self._conn()
        row = conn.execute("SELECT * FROM jobs WHERE id=?", (ref,)).fetchone()
        if row is None:
            rows = conn.execute("SELECT * FROM jobs WHERE substr(id, 1, ?) = ? LIMIT 2",
                                (len(ref), ref)).fetchall() if ref else []
            if len(rows) == 1:
                row = rows[0]
        if row is None:
            row = conn.execute("SELECT * FROM jobs WHERE name=? ORDER BY created DESC LIMIT 1",
                               (ref,)).fetchone()
        if row is None:
            raise JobNotFound(f"no job with id or name {ref!r}; `%lepton jobs` lists them")
        return _job_from_row(row)

    def list_jobs(self, *, limit: int = 50, status: str | None = None) -> list[JobRecord]:
        sql, args = "SELECT * FROM jobs", []
        if status:
            sql += " WHERE status=?"
            args.append(status)
        sql += " ORDER BY created DESC LIMIT ?"
        args.append(limit)
        return [_job_from_row(r) for r in self._conn().execute(sql, args)]

    # -- training runs ----------------------------------------------------------------------
    def create_run(
        self,
        run_id: str,
        *,
        job_id: str | None,
        kind: str,
        name: str | None = None,
        config: dict[str, Any] | None = None,
        storage: str | None = None,
    ) -> RunRecord:
        """Record a training run that has just started (status ``running``)."""
        if kind not in RUN_KINDS:
            raise ValueError(f"run kind must be one of {RUN_KINDS}, not {kind!r}")
        with self._tx() as db:
            db.execute(
                "INSERT INTO runs (id, job_id, kind, name, user, status, created, config,"
                " history, metrics, storage) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (run_id, job_id, kind, name, current_user(), "running", time.time(),
                 _dumps(config or {}), "[]", "{}", storage),
            )
        return self.get_run(run_id)

    def update_run(
        self,
        run_id: str,
        *,
        status: str | None = None,
        history: list[dict[str, Any]] | None = None,
        metrics: dict[str, Any] | None = None,
        best_checkpoint: str | None = None,
        last_checkpoint: str | None = None,
        error: str | None = None,
    ) -> bool:
        """Change the given fields of a run; False when no run has that id.

        ``history`` replaces the stored list (bounded to the newest ``HISTORY_LIMIT``
        points); a final ``status`` sets ``finished`` (the first time only).
        """
        if status is not None and status not in RUN_STATES:
            raise ValueError(f"run status must be one of {RUN_STATES}, not {status!r}")
        sets: list[str] = []
        args: list[Any] = []
        if status is not None:
            sets.append("status=?")
            args.append(status)
            if status in RUN_FINAL_STATES:
                sets.append("finished=COALESCE(finished, ?)")
                args.append(time.time())
        if history is not None:
            sets.append("history=?")
            args.append(_dumps(list(history)[-HISTORY_LIMIT:]))
        for column, value in (("metrics", metrics), ("best_checkpoint", best_checkpoint),
                              ("last_checkpoint", last_checkpoint), ("error", error)):
            if value is not None:
                sets.append(f"{column}=?")
                args.append(_dumps(value) if column == "metrics" else value)
        with self._tx() as db:
            if not sets:
                return db.execute("SELECT 1 FROM runs WHERE id=?", (run_id,)).fetchone() \
                    is not None
            cur = db.execute(f"UPDATE runs SET {', '.join(sets)} WHERE id=?", (*args, run_id))
            return cur.rowcount > 0

    def get_run(self, key: str) -> RunRecord:
        """A run by id, unique id prefix, or name (the newest run of that name)."""
        conn = self._conn()
        row = conn.execute("SELECT * FROM runs WHERE id=?", (key,)).fetchone()
        ambiguous = False
        if row is None and key:
            rows = conn.execute("SELECT * FROM runs WHERE substr(id, 1, ?) = ? LIMIT 2",
                                (len(key), key)).fetchall()
            if len(rows) == 1:
                row = rows[0]
            ambiguous = len(rows) > 1
        if row is None:
            row = conn.execute("SELECT * FROM runs WHERE name=? ORDER BY created DESC,"
                               " rowid DESC LIMIT 1", (key,)).fetchone()
        if row is None and ambiguous:
            raise JobNotFound(f"{key!r} matches several training runs; give more of the id "
                              "(`%lepton runs` lists them)")
        if row is None:
            raise JobNotFound(f"no training run {key!r}; `%lepton runs` lists them")
        return _run_from_row(row)

    def list_runs(self, kind: str | None = None, limit: int = 50) -> list[RunRecord]:
        """Training runs, newest first, optionally only those of one kind."""
        sql, args = "SELECT * FROM runs", []
        if kind:
            sql += " WHERE kind=?"
            args.append(kind)
        sql += " ORDER BY created DESC, rowid DESC LIMIT ?"
        args.append(limit)
        return [_run_from_row(r) for r in self._conn().execute(sql, args)]

    # -- audit ------------------------------------------------------------------------------
    def audit(self, action: str, *, job_id: str | None = None, cluster: str | None = None,
              outcome: str | None = None, detail: str | None = None) -> None:
        """Append one entry to the audit log (never updates or deletes entries)."""
        with self._tx() as db:
            db.execute(
                "INSERT INTO audit (ts, user, action, job_id, cluster, outcome, detail)"
                " VALUES (?,?,?,?,?,?,?)",
                (time.time(), current_user(), action, job_id, cluster, outcome, detail),
            )

    def audit_entries(self, *, job_id: str | None = None, limit: int = 200) -> list[dict]:
        sql, args = "SELECT * FROM audit", []
        if job_id:
            sql += " WHERE job_id=?"
            args.append(job_id)
        sql += " ORDER BY seq DESC LIMIT ?"
        args.append(limit)
        out = []
        for r in self._conn().execute(sql, args):
            d = dict(r)
            d["resources"] = json.loads(d["resources"]) if d["resources"] else None
            out.append(d)
        return out

    def iter_audit(self) -> Iterator[dict]:
        for r in self._conn().execute("SELECT * FROM audit ORDER BY seq"):
            yield dict(r)


def _unavailable(path: Path, exc: BaseException) -> StoreUnavailable:
    """One line that names the store's file, the reason, and what to do."""
    text = (exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)) \
        or type(exc).__name__
    low = text.lower()
    if "full" in low or "no space" in low:
        hint = "free space there, or set LEPTON_HOME to another directory"
    elif "locked" in low:
        hint = "another process held it for over 30 s; try again, or look for a stuck process"
    elif "readonly" in low or "read-only" in low or "permission" in low \
            or "unable to open" in low:
        hint = "make it writable, or set LEPTON_HOME to a writable directory"
    else:
        hint = "set LEPTON_HOME to another directory (and keep this file to look into)"
    return StoreUnavailable(f"the Lepton store {path} cannot be written ({text}): {hint}")


def _job_from_row(row: sqlite3.Row) -> JobRecord:
    d = dict(row)
    d["resources"] = json.loads(d["resources"]) if d["resources"] else {}
    d["warnings"] = json.loads(d["warnings"]) if d.get("warnings") else []
    d["progress"] = json.loads(d["progress"]) if d.get("progress") else None
    return JobRecord(**d)


def _run_from_row(row: sqlite3.Row) -> RunRecord:
    d = dict(row)
    d["config"] = json.loads(d["config"]) if d["config"] else {}
    d["history"] = json.loads(d["history"]) if d["history"] else []
    d["metrics"] = json.loads(d["metrics"]) if d["metrics"] else {}
    return RunRecord(**d)


_STORE: Store | None = None
_STORE_HOME: str | None = None
_STORE_LOCK = threading.Lock()


def get_store() -> Store:
    """The store under the configured Lepton home, opened on first use."""
    global _STORE, _STORE_HOME
    with _STORE_LOCK:
        home = get_config().home      # compared as set: home_path makes the folder (a syscall)
        if _STORE is None or _STORE_HOME != home:
            _STORE = Store(get_config().home_path / "state.sqlite")
            _STORE_HOME = home
        return _STORE


def reset_store() -> None:
    global _STORE
    with _STORE_LOCK:
        _STORE = None
