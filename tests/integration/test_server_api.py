"""The sidebar's REST API against the session's real Ray cluster: status, jobs from other
processes, cancel through the core (audited, resources freed), disconnect and connect."""

from __future__ import annotations

import time

import pytest
from pytest_jupyter.jupyter_server import *  # noqa: F401,F403 - jp_fetch & co. for this module only

from tests._server_api import call as _call
from tests.integration.conftest import wait_for_free_cpus

pytestmark = pytest.mark.integration


@pytest.fixture
def jp_server_config(cluster):
    # authentication stays on: the server gets a random token (jp_auth_header sends it)
    return {"ServerApp": {"jpserver_extensions": {"lepton_lab": True}}}


def call(loop, jp_fetch, path, method="GET", body=None, **kw):
    # the cluster answers slowly under load: a longer request timeout than the default
    return _call(loop, jp_fetch, path, method, body, request_timeout=120, **kw)


def wait_for(predicate, timeout=30.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"{what} not reached within {timeout} s")


def test_cluster_status(jp_fetch, jp_asyncio_loop, cluster):
    code, st = call(jp_asyncio_loop, jp_fetch, "cluster")
    assert code == 200, st
    assert st["state"] == "connected" and st["address"] == cluster.address
    assert st["kind"] == "embedded" and st["total"]["CPU"] >= 1
    assert st["nodes"] and st["nodes"][0]["alive"]
    assert st["dashboard_url"].startswith("http://127.0.0.1:")


def test_a_detached_job_is_listed_followed_and_cancelled(jp_fetch, jp_asyncio_loop, cluster):
    from lepton_lab.remote import CellSpec
    from lepton_lab.remote._jobs import submit_detached
    from lepton_lab.store import get_store

    job_id = submit_detached("import time\nprint('started', flush=True)\ntime.sleep(120)", {},
                             CellSpec(cpus=1, name="sidebar-sleeper"), origin="kernel:nope")
    code, data = call(jp_asyncio_loop, jp_fetch, "jobs")
    assert code == 200 and data["connected"] is True
    listed = {j["id"]: j for j in data["jobs"]}[job_id]
    assert listed["status"] == "running" and listed["name"] == "sidebar-sleeper"

    # the detail carries the live log from the job's keeper
    def started():
        code, job = call(jp_asyncio_loop, jp_fetch, f"jobs/{job_id}")
        return code == 200 and "started" in job["log_tail"]
    wait_for(started, what="live log")

    code, job = call(jp_asyncio_loop, jp_fetch, f"jobs/{job_id}/cancel", method="POST")
    assert code == 200, job
    assert job["status"] == "cancelled"
    wait_for_free_cpus(timeout=30)
    entries = get_store().audit_entries(job_id=job_id)
    assert any(e["action"] == "cancel" for e in entries)
    code, data = call(jp_asyncio_loop, jp_fetch, "jobs", params={"status": "cancelled"})
    assert job_id in [j["id"] for j in data["jobs"]]


def test_disconnect_then_connect(jp_fetch, jp_asyncio_loop, cluster):
    from lepton_lab import cluster as lc

    try:
        code, st = call(jp_asyncio_loop, jp_fetch, "cluster/disconnect", method="POST")
        assert code == 200 and st["state"] == "disconnected"
        # a read does not reconnect behind the user's back
        code, st = call(jp_asyncio_loop, jp_fetch, "cluster")
        assert code == 200 and st["state"] == "disconnected"
        assert "Connect" in st["reason"]
        code, data = call(jp_asyncio_loop, jp_fetch, "jobs")
        assert code == 200 and data["connected"] is False
        code, st = call(jp_asyncio_loop, jp_fetch, "cluster/connect", method="POST")
        assert code == 200 and st["state"] == "connected"
        assert st["address"] == cluster.address
    finally:
        lc.ensure_connected()


def test_models_and_runs_while_connected(jp_fetch, jp_asyncio_loop, cluster):
    code, data = call(jp_asyncio_loop, jp_fetch, "models")
    assert code == 200 and set(data) == {"models", "reports", "endpoints"}
    code, runs = call(jp_asyncio_loop, jp_fetch, "runs")
    assert code == 200 and runs["pipeline_available"] is True
