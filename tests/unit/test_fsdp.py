"""--strategy fsdp without Ray: real FSDP2 over real gloo process groups (one process a rank).

A model is sharded over 2 ranks, trained and checkpointed with torch.distributed.checkpoint;
the checkpoint then resumes on 3 ranks and on 1 (resharding), and the loss continues from
where it stopped. The Ray path (``%%lepton train --strategy fsdp``) is in the integration tier.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

WORKER = Path(__file__).with_name("_fsdp_worker.py")
ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _phase(phase: str, world: int, out: Path, ckpt: Path) -> list[dict]:
    port = _free_port()
    procs = [subprocess.Popen([sys.executable, str(WORKER), phase, str(r), str(world), str(port),
                               str(out), str(ckpt)], cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
             for r in range(world)]
    logs = []
    for p in procs:
        try:
            logs.append(p.communicate(timeout=180)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
    assert all(p.returncode == 0 for p in procs), "\n".join(logs)[-4000:]
    return [json.loads((out / f"{phase}-{r}.json").read_text()) for r in range(world)]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    out = tmp_path_factory.mktemp("fsdp")
    ckpt = out / "ckpt"
    return out, ckpt, _phase("save", 2, out, ckpt)


def test_two_ranks_shard_the_model_and_train(saved):
    _, ckpt, ranks = saved
    assert all(r["sharded"] and r["units"] >= 2 for r in ranks)     # blocks + the root
    assert ranks[0]["losses"][-1] < 0.5 * ranks[0]["losses"][0]
    # each rank holds about half of the parameters (and of Adam's two moments)
    total = sum(p for p in (32 * 64 + 64, 64 * 64 + 64, 64 + 1)) * 4
    for r in ranks:
        assert 0.4 * total <= r["memory"]["params"] <= 0.6 * total
        assert 0.8 * total <= r["memory"]["optim"] <= 1.2 * total + 1024
    # a sharded checkpoint: every rank's shard file plus the metadata and rank 0's state file
    files = {p.name for p in ckpt.iterdir()}
    assert ".metadata" in files and "lepton_state.pt" in files
    assert len([f for f in files if f.endswith(".distcp")]) == 2


def test_the_full_model_comes_back_plain_on_rank_0(saved):
    _, _, ranks = saved
    r0 = ranks[0]
    assert r0["plain_type"] == "Sequential" and not r0["plain_sharded"]
    assert r0["plain_device"] == "cpu"
    assert r0["plain_loss"] == pytest.approx(r0["full_loss"], rel=1e-5)
    assert "plain_type" not in ranks[1]


@pytest.mark.parametrize("world", [3, 1])
def test_a_two_rank_checkpoint_resumes_on_another_world_size(saved, world):
    out, ckpt, ranks = saved
    resumed = _phase(f"resume{world}", world, out, ckpt)
    stopped_at = ranks[0]["full_loss"]
    for r in resumed:
        # the same weights: the loss continues from where the 2-rank run stopped
        assert r["loss_at_resume"] == pytest.approx(stopped_at, rel=1e-4)
        assert r["sharded"] == (world > 1)
    assert resumed[0]["full_loss"] < stopped_at
