"""What the sidebar asks for, as plain calls on Lepton's core (no tornado here).

The Jupyter server process becomes a Ray driver only for a cluster that already runs: a
read never starts the embedded cluster (only the user's Connect does), and a cluster that
cannot be reached reads as ``{"state": "disconnected", "reason": ...}``.
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterable

from .. import cluster as lc
from ..config import get_config
from ..errors import ClusterUnavailable, LeptonError, MissingDependency
from ..store import get_store

#: Characters of a job's recorded log sent with the job list (the detail sends more).
LIST_LOG_CHARS = 2_000
DETAIL_LOG_CHARS = 20_000
#: Seconds between GPU probes of the nodes (memory and utilisation) while the sidebar polls.
GPU_PROBE_EVERY_S = 15.0
#: Seconds a TCP probe of the cluster may take before it reads as disconnected.
PROBE_TIMEOUT_S = 1.5
#: Heavy per-run fields the sidebar does not show.
_PIPELINE_HEAVY = ("series", "tables", "figures", "cells", "env", "inputs", "artifacts")


class SidebarCore:
    """One per Jupyter server: remembers whether the user disconnected from the sidebar."""

    def __init__(self) -> None:
        self.executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="lepton-api")
        self.user_disconnected = False
        self._probed = 0.0
        self._lock = threading.Lock()

    # -- the connection ---------------------------------------------------------------------
    def _attached(self) -> lc.Connection | None:
        """This process's live connection, if any (never connects). A connection whose head
        stopped answering is dropped here, so the sidebar reads "disconnected" (and no poll
        starts a fresh embedded cluster in its place)."""
        conn = lc.current()
        if conn is None:
            return None
        import ray

        if not ray.is_initialized():
            return None
        if not lc.head_alive(conn):
            lc.drop_dead_connection(conn)
            return None
        return conn

    def _attach(self) -> tuple[lc.Connection | None, str]:
        """The live connection, or one to a cluster that already runs; never starts one.
        Returns (connection or None, why not)."""
        conn = self._attached()
        if conn is not None:
            return conn, ""
        if self.user_disconnected:
            return None, "disconnected from the sidebar; Connect to use the cluster again"
        address = get_config().address
        if address:
            if not lc._reachable(address, PROBE_TIMEOUT_S):
                return None, f"the Ray cluster at {address} does not answer"
            return lc.connect(address), ""
        state = lc.embedded_state()
        if state is None or not lc._reachable(state["address"], PROBE_TIMEOUT_S):
            starting = lc.embedded_starting()
            if starting:
                from ..remote._status import starting_text

                return None, starting_text(starting)
            return None, ("no cluster is running: the first %%lepton cell starts the embedded "
                          "local one, or Connect starts it now")
        return lc.connect(), ""          # finds the running embedded cluster; starts nothing

    def _disconnected(self, reason: str) -> dict[str, Any]:
        return {"state": "disconnected", "reason": reason,
                "address": get_config().address or None}

    def cluster(self) -> dict[str, Any]:
        """The cluster's status, or why there is none."""
        from ..remote._status import cluster_status

        with self._lock:
            try:
                conn, why = self._attach()
            except LeptonError as exc:
                return self._disconnected(str(exc))
            if conn is None:
                return self._disconnected(why)
            try:
                self._refresh_gpu_facts(conn)
                status = cluster_status(probe=True)
            except ClusterUnavailable as exc:
                return self._disconnected(str(exc))
        return {"state": "connected", **status}

    def _refresh_gpu_facts(self, conn: lc.Connection) -> None:
        """GPU memory and utilisation change: re-probe the nodes now and then (only where the
        cluster has GPUs; the probe is one tiny task per node)."""
        import ray

        if time.monotonic() - self._probed < GPU_PROBE_EVERY_S:
            return
        self._probed = time.monotonic()
        if ray.cluster_resources().get("GPU", 0) > 0:
            try:
                conn.node_versions = lc.probe_nodes(timeout=10)
            except LeptonError:
                pass                      # the last facts stay; status still shows Ray's view

    def connect(self, address: str | None) -> dict[str, Any]:
        """The user's Connect: the given address, else the configured one, else the embedded
        cluster (started if needed)."""
        with self._lock:
            lc.connect((address or "").strip() or None)
            self.user_disconnected = False
        return self.cluster()

    def disconnect(self) -> dict[str, Any]:
        """Drop this server's connection; the cluster keeps running."""
        with self._lock:
            lc.disconnect()
            self.user_disconnected = True
        return self._disconnected("disconnected from the sidebar; Connect to use the cluster "
                                  "again")

    def _require(self, what: str) -> None:
        conn, why = self._attach()
        if conn is None:
            raise ClusterUnavailable(f"cannot {what}: {why}")

    # -- jobs -------------------------------------------------------------------------------
    def jobs(self, limit: int = 50, status: str | None = None) -> dict[str, Any]:
        """Recent jobs from every kernel and the CLI (detached ones refreshed when connected)."""
        from ..remote._jobs import refresh

        connected = self._attached() is not None
        out = []
        for job in get_store().list_jobs(limit=limit, status=status):
            if connected and job.kind == "detached" and job.status == "running":
                try:
                    job = refresh(job)
                except Exception:  # noqa: BLE001 - the record as it is beats no list
                    pass
            out.append(job_view(job, job.log or "", LIST_LOG_CHARS))
        return {"jobs": out, "connected": connected}

    def job(self, ref: str) -> dict[str, Any]:
        """One job with its log tail (live from its keeper while it runs, when connected)."""
        from ..remote._jobs import logs

        if self._attached() is not None:
            job, text = logs(ref)
        else:
            job = get_store().find_job(ref)
            text = job.log or ""
        return job_view(job, text, DETAIL_LOG_CHARS)

    def cancel(self, ref: str) -> dict[str, Any]:
        """``%lepton cancel``: the same core call, so it is audited the same way."""
        from ..remote._jobs import cancel

        get_store().find_job(ref)        # an unknown job is a 404 before any connection
        self._require("cancel a job")
        job = cancel(ref)
        return job_view(job, job.log or "", LIST_LOG_CHARS)

    # -- runs -------------------------------------------------------------------------------
    def runs(self, limit: int = 50) -> dict[str, Any]:
        store = get_store()
        list_pipeline = getattr(store, "list_pipeline_runs", None)
        pipeline = []
        if list_pipeline is not None:
            for run in list_pipeline(limit=limit):
                d = run.to_dict()
                for key in _PIPELINE_HEAVY:
                    d.pop(key, None)
                pipeline.append(d)
        training = []
        for run in store.list_runs(limit=limit):
            d = run.to_dict()
            history = d.pop("history", None) or []
            d["last"] = history[-1] if history else None
            training.append(d)
        return {"pipeline": pipeline, "training": training,
                "pipeline_available": list_pipeline is not None}

    def rerun(self, key: str) -> dict[str, Any]:
        try:
            from ..pipeline import rerun
        except ImportError:
            raise MissingDependency("pipeline runs are not available in this version of "
                                    "lepton_lab") from None
        return {"id": rerun(key)}

    # -- models and endpoints ---------------------------------------------------------------
    def models(self) -> dict[str, Any]:
        store = get_store()
        models = [m.to_dict() for m in store.list_models()]
        reports = [r.to_dict() for r in store.list_reports(limit=20)]
        if self._attached() is not None:
            from ..serve import list_endpoints

            endpoints = list_endpoints()
        else:
            endpoints = [dict(r.to_dict(), live="NO CLUSTER") for r in store.list_endpoints()]
        for e in endpoints:
            e.pop("token_hash", None)     # never leaves the server, not even hashed
        return {"models": models, "reports": reports, "endpoints": endpoints}

    def undeploy(self, name: str) -> dict[str, Any]:
        from ..serve import undeploy

        get_store().get_endpoint(name)   # an unknown endpoint is a 404 before connecting
        self._require("undeploy an endpoint")
        undeploy(name)
        return {"name": name, "status": "deleted"}

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


def job_view(job: Any, log: str, chars: int) -> dict[str, Any]:
    """A job record for the sidebar: no source, the log cut to its tail."""
    d = job.to_dict()
    d.pop("source", None)
    d.pop("log", None)
    d["log_tail"] = log[-chars:] if log else ""
    d["progress"] = getattr(job, "progress", None)
    return d


def notebook_for(origin: str | None, sessions: Iterable[dict[str, Any]],
                 root_dir: str | None) -> str | None:
    """The notebook (a path relative to the server's root) a job came from, if known.

    ``origin`` is what the kernel recorded: ``kernel:<id>`` (matched against the server's
    sessions) or a notebook path (absolute paths must lie under ``root_dir``).
    """
    if not origin:
        return None
    if origin.startswith("kernel:"):
        ident = origin.split(":", 1)[1]
        for s in sessions:
            kernel = s.get("kernel") or {}
            if ident and ident in (kernel.get("id"), s.get("id")) and s.get("path"):
                return str(s["path"])
        return None
    if not origin.endswith(".ipynb"):
        return None
    if os.path.isabs(origin):
        if not root_dir:
            return None
        root = os.path.realpath(root_dir)
        path = os.path.realpath(origin)
        if os.path.commonpath([root, path]) != root:
            return None
        return os.path.relpath(path, root)
    return origin
