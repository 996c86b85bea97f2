"""The shared state store: jobs, training runs and the audit log (later: models, endpoints).

One SQLite file under the Lepton home directory, opened in WAL mode with a busy timeout so
several kernels, the command-line tool and the Jupyter server can write at once.
"""

from ._store import JobRecord, RunRecord, Store, get_store, reset_store

__all__ = ["JobRecord", "RunRecord", "Store", "get_store", "reset_store"]
