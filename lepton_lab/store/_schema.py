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
    # 3: model registry (name:version with lineage), compression reports, endpoints
    """
    CREATE TABLE models (
        name TEXT NOT NULL,
        version INTEGER NOT NULL,
        user TEXT NOT NULL,
        created REAL NOT NULL,
        kind TEXT NOT NULL,            -- trained | compressed | imported
        format TEXT NOT NULL,          -- torch (a pickled nn.Module) | onnx
        path TEXT NOT NULL,            -- the artifact file
        sha256 TEXT NOT NULL,
        size INTEGER NOT NULL,         -- bytes
        params INTEGER,
        parent TEXT,                   -- name:version it was derived from
        run_id TEXT,                   -- training run it came from
        checkpoint TEXT,
        settings TEXT,                 -- JSON: compression settings
        metrics TEXT,                  -- JSON: accuracy, latency, ...
        description TEXT,
        PRIMARY KEY (name, version)
    );
    CREATE TABLE reports (
        id TEXT PRIMARY KEY,
        created REAL NOT NULL,
        user TEXT NOT NULL,
        model TEXT NOT NULL,           -- name:version of the original
        job_id TEXT,
        target TEXT,
        settings TEXT,                 -- JSON
        rows TEXT                      -- JSON list: one dict per variant
    );
    CREATE TABLE endpoints (
        name TEXT PRIMARY KEY,
        model TEXT NOT NULL,           -- name:version served
        user TEXT NOT NULL,
        status TEXT NOT NULL,          -- deploying | running | failed | deleted
        created REAL NOT NULL,
        updated REAL NOT NULL,
        url TEXT,
        token_hash TEXT,               -- sha256 hex (the token itself is never stored)
        token_hint TEXT,               -- first 4 characters, to tell tokens apart
        config TEXT,                   -- JSON: replicas, batching, autoscaling, ...
        error TEXT
    );
    """,
    # 4: pipeline runs (papermill executions of a notebook, with their environment)
    """
    CREATE TABLE pipeline_runs (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,            -- the notebook's stem
        user TEXT NOT NULL,
        status TEXT NOT NULL,          -- queued | running | succeeded | failed | cancelled | lost
        created REAL NOT NULL,
        finished REAL,
        notebook TEXT NOT NULL,        -- input notebook path
        output TEXT,                   -- executed notebook path
        parameters TEXT,               -- JSON dict
        env TEXT,                      -- JSON dict: python, packages, git, gpu, ray
        inputs TEXT,                   -- JSON dict: path -> sha256 (the notebook included)
        seed INTEGER,
        cells TEXT,                    -- JSON list: index, status, duration, ename
        metrics TEXT,                  -- JSON dict: name -> last value
        series TEXT,                   -- JSON dict: name -> list of [step, value]
        tables TEXT,                   -- JSON dict: name -> list of row dicts
        figures TEXT,                  -- JSON dict: name -> image path
        artifacts TEXT,                -- JSON dict: name -> reference (path or model ref)
        error TEXT,
        failed_cell INTEGER,
        sweep TEXT,                    -- sweep id, when part of one
        reproduces TEXT,               -- run id this run re-executes
        cluster TEXT
    );
    CREATE INDEX pipeline_runs_created ON pipeline_runs(created);
    CREATE INDEX pipeline_runs_sweep ON pipeline_runs(sweep);
    """,
    # 5: the latest progress of a running job (sidebar and dashboards show it)
    """
    ALTER TABLE jobs ADD COLUMN progress TEXT;     -- JSON: n, total, desc, rate
    """,
]
