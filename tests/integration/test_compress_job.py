"""``%lepton compress`` on the shared cluster: the job runs remotely, the variants land in the
registry with lineage, and the report is saved."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.integration


@pytest.fixture
def digits_mlp(ip):
    import torch
    from sklearn.datasets import load_digits

    d = load_digits()
    X = torch.tensor(d.data, dtype=torch.float32) / 16.0
    Y = torch.tensor(d.target)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(),
                              torch.nn.Linear(256, 256), torch.nn.ReLU(),
                              torch.nn.Linear(256, 10))
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(8):
        for i in range(0, 1400, 100):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(X[i:i + 100]), Y[i:i + 100]).backward()
            opt.step()
    net.eval()
    ip.user_ns.update(net=net, train=(X[:1400], Y[:1400]), test=(X[1400:], Y[1400:]))
    yield net
    for k in ("net", "train", "test"):
        ip.user_ns.pop(k, None)


def test_compress_registers_variants_with_lineage_and_a_report(ip, digits_mlp, capsys):
    import torch

    from lepton_lab.registry import load_model
    from lepton_lab.store import get_store

    before = {k: v.clone() for k, v in digits_mlp.state_dict().items()}
    best = ip.run_line_magic(
        "lepton", "compress net --name mlp --prune 0.5 --finetune-epochs 1 --quantize int8 "
                  "--calib train --eval test")
    captured = capsys.readouterr()
    assert "compressed mlp:1" in captured.out + captured.err
    store = get_store()
    original = store.get_model("mlp:1")
    assert original.kind == "imported" and original.settings["input_shape"] == [64]
    variants = [m for m in store.list_models("mlp") if m.version > 1]
    assert {m.settings["variant"] for m in variants} >= {"pruned", "onnx-int8"}
    assert all(m.parent == "mlp:1" and m.kind == "compressed" for m in variants)
    pruned = next(m for m in variants if m.settings["variant"] == "pruned")
    assert pruned.params < 0.5 * original.params            # channels really removed
    assert best == store.get_model(best).ref
    # the user's model is untouched; the registered int8 model still classifies
    assert all(torch.equal(before[k], v) for k, v in digits_mlp.state_dict().items())
    X, Y = ip.user_ns["test"]
    int8 = load_model(next(m.ref for m in variants if m.settings["variant"] == "onnx-int8"))
    acc = (int8(X.numpy()).argmax(1) == Y.numpy()).mean()
    assert acc > 0.85
    report = store.list_reports("mlp:1")[0]
    assert {r["variant"] for r in report.rows} >= {"original", "pruned", "onnx-int8"}
    assert any(r.get("model") == pruned.ref for r in report.rows)


def test_compress_of_a_missing_model_is_one_line(ip):
    with pytest.raises(Exception, match="no model 'ghost'") as info:
        ip.run_line_magic("lepton", "compress ghost --quantize int8")
    assert "\n" not in str(info.value)
