"""Encrypted cluster traffic on a real two-node cluster on loopback: the head is the embedded
cluster started by ``lepton up --tls``, the second node joins with the command that
``lepton tls join-command`` prints. A real kernel runs a cell, a warm group spread over both
nodes and a train job there; a process without the certificates is refused in one line within
10 s, and so is a TLS process pointed at a plain cluster."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests._reliability import record

from .conftest import KernelClient, free_port, text_of
from .multinode import kill_session

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

LEPTON = str(Path(sys.executable).parent / "lepton")


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("RAY_USE_TLS", "RAY_TLS_", "RAY_AUTH_"))}
    env.pop("RAY_ADDRESS", None)
    return dict(env, LEPTON_HOME=str(home), LEPTON_AUTOSTART="0", RAY_USAGE_STATS_ENABLED="0")


def _lepton(env: dict[str, str], *args: str, timeout: float = 240) -> str:
    proc = subprocess.run([LEPTON, *args], env=env, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, (args, proc.stdout, proc.stderr)
    return proc.stdout


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory):
    home = tmp_path_factory.mktemp("tls-home")
    env = _env(home)
    out = _lepton(env, "up", "--tls")
    assert "(TLS)" in out, out
    state = json.loads((home / "cluster.json").read_text())
    worker = None
    try:
        join = _lepton(env, "tls", "join-command")
        command = join.strip().splitlines()[-1]
        words = shlex.split(command)
        node_env = dict(env, **dict(w.split("=", 1) for w in words if "=" in w
                                     and not w.startswith("-")))
        argv = [w for w in words if "=" not in w or w.startswith("-")]
        assert argv[:2] == ["ray", "start"], command
        # on this machine beside the head: its own ports, one CPU, a resource that names it
        argv = [str(Path(sys.executable).parent / "ray"), *argv[1:], "--block",
                "--num-cpus", "1", "--resources", json.dumps({"lepton_node_w1": 1}),
                "--dashboard-agent-listen-port", str(free_port()),
                "--dashboard-agent-grpc-port", str(free_port()),
                "--runtime-env-agent-port", str(free_port()),
                "--metrics-export-port", str(free_port())]
        log = home / "worker.log"
        with open(log, "w") as f:
            worker = subprocess.Popen(argv, env=node_env, stdout=f, stderr=subprocess.STDOUT,
                                      start_new_session=True, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 180
        while "Ray runtime started" not in log.read_text(errors="replace"):
            assert worker.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.3)
        yield {"home": home, "env": env, "address": state["address"], "join": join}
    finally:
        if worker is not None:
            kill_session(worker.pid)
            worker.wait(10)
        subprocess.run([LEPTON, "down"], env=env, capture_output=True, timeout=60)


def _refused(env: dict[str, str], address: str) -> tuple[str, float]:
    """Connect a fresh process to ``address``; returns its one line and how long it took."""
    code = ("import sys, time\nfrom lepton_lab import cluster\nt = time.monotonic()\n"
            f"try:\n    cluster.connect({address!r})\nexcept Exception as e:\n"
            "    print(type(e).__name__ + ': ' + str(e))\n"
            "    print(round(time.monotonic() - t, 2))\n    sys.exit(0)\nprint('connected')")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=60)
    lines = proc.stdout.strip().splitlines()
    assert lines and lines[0] != "connected", (proc.stdout, proc.stderr[-2000:])
    return lines[0], float(lines[1])


def test_files_are_owner_only_and_the_join_command_names_them(tls_cluster):
    tls = tls_cluster["home"] / "tls"
    assert oct(tls.stat().st_mode & 0o777) == "0o700"
    for name in ("ca.key", "node.key", "ca.crt", "node.crt"):
        assert oct((tls / name).stat().st_mode & 0o777) == "0o600", name
    join = tls_cluster["join"]
    assert "RAY_USE_TLS=1" in join and str(tls / "ca.crt") in join
    assert f"--address {tls_cluster['address']}" in join
    assert "ca.key" not in join                       # the CA's key never leaves this machine


def test_cells_a_warm_group_and_a_train_job_run_on_the_tls_cluster(tls_cluster):
    k = KernelClient(tls_cluster["env"])
    try:
        reply, msgs = k.execute("%load_ext lepton_lab", timeout=60)
        assert reply["status"] == "ok", reply
        reply, msgs = k.execute("%%lepton\nimport os\ntls = os.environ.get('RAY_USE_TLS')\n"
                                "print('on the cluster')", timeout=180)
        assert reply["status"] == "ok", (reply, text_of(msgs))
        assert "on the cluster" in text_of(msgs)
        reply, msgs = k.execute("print(tls)")
        assert text_of(msgs).strip() == "1"
        reply, msgs = k.execute("%lepton status", timeout=60)
        status = [m["content"]["data"] for m in msgs if m["msg_type"] == "display_data"][0]
        assert "TLS on (encrypted" in status["text/plain"], status
        assert "TLS on" in status["text/html"]

        # three ranks of one CPU: the head has two CPUs, so one rank runs on the joined node
        reply, msgs = k.execute("%%lepton --workers 3 --all-ranks\nimport ray\n"
                                "node = ray.get_runtime_context().get_node_id()\n"
                                "print('node', node)", timeout=240)
        out = text_of(msgs)
        assert reply["status"] == "ok", (reply, out)
        nodes = {line.split()[-1] for line in out.splitlines() if " node " in f" {line}"}
        assert len(nodes) == 2, out
        k.execute("%lepton group stop", timeout=60)

        reply, msgs = k.execute(
            "%%lepton train --workers 2 --name tls-train\nimport torch\n"
            "import lepton_lab.training as lt\ntorch.manual_seed(0)\n"
            "model = lt.prepare_model(torch.nn.Linear(4, 1))\n"
            "opt = torch.optim.SGD(model.parameters(), lr=0.1)\n"
            "x = torch.randn(64, 4); y = x.sum(1, keepdim=True)\n"
            "for epoch in lt.epochs(3, model=model, optimizer=opt):\n"
            "    opt.zero_grad(); loss = torch.nn.functional.mse_loss(model(x), y)\n"
            "    loss.backward(); opt.step(); lt.report(loss=loss.item())\n"
            "final = loss.item()", timeout=300)
        assert reply["status"] == "ok", (reply, text_of(msgs)[-3000:])
        reply, msgs = k.execute("print(type(final).__name__)")
        assert text_of(msgs).strip() == "float"
    finally:
        k.stop()


def test_a_plain_process_is_refused_by_the_tls_cluster_in_one_line(tls_cluster):
    home = tls_cluster["home"]
    # the cluster's token, but not its certificates
    env = dict(_env(home / "plain-client"), RAY_AUTH_MODE="token",
               RAY_AUTH_TOKEN_PATH=str(home / "ray_auth_token"))
    line, seconds = _refused(env, tls_cluster["address"])
    assert line.startswith("ClusterUnavailable:") and "uses TLS but this process does not" in line
    assert seconds < 10, seconds
    record("tls_plain_client_refused", tried=1, survived=1, seconds_to_error=seconds)


def test_a_tls_process_is_told_that_a_plain_cluster_has_no_tls(tls_cluster, cluster):
    env = dict(_env(tls_cluster["home"] / "tls-client"),
               **{k: v for k, v in json.loads(subprocess.run(
                   [sys.executable, "-c", "import json; from lepton_lab import _tls; "
                    "print(json.dumps(_tls.ensure_local()))"],
                   env=tls_cluster["env"], capture_output=True, text=True,
                   timeout=60).stdout).items()})
    line, seconds = _refused(env, cluster.address)
    assert line.startswith("ClusterUnavailable:"), line
    assert "this process uses TLS (RAY_USE_TLS=1) but the Ray cluster" in line, line
    assert seconds < 10, seconds


def test_a_kernel_connects_by_address_with_the_variables_lepton_tls_env_prints(tls_cluster):
    """A user's own kernel (another LEPTON_HOME, no embedded cluster) reaches the TLS cluster
    with `%lepton connect`, given the variables `lepton tls env` prints and the token."""
    exports = _lepton(tls_cluster["env"], "tls", "env")
    tls_vars = dict(shlex.split(line)[1].split("=", 1) for line in exports.strip().splitlines())
    assert tls_vars["RAY_USE_TLS"] == "1", exports
    home = tls_cluster["home"]
    env = dict(_env(home / "by-address"), **tls_vars, RAY_AUTH_MODE="token",
               RAY_AUTH_TOKEN_PATH=str(home / "ray_auth_token"))
    k = KernelClient(env)
    try:
        reply, msgs = k.execute(f"%load_ext lepton_lab\n%lepton connect {tls_cluster['address']}",
                                timeout=120)
        assert reply["status"] == "ok", (reply, text_of(msgs))
        reply, msgs = k.execute("%%lepton\nimport os\nprint('tls', os.environ['RAY_USE_TLS'])",
                                timeout=180)
        assert reply["status"] == "ok", (reply, text_of(msgs))
        assert "tls 1" in text_of(msgs)
        assert not (home / "by-address" / "cluster.json").exists()   # nothing embedded started
    finally:
        k.stop()
