"""The warm group (--workers N): state across cells, DDP, rank output, interrupt."""

from __future__ import annotations

import threading
import time

import pytest

from .conftest import wait_for_free_cpus

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def group_ip(ip):
    """The shell; the module's tests share one warm group, stopped at the end (it holds CPUs
    that the other modules' one-shot cells need)."""
    yield ip
    from lepton_lab.remote._group import stop_group

    stop_group()


def test_group_keeps_state_and_ddp_works(group_ip, capsys):
    ip = group_ip
    ip.user_ns["scale"] = 3.0
    res = ip.run_cell(
        "%%lepton --workers 2\n"
        "import torch, torch.distributed as dist, torch.nn as nn\n"
        "torch.manual_seed(0)\n"
        "model = nn.parallel.DistributedDataParallel(nn.Linear(4, 1))\n"
        "opt = torch.optim.SGD(model.parameters(), lr=0.1)\n"
        "rank = dist.get_rank()\n"
        "x = torch.full((8, 4), float(rank + 1)) * scale\n"
        "loss = model(x).pow(2).mean(); loss.backward(); opt.step()\n"
        "w = [p.detach().clone() for p in model.parameters()]\n"
        "gathered = [torch.zeros_like(w[0]) for _ in range(dist.get_world_size())]\n"
        "dist.all_gather(gathered, w[0])\n"
        "same = all(torch.equal(g, gathered[0]) for g in gathered)\n"
        "print('rank', rank, 'same weights', same)\n")
    assert res.success, res.error_in_exec
    out = capsys.readouterr().out
    assert "rank 0 same weights True" in out
    assert "[rank 1] rank 1 same weights True" in out  # rank 1 tailed, labelled
    assert ip.user_ns["same"] is True and ip.user_ns["rank"] == 0
    import torch

    assert isinstance(ip.user_ns["model"], torch.nn.Linear)  # DDP unwrapped on the way back
    # the next cell sees the same ranks and their state (model, rank) without re-sending
    res = ip.run_cell("%%lepton --workers 2\nsteps = getattr(model, 'steps', 0) + 1\n"
                      "model.steps = steps\nprint('rank', rank, 'steps', steps)")
    assert res.success, res.error_in_exec
    assert ip.user_ns["steps"] == 1
    res = ip.run_cell("%%lepton --workers 2\nsteps = model.steps")
    assert res.success, res.error_in_exec
    assert ip.user_ns["steps"] == 1
    from lepton_lab.remote._group import group_info

    info = group_info()
    assert info["world"] == 2 and info["backend"] == "gloo"
    assert all(r["cells"] == 3 for r in info["ranks"])


def test_rank_error_and_all_ranks(group_ip, capsys):
    ip = group_ip
    res = ip.run_cell("%%lepton --workers 2 --all-ranks\nimport torch.distributed as dist\n"
                      "print('hello from', dist.get_rank())\n"
                      "if dist.get_rank() == 1:\n    raise RuntimeError('rank one failed')")
    from lepton_lab.errors import RemoteError

    err = res.error_in_exec
    assert isinstance(err, RemoteError) and err.where == "rank 1"
    assert "Cell line 5" in "\n".join(err._render_traceback_())
    out = capsys.readouterr().out
    assert "[rank 0] hello from 0" in out and "[rank 1] hello from 1" in out


def test_group_interrupt_frees_and_keeps_group(group_ip):
    import _thread

    ip = group_ip
    assert ip.run_cell("%%lepton --workers 2\nkept = 42").success
    threading.Timer(1.5, _thread.interrupt_main).start()
    t = time.monotonic()
    # bounded (30 s), so a lost interrupt fails this test instead of hanging the suite
    res = ip.run_cell("%%lepton --workers 2\nimport time\nfor _ in range(600):\n"
                      "    time.sleep(0.05)")
    assert isinstance(res.error_in_exec, KeyboardInterrupt)
    assert time.monotonic() - t < 1.5 + 2.0
    res = ip.run_cell("%%lepton --workers 2\nkept2 = kept")  # the group kept its state
    assert res.success and ip.user_ns["kept2"] == 42


def test_stuck_collective_is_killed_on_timeout(group_ip):
    ip = group_ip
    assert ip.run_cell("%%lepton --workers 2\nready = True").success  # group warm
    t = time.monotonic()
    res = ip.run_cell("%%lepton --workers 2 --timeout 2\nimport time, torch.distributed as dist\n"
                      "if dist.get_rank() == 0:\n    time.sleep(60)\nelse:\n    dist.barrier()")
    from lepton_lab.errors import CellTimeout

    assert isinstance(res.error_in_exec, CellTimeout)
    assert time.monotonic() - t < 2 + 4
    from lepton_lab.remote._group import group_info

    assert group_info() is None  # the stuck group was killed ...
    wait_for_free_cpus(timeout=3)  # ... and its resources are free


def test_dead_rank_is_reported_and_restart_brings_the_group_back(group_ip, capsys):
    import os
    import signal

    from lepton_lab.remote._group import group_info

    ip = group_ip
    assert ip.run_cell("%%lepton --workers 2\nalive = True").success
    victim = next(r for r in group_info()["ranks"] if r["rank"] == 1)
    os.kill(victim["pid"], signal.SIGKILL)  # as the OOM killer would
    time.sleep(1.0)
    capsys.readouterr()
    ip.run_line_magic("lepton", "group")
    assert "rank 1: DEAD" in capsys.readouterr().out
    ip.run_line_magic("lepton", "group restart")
    info = group_info()
    assert info["world"] == 2 and not any(r.get("dead") for r in info["ranks"])
    res = ip.run_cell("%%lepton --workers 2\nimport torch, torch.distributed as dist\n"
                      "t = torch.ones(1); dist.all_reduce(t); total = t.item()")
    assert res.success and ip.user_ns["total"] == 2.0


def test_rank_dying_in_a_cell_says_so(group_ip):
    ip = group_ip
    res = ip.run_cell("%%lepton --workers 2\nimport os, signal, time, torch.distributed as dist\n"
                      "if dist.get_rank() == 1:\n    os.kill(os.getpid(), signal.SIGKILL)\n"
                      "time.sleep(0.5)")
    from lepton_lab.errors import WorkerDied

    err = res.error_in_exec
    assert isinstance(err, WorkerDied) and "rank 1 died" in str(err)
    assert "next cell starts a new one" in str(err)
    assert ip.run_cell("%%lepton --workers 2\nback = True").success  # a fresh group


def test_resize(group_ip):
    from lepton_lab.remote._group import group_info

    ip = group_ip
    assert ip.run_cell("%%lepton --workers 2 --cpus 0.5\nx = 1").success
    ip.run_line_magic("lepton", "group resize 3")
    info = group_info()
    assert info["world"] == 3 and info["cpus"] == 0.5
    res = ip.run_cell("%%lepton --workers 3 --cpus 0.5\nimport torch.distributed as dist\n"
                      "world = dist.get_world_size()")
    assert res.success and ip.user_ns["world"] == 3
