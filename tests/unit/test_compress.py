"""lepton_lab.compress on real data (sklearn's digits): pruning, quantization, ONNX export,
measurements, errors and artifacts. Ray-free and CPU-only; models are trained here, briefly."""

from __future__ import annotations

import copy
import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lepton_lab.compress import (
    CompressResult,
    CompressSettings,
    ExportMismatch,
    OnnxModel,
    Variant,
    compress,
    load_artifact,
    save_artifact,
)
from lepton_lab.errors import LeptonUsageError

FAST = 0.3  # seconds of latency timing per compress() call where latency is not under test


class DigitsCNN(nn.Module):
    def __init__(self, c1: int = 16, c2: int = 32):
        super().__init__()
        self.conv1 = nn.Conv2d(1, c1, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(c1)
        self.conv2 = nn.Conv2d(c1, c2, 3, padding=1)
        self.fc = nn.Linear(c2 * 4 * 4, 10)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc(x.flatten(1))


def mlp(width: int) -> nn.Module:
    return nn.Sequential(nn.Linear(64, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                         nn.Linear(width, 10))


def _train(model: nn.Module, X, Y, epochs: int) -> nn.Module:
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(X))
        for i in range(0, len(X), 64):
            idx = perm[i:i + 64]
            opt.zero_grad()
            F.cross_entropy(model(X[idx]), Y[idx]).backward()
            opt.step()
    return model.eval()


def _acc(model, X, Y) -> float:
    with torch.no_grad():
        return float((model(X).argmax(1) == Y).float().mean()) * 100


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    X = torch.tensor(d.data, dtype=torch.float32) / 16.0
    Y = torch.tensor(d.target, dtype=torch.long)
    perm = torch.randperm(len(X), generator=torch.Generator().manual_seed(0))
    tr, te = perm[:1400], perm[1400:]
    return X[tr], Y[tr], X[te], Y[te]


@pytest.fixture(scope="module")
def cnn(digits):
    Xtr, Ytr, Xte, Yte = digits
    img = lambda X: X.reshape(-1, 1, 8, 8)  # noqa: E731
    torch.manual_seed(0)
    model = _train(DigitsCNN(), img(Xtr), Ytr, epochs=4)
    assert _acc(model, img(Xte), Yte) > 90  # it learned something
    return model, (img(Xtr), Ytr), (img(Xte), Yte)


@pytest.fixture(scope="module")
def small_mlp(digits):
    Xtr, Ytr, Xte, Yte = digits
    torch.manual_seed(0)
    model = _train(mlp(256), Xtr, Ytr, epochs=6)
    assert _acc(model, Xte, Yte) > 90
    return model, (Xtr, Ytr), (Xte, Yte)


def _state(model: nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# -- pruning ---------------------------------------------------------------------------------
def test_prune_finetune_export_on_the_digits_cnn(cnn):
    model, calib, ev = cnn
    before = _state(model)
    stages = []
    res = compress(model, CompressSettings(prune=0.5, finetune_epochs=2, export="onnx",
                                           max_accuracy_drop=3.0, measure_s=FAST),
                   calib=calib, eval=ev, progress=lambda s, d, t: stages.append((s, d, t)))
    assert isinstance(res, CompressResult)
    assert [v.name for v in res.variants] == ["original", "pruned", "onnx"]
    orig, pruned, onnx_v = res.variants
    # the user's model is untouched (weights, architecture, mode)
    assert _same_state(before, _state(model)) and not model.training
    assert model.conv1.out_channels == 16 and orig.module is not model
    # structured: the layers really shrank, the classifier kept its 10 outputs
    m = pruned.module
    assert isinstance(m, DigitsCNN)
    assert m.conv1.out_channels == 8 and m.bn1.num_features == 8 and m.conv2.in_channels == 8
    assert m.conv2.out_channels == 16 and m.fc.in_features == 16 * 4 * 4
    assert m.fc.out_features == 10
    assert pruned.params < 0.4 * orig.params and pruned.size_bytes < 0.5 * orig.size_bytes
    with torch.no_grad():
        assert m(ev[0][:5]).shape == (5, 10)
    assert pruned.settings["finetune_epochs"] == 2
    # fine-tuned: within a few points of the original
    assert orig.accuracy > 90 and pruned.accuracy >= orig.accuracy - 3
    # the export is of the pruned module and computes what it computes
    assert onnx_v.format == "onnx" and onnx_v.module is None and onnx_v.settings["from"] == "pruned"
    assert onnx_v.max_abs_diff <= 1e-4
    got = OnnxModel(onnx_v.onnx_bytes)(ev[0].numpy())
    with torch.no_grad():
        np.testing.assert_allclose(got, m(ev[0]).numpy(), atol=1e-4, rtol=1e-3)
    assert abs(onnx_v.accuracy - pruned.accuracy) < 0.5
    # measured, reported
    for v in res.variants:
        assert v.latency_ms_b1 > 0 and v.latency_ms_b64 > 0 and v.size_bytes > 0
    assert res.best is onnx_v
    names = {s for s, _, _ in stages}
    assert {"prune", "finetune", "export", "measure", "accuracy"} <= names
    rows = res.rows()
    json.dumps(rows, allow_nan=False)
    assert rows[1]["variant"] == "pruned" and rows[0]["size_ratio"] == 1.0
    assert rows[1]["params"] == pruned.params and rows[2]["best"]
    html = res.to_html()
    assert html.startswith("<table") and html.count("<tr") == 4
    bold = [r for r in html.split("<tr") if r.startswith(' style="font-weight:bold"')]
    assert len(bold) == 1 and "<td>onnx</td>" in bold[0]
    fig = res.plot()
    from matplotlib.figure import Figure

    assert isinstance(fig, Figure) and len(fig.axes) == 4


def test_pruning_cuts_latency_of_a_wide_mlp():
    torch.manual_seed(0)
    model = mlp(1536).eval()
    X = torch.randn(256, 64)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # steadier timings on a shared machine
    try:
        res = compress(model, CompressSettings(prune=0.5, finetune_epochs=0, measure_s=1.5),
                       calib=X)
    finally:
        torch.set_num_threads(threads)
    orig, pruned = res.variants
    assert pruned.module[0].out_features == 768 and pruned.module[2].in_features == 768
    assert pruned.module[4].out_features == 10
    assert pruned.params < 0.3 * orig.params
    # ~4x fewer multiply-adds: demand a clear win, with a margin for a noisy machine
    assert pruned.latency_ms_b64 < 0.75 * orig.latency_ms_b64, res.rows()
    assert orig.accuracy is None and pruned.passed  # no labels: no accuracy, no check


def test_finetune_with_float_targets_uses_mse():
    torch.manual_seed(0)
    X = torch.randn(300, 8)
    Y = X[:, :2] * 2.0
    model = nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 2))
    res = compress(model, CompressSettings(prune=0.25, finetune_epochs=3, measure_s=FAST),
                   calib=(X.numpy(), Y.numpy()), eval=(X, Y))
    pruned = res["pruned"]
    assert pruned.module[0].out_features == 48
    assert np.isfinite(pruned.settings["finetune_loss"])
    assert pruned.accuracy is None and res.best is pruned


def test_finetune_skipped_without_labels(small_mlp):
    model, calib, ev = small_mlp
    res = compress(model, CompressSettings(prune=0.3, finetune_epochs=2, measure_s=FAST),
                   calib=calib[0], eval=ev)
    assert "skipped" in res["pruned"].settings["finetune"]


# -- quantization ----------------------------------------------------------------------------
def test_int8_on_cpu_goes_through_onnx_runtime(small_mlp):
    model, calib, ev = small_mlp
    before = _state(model)
    res = compress(model, CompressSettings(quantize="int8", measure_s=FAST), calib=calib,
                   eval=ev)
    assert [v.name for v in res.variants] == ["original", "onnx", "onnx-int8"]
    orig, fp32, q = res.variants
    assert _same_state(before, _state(model))
    assert fp32.max_abs_diff <= 1e-4
    assert q.settings["method"] == "dynamic"  # Linear-only graph
    assert q.size_bytes < 0.3 * orig.size_bytes
    assert q.accuracy >= orig.accuracy - 1.0 and q.passed and res.best is q
    assert 0 < q.max_abs_diff < 0.5  # really quantized, still close
    import onnx

    ops = {n.op_type for n in onnx.load_from_string(q.onnx_bytes).graph.node}
    assert ops & {"MatMulInteger", "DynamicQuantizeLinear", "DynamicQuantizeMatMul"}


def test_int8_static_for_a_cnn(cnn):
    model, calib, ev = cnn
    res = compress(model, CompressSettings(quantize="int8", measure_s=FAST), calib=calib,
                   eval=ev)
    q = res["onnx-int8"]
    assert q.settings["method"] == "static"  # the convolutions are int8 too
    assert q.size_bytes < 0.4 * res.original.size_bytes
    assert q.accuracy >= res.original.accuracy - 2.0


def test_torchao_int8_and_bf16_variants(small_mlp, tmp_path):
    model, calib, ev = small_mlp
    res = compress(model, CompressSettings(quantize="int8", int8_backend="torchao",
                                           measure_s=FAST), calib=calib, eval=ev)
    assert [v.name for v in res.variants] == ["original", "int8"]
    q = res["int8"]
    assert type(q.module[0].weight).__name__ != "Parameter"  # a torchao int8 tensor
    assert q.size_bytes < 0.35 * res.original.size_bytes
    assert q.accuracy >= res.original.accuracy - 1.0
    # a torchao module round-trips through the artifact files
    path, digest, size = save_artifact(q, tmp_path / "int8")
    loaded = load_artifact(path)
    with torch.inference_mode():
        assert torch.equal(loaded(ev[0][:32]), q.module(ev[0][:32]))

    res = compress(model, CompressSettings(quantize="bf16", measure_s=FAST), calib=calib,
                   eval=ev)
    b = res["bf16"]
    with torch.inference_mode():
        out = b.module(ev[0][:4])
    assert out.dtype == torch.float32 and out.shape == (4, 10)
    assert 0.4 < b.size_bytes / res.original.size_bytes < 0.6
    assert b.accuracy >= res.original.accuracy - 1.0


# -- export ----------------------------------------------------------------------------------
def test_export_mismatch_is_an_error(small_mlp):
    from lepton_lab.compress._export import export_onnx, verify_onnx

    model, calib, _ = small_mlp
    data, _ = export_onnx(model, calib[0][:1])
    other = copy.deepcopy(model)
    with torch.no_grad():
        other[4].bias += 0.01
    X = calib[0][:16]
    assert verify_onnx(OnnxModel(data), model, X) <= 1e-4
    with pytest.raises(ExportMismatch, match="differs from the torch module"):
        verify_onnx(OnnxModel(data), other, X)


def test_export_falls_back_to_the_dynamo_exporter(monkeypatch, cnn):
    """Where the legacy TorchScript exporter fails (or is gone), torch.export's is used."""
    from lepton_lab.compress._export import export_onnx, verify_onnx

    model, _, ev = cnn
    real = torch.onnx.export

    def no_legacy(*args, **kwargs):
        if not kwargs.get("dynamo"):
            raise RuntimeError("legacy exporter unavailable")
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", no_legacy)
    data, info = export_onnx(model, ev[0][:1])
    assert info["exporter"] == "torch.onnx dynamo"
    assert verify_onnx(OnnxModel(data), model, ev[0][:50]) <= 1e-4  # any batch size


# -- artifacts -------------------------------------------------------------------------------
def test_artifact_round_trip_of_a_notebook_class(tmp_path):
    class Local(nn.Module):  # like a class defined in a notebook: plain pickle cannot save it
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(64, 128), nn.Linear(128, 10)

        def forward(self, x):
            return self.b(torch.relu(self.a(x)))

    torch.manual_seed(0)
    X = torch.randn(64, 64)
    res = compress(Local(), CompressSettings(prune=0.5, finetune_epochs=0, export="onnx",
                                             measure_s=FAST), calib=X)
    for v, name in ((res["pruned"], "model.pt"), (res["onnx"], "model.onnx")):
        path, digest, size = save_artifact(v, tmp_path / v.name)
        data = open(path, "rb").read()
        assert path.endswith(name) and size == len(data)
        assert digest == hashlib.sha256(data).hexdigest()
        loaded = load_artifact(path, v.format)
        with torch.inference_mode():
            out = loaded(X)
            ref = res["pruned"].module(X)
        np.testing.assert_allclose(np.asarray(out), ref.numpy(), atol=1e-4)
    assert load_artifact(tmp_path / "pruned" / "model.pt").a.out_features == 64


# -- errors ----------------------------------------------------------------------------------
@pytest.mark.parametrize("kw, match", [
    ({"prune": 0.99}, "prune must be a fraction"),
    ({"prune": -0.1}, "prune must be a fraction"),
    ({"prune": "half"}, "prune must be a fraction"),
    ({"quantize": "int4"}, "unknown quantize"),
    ({"export": "tflite"}, "unknown export"),
    ({"target": "tpu"}, "unknown target"),
    ({"quantize": "fp8"}, "fp8 needs --target gpu"),
    ({"finetune_epochs": -1}, "finetune_epochs"),
    ({"finetune_epochs": 1.5}, "finetune_epochs"),
    ({"lr": 0}, "lr must be"),
    ({"batch_size": 0}, "batch_size"),
    ({"int8_backend": "tensorrt"}, "unknown int8_backend"),
])
def test_bad_settings_are_one_line_errors(kw, match):
    with pytest.raises(LeptonUsageError, match=match) as e:
        CompressSettings(**kw)
    assert "\n" not in str(e.value)


def test_settings_normalize():
    s = CompressSettings(quantize="INT8", export="none", target="CPU")
    assert (s.quantize, s.export, s.target, s.int8_engine) == ("int8", None, "cpu",
                                                              "onnxruntime")
    assert CompressSettings(target="gpu").int8_engine == "torchao"


def test_bad_inputs_are_one_line_errors(small_mlp):
    model, calib, ev = small_mlp
    s = CompressSettings(measure_s=FAST)
    cases = [
        (lambda: compress("not a model", s, calib=calib), "needs a torch.nn.Module"),
        (lambda: compress(model, s), "needs calib data"),
        (lambda: compress(model, s, calib=calib, eval=(ev[0][:, :32], ev[1])),
         r"eval inputs have shape \(32,\).*model's input is \(64,\)"),
        (lambda: compress(model, s, calib=torch.randn(10, 3, 8)),
         r"fails on inputs of shape \(2, 3, 8\)"),
        (lambda: compress(model, s, calib=calib, eval=(ev[0], ev[1] + 5)),
         r"labels must be class indices in \[0, 9\]"),
        (lambda: compress(model, s, calib=(calib[0], calib[1][:10])), "1400 inputs but 10"),
        (lambda: compress(model, {"prune": 2}, calib=calib), "prune must be"),
        (lambda: compress(model, {"pruning": 0.5}, calib=calib), "bad compress settings"),
    ]
    if not torch.cuda.is_available():
        cases.append((lambda: compress(model, CompressSettings(target="gpu"), calib=calib),
                      "--target gpu needs a GPU"))
    for call, match in cases:
        with pytest.raises(LeptonUsageError, match=match) as e:
            call()
        assert "\n" not in str(e.value)


def test_result_helpers():
    v0 = Variant("original", params=10, size_bytes=100, latency_ms_b1=1.0, latency_ms_b64=8.0,
                 accuracy=90.0)
    v1 = Variant("x", params=5, size_bytes=25, latency_ms_b1=0.5, latency_ms_b64=2.0,
                 accuracy=80.0, passed=False)
    res = CompressResult([v0, v1])
    assert res.best is v0  # the failed variant is not picked
    r = res.rows()[1]
    assert (r["size_ratio"], r["latency_ratio_b64"], r["accuracy_change"]) == (0.25, 0.25, -10.0)
    with pytest.raises(KeyError):
        res["nope"]


def test_the_package_imports_no_ray_ipython_or_tornado():
    code = ("import sys, lepton_lab.compress as c; import lepton_lab.compress._quantize; "
            "bad = [m for m in ('ray', 'IPython', 'tornado') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
