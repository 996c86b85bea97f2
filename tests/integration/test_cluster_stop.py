"""``lepton down`` (``lepton cluster stop``) stops the embedded Ray gracefully (raylet, agents, GCS in turn, as
``ray stop`` does), well within its grace time, and leaves no process of that cluster.

Its own embedded cluster in its own LEPTON_HOME (not the session's shared one)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import psutil
import pytest

pytestmark = pytest.mark.integration


def _session_processes(sid: int) -> list[str]:
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] != "Z":      # session id; not a zombie
            out.append(entry)
    return out


def test_cluster_stop_is_graceful_quick_and_complete(tmp_path):
    env = dict(os.environ, LEPTON_HOME=str(tmp_path))
    env.pop("RAY_ADDRESS", None)
    lepton = [sys.executable, "-m", "lepton_lab.cli"]
    start = subprocess.run(lepton + ["up"], env=env, capture_output=True, text=True,
                           timeout=180)
    assert start.returncode == 0, start.stderr[-2000:]
    pid = json.loads((tmp_path / "cluster.json").read_text())["pid"]
    status = subprocess.run(lepton + ["cluster", "status"], env=env, capture_output=True,
                            text=True, timeout=60)
    assert f"(pid {pid}, up" in status.stdout, status.stdout + status.stderr
    members = _session_processes(pid)
    assert len(members) >= 3                      # the leader, GCS, raylet and more
    # "quiet": little load lately and now (the 1-min load average lags: a test that just
    # ended may still be winding down its kernels and workers)
    quiet = os.getloadavg()[0] < 1.5 and psutil.cpu_percent(interval=1.0) < 25
    t0 = time.monotonic()
    stop = subprocess.run(lepton + ["down"], env=env, capture_output=True, text=True,
                          timeout=60)
    took = time.monotonic() - t0
    assert stop.returncode == 0 and "stopped in" in stop.stdout, stop.stderr[-2000:]
    left = _session_processes(pid)
    if left:
        for p in left:
            subprocess.run(["kill", "-9", p])
    assert left == [], f"processes of the stopped cluster are still running: {left}"
    assert took < 20.0, f"cluster stop took {took:.1f} s"
    if quiet:
        # Ray's own orderly shutdown, well inside the grace time, with no SIGKILL. On a busy
        # machine it can take longer (bench/dispatch.py's cold part measures it with the load)
        assert "(gracefully)" in stop.stdout and took < 3.0, (stop.stdout, took)
    assert not (tmp_path / "cluster.json").exists()


def test_up_with_idle_stop_stops_the_cluster_when_nothing_runs(tmp_path):
    env = dict(os.environ, LEPTON_HOME=str(tmp_path))
    env.pop("RAY_ADDRESS", None)
    lepton = [sys.executable, "-m", "lepton_lab.cli"]
    up = subprocess.run(lepton + ["up", "--idle-stop", "0.1"], env=env, capture_output=True,
                        text=True, timeout=180)
    assert up.returncode == 0, up.stderr[-2000:]
    assert "stops after 0.1 min" in up.stdout, up.stdout
    pid = json.loads((tmp_path / "cluster.json").read_text())["pid"]
    t0 = time.monotonic()
    while (tmp_path / "cluster.json").exists() and time.monotonic() - t0 < 90:
        time.sleep(0.5)
    waited = time.monotonic() - t0
    left = _session_processes(pid)
    for p in left:
        subprocess.run(["kill", "-9", p])
    assert not (tmp_path / "cluster.json").exists(), "the idle cluster was not stopped in 90 s"
    assert left == [], f"processes of the idle-stopped cluster are still running: {left}"
    assert waited >= 4.0, f"stopped after {waited:.1f} s, before its idle time of 6 s"
    assert "idle for 0.1 min: stopped" in (tmp_path / "idle-stop.log").read_text()
    status = subprocess.run(lepton + ["cluster", "status"], env=env, capture_output=True,
                            text=True, timeout=60)
    assert "no embedded cluster is running" in status.stdout
