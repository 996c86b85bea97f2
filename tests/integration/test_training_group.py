"""Interactive training helpers on the warm group: plain DDP over 2 ranks on real digits."""

import pytest

pytestmark = pytest.mark.integration


@pytest.fixture
def group_ip(ip):
    yield ip
    from lepton_lab.remote._group import stop_group

    stop_group()


def test_ddp_training_with_helpers(group_ip, capsys):
    import torch
    from sklearn.datasets import load_digits

    ip = group_ip
    digits = load_digits()
    ip.user_ns["X"] = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    ip.user_ns["Y"] = torch.tensor(digits.target)
    res = ip.run_cell(
        "%%lepton --workers 2\n"
        "import torch, torch.distributed as dist\n"
        "from lepton_lab.training import prepare_model, prepare_loader, report, shard\n"
        "torch.manual_seed(0)\n"
        "net = prepare_model(torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(),\n"
        "                                        torch.nn.Linear(32, 10)))\n"
        "loader = prepare_loader((X[:1400], Y[:1400]), batch_size=32)\n"
        "opt = torch.optim.Adam(net.parameters(), lr=0.01)\n"
        "for epoch in range(8):\n"
        "    loader.sampler.set_epoch(epoch)\n"
        "    for xb, yb in loader:\n"
        "        opt.zero_grad(); loss = torch.nn.functional.cross_entropy(net(xb), yb)\n"
        "        loss.backward(); opt.step()\n"
        "    report(epoch, loss=loss.item(), plot_every=0)\n"
        "with torch.no_grad():\n"
        "    acc = (net(X[1400:]).argmax(1) == Y[1400:]).float().mean().item()\n"
        "    preds = net(X[1400:]).argmax(1)\n"
        "w = net.module[0].weight.detach().clone()\n"
        "ws = [torch.zeros_like(w) for _ in range(2)]\n"
        "dist.all_gather(ws, w)\n"
        "in_sync = torch.equal(ws[0], ws[1])\n"
        "my_share = len(shard(list(range(1400))))\n")
    assert res.success, res.error_in_exec
    ns = ip.user_ns
    assert ns["in_sync"] is True           # DDP kept both ranks' weights identical
    assert ns["my_share"] == 700
    assert ns["acc"] > 0.9, ns["acc"]
    model = ns["net"]                      # DDP unwrapped, on the CPU, in the kernel
    assert isinstance(model, torch.nn.Sequential)
    with torch.no_grad():
        assert torch.equal(model(ns["X"][1400:]).argmax(1), ns["preds"])


def test_nan_loss_is_flagged(group_ip, capsys):
    res = group_ip.run_cell("%%lepton --workers 1\nfrom lepton_lab.training import report\n"
                            "report(3, loss=float('nan'))")
    assert res.success, res.error_in_exec
    assert "loss is nan at step 3" in capsys.readouterr().err
