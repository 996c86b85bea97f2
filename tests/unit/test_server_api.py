"""The sidebar's REST API without a cluster (Ray-free): every route needs credentials, a
missing cluster reads as "disconnected" (never a 500, and nothing is started), errors map to
specific statuses, and tokens never leave the server."""

from __future__ import annotations

import json
import re

import pytest
from pytest_jupyter.jupyter_server import *  # noqa: F401,F403 - jp_fetch & co. for this module only

from lepton_lab import errors
from lepton_lab.server._core import notebook_for
from lepton_lab.server._handlers import ROUTES, status_for
from tests._server_api import call, run


@pytest.fixture
def jp_server_config(lepton_home):
    # authentication stays on: the server gets a random token (jp_auth_header sends it)
    return {"ServerApp": {"jpserver_extensions": {"lepton_lab": True}}}


def lepton_rules(app):
    """Every route the server registered under lepton/api, as (concrete path, handler)."""
    out = []

    def walk(rules):
        for rule in rules:
            if hasattr(rule.target, "rules"):        # a host's router: its own rules
                walk(rule.target.rules)
                continue
            pattern = getattr(rule.matcher, "regex", None)
            if pattern is not None and "/lepton/" in pattern.pattern:
                path = re.sub(r"\(\[\^/\]\+\)", "some-id", pattern.pattern)
                out.append((path.replace("/?$", "").rstrip("$"), rule.target))

    walk(app.web_app.default_router.rules)
    return out


def test_every_route_refuses_requests_without_credentials(jp_serverapp, http_server_client,
                                                          jp_asyncio_loop):
    rules = lepton_rules(jp_serverapp)
    assert len(rules) == len(ROUTES) >= 10
    checked = 0
    for path, handler in rules:
        methods = [m for m in ("GET", "POST", "PUT", "PATCH", "DELETE")
                   if getattr(handler, m.lower()) is not getattr(handler.__mro__[-2], m.lower(),
                                                                  None)]
        assert methods, handler
        for method in methods:
            for headers in ({}, {"Authorization": "token wrong-token"}):
                resp = run(jp_asyncio_loop, lambda: http_server_client.fetch(
                    path, method=method, headers=headers, raise_error=False,
                    follow_redirects=False, body="{}" if method != "GET" else None))
                assert resp.code in (401, 403) or (resp.code == 302 and "login" in
                                                    resp.headers.get("Location", "")), \
                    f"{method} {path} answered {resp.code} without credentials"
                checked += 1
    assert checked >= 2 * len(ROUTES)
    from tests._reliability import record

    record("unauthenticated_rest_calls", tried=checked, succeeded=0)


def test_the_token_opens_the_api(jp_fetch, jp_asyncio_loop):
    code, data = call(jp_asyncio_loop, jp_fetch, "jobs")
    assert code == 200 and data == {"jobs": [], "connected": False}


def test_no_cluster_reads_as_disconnected_and_starts_nothing(jp_fetch, jp_asyncio_loop,
                                                             lepton_home):
    # the unit tier makes any ray.init or embedded start raise: a 200 here proves none ran
    code, data = call(jp_asyncio_loop, jp_fetch, "cluster")
    assert code == 200
    assert data["state"] == "disconnected"
    assert "no cluster is running" in data["reason"]
    assert not (lepton_home / "cluster.json").exists()


def test_an_unreachable_address_reads_as_disconnected(jp_fetch, jp_asyncio_loop, monkeypatch):
    from lepton_lab.config import get_config
    from tests.integration.conftest import free_port

    address = f"127.0.0.1:{free_port()}"
    monkeypatch.setattr(get_config(), "address", address)
    code, data = call(jp_asyncio_loop, jp_fetch, "cluster")
    assert code == 200 and data["state"] == "disconnected"
    assert address in data["reason"] and data["address"] == address


def test_jobs_come_from_the_store_with_a_log_tail_and_no_source(jp_fetch, jp_asyncio_loop):
    from lepton_lab.store import get_store

    store = get_store()
    store.create_job("job-a", kind="cell", name="first", cluster="c", resources={"cpus": 2},
                     source="secret_source = 1", source_hash="h", origin="kernel:abc")
    store.finish_job("job-a", "succeeded", log="line\n" * 1000 + "the end\n")
    store.create_job("job-b", kind="detached", name=None, cluster="c", resources={},
                     source="x", source_hash="h2", origin="/elsewhere/nb.ipynb")
    code, data = call(jp_asyncio_loop, jp_fetch, "jobs")
    assert code == 200
    by_id = {j["id"]: j for j in data["jobs"]}
    assert set(by_id) == {"job-a", "job-b"}
    a = by_id["job-a"]
    assert a["status"] == "succeeded" and a["name"] == "first"
    assert a["log_tail"].endswith("the end\n") and len(a["log_tail"]) <= 2000
    assert "source" not in a and "log" not in a
    assert a["elapsed"] is not None and a["resources"] == {"cpus": 2}
    assert by_id["job-b"]["status"] == "running" and by_id["job-b"]["notebook"] is None

    code, job = call(jp_asyncio_loop, jp_fetch, "jobs/job-a")
    assert code == 200 and job["id"] == "job-a" and job["log_tail"].count("line") == 1000
    code, job = call(jp_asyncio_loop, jp_fetch, "jobs/first")      # by name, as the magics
    assert code == 200 and job["id"] == "job-a"

    code, data = call(jp_asyncio_loop, jp_fetch, "jobs", params={"status": "running"})
    assert [j["id"] for j in data["jobs"]] == ["job-b"]


def test_errors_are_one_line_with_a_specific_status(jp_fetch, jp_asyncio_loop):
    from lepton_lab.store import get_store

    code, data = call(jp_asyncio_loop, jp_fetch, "jobs/nope")
    assert code == 404 and data["type"] == "JobNotFound" and "\n" not in data["error"]
    code, data = call(jp_asyncio_loop, jp_fetch, "endpoints/nope/undeploy", method="POST")
    assert code == 404 and data["type"] == "EndpointNotFound"
    code, data = call(jp_asyncio_loop, jp_fetch, "jobs", params={"limit": "many"})
    assert code == 400 and "limit" in data["error"]
    code, data = call(jp_asyncio_loop, jp_fetch, "cluster/connect", method="POST", body="[1")
    assert code == 400 and "JSON" in data["error"]
    code, data = call(jp_asyncio_loop, jp_fetch, "cluster/connect", method="POST",
                      body=json.dumps({"address": "no-port-here"}))
    assert code == 400 and data["type"] == "LeptonUsageError"
    # a running job cannot be cancelled without a cluster: 503 with the reason, no start
    get_store().create_job("job-c", kind="cell", name=None, cluster="c", resources={},
                           source="x", source_hash="h", origin=None)
    code, data = call(jp_asyncio_loop, jp_fetch, "jobs/job-c/cancel", method="POST")
    assert code == 503 and data["error"].startswith("cannot cancel a job: no cluster")
    assert get_store().get_job("job-c").status == "running"


def test_runs_models_and_endpoints_never_show_tokens(jp_fetch, jp_asyncio_loop):
    from lepton_lab.store import get_store

    store = get_store()
    store.create_pipeline_run("run-1", name="train", notebook="train.ipynb", user="ada",
                              parameters={"lr": 0.1})
    store.update_pipeline_run("run-1", status="succeeded", metrics={"acc": 0.9},
                              series={"loss": [1, 2, 3]})
    store.create_run("tr-1", job_id=None, kind="train", name="fit", config={"epochs": 2})
    store.put_endpoint("digits-api", model="digits:1", status="running",
                       url="http://127.0.0.1:8000/digits-api", token_hash="f" * 64,
                       token_hint="ab12…")
    code, runs = call(jp_asyncio_loop, jp_fetch, "runs")
    assert code == 200 and runs["pipeline_available"] is True
    (p,) = runs["pipeline"]
    assert p["parameters"] == {"lr": 0.1} and p["metrics"] == {"acc": 0.9}
    assert "series" not in p
    assert [t["name"] for t in runs["training"]] == ["fit"]
    code, data = call(jp_asyncio_loop, jp_fetch, "models")
    assert code == 200
    (e,) = data["endpoints"]
    assert e["url"] == "http://127.0.0.1:8000/digits-api" and e["live"] == "NO CLUSTER"
    assert "f" * 64 not in json.dumps(data) and "token_hash" not in e


@pytest.mark.parametrize("exc, status", [
    (errors.JobNotFound("x"), 404), (errors.LeptonUsageError("x"), 400),
    (errors.ClusterUnavailable("x"), 503), (errors.InfeasibleRequest("x"), 409),
    (errors.VersionMismatch("x"), 409), (errors.MissingDependency("x"), 501),
    (errors.CellTimeout("x"), 504), (errors.WorkerDied("x"), 502),
    (errors.LeptonError("x"), 502), (ConnectionError("x"), 503), (KeyError("x"), 500),
])
def test_status_for(exc, status):
    assert status_for(exc) == status


def test_status_for_not_found_subclasses():
    from lepton_lab.store import EndpointNotFound, ModelNotFound
    from lepton_lab.store._pipelines import PipelineRunNotFound

    for cls in (EndpointNotFound, ModelNotFound, PipelineRunNotFound):
        assert status_for(cls("x")) == 404


def test_notebook_for(tmp_path):
    sessions = [{"id": "s1", "path": "work/a.ipynb", "kernel": {"id": "k1"}}]
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    assert notebook_for("kernel:k1", sessions, str(root)) == "work/a.ipynb"
    assert notebook_for("kernel:other", sessions, str(root)) is None
    assert notebook_for("kernel:", sessions, str(root)) is None
    assert notebook_for(str(root / "sub" / "b.ipynb"), [], str(root)) == "sub/b.ipynb"
    assert notebook_for(str(tmp_path / "outside.ipynb"), [], str(root)) is None
    assert notebook_for("rel/c.ipynb", [], None) == "rel/c.ipynb"
    assert notebook_for("ipython", [], str(root)) is None
    assert notebook_for(None, sessions, str(root)) is None


def test_connect_rejects_a_non_string_address(jp_fetch, jp_asyncio_loop):
    code, data = call(jp_asyncio_loop, jp_fetch, "cluster/connect", method="POST",
                      body=json.dumps({"address": 5}))
    assert code == 400 and "address" in data["error"]



def test_a_connection_whose_head_is_gone_reads_as_disconnected_and_starts_nothing(
        monkeypatch, lepton_home):
    """The server's own connection outlived its head (nothing listens on its port any more):
    the next status read drops it and says "disconnected"; it neither waits on the dead head
    nor starts an embedded cluster in its place (the unit tier forbids any Ray start)."""
    import ray

    from lepton_lab import cluster as lc
    from lepton_lab.server._core import SidebarCore
    from tests.integration.conftest import free_port

    dead = lc.Connection(f"127.0.0.1:{free_port()}", "embedded")
    monkeypatch.setattr(lc, "_CONN", dead)
    monkeypatch.setattr(ray, "is_initialized", lambda: True)   # a driver still "connected"
    core = SidebarCore()
    try:
        st = core.cluster()
    finally:
        core.close()
    assert st["state"] == "disconnected" and "no cluster is running" in st["reason"]
    assert lc.current() is None
    lc._wait_for_dropped()
