"""``%%lepton train`` and ``%%lepton tune`` on the shared local cluster: real Ray Train and
Ray Tune, real worker processes, real digits."""

from __future__ import annotations

import _thread
import os
import re
import threading
import time

import pytest

from .conftest import digits_in, wait_for_free_cpus

pytestmark = pytest.mark.integration

LOOP = """
import os, time, torch
import lepton_lab.training as lt
torch.manual_seed(0)
model = lt.prepare_model(torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(),
                                             torch.nn.Linear(32, 10)))
opt = torch.optim.Adam(model.parameters(), lr=0.01)
loader = lt.prepare_loader((X[:1400], Y[:1400]), batch_size=64)
first_epoch = None
for epoch in lt.epochs(5, model=model, optimizer=opt):
    first_epoch = epoch if first_epoch is None else first_epoch
    for xb, yb in loader:
        opt.zero_grad(); loss = torch.nn.functional.cross_entropy(model(xb), yb)
        loss.backward(); opt.step()
        lt.report(loss=loss.item())
    if epoch == 2 and lt.rank() == 1 and lt._helpers._RUN.attempt == 1:
        time.sleep(3)                    # Ray Train registers the reported checkpoints ...
        os.kill(os.getpid(), 9)          # ... then a worker process dies mid-run
with torch.no_grad():
    preds = model(X[1400:]).argmax(1)
"""


@pytest.fixture
def digits_ip(ip):
    with digits_in(ip, "model", "preds", "first_epoch", "best_config", "tune_results"):
        yield ip


def _latest_run(kind: str):
    from lepton_lab.store import get_store

    return get_store().list_runs(kind=kind, limit=1)[0]


def test_a_killed_worker_resumes_from_its_checkpoint(digits_ip, capsys):
    ip = digits_ip
    res = ip.run_cell("%%lepton train --workers 2 --max-failures 1 --name digits-ft\n" + LOOP)
    assert res.success, res.error_in_exec
    err = capsys.readouterr().err
    assert "restarted after a failure" in err
    found = re.search(r"resumed from the checkpoint of epoch (\d+) \(attempt 2\)", err)
    assert found, err[-3000:]
    ns = ip.user_ns
    # the second attempt started right after the latest registered checkpoint (epoch 1 or 2;
    # the epoch-2 one may still be in flight when the worker dies)
    assert int(found.group(1)) >= 1 and ns["first_epoch"] == int(found.group(1)) + 1
    run = _latest_run("train")
    assert run.status == "succeeded" and run.name == "digits-ft"
    assert run.metrics["epoch"] == 4       # five epochs in all, counted once
    assert set(run.metrics["throughput"]) == {"0", "1"}    # samples/s of each rank
    assert run.history and run.last_checkpoint and os.path.isdir(run.last_checkpoint)
    # the model came back and predicts in the notebook exactly as it did on rank 0
    import torch

    with torch.no_grad():
        assert torch.equal(ns["model"](ns["X"][1400:]).argmax(1), ns["preds"])
    assert (ns["preds"] == ns["Y"][1400:]).float().mean() > 0.85
    wait_for_free_cpus(timeout=10)


def test_a_rank_that_raises_fails_the_job_with_its_traceback(digits_ip):
    res = digits_ip.run_cell(
        "%%lepton train --workers 2\n"
        "import lepton_lab.training as lt\n"
        "x = 1\n"
        "if lt.rank() == 1:\n"
        "    raise ValueError('bad shard on rank 1')\n")
    from lepton_lab.errors import RemoteError

    err = res.error_in_exec
    assert isinstance(err, RemoteError), err
    assert err.where == "rank 1" and "bad shard on rank 1" in err.evalue
    assert "Cell line 5" in "\n".join(err._render_traceback_())
    assert _latest_run("train").status == "failed"
    wait_for_free_cpus(timeout=10)


def test_interrupt_stops_every_rank_and_frees_the_cpus(digits_ip, tmp_path):
    marker = tmp_path / "started"
    digits_ip.user_ns["MARK"] = str(marker)

    def interrupt_when_training() -> None:
        deadline = time.monotonic() + 120
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)
        _thread.interrupt_main()

    threading.Thread(target=interrupt_when_training, daemon=True).start()
    t = time.monotonic()
    res = digits_ip.run_cell(
        "%%lepton train --workers 2\n"
        "import time, pathlib\n"
        "pathlib.Path(MARK).touch()\n"
        "for _ in range(1200):\n"
        "    time.sleep(0.05)\n")
    assert isinstance(res.error_in_exec, KeyboardInterrupt)
    assert time.monotonic() - t < 120
    assert _latest_run("train").status == "cancelled"
    wait_for_free_cpus(timeout=5)  # both workers gone, the placement group removed


def test_nan_loss_is_flagged_and_stops_the_run(digits_ip, capsys):
    res = digits_ip.run_cell(
        "%%lepton train --workers 2 --stop-on-nan\n"
        "import lepton_lab.training as lt\n"
        "for step in range(10):\n"
        "    lt.report(step, loss=float('nan') if step == 3 else 1.0)\n"
        "reached_the_end = True\n")
    from lepton_lab.errors import LeptonError

    err = res.error_in_exec
    assert isinstance(err, LeptonError) and "--stop-on-nan" in str(err)
    assert "loss is nan at step 3" in capsys.readouterr().err
    assert "reached_the_end" not in digits_ip.user_ns
    from lepton_lab.store import get_store

    run = _latest_run("train")
    assert run.status == "failed"
    assert any("loss is nan at step 3" in w for w in get_store().get_job(run.job_id).warnings)
    wait_for_free_cpus(timeout=10)


def test_tune_runs_a_few_samples_and_returns_the_best(digits_ip):
    res = digits_ip.run_cell(
        "%%lepton tune --samples 3 --scheduler asha --metric acc --mode max\n"
        "import torch\n"
        "import lepton_lab.training as lt\n"
        "search_space = {'lr': tune.loguniform(1e-2, 1e-1), 'width': tune.choice([8, 32])}\n"
        "torch.manual_seed(0)\n"
        "net = torch.nn.Sequential(torch.nn.Linear(64, config['width']), torch.nn.ReLU(),\n"
        "                          torch.nn.Linear(config['width'], 10))\n"
        "opt = torch.optim.Adam(net.parameters(), lr=config['lr'])\n"
        "for epoch in lt.epochs(3, model=net, optimizer=opt):\n"
        "    for i in range(0, 1400, 100):\n"
        "        opt.zero_grad()\n"
        "        torch.nn.functional.cross_entropy(net(X[i:i+100]), Y[i:i+100]).backward()\n"
        "        opt.step()\n"
        "    with torch.no_grad():\n"
        "        lt.report(acc=(net(X[1400:]).argmax(1) == Y[1400:]).float().mean().item())\n")
    assert res.success, res.error_in_exec
    ns = digits_ip.user_ns
    table = ns["tune_results"]
    assert len(table) == 3 and "acc" in table.columns
    best = table.iloc[0]
    assert ns["best_config"]["lr"] == pytest.approx(best["config/lr"])
    assert best["acc"] == table["acc"].max() and best["acc"] > 0.5
    run = _latest_run("tune")
    assert run.status == "succeeded" and run.metrics["acc"] == pytest.approx(best["acc"])
    wait_for_free_cpus(timeout=10)


def test_a_detached_training_run_is_attached_from_the_store(digits_ip, capsys):
    import torch

    res = digits_ip.run_cell(
        "%%lepton train --workers 2 --detach --name detached-digits\n"
        "import torch\n"
        "import lepton_lab.training as lt\n"
        "torch.manual_seed(0)\n"
        "model = lt.prepare_model(torch.nn.Linear(64, 10))\n"
        "opt = torch.optim.SGD(model.parameters(), lr=0.5)\n"
        "for epoch in lt.epochs(3, model=model, optimizer=opt):\n"
        "    for xb, yb in lt.prepare_loader((X[:1400], Y[:1400]), batch_size=128):\n"
        "        opt.zero_grad(); loss = torch.nn.functional.cross_entropy(model(xb), yb)\n"
        "        loss.backward(); opt.step(); lt.report(loss=loss.item())\n")
    assert res.success, res.error_in_exec
    assert "detached" in capsys.readouterr().out
    assert "model" not in digits_ip.user_ns          # the cell returned at once
    digits_ip.run_line_magic("lepton", "attach detached-digits")
    model = digits_ip.user_ns["model"]
    acc = (model(digits_ip.user_ns["X"][1400:]).argmax(1) == digits_ip.user_ns["Y"][1400:])
    assert acc.float().mean().item() > 0.8
    run = _latest_run("train")
    assert run.name == "detached-digits" and run.status == "succeeded"
    assert run.last_checkpoint and len(run.history) >= 3
    from lepton_lab.registry import load_model
    from lepton_lab.store import get_store

    rec = get_store().get_model("detached-digits")     # the trained model is registered
    assert rec.kind == "trained" and rec.run_id == run.id
    x = digits_ip.user_ns["X"][:5]
    assert torch.equal(load_model(rec.ref)(x), model(x))
    wait_for_free_cpus(timeout=10)


def test_a_ray_dataset_is_sharded_per_rank(digits_ip):
    import ray.data

    digits_ip.user_ns["ds"] = ray.data.from_items([{"x": float(i)} for i in range(200)])
    try:
        res = digits_ip.run_cell(
            "%%lepton train --workers 2 --cpus-per-worker 0.5\n"
            "import torch, torch.distributed as dist\n"
            "seen = torch.tensor([0.0, 0.0])\n"
            "for batch in ds.iter_torch_batches(batch_size=32):\n"
            "    seen += torch.tensor([len(batch['x']), batch['x'].sum().item()])\n"
            "mine = int(seen[0])\n"
            "dist.all_reduce(seen)\n"
            "total_rows, total_sum = int(seen[0]), float(seen[1])\n")
        assert res.success, res.error_in_exec
        ns = digits_ip.user_ns
        # every row reached exactly one rank: rank 0 saw only its part of the whole
        assert ns["total_rows"] == 200 and ns["total_sum"] == sum(range(200))
        assert 0 < ns["mine"] < 200
    finally:
        digits_ip.user_ns.pop("ds", None)
    wait_for_free_cpus(timeout=10)
