"""``%%lepton train --dp-epsilon``: differential privacy with real Opacus, real Ray Train and
real torch.distributed (gloo) on 2 ranks, through the real magic, on sklearn's digits."""

from __future__ import annotations

import re

import pytest

from .conftest import digits_in, wait_for_free_cpus

pytestmark = pytest.mark.integration

EPOCHS = 4
# rank 1 dies once, in epoch 1 (after the checkpoint of epoch 0): the restart must resume the
# accountant with the model
LOOP = f"""
import os, time, torch
import lepton_lab.training as lt
torch.manual_seed(0)
model = lt.prepare_model(torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(),
                                             torch.nn.Linear(64, 10)))
opt = torch.optim.SGD(model.parameters(), lr=1.0)
loader = lt.prepare_loader((X[:1400], Y[:1400]), batch_size=32)
model, opt, loader = lt.make_private(model, opt, loader, epochs={EPOCHS})
for epoch in lt.epochs({EPOCHS}, model=model, optimizer=opt):
    for xb, yb in loader:
        opt.zero_grad(); loss = torch.nn.functional.cross_entropy(model(xb), yb)
        loss.backward(); opt.step()
        lt.report(loss=loss.item())
    if epoch == 1 and lt.rank() == 1 and lt._helpers._RUN.attempt == 1:
        time.sleep(3)                    # Ray Train registers the reported checkpoints ...
        os.kill(os.getpid(), 9)          # ... then a worker process dies mid-run
with torch.no_grad():
    preds = model(X[1400:]).argmax(1)
"""


@pytest.fixture
def digits_ip(ip):
    with digits_in(ip, "model", "preds", "net", "trained"):
        yield ip


def _train_runs() -> list:
    from lepton_lab.store import get_store

    return get_store().list_runs(kind="train", limit=1)


@pytest.mark.timeout(600)   # Ray Train starts the worker group twice
def test_two_ranks_train_privately_within_the_budget_across_a_restart(digits_ip, capsys):
    import torch

    res = digits_ip.run_cell("%%lepton train --workers 2 --max-failures 1 --dp-epsilon 3 "
                             "--name digits-dp\n" + LOOP)
    assert res.success, res.error_in_exec
    err = capsys.readouterr().err
    assert re.search(r"resumed from the checkpoint of epoch \d \(attempt 2\)", err), err[-3000:]
    run = _train_runs()[0]
    assert run.status == "succeeded" and run.name == "digits-dp"
    eps = run.metrics["dp_epsilon"]
    # within the budget, and spent in full: a restart that forgot the first attempt's steps
    # would end at epsilon(3 of 4 epochs) = 2.71 (4 of 4: 2.995)
    assert 2.9 < eps <= 3.0, run.metrics
    assert run.metrics["epoch"] == EPOCHS - 1
    curve = [p["dp_epsilon"] for p in run.history if "dp_epsilon" in p]   # rank 0, each epoch
    assert len(curve) >= EPOCHS and curve == sorted(curve), curve      # never reset
    ns = digits_ip.user_ns
    # the model comes back as the plain module, without Opacus's hooks, predicting as on rank 0
    assert type(ns["model"]) is torch.nn.Sequential
    assert not any(m._forward_hooks for m in ns["model"].modules())
    with torch.no_grad():
        assert torch.equal(ns["model"](ns["X"][1400:]).argmax(1), ns["preds"])
    acc = (ns["preds"] == ns["Y"][1400:]).float().mean().item()
    assert acc > 0.6, acc      # chance is 0.1; 0.834 and 0.864 where measured (2 ranks)
    wait_for_free_cpus(timeout=10)


def test_a_cell_without_make_private_is_refused_before_anything_starts(digits_ip):
    from IPython.core.error import UsageError  # the magic's one line for a LeptonUsageError

    before = _train_runs()
    res = digits_ip.run_cell(
        "%%lepton train --workers 2 --dp-epsilon 3\n"
        "import torch, lepton_lab.training as lt\n"
        "model = lt.prepare_model(torch.nn.Linear(64, 10))\n"
        "for epoch in lt.epochs(2, model=model):\n"
        "    pass\n")
    err = res.error_in_exec
    assert isinstance(err, UsageError) and "\n" not in str(err)
    assert "lepton.training.make_private(model, optimizer, loader, epochs=N)" in str(err)
    assert _train_runs() == before                         # nothing was submitted
    # a module read from the notebook with a layer Opacus cannot train: refused here too
    digits_ip.user_ns["net"] = torch_bn_net()
    res = digits_ip.run_cell(
        "%%lepton train --dp-epsilon 3\n"
        "import torch, lepton_lab.training as lt\n"
        "model = lt.prepare_model(net)\n"
        "opt = torch.optim.SGD(model.parameters(), lr=0.1)\n"
        "loader = lt.prepare_loader((X, Y), batch_size=64)\n"
        "model, opt, loader = lt.make_private(model, opt, loader, epochs=1)\n")
    err = res.error_in_exec
    assert isinstance(err, UsageError) and "\n" not in str(err)
    assert str(err).startswith("'net': layer '1' (BatchNorm1d)") and "ModuleValidator.fix" \
        in str(err)
    assert _train_runs() == before


def test_a_model_built_in_the_cell_that_opacus_cannot_train_fails_at_once(digits_ip):
    from IPython.core.error import UsageError

    res = digits_ip.run_cell(
        "%%lepton train --max-failures 2 --dp-epsilon 3\n"
        "import torch, lepton_lab.training as lt\n"
        "model = lt.prepare_model(torch.nn.Sequential(torch.nn.Linear(64, 32),\n"
        "                         torch.nn.BatchNorm1d(32), torch.nn.Linear(32, 10)))\n"
        "opt = torch.optim.SGD(model.parameters(), lr=0.1)\n"
        "loader = lt.prepare_loader((X, Y), batch_size=64)\n"
        "model, opt, loader = lt.make_private(model, opt, loader, epochs=1)\n"
        "trained = True\n")
    err = res.error_in_exec
    assert isinstance(err, UsageError), err
    text = str(err)
    assert "\n" not in text and "layer '1' (BatchNorm1d)" in text, text
    assert "opacus.validators.ModuleValidator.fix(model)" in text
    run = _train_runs()[0]
    assert run.status == "failed" and "BatchNorm1d" in (run.error or "")
    assert "trained" not in digits_ip.user_ns
    wait_for_free_cpus(timeout=10)


def torch_bn_net():
    import torch

    return torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.BatchNorm1d(32),
                               torch.nn.Linear(32, 10))
