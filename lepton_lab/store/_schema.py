"""Schema of the state store, as an ordered list of migrations (PRAGMA user_version)."""

MIGRATIONS: list[str] = [
    # 1: jobs and the append-only audit log
    """
    CREATE TABLE jobs (
        id TEXT PRIMARY KEY,
        name TEXT,
        kind TEXT NOT NULL,            -- cell | group | detached
        status TEXT NOT NULL,          -- submitted | running | succeeded | failed | cancelled | timeout | lost
        user TEXT NOT NULL,
        created REAL NOT NULL,
        started REAL,
        finished REAL,
        cluster TEXT,
        resources TEXT,                -- JSON
        source TEXT,
        source_hash TEXT,
        origin TEXT,                   -- notebook path or kernel id the job came from
        error TEXT,
        log TEXT                       -- tail of the output, bounded
    );
    CREATE INDEX jobs_created ON jobs(created);
    CREATE INDEX jobs_status ON jobs(status);
    CREATE TABLE audit (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        ts REAL NOT NULL,
        user TEXT NOT NULL,
        action TEXT NOT NULL,          -- submit | outcome | cancel | connect | ...
        job_id TEXT,
        source_hash TEXT,
        resources TEXT,                -- JSON, env values never stored (keys only)
        cluster TEXT,
        outcome TEXT,
        detail TEXT
    );
    CREATE INDEX audit_job ON audit(job_id);
    """,
]
