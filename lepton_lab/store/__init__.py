"""The shared state store: jobs, training runs and the audit log, the model registry,
compression reports and endpoints.

One SQLite file under the Lepton home directory, opened in WAL mode with a busy timeout so
several kernels, the command-line tool and the Jupyter server can write at once.
"""

from ._catalog import (
                       EndpointNotFound,
                       EndpointRecord,
                       ModelNotFound,
                       ModelRecord,
                       ReportRecord,
                       check_name,
                       split_ref,
)
from ._pipelines import PipelineRun, PipelineRunNotFound
from ._store import JobRecord, RunRecord, Store, get_store, reset_store

__all__ = ["EndpointNotFound", "EndpointRecord", "JobRecord", "ModelNotFound", "ModelRecord",
           "PipelineRun", "PipelineRunNotFound", "ReportRecord", "RunRecord", "Store",
           "check_name", "get_store", "reset_store", "split_ref"]
