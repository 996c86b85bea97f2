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
    # 2: warnings on jobs; training runs (one per train/tune call inside a job)
    """
    ALTER TABLE jobs ADD COLUMN warnings TEXT;        -- JSON list of strings
    CREATE TABLE runs (
        id TEXT PRIMARY KEY,
        job_id TEXT,
        kind TEXT NOT NULL,            -- train | tune
        name TEXT,
        user TEXT NOT NULL,
        status TEXT NOT NULL,          -- running | succeeded | failed | cancelled
        created REAL NOT NULL,
        finished REAL,
        config TEXT,                   -- JSON dict: flags, workers, ...
        history TEXT,                  -- JSON list of dicts, one per reported point, bounded
        metrics TEXT,                  -- JSON dict: final metrics
        best_checkpoint TEXT,
        last_checkpoint TEXT,
        storage TEXT,
        error TEXT
    );
    CREATE INDEX runs_job ON runs(job_id);
    CREATE INDEX runs_created ON runs(created);
    """,
]
