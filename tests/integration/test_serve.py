"""Endpoints on the real local cluster: a digits MLP trained here, registered in the store,
deployed with Ray Serve, called over HTTP, killed under load, and removed.

Serve's controller and proxy start once for this module (on a free port) and are shut down
at its end, so later tests get the cluster's CPUs back. The tests run in file order against
one endpoint with 2 replicas; the last one undeploys it.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import time

import numpy as np
import pytest

from .conftest import free_port

pytestmark = pytest.mark.integration

NAME = "digits-api"
NPY = "application/x-npy"



def _npy(arr) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


@pytest.fixture(scope="module")
def serve_port(cluster):
    from ray import serve

    from lepton_lab.config import reset_config

    serve.shutdown()   # an earlier test (the quickstart) may have left Serve on another port
    old = os.environ.get("LEPTON_SERVE_PORT")
    port = free_port()
    os.environ["LEPTON_SERVE_PORT"] = str(port)
    reset_config()
    yield port
    serve.shutdown()
    if old is None:
        os.environ.pop("LEPTON_SERVE_PORT", None)
    else:
        os.environ["LEPTON_SERVE_PORT"] = old
    reset_config()


def train_and_register(x, y, seed: int, folder) -> tuple:
    """An MLP trained 2 epochs on the digits, saved whole, registered as the next 'digits'."""
    import torch
    from torch import nn

    from lepton_lab.store import get_store

    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    for _ in range(2):
        for i in range(0, len(x), 64):
            opt.zero_grad()
            nn.functional.cross_entropy(model(xt[i:i + 64]), yt[i:i + 64]).backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        acc = (model(xt).argmax(1) == yt).float().mean().item()
    assert acc > 0.8, f"the test model did not train ({acc:.2f})"
    path = folder / f"digits-{seed}.pt"
    torch.save(model, path)
    data = path.read_bytes()
    rec = get_store().register_model(
        "digits", kind="trained", format="torch", path=str(path),
        sha256=hashlib.sha256(data).hexdigest(), size=len(data),
        params=sum(p.numel() for p in model.parameters()), settings={"input_shape": [64]})
    return model, rec.ref


@pytest.fixture(scope="module")
def digits(lepton_home, tmp_path_factory):
    """sklearn's digits and a small MLP trained on them, registered as digits:1."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    folder = tmp_path_factory.mktemp("models")
    model, ref = train_and_register(x, y, 0, folder)
    return {"model": model, "x": x, "y": y, "ref": ref, "folder": folder}


@pytest.fixture(scope="module")
def endpoint(serve_port, digits):
    from lepton_lab.serve import DeploySpec, deploy, undeploy
    from lepton_lab.store import get_store

    spec = DeploySpec(name=NAME, replicas=2, cpus=0.25, max_batch=16, batch_wait_ms=2.0)
    info = deploy(digits["ref"], spec, timeout=150)
    try:
        yield info
    finally:
        if get_store().get_endpoint(NAME).status != "deleted":
            undeploy(NAME)


def local(digits, x):
    import torch

    with torch.no_grad():
        return digits["model"](torch.from_numpy(x)).numpy()


def auth(info):
    return {"Authorization": f"Bearer {info.token}"}


# -- deploy ---------------------------------------------------------------------------------------
def test_deploy_returns_the_token_once_and_stores_only_its_hash(endpoint, serve_port):
    from lepton_lab.serve import endpoint_status, hash_token
    from lepton_lab.store import get_store

    assert endpoint.url == f"http://127.0.0.1:{serve_port}/{NAME}"
    assert endpoint.token.startswith("lep_") and endpoint.token not in repr(endpoint)
    rec = get_store().get_endpoint(NAME)
    assert rec.status == "running" and rec.model == "digits:1"
    assert rec.token_hash == hash_token(endpoint.token)
    assert rec.token_hint == endpoint.token[:8] + "…"
    st = endpoint_status(NAME)
    assert st["live"] == "RUNNING" and st["replicas"] == {"RUNNING": 2}
    assert endpoint.token not in str(st) and rec.token_hash not in str(st)
    audit = [e for e in get_store().audit_entries(limit=500) if e["action"] == "deploy"
             and NAME in (e["detail"] or "")]
    assert {e["outcome"] for e in audit} >= {None, "running"}       # every deployment is logged
    assert not any(endpoint.token in str(e) for e in audit)


def test_json_npy_and_client_predictions_equal_the_local_model(endpoint, digits):
    import httpx

    from lepton_lab.serve import predict

    x = digits["x"][:50]
    want = local(digits, x)
    url = endpoint.predict_url
    r = httpx.post(url, json={"inputs": x.tolist()}, headers=auth(endpoint), timeout=30)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json")
    np.testing.assert_allclose(np.array(r.json()["outputs"]), want, rtol=1e-5, atol=1e-5)
    r = httpx.post(url, content=_npy(x), timeout=30,
                   headers=auth(endpoint) | {"Content-Type": NPY, "Accept": NPY})
    assert r.status_code == 200 and r.headers["content-type"] == NPY
    got = np.load(io.BytesIO(r.content))
    assert got.dtype == np.float32 and got.shape == (50, 10)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(predict(NAME, x), want, rtol=1e-5, atol=1e-5)  # kept token
    np.testing.assert_allclose(predict(endpoint.url, x[:3], token=endpoint.token),
                               want[:3], rtol=1e-5, atol=1e-5)
    acc = (predict(NAME, digits["x"]).argmax(1) == digits["y"]).mean()
    assert acc > 0.8


def test_missing_or_wrong_token_is_401(endpoint, digits):
    import httpx

    from lepton_lab.errors import LeptonUsageError
    from lepton_lab.serve import predict

    body = {"inputs": digits["x"][:1].tolist()}
    for headers in ({}, {"Authorization": f"Bearer {endpoint.token}x"},
                    {"Authorization": f"Basic {endpoint.token}"}):
        r = httpx.post(endpoint.predict_url, json=body, headers=headers, timeout=30)
        assert r.status_code == 401, r.text
        assert r.headers["www-authenticate"].startswith("Bearer")
        assert r.json()["error"] and endpoint.token not in r.text
    with pytest.raises(LeptonUsageError, match="HTTP 401"):
        predict(NAME, digits["x"][:1], token="lep_wrong")
    from tests._reliability import record

    record("unauthenticated_endpoint_calls", tried=4, succeeded=0)


def test_bad_requests_get_clear_4xx_answers(endpoint, digits):
    import httpx

    url, h = endpoint.predict_url, auth(endpoint)
    cases = [
        (dict(content=b"{not json", headers=h | {"Content-Type": "application/json"}), 400,
         "malformed JSON"),
        (dict(json={"inputs": [[1.0, 2.0, 3.0]]}, headers=h), 400, "expects (n, 64)"),
        (dict(content=_npy(np.zeros((2, 8, 8), np.float32)), headers=h | {
            "Content-Type": NPY}), 400, "expects (n, 64)"),
        (dict(content=b"\x93NUMPY garbage", headers=h | {"Content-Type": NPY}), 400,
         "malformed .npy"),
        (dict(content=b"1,2", headers=h | {"Content-Type": "text/csv"}), 415, "Content-Type"),
    ]
    for kwargs, status, needle in cases:
        r = httpx.post(url, timeout=30, **kwargs)
        assert r.status_code == status, (kwargs, r.text)
        assert needle in r.json()["error"]
    r = httpx.get(url, headers=h, timeout=30)
    assert r.status_code == 405 and r.headers["allow"] == "POST"
    from lepton_lab.errors import LeptonUsageError
    from lepton_lab.serve import predict

    with pytest.raises(LeptonUsageError, match=r"expects \(n, 64\).*HTTP 400"):
        predict(NAME, np.zeros((1, 3), np.float32))


def test_oversized_bodies_are_413(endpoint):
    import httpx

    limit = 16 * 2**20
    big = b"0" * (limit + 1)
    r = httpx.post(endpoint.predict_url, content=big, timeout=60,
                   headers=auth(endpoint) | {"Content-Type": NPY})
    assert r.status_code == 413 and "limit" in r.json()["error"]

    def chunks():                 # no Content-Length: the replica counts what it reads
        for _ in range(17):
            yield b"0" * 2**20

    r = httpx.post(endpoint.predict_url, content=chunks(), timeout=60,
                   headers=auth(endpoint) | {"Content-Type": NPY})
    assert r.status_code == 413 and "limit" in r.json()["error"]


def _bad_bodies() -> list[tuple[bytes, str]]:
    """A fixed corpus of bad requests (the unit fuzz, tests/unit/test_fuzz_bodies.py, covers
    the parser with many more): wrong dtype and shape, NaN, a huge shape in a small body,
    truncated files, pickles, broken and odd JSON."""
    import json
    import pickle
    import random

    rng = random.Random(16)
    good = _npy(np.zeros((2, 64), np.float32))
    pickled = io.BytesIO()
    np.save(pickled, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    out = [
        (_npy(np.array([["a"] * 64])), NPY), (_npy(np.zeros((2, 64), complex)), NPY),
        (_npy(np.full((1, 64), np.nan, np.float32)), NPY), (_npy(np.zeros((3, 7))), NPY),
        (_npy(np.float32(1.0)), NPY), (_npy(np.zeros((0, 64), np.float32)), NPY),
        (good.replace(b"(2, 64)", b"(1000000000000, 64)", 1), NPY),
        (pickled.getvalue(), NPY), (pickle.dumps({"inputs": [[0.0] * 64]}), NPY),
        (json.dumps({"inputs": [[float("nan")] * 64]}).encode(), "application/json"),
        (json.dumps({"inputs": [[1e39] * 64]}).encode(), "application/json"),
        (json.dumps({"inputs": [[None] * 64]}).encode(), "application/json"),
        (json.dumps({"inputs": [[[0.0] * 64]]}).encode(), "application/json"),
        (json.dumps({"inputs": "x" * 1000}).encode(), "application/json"),
        (b"[" * 10_000 + b"]" * 10_000, "application/json"),
        (b'{"inputs": [[1, 2]', "application/json"), (b"\xff\xfe\x00", "application/json"),
    ]
    for _ in range(40):                      # truncated good files, and random bytes
        out.append((good[:rng.randrange(len(good))], NPY))
        out.append((bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200))),
                    rng.choice([NPY, "application/json"])))
    return out


def test_fuzzed_bodies_get_400_and_the_replicas_stay_up(endpoint, digits):
    import httpx

    from tests._reliability import record

    before = {a.actor_id for a in _replica_actors(NAME)}
    bodies = _bad_bodies()
    codes: dict[int, int] = {}
    with httpx.Client(timeout=30, headers=auth(endpoint)) as client:
        for body, ctype in bodies:
            r = client.post(endpoint.predict_url, content=body,
                            headers={"Content-Type": ctype})
            codes[r.status_code] = codes.get(r.status_code, 0) + 1
            assert r.status_code in (400, 413), (r.status_code, body[:80], r.text[:200])
            assert "\n" not in r.json()["error"]
        r = client.post(endpoint.predict_url, json={"inputs": digits["x"][:2].tolist()})
        assert r.status_code == 200
    assert {a.actor_id for a in _replica_actors(NAME)} == before     # no replica restarted
    record("endpoint_body_fuzz_http", tried=len(bodies), survived=len(bodies), codes=codes)


def test_health_and_openapi_need_no_token(endpoint):
    import httpx

    r = httpx.get(f"{endpoint.url}/healthz", timeout=30)
    assert r.status_code == 200 and r.json()["status"] == "ok"
    r = httpx.get(f"{endpoint.url}/openapi.json", timeout=30)
    doc = r.json()
    assert r.status_code == 200 and doc["openapi"].startswith("3.")
    assert "/predict" in doc["paths"] and doc["info"]["version"] == "digits:1"


def test_missing_version_and_infeasible_resources_fail_at_once(endpoint, digits):
    from lepton_lab.errors import InfeasibleRequest
    from lepton_lab.serve import DeploySpec, deploy
    from lepton_lab.store import ModelNotFound, get_store

    t0 = time.monotonic()
    with pytest.raises(ModelNotFound, match=r"no version 99; it has digits:1"):
        deploy("digits:99", DeploySpec(name="nope-api"))
    with pytest.raises(InfeasibleRequest, match="do not fit"):
        deploy(digits["ref"], DeploySpec(name="nope-api", gpus=1))
    with pytest.raises(InfeasibleRequest, match="do not fit"):
        deploy(digits["ref"], DeploySpec(name="nope-api", replicas=50, cpus=1))
    assert time.monotonic() - t0 < 10
    assert [e.name for e in get_store().list_endpoints()] == [NAME]


def test_a_model_that_cannot_load_marks_the_endpoint_failed(endpoint, tmp_path):
    import torch

    from lepton_lab.serve import DeployError, DeploySpec, deploy
    from lepton_lab.store import get_store

    path = tmp_path / "state_dict.pt"
    torch.save({"weight": torch.zeros(2)}, path)         # a state dict, not a module
    data = path.read_bytes()
    store = get_store()
    rec = store.register_model("broken", kind="imported", format="torch", path=str(path),
                               sha256=hashlib.sha256(data).hexdigest(), size=len(data))
    with pytest.raises(DeployError) as info:
        deploy(rec.ref, DeploySpec(name="broken-api", cpus=0.25), timeout=90)
    msg = str(info.value)
    assert "\n" not in msg and "not a torch.nn.Module" in msg, msg
    failed = store.get_endpoint("broken-api")
    assert failed.status == "failed" and "not a torch.nn.Module" in failed.error
    from ray import serve

    deadline = time.monotonic() + 30
    while "broken-api" in serve.status().applications and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "broken-api" not in serve.status().applications


def test_onnx_model_with_autoscaling_and_no_auth(endpoint, digits, tmp_path):
    import httpx
    import torch

    from lepton_lab.serve import DeploySpec, deploy, endpoint_status, predict, undeploy
    from lepton_lab.store import get_store

    path = tmp_path / "digits.onnx"
    torch.onnx.export(digits["model"], (torch.zeros(1, 64),), str(path), input_names=["x"],
                      output_names=["y"], dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}},
                      external_data=False)
    data = path.read_bytes()
    rec = get_store().register_model("digits-onnx", kind="imported", format="onnx",
                                     path=str(path), size=len(data),
                                     sha256=hashlib.sha256(data).hexdigest())
    spec = DeploySpec(name="onnx-api", cpus=0.25, max_batch=1, autoscale=(1, 2), auth=False)
    info = deploy(rec.ref, spec, timeout=150)
    try:
        assert info.token is None and info.replicas == (1, 2)
        x = digits["x"][:30]
        np.testing.assert_allclose(predict("onnx-api", x), local(digits, x), rtol=1e-4,
                                   atol=1e-4)
        r = httpx.post(f"{info.url}/predict", json={"inputs": [[0.0] * 3]}, timeout=30)
        assert r.status_code == 400 and "expects (n, 64)" in r.json()["error"]  # from the ONNX
        st = endpoint_status("onnx-api")
        assert st["live"] == "RUNNING" and st["config"]["autoscale"] == [1, 2]
    finally:
        undeploy("onnx-api")


def test_redeploying_rolls_out_the_new_version_and_keeps_the_token(endpoint, digits):
    import torch

    from lepton_lab.serve import DeploySpec, deploy, predict
    from lepton_lab.store import get_store

    hash_before = get_store().get_endpoint(NAME).token_hash
    model2, ref2 = train_and_register(digits["x"], digits["y"], 1, digits["folder"])
    assert ref2 == "digits:2"
    spec = DeploySpec(name=NAME, replicas=2, cpus=0.25, max_batch=16, batch_wait_ms=2.0)
    old_sha = get_store().get_model(endpoint.model_ref).sha256
    info = deploy(ref2, spec, timeout=150)
    assert info.token is None and info.token_hint == endpoint.token_hint
    # the replicas read the model's bytes from the cluster's key-value store, not from
    # Serve's checkpoint; the old version's bytes go once no endpoint uses them
    from lepton_lab.serve import _artifacts

    stashed = _artifacts.stashed()
    assert get_store().get_model(ref2).sha256 in stashed
    users = [e.name for e in get_store().list_endpoints()
             if e.status != "deleted" and e.config.get("model_sha256") == old_sha]
    assert (old_sha in stashed) == bool(users), users
    assert endpoint.token_hint not in ("", None) and "DeployInfo" in repr(info)
    rec = get_store().get_endpoint(NAME)
    assert rec.model == "digits:2" and rec.status == "running"
    assert rec.token_hash == hash_before
    x = digits["x"][:20]
    with torch.no_grad():
        want = model2(torch.from_numpy(x)).numpy()
    assert not np.allclose(want, local(digits, x), atol=1e-3)      # really another model
    for _ in range(5):          # whichever replica answers, it runs digits:2
        np.testing.assert_allclose(predict(NAME, x, token=endpoint.token), want, rtol=1e-5,
                                   atol=1e-5)


# -- load and failure ------------------------------------------------------------------------------
async def _load(url: str, token: str, x: np.ndarray, total: int, concurrency: int,
                on_progress=None) -> dict:
    import httpx

    body = _npy(x)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": NPY, "Accept": NPY}
    counter = iter(range(total))
    codes: dict[str, int] = {}
    done = 0

    async def worker(client):
        nonlocal done
        for _ in counter:
            try:
                r = await client.post(url, content=body, headers=headers)
                key = str(r.status_code)
            except httpx.HTTPError as exc:
                key = type(exc).__name__
            codes[key] = codes.get(key, 0) + 1
            done += 1
            if on_progress:
                on_progress(done)

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    return codes


def test_concurrent_requests_each_get_their_own_rows_back(endpoint, digits):
    """Requests that share a forward pass (lepton_lab/serve/_batcher.py) are split back to
    the right clients: 32 clients at once, each with its own rows (1 to 4 of them), get what
    the endpoint answers for all the rows in one request (whichever version it serves now)."""
    import httpx

    from lepton_lab.serve import predict

    x = digits["x"]
    jobs = [(i, 1 + i % 4) for i in range(0, 320, 5)]       # (first row, row count)
    want = predict(NAME, x[:330])

    async def go() -> list:
        limits = httpx.Limits(max_connections=32, max_keepalive_connections=32)
        headers = auth(endpoint) | {"Content-Type": NPY, "Accept": NPY}
        async with httpx.AsyncClient(limits=limits, timeout=30) as client:
            async def one(start: int, n: int):
                r = await client.post(endpoint.predict_url, content=_npy(x[start:start + n]),
                                      headers=headers)
                assert r.status_code == 200, r.text
                return np.load(io.BytesIO(r.content))
            return await asyncio.gather(*(one(s, n) for s, n in jobs))

    for _ in range(3):
        outs = asyncio.run(asyncio.wait_for(go(), 60))
        for (start, n), got in zip(jobs, outs):
            assert got.shape == (n, 10)
            np.testing.assert_allclose(got, want[start:start + n], rtol=1e-5, atol=1e-5)


def _replica_actors(name: str) -> list:
    from ray.util.state import list_actors

    from lepton_lab.cluster import current

    actors = list_actors(address=current().dashboard_url, filters=[("state", "=", "ALIVE")],
                         limit=1000, raise_on_missing_output=False)
    return [a for a in actors if "ServeReplica" in a.class_name and name in a.class_name]


def test_killing_a_replica_under_load_loses_few_requests_and_serve_recovers(endpoint, digits):
    import ray
    from ray import serve

    before = _replica_actors(NAME)
    assert len(before) == 2
    victim = ray.get_actor(before[0].name, namespace=before[0].ray_namespace)
    killed = {}

    def on_progress(done):
        if done == 300 and not killed:
            ray.kill(victim, no_restart=True)
            killed["at"] = time.monotonic()

    total = 2000
    t0 = time.monotonic()
    codes = asyncio.run(asyncio.wait_for(
        _load(endpoint.predict_url, endpoint.token, digits["x"][:4], total, 16, on_progress),
        timeout=120))
    wall = time.monotonic() - t0
    assert killed, "the replica was never killed"
    assert sum(codes.values()) == total
    failed = total - codes.get("200", 0)
    print(f"\n{total} requests at concurrency 16 in {wall:.1f} s ({total / wall:.0f}/s), "
          f"one replica killed: {codes}")
    from tests._reliability import record

    record("replica_killed_under_load", tried=total, survived=codes.get("200", 0),
           failed=failed, codes=codes)
    assert failed <= total * 0.005, codes
    deadline = time.monotonic() + 90
    while True:
        app = serve.status().applications[NAME]
        dep = app.deployments[NAME]
        states = {str(getattr(k, "value", k)): v for k, v in dep.replica_states.items()}
        if str(getattr(app.status, "value", app.status)) == "RUNNING" and states == {
                "RUNNING": 2}:
            break
        assert time.monotonic() < deadline, f"Serve did not recover: {app.status} {states}"
        time.sleep(0.5)
    # Ray's state API lists the new replica's actor a little after Serve reports it running
    while True:
        after = {a.actor_id for a in _replica_actors(NAME)}
        if len(after) == 2 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert before[0].actor_id not in after and len(after) == 2
    print(f"recovered to 2 running replicas {time.monotonic() - killed['at']:.1f} s after "
          "the kill")


def test_request_metrics_reach_prometheus(endpoint):
    import ray

    ports = {n["MetricsExportPort"] for n in ray.nodes() if n.get("Alive")}
    deadline = time.monotonic() + 45
    text = ""
    while time.monotonic() < deadline:
        text = _scrape(ports)
        if "lepton_endpoint_requests" in text and "lepton_endpoint_latency_ms" in text:
            break
        time.sleep(1)
    lines = [ln for ln in text.splitlines() if ln.startswith("ray_lepton_endpoint_requests")]
    assert any(f'endpoint="{NAME}"' in ln and 'code="200"' in ln for ln in lines), lines[:5]
    assert any('code="401"' in ln for ln in lines), lines[:5]
    assert "lepton_endpoint_latency_ms_bucket" in text
    # behind the default (HAProxy) ingress, the concurrent loads of the tests above (at 16
    # and 32 at once) had requests share forward passes (before lepton_lab/serve/_batcher.py
    # every pass there held one request: total == count). Ray exports the metrics every few
    # seconds, not all at once: wait until they show it.
    deadline = time.monotonic() + 60
    while True:
        text = _scrape(ports)
        count, total = _batch_metric(text, "count"), _batch_metric(text, "sum")
        if (count > 0 and total > count) or time.monotonic() > deadline:
            break
        time.sleep(2)
    print(f"\n{count:.0f} forward passes for {total:.0f} requests")
    assert count > 0 and total > count, (count, total)


def _scrape(ports: set) -> str:
    import urllib.request

    text = ""
    for port in ports:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                text += r.read().decode()
        except OSError:
            pass
    return text


def _batch_metric(text: str, kind: str) -> float:
    """Sum over replicas of ray_lepton_endpoint_batch_size_{count,sum} for this endpoint."""
    total = 0.0
    for ln in text.splitlines():
        if ln.startswith(f"ray_lepton_endpoint_batch_size_{kind}") and f'endpoint="{NAME}"' in ln:
            total += float(ln.rsplit(" ", 1)[1])
    return total


# -- list and remove -------------------------------------------------------------------------
def test_list_endpoints_merges_the_store_with_serve(endpoint):
    from lepton_lab.serve import list_endpoints

    rows = {r["name"]: r for r in list_endpoints(include_deleted=True)}
    assert rows[NAME]["live"] == "RUNNING" and rows[NAME]["status"] == "running"
    assert rows[NAME]["token_hint"].startswith("lep_") and "token_hash" not in rows[NAME]
    assert rows["broken-api"]["status"] == "failed"
    assert rows["broken-api"]["live"] == "NOT RUNNING"


def test_the_dashboard_sees_and_calls_the_real_endpoint(endpoint, digits):
    # the Voila endpoints page: health and latency, and "try it", against real Serve
    from lepton_lab.dashboard._endpoints import endpoint_rows, try_endpoint

    row = next(r for r in endpoint_rows() if r["name"] == NAME)
    assert row["health"] == "answering" and row["latency_ms"] > 0 and row["auth"]
    assert endpoint.token not in str(row)
    x = digits["x"][:1]
    answer = try_endpoint(NAME, x, endpoint.token)
    assert answer["ok"] and answer["top"][0]["class"] == int(local(digits, x).argmax())
    wrong = try_endpoint(NAME, x, "lep_wrong")
    assert not wrong["ok"] and "401" in wrong["error"] and "lep_wrong" not in wrong["error"]


def test_undeploy_removes_the_endpoint(endpoint, digits):
    import httpx

    from lepton_lab.serve import _artifacts, list_endpoints, predict, undeploy
    from lepton_lab.store import EndpointNotFound, get_store

    sha = get_store().get_endpoint(NAME).config["model_sha256"]
    undeploy(NAME)
    assert get_store().get_endpoint(NAME).status == "deleted"
    if not [e for e in get_store().list_endpoints()
            if e.status != "deleted" and e.config.get("model_sha256") == sha]:
        assert sha not in _artifacts.stashed()        # its bytes left the cluster's store
    assert any(e["action"] == "undeploy" and e["detail"] == NAME
               for e in get_store().audit_entries(limit=50))
    assert NAME not in [r["name"] for r in list_endpoints()]
    deadline = time.monotonic() + 20
    while True:               # the proxies drop the route shortly after the app is gone
        r = httpx.post(endpoint.predict_url, json={"inputs": digits["x"][:1].tolist()},
                       headers=auth(endpoint), timeout=30)
        if r.status_code == 404 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert r.status_code == 404
    with pytest.raises(EndpointNotFound):
        predict(NAME, digits["x"][:1])
    with pytest.raises(EndpointNotFound, match="already deleted"):
        undeploy(NAME)
