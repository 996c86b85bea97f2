"""bench/gpu_check.py --dry-run: every part of the one-call GPU check runs its CPU half on the
shared cluster, and a failing part is reported without stopping the others. (On a lent GPU
host the same script runs the GPU halves; see docs/benchmarks.md.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from .conftest import REPO

pytestmark = pytest.mark.integration


@pytest.mark.timeout(900)
def test_gpu_check_dry_run_runs_every_part_and_writes_json_and_markdown(tmp_path, cluster):
    env = dict(os.environ)          # LEPTON_HOME: the parts use the session's cluster
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_check.py"), "--dry-run",
                           "--out", str(tmp_path)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=900)
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    results = report["results"]
    assert set(results) == {"gpu_tests", "cell", "nccl_group", "bf16_train", "cupy_preprocess",
                            "compress", "serve_gpu", "fsdp"}
    failed = {k: v.get("tail", v.get("error")) for k, v in results.items() if not v["ok"]}
    assert not failed and proc.returncode == 0, failed
    assert results["nccl_group"]["backend"] == "gloo"          # the CPU half of the group
    assert results["cupy_preprocess"]["cpu_device"] == "cpu"
    assert {r["variant"] for r in results["compress"]["variants"]} >= {"original", "bf16"}
    assert results["serve_gpu"]["p50_ms"] > 0 and results["fsdp"]["samples_s"] > 0
    table = (tmp_path / "gpu_check.md").read_text()
    assert table.count("| yes |") == 8 and report["facts"]["dry"] is True


def test_a_failing_part_is_reported_and_the_rest_still_run(tmp_path, cluster):
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_check.py"), "--dry-run",
                           "--out", str(tmp_path), "--parts", "cupy_preprocess,cell"],
                          cwd=REPO, env=dict(os.environ, LEPTON_GPU_CHECK_BREAK="cupy_preprocess"),
                          capture_output=True, text=True, timeout=300)
    results = json.loads((tmp_path / "gpu_check.json").read_text())["results"]
    assert proc.returncode == 1
    assert not results["cupy_preprocess"]["ok"] and "broken on purpose" in \
        results["cupy_preprocess"]["error"]
    assert results["cell"]["ok"]
