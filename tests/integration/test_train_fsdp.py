"""``--strategy fsdp`` on the shared local cluster: real Ray Train, real FSDP2 over gloo, real
torch.distributed.checkpoint, real digits. The Ray-free details (units, memory per rank,
resharding onto 1 and 3 processes) are in tests/unit/test_fsdp.py."""

from __future__ import annotations

import os

import pytest

from .conftest import REPO, digits_in

pytestmark = pytest.mark.integration

LOOP = """
import torch
import lepton_lab.training as lt
torch.manual_seed(0)
model = lt.prepare_model(torch.nn.Sequential(
    torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU()),
    torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU()),
    torch.nn.Linear(64, 10)))
opt = torch.optim.Adam(model.parameters(), lr=0.01)
loader = lt.prepare_loader((X[:1400], Y[:1400]), batch_size=64)
losses = []
for epoch in lt.epochs(EPOCHS, model=model, optimizer=opt):
    total = 0.0
    for xb, yb in loader:
        opt.zero_grad(); loss = torch.nn.functional.cross_entropy(model(xb), yb)
        loss.backward(); opt.step(); total += loss.item()
        lt.report(loss=loss.item())
    losses.append(total / len(loader))
sharded = type(model).__name__.startswith("FSDP")
"""


@pytest.fixture
def digits_ip(ip):
    with digits_in(ip, "model", "opt", "losses", "sharded", "EPOCHS", "full", "steps"):
        yield ip


def _latest_run():
    from lepton_lab.store import get_store

    return get_store().list_runs(kind="train", limit=1)[0]


def _accuracy(model, ns) -> float:
    import torch

    with torch.no_grad():
        return float((model(ns["X"][1400:]).argmax(1) == ns["Y"][1400:]).float().mean())


@pytest.mark.timeout(600)   # two Ray Train runs
def test_fsdp_run_brings_the_whole_model_back_and_reshards_from_2_to_3_ranks(digits_ip):
    import torch

    ip, ns = digits_ip, digits_ip.user_ns
    ns["EPOCHS"] = 3
    ns.pop("opt", None)
    res = ip.run_cell("%%lepton train --workers 2 --strategy fsdp --fsdp-min-params 1000 "
                      "--name fsdp-digits\n" + LOOP)
    assert res.success, res.error_in_exec
    first = _latest_run()
    assert first.status == "succeeded" and first.config["strategy"] == "fsdp"
    assert ns["sharded"] is True                 # on the ranks, the model was sharded
    # the model came back whole: a plain module on the CPU that predicts in the notebook
    model = ns["model"]
    assert type(model) is torch.nn.Sequential
    assert all(p.device.type == "cpu" and type(p) is torch.nn.Parameter
               for p in model.parameters())
    assert _accuracy(model, ns) > 0.75            # 3 epochs; chance is 0.1
    assert "opt" not in ns                # its sharded state stays on the ranks, with a reason
    # each rank held its own shard: per-rank memory is recorded with the run
    memory = first.metrics["memory"]
    assert set(memory) == {"0", "1"}
    params = sum(p.numel() * 4 for p in model.parameters())
    for rank in memory.values():
        assert 0.35 * params <= rank["params"] <= 0.65 * params
    # a sharded checkpoint: the metadata, rank 0's state file and both ranks' shards
    files = os.listdir(first.last_checkpoint)
    assert ".metadata" in files and "lepton_state.pt" in files
    assert sum(f.endswith(".distcp") for f in files) == 2
    stopped_at = ns["losses"][-1]
    # the registry has the trained model, so compress and deploy see a plain module
    from lepton_lab.registry import load_model

    assert type(load_model("fsdp-digits")) is torch.nn.Sequential

    # resume the 2-rank checkpoint on 3 ranks: DCP reshards, and the loss goes on from there
    ns["EPOCHS"] = 2
    res = ip.run_cell(f"%%lepton train --workers 3 --cpus-per-worker 0.5 --strategy fsdp "
                      f"--fsdp-min-params 1000 "
                      f"--resume-from {first.id}\n" + LOOP)
    assert res.success, res.error_in_exec
    second = _latest_run()
    assert second.id != first.id and set(second.metrics["memory"]) == {"0", "1", "2"}
    # epoch 0 of the resumed run starts near where the first run stopped (its first
    # epoch's mean loss would be ~2 from scratch), and training continues to improve
    assert ns["losses"][0] < stopped_at * 1.5 + 0.05
    assert ns["losses"][-1] <= ns["losses"][0] * 1.05
    assert _accuracy(ns["model"], ns) > 0.85


def test_fsdp_in_a_warm_group_across_cells(digits_ip):
    import torch

    ip, ns = digits_ip, digits_ip.user_ns
    res = ip.run_cell("%%lepton --workers 2\n"
                      "import torch\nimport lepton_lab.training as lt\n"
                      "torch.manual_seed(0)\n"
                      "model = lt.prepare_model(torch.nn.Sequential(torch.nn.Linear(64, 64), "
                      "torch.nn.ReLU(), torch.nn.Linear(64, 10)), strategy='fsdp', "
                      "min_params=1000)\n"
                      "opt = torch.optim.Adam(model.parameters(), lr=0.01)\n"
                      "sharded = type(model).__name__.startswith('FSDP')\n")
    assert res.success, res.error_in_exec
    assert ns["sharded"] is True
    assert "model" not in ns            # a sharded module stays on the ranks, with a reason
    res = ip.run_cell("%%lepton --workers 2\n"
                      "x, y = lt.shard(X[:1400]), lt.shard(Y[:1400])\n"
                      "for steps in range(60):\n"
                      "    opt.zero_grad()\n"
                      "    loss = torch.nn.functional.cross_entropy(model(x), y)\n"
                      "    loss.backward(); opt.step()\n"
                      "full = lt.full_model(model)\n")
    assert res.success, res.error_in_exec
    full = ns["full"]
    assert type(full) is torch.nn.Sequential and _accuracy(full, ns) > 0.85
    ip.run_line_magic("lepton", "group stop")


def test_large_model_template_trains_sharded_and_generates_text(lepton_home, tmp_path):
    import nbformat

    from lepton_lab.pipeline import RunOptions, run_notebook


    run = run_notebook(REPO / "templates" / "large_model.ipynb", RunOptions(
        parameters=(("epochs", 2), ("steps_per_epoch", 25), ("sample_chars", 80)),
        output=tmp_path / "large_model.ipynb"))
    assert run.status == "succeeded", run.error
    curve = [v for _, v in run.series["val_loss_curve"]]
    assert len(curve) == 2 and curve[1] < curve[0]       # the validation loss falls
    out = nbformat.read(run.output, as_version=4)
    text = "".join(o.get("text", "") for c in out.cells if c.cell_type == "code"
                   for o in c.get("outputs", []) if o.get("output_type") == "stream")
    assert "GPT" in text and "def " in text           # the plain model is back and writes
