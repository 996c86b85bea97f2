"""The Ray head dies (SIGKILL to its whole process group) under a real kernel that uses it
through RAY_ADDRESS: a running cell, an idle warm group and a detached job. The kernel never
hangs and is never killed by Ray: each case is one ClusterUnavailable line within 10 s, the
jobs are recorded as lost, and once the head is started again the next cell works in the
same kernel, with its variables."""

from __future__ import annotations

import os
import secrets
import signal
import threading
import time

import pytest

from tests._reliability import record

from .conftest import KernelClient, free_port, text_of
from .multinode import kill_session
from .test_external_cluster import _start

pytestmark = pytest.mark.integration


def _error(reply: dict) -> str:
    assert reply["status"] == "error", reply
    assert len(reply["traceback"]) == 1, reply["traceback"]          # one line, no gRPC dump
    return reply["traceback"][0]


@pytest.fixture
def head(tmp_path, cluster):
    env = dict(os.environ, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32),
               RAY_USAGE_STATS_ENABLED="0")
    env.pop("RAY_ADDRESS", None)
    port = free_port()
    args = ["--head", "--port", str(port), "--node-ip-address", "127.0.0.1", "--num-cpus", "2",
            "--include-dashboard", "false"]
    procs: list = []

    def start():
        procs.append(_start(args, tmp_path / f"head{len(procs)}.log", env))

    def kill():
        # the whole session, as when the machine is lost: Ray's worker processes (Serve's
        # proxy and replicas among them) may sit in process groups of their own
        assert not kill_session(procs[-1].pid), "processes of the head survived SIGKILL"
        procs[-1].wait(10)

    start()
    try:
        yield {"address": f"127.0.0.1:{port}", "env": env, "start": start, "kill": kill}
    finally:
        for p in procs:
            kill_session(p.pid)


def test_a_killed_head_is_one_line_and_the_kernel_goes_on_after_a_restart(head, tmp_path):
    from lepton_lab.store import Store

    home = tmp_path / "home"
    k = KernelClient(dict(head["env"], RAY_ADDRESS=head["address"], LEPTON_HOME=str(home)))
    try:
        assert k.execute("%load_ext lepton_lab")[0]["status"] == "ok"
        reply, _ = k.execute("%%lepton --name before\nimport os\nx = 41\npid = os.getpid()",
                             timeout=180)
        assert reply["status"] == "ok", reply
        kernel_pid = k.km.provisioner.process.pid
        # a warm group (idle from now on) and a detached job, both on the head's node
        reply, _ = k.execute("%%lepton --workers 1 --name warm\ng = 1", timeout=180)
        assert reply["status"] == "ok", reply
        reply, _ = k.execute("%%lepton --detach --name away\nimport time\ntime.sleep(600)",
                             timeout=120)
        assert reply["status"] == "ok", reply

        # (a) a one-shot cell is running when the head is killed
        box: dict = {}
        cell = "%%lepton --name during\nimport time\ntime.sleep(600)"
        runner = threading.Thread(target=lambda: box.update(r=k.execute(cell, timeout=120)))
        runner.start()
        store = Store(home / "state.sqlite")
        deadline = time.monotonic() + 60
        while not [j for j in store.list_jobs() if j.name == "during"]:
            assert time.monotonic() < deadline, "the cell never started"
            time.sleep(0.2)
        time.sleep(1.0)
        head["kill"]()
        killed = time.monotonic()
        runner.join(60)
        reply, _ = box["r"]
        waited = reply["t"] - killed
        line = _error(reply)
        assert "ClusterUnavailable" in line and "stopped answering" in line, line
        assert waited < 10, f"the cell took {waited:.1f} s to fail after the head died"
        jobs = {j.name: j for j in store.list_jobs()}
        assert jobs["during"].status == "lost" and "stopped answering" in jobs["during"].error

        # (b) the idle warm group's next cell, and any cell: one line at once, nothing hangs
        t0 = time.monotonic()
        line = _error(k.execute("%%lepton --workers 1\ng += 1", timeout=60)[0])
        assert "ClusterUnavailable" in line and time.monotonic() - t0 < 10, line
        line = _error(k.execute("%%lepton\ny = 1", timeout=60)[0])
        assert "ClusterUnavailable" in line

        # the head comes back: the same kernel (variables kept) runs cells again
        head["start"]()
        reply, _ = k.execute("%%lepton --name after\nz = x + 1", timeout=180)
        assert reply["status"] == "ok", reply
        reply, msgs = k.execute("print(z, x)")
        assert "42 41" in text_of(msgs)
        reply, _ = k.execute("%%lepton --workers 1 --name warm-again\ng = 2", timeout=180)
        assert reply["status"] == "ok", reply                       # a new group

        # (c) the detached job of the old head is recorded as lost
        reply, msgs = k.execute("%lepton jobs")
        assert reply["status"] == "ok", reply
        jobs = {j.name: j for j in store.list_jobs()}
        assert jobs["away"].status == "lost", jobs["away"]

        # Ray ends a driver 60 s after its head went away; this kernel must still be the same
        time.sleep(max(0.0, killed + 65 - time.monotonic()))
        reply, _ = k.execute("%%lepton --name much-later\nw = 3", timeout=120)
        assert reply["status"] == "ok", reply
        assert k.km.provisioner.process.pid == kernel_pid and k.km.is_alive()
        record("head_killed", tried=1, survived=1, seconds_to_error=round(waited, 1),
               data_lost=0)
    finally:
        k.stop()


def test_a_dead_embedded_cluster_is_replaced_by_the_next_cell_which_says_so(tmp_path, cluster):
    import json

    home = tmp_path / "home"
    env = dict(os.environ, LEPTON_HOME=str(home), LEPTON_AUTOSTART="0")
    env.pop("RAY_ADDRESS", None)
    k = KernelClient(env)
    try:
        assert k.execute("%load_ext lepton_lab")[0]["status"] == "ok"
        reply, _ = k.execute("%%lepton\nx = 1", timeout=240)
        assert reply["status"] == "ok", reply
        old = json.loads((home / "cluster.json").read_text())
        box: dict = {}
        cell = "%%lepton --name during\nimport time\ntime.sleep(600)"
        runner = threading.Thread(target=lambda: box.update(r=k.execute(cell, timeout=120)))
        runner.start()
        time.sleep(4)
        os.killpg(old["pid"], signal.SIGKILL)
        killed = time.monotonic()
        runner.join(60)
        reply, _ = box["r"]
        line = _error(reply)
        assert "embedded Ray cluster" in line and "next cell starts a fresh one" in line, line
        assert reply["t"] - killed < 10
        reply, msgs = k.execute("%%lepton\ny = x + 1", timeout=240)
        assert reply["status"] == "ok", reply
        assert "had stopped; started a fresh one" in text_of(msgs)
        new = json.loads((home / "cluster.json").read_text())
        assert new["pid"] != old["pid"]
        reply, msgs = k.execute("print('y is', y)")
        assert "y is 2" in text_of(msgs)
    finally:
        k.execute("from lepton_lab import cluster as _c; _c.stop_embedded()", timeout=60)
        k.stop()


def test_an_endpoint_of_a_killed_head_is_lost_and_redeployed_with_its_token(head, tmp_path):
    """(d) an endpoint serves when its head is killed: a request is one line at once, the
    listing says NO CLUSTER, then LOST once the head is back; `%lepton redeploy` serves the
    same model again and the token the clients hold still works."""
    home = tmp_path / "home"
    port = free_port()
    k = KernelClient(dict(head["env"], RAY_ADDRESS=head["address"], LEPTON_HOME=str(home),
                          LEPTON_SERVE_PORT=str(port)))
    try:
        assert k.execute("%load_ext lepton_lab")[0]["status"] == "ok"
        reply, msgs = k.execute(
            "import torch, numpy as np\ntorch.manual_seed(0)\n"
            "model = torch.nn.Linear(4, 2)\nX = np.ones((3, 4), dtype=np.float32)\n"
            "%lepton register model tiny", timeout=120)
        assert reply["status"] == "ok", (reply, text_of(msgs))
        reply, msgs = k.execute("info = %lepton deploy tiny --name tiny-api --cpus 0.5 "
                                "--max-batch 1", timeout=300)
        assert reply["status"] == "ok", (reply, text_of(msgs))
        reply, msgs = k.execute("before = %lepton predict tiny-api X\nprint(np.shape(before))",
                                timeout=60)
        assert reply["status"] == "ok" and "(3, 2)" in text_of(msgs), (reply, text_of(msgs))

        head["kill"]()
        t0 = time.monotonic()
        line = _error(k.execute("%lepton predict tiny-api X", timeout=60)[0])
        assert "does not answer" in line and time.monotonic() - t0 < 10, line
        reply, msgs = k.execute("%lepton endpoints", timeout=60)
        assert reply["status"] == "ok" and "NO CLUSTER" in text_of(msgs), (reply, text_of(msgs))

        head["start"]()
        reply, msgs = k.execute("%lepton endpoints", timeout=120)
        assert reply["status"] == "ok" and "LOST" in text_of(msgs), (reply, text_of(msgs))
        reply, msgs = k.execute("%lepton redeploy tiny-api", timeout=300)
        assert reply["status"] == "ok", (reply, text_of(msgs))
        assert "same token" in text_of(msgs)
        # the token from the first deploy (the one the clients hold) is still the one
        reply, msgs = k.execute("after = %lepton predict tiny-api X --token-var info\n"
                                "print(np.allclose(before, after))", timeout=60)
        assert reply["status"] == "ok" and "True" in text_of(msgs), (reply, text_of(msgs))
        reply, msgs = k.execute("%lepton endpoints", timeout=60)
        assert "RUNNING" in text_of(msgs) and "LOST" not in text_of(msgs), text_of(msgs)
        record("endpoint_head_killed", tried=1, survived=1, data_lost=0)
    finally:
        k.stop()
