"""An existing cluster started as separate processes: `ray start --head` plus a second node
joined with `ray start --address`, used from a real kernel through RAY_ADDRESS."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import KernelClient, free_port, text_of

pytestmark = pytest.mark.integration

RAY = str(Path(sys.executable).parent / "ray")



def _start(args: list[str], log: Path, env: dict, timeout: float = 240) -> subprocess.Popen:
    out = open(log, "w")
    proc = subprocess.Popen([RAY, "start", "--block", *args], stdout=out, stderr=subprocess.STDOUT,
                            env=env, start_new_session=True)
    deadline = time.monotonic() + timeout
    while "Ray runtime started" not in log.read_text(errors="replace"):
        if proc.poll() is not None or time.monotonic() > deadline:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            raise AssertionError(f"ray start failed: {log.read_text()[-2000:]}")
        time.sleep(0.2)
    return proc


@pytest.fixture(scope="module")
def external(tmp_path_factory, cluster):
    tmp = tmp_path_factory.mktemp("external")
    port = free_port()
    # an admin's cluster with Ray's token authentication, as Ray 2.60 recommends
    # The head gives each Ray Client its own server process and waits 30 s for it by default;
    # on a 2-core CI box running the suite that start can take longer, so the admin allows more.
    env = dict(os.environ, RAY_AUTH_MODE="token", RAY_USAGE_STATS_ENABLED="0",
               RAY_CLIENT_SERVER_CHECK_CHANNEL_TIMEOUT_S="120", RAY_AUTH_TOKEN=secrets.token_hex(32),
               # the Ray Client proxy forks a server per client while its gRPC threads run;
               # gRPC's epoll1 poller then sometimes aborts the proxy ("Check failed:
               # next_worker->state == KICKED"). The poll poller has no such race.
               GRPC_POLL_STRATEGY="poll")
    env.pop("RAY_ADDRESS", None)
    procs = []
    client_port = free_port()
    try:
        procs.append(_start(["--head", "--port", str(port), "--node-ip-address", "127.0.0.1",
                             "--num-cpus", "1", "--include-dashboard", "false",
                             "--ray-client-server-port", str(client_port)], tmp / "head.log", env))
        procs.append(_start(["--address", f"127.0.0.1:{port}", "--node-ip-address", "127.0.0.1",
                             "--num-cpus", "1"], tmp / "worker.log", env))
        yield {"address": f"127.0.0.1:{port}", "client": f"ray://127.0.0.1:{client_port}",
               "env": env, "tmp": tmp}
    finally:
        for p in reversed(procs):
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_cells_run_on_an_existing_two_node_cluster(external, tmp_path):
    home = tmp_path / "home"
    env = dict(external["env"], RAY_ADDRESS=external["address"], LEPTON_HOME=str(home))
    k = KernelClient(env)
    try:
        k.execute("%load_ext lepton_lab")
        reply, msgs = k.execute("%%lepton\nimport ray\nnode = ray.get_runtime_context()"
                                ".get_node_id()")
        assert reply["status"] == "ok", (reply, text_of(msgs))
        assert external["address"] in text_of(msgs)  # the announced cluster is the external one
        reply, msgs = k.execute("%lepton status")
        text = [m["content"]["data"]["text/plain"] for m in msgs
                if m["msg_type"] == "display_data"][0]
        assert "nodes (2 alive)" in text and external["address"] in text
        # one CPU per node: the two ranks must land on different nodes; gloo across them
        reply, msgs = k.execute(
            "%%lepton --workers 2 --all-ranks\nimport ray, torch, torch.distributed as dist\n"
            "t = torch.tensor([dist.get_rank() + 1.0]); dist.all_reduce(t)\n"
            "print('node', ray.get_runtime_context().get_node_id(), 'sum', t.item())")
        assert reply["status"] == "ok", (reply, text_of(msgs))
        lines = [ln for ln in text_of(msgs).splitlines() if " node " in ln]
        assert len(lines) == 2 and all(ln.endswith("sum 3.0") for ln in lines)
        assert len({ln.split()[3] for ln in lines}) == 2, lines
        k.execute("%lepton group stop")
    finally:
        k.stop()
    assert not (home / "cluster.json").exists()  # no embedded cluster was started


def test_ray_client_address(external, tmp_path):
    env = dict(external["env"], RAY_ADDRESS=external["client"], LEPTON_HOME=str(tmp_path))
    k = KernelClient(env)
    try:
        k.execute("%load_ext lepton_lab")
        k.execute("a = 20")
        reply, msgs = k.execute("%%lepton\nimport time\nprint('one', flush=True)\n"
                                "time.sleep(1)\nb = a + 1")
        assert reply["status"] == "ok", (reply, text_of(msgs))
        assert "one" in text_of(msgs)
        reply, msgs = k.execute("print(b)")
        assert text_of(msgs).strip() == "21"
        reply, msgs = k.execute("%%lepton --workers 2\nx = 1")
        assert reply["status"] == "error" and "ray://" in reply["evalue"] + text_of(msgs)
    finally:
        k.stop()


def test_unreachable_address_is_one_line_and_never_falls_back(cluster, tmp_path):
    home = tmp_path / "home"
    env = dict(os.environ, RAY_ADDRESS=f"127.0.0.1:{free_port()}", LEPTON_HOME=str(home))
    k = KernelClient(env)
    try:
        k.execute("%load_ext lepton_lab")
        t = time.monotonic()
        reply, msgs = k.execute("%%lepton\nx = 1")
        assert time.monotonic() - t < 15
        assert reply["status"] == "error" and reply["ename"] == "ClusterUnavailable"
        assert len(reply["traceback"]) == 1 and "cannot reach" in reply["traceback"][0]
    finally:
        k.stop()
    assert not (home / "cluster.json").exists()


def test_version_mismatch_fails_fast_naming_the_package(cluster, monkeypatch):
    """The real probe runs on the real cluster; the kernel pretends to have another torch."""
    from lepton_lab import cluster as lc
    from lepton_lab.errors import VersionMismatch

    real = lc.local_versions()
    monkeypatch.setattr(lc, "local_versions", lambda: dict(real, torch="0.0.1"))
    with pytest.raises(VersionMismatch) as info:
        lc.check_versions(lc.current())
    msg = str(info.value)
    assert "torch 0.0.1 (kernel)" in msg and real["torch"] in msg
    assert "python" not in msg.split("torch")[0]  # only the differing package is named
