"""Compression benchmark (issue 4): what pruning and int8 buy on CPU, measured in one run.

One command::

    .venv/bin/python bench/compress.py [--quick] [--json OUT]

Models and data: sklearn's bundled ``load_digits`` (1797 images, 8x8, 10 classes), a fixed
split of 1400 training and 397 test images, Adam (lr 1e-3, batch 64), seed 0.

* **CNN**: the digits CNN of ``bench/train.py`` (conv 16 and 32 channels, 3x3, max-pool after
  each, one linear layer), on the images upsampled bilinearly to 32x32; 8 epochs.
* **MLP**: 64 -> 2048 -> 2048 -> 10 with ReLU on the flat 8x8 images ("an MLP big enough to
  matter": 4.3 M parameters); 5 epochs.

Parts, for each model
---------------------
1. ``compress(quantize="int8")``: the original, its ONNX export and the int8 variant (the
   path ``compress`` picks on CPU). Goals: int8 size <= 0.27x, int8 latency <= 0.4x at
   batch 1 and 64 (MLP), accuracy change >= -0.5 pt.
2. ``compress(prune=0.5, finetune_epochs=3)``: 50% of the channels/neurons removed, then
   fine-tuned on the training set. Goals: latency <= 0.6x (batch 64), accuracy >= -1 pt.
3. The int8 paths on CPU side by side, all timed together: torch fp32, torchao int8
   (dynamic activations and weight-only), ONNX Runtime fp32, ONNX Runtime int8 dynamic
   (MatMul/Gemm) and static (QDQ, calibrated). This is how the default int8 path was chosen.
4. The whole pipeline, ``compress(prune=0.5, finetune_epochs=3, quantize="int8",
   export="onnx")``, as a table.

Latency is the median of calls timed in rotating rounds inside one ``compress`` call (see
``lepton_lab.compress._measure.latencies``): variants of a part are timed together, so load
from other processes hits them alike; read the ratios, more than the milliseconds. Threads:
1 for torch and ONNX Runtime (``--threads``), as in a Ray task with ``num_cpus=1``; on a
loaded machine, two OpenMP threads on two shared cores make torch's latencies erratic.
Accuracy: percent of the 397 test images; one image is 0.25 pt. A monitor samples every
process's CPU time each second and reports how many cores other processes used in each
phase. ``--quick``: a smoke run (2 s of timing per part instead of 12, fewer epochs).

The CNN is tiny (25 k parameters): an ONNX graph has a few KB of structure (node and tensor
names, quantization scales) besides its weights, which weighs on its int8 size ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT.parent))
import _harness  # noqa: E402
from _harness import format_facts, machine_facts, phase, table, watchdog  # noqa: E402
from _report import verdict  # noqa: E402

GOAL_INT8_SIZE = 0.27
GOAL_INT8_LAT = 0.40
GOAL_INT8_ACC = -0.5
GOAL_PRUNE_LAT = 0.60
GOAL_PRUNE_ACC = -1.0


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- models and data -------------------------------------------------------------------------
def load_data() -> dict[str, Any]:
    import torch
    import torch.nn.functional as F
    from sklearn.datasets import load_digits

    d = load_digits()
    X = torch.tensor(d.data, dtype=torch.float32) / 16.0
    Y = torch.tensor(d.target, dtype=torch.long)
    perm = torch.randperm(len(X), generator=torch.Generator().manual_seed(0))
    tr, te = perm[:1400], perm[1400:]
    img = F.interpolate(X.reshape(-1, 1, 8, 8), size=(32, 32), mode="bilinear",
                        align_corners=False)
    return {"flat": (X[tr], Y[tr], X[te], Y[te]), "img": (img[tr], Y[tr], img[te], Y[te])}


def make_cnn() -> Any:
    import torch.nn.functional as F
    from torch import nn

    class DigitsCNN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
            self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
            self.fc = nn.Linear(32 * 8 * 8, 10)

        def forward(self, x: Any) -> Any:
            x = F.max_pool2d(F.relu(self.conv1(x)), 2)
            x = F.max_pool2d(F.relu(self.conv2(x)), 2)
            return self.fc(x.flatten(1))

    return DigitsCNN()


def make_mlp() -> Any:
    from torch import nn

    return nn.Sequential(nn.Linear(64, 2048), nn.ReLU(), nn.Linear(2048, 2048), nn.ReLU(),
                         nn.Linear(2048, 10))


def train(model: Any, X: Any, Y: Any, epochs: int) -> Any:
    import torch
    import torch.nn.functional as F

    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(X))
        for i in range(0, len(X), 64):
            idx = perm[i:i + 64]
            opt.zero_grad()
            F.cross_entropy(model(X[idx]), Y[idx]).backward()
            opt.step()
    return model.eval()


# -- parts -----------------------------------------------------------------------------------
def int8_paths(model: Any, Xtr: Any, Xte: Any, Yte: Any, budget: float) -> list[dict[str, Any]]:
    """Part 3: every int8 path on CPU, timed together with the same harness as compress()."""
    import copy

    from lepton_lab.compress import Variant, _export, _measure, _quantize

    q = _quantize._torchao()
    variants = [Variant("torch fp32", module=model)]
    for label, cfg in (("torchao int8 dynamic", q.Int8DynamicActivationInt8WeightConfig()),
                       ("torchao int8 weight-only", q.Int8WeightOnlyConfig())):
        m = copy.deepcopy(model)
        with _quantize.quiet_libraries():
            q.quantize_(m, cfg)
        variants.append(Variant(label, module=m))
    onnx_bytes, _ = _export.export_onnx(model, Xtr[:1])
    variants.append(Variant("onnxruntime fp32", onnx_bytes=onnx_bytes, format="onnx"))
    for method in ("dynamic", "static"):
        data, _ = _quantize.ort_int8(onnx_bytes, Xtr.numpy(), method=method)
        variants.append(Variant(f"onnxruntime int8 {method}", onnx_bytes=data, format="onnx"))
    runners = {v.name: _measure.Runner(v, "cpu") for v in variants}
    lat = _measure.latencies(runners, Xte, budget)
    rows = []
    for v in variants:
        size = len(v.onnx_bytes) if v.format == "onnx" else _measure.torch_size(v.module)
        rows.append({"path": v.name, "size_bytes": size,
                     "latency_ms_b1": lat[v.name][1], "latency_ms_b64": lat[v.name][64],
                     "accuracy": _measure.accuracy(runners[v.name], Xte, Yte)})
    b = rows[0]
    for r in rows:
        r["size_ratio"] = r["size_bytes"] / b["size_bytes"]
        r["latency_ratio_b1"] = r["latency_ms_b1"] / b["latency_ms_b1"]
        r["latency_ratio_b64"] = r["latency_ms_b64"] / b["latency_ms_b64"]
        r["accuracy_change"] = r["accuracy"] - b["accuracy"]
    return rows


def run_model(name: str, model: Any, data: tuple, args: argparse.Namespace) -> dict[str, Any]:
    from lepton_lab.compress import CompressSettings, compress

    Xtr, Ytr, Xte, Yte = data
    out: dict[str, Any] = {"params": sum(p.numel() for p in model.parameters())}
    calib, ev = (Xtr, Ytr), (Xte, Yte)
    t = args.measure_s
    parts = [
        ("int8", CompressSettings(quantize="int8", measure_s=t)),
        ("prune", CompressSettings(prune=0.5, finetune_epochs=args.ft, measure_s=t)),
        ("pipeline", CompressSettings(prune=0.5, finetune_epochs=args.ft, quantize="int8",
                                      export="onnx", measure_s=t)),
    ]
    for part, settings in parts:
        log(f"{name}: compress {part}")
        t0 = time.perf_counter()
        with watchdog(600, f"{name} {part}"), phase(f"{name} {part}"):
            res = compress(model, settings, calib=calib, eval=ev)
        out[part] = {"rows": res.rows(), "info": res.info, "wall_s": time.perf_counter() - t0}
    log(f"{name}: int8 paths side by side")
    with watchdog(600, f"{name} int8 paths"), phase(f"{name} int8 paths"):
        out["paths"] = int8_paths(model, Xtr, Xte, Yte, t)
    return out


# -- report ----------------------------------------------------------------------------------
def _f(x: Any, spec: str) -> str:
    return "–" if x is None else format(x, spec)


def _variant_table(rows: list[dict[str, Any]]) -> str:
    return table([[r["variant"], f"{r['params']:,}", f"{r['size_bytes'] / 1e3:,.1f}",
                   _f(r["size_ratio"], ".3f"), _f(r["latency_ms_b1"], ".3f"),
                   _f(r["latency_ratio_b1"], ".2f"), _f(r["latency_ms_b64"], ".3f"),
                   _f(r["latency_ratio_b64"], ".2f"), _f(r["accuracy"], ".2f"),
                   _f(r["accuracy_change"], "+.2f")] for r in rows],
                 ["variant", "params", "size KB", "size x", "b1 ms", "b1 x", "b64 ms", "b64 x",
                  "acc %", "Δ acc pt"])


def _pick(rows: list[dict[str, Any]], name: str) -> dict[str, Any]:
    return next(r for r in rows if r["variant"] == name)


def report(res: dict[str, Any]) -> str:
    lines = [format_facts(res["machine"]), f"torch threads: {res['threads']}", ""]
    goals = []
    for name, m in res["models"].items():
        lines += [f"## {name} ({m['params']:,} parameters)", ""]
        for part, title in (("int8", "1. compress(quantize='int8')"),
                            ("prune", "2. compress(prune=0.5, finetune)"),
                            ("pipeline", "4. the whole pipeline")):
            lines += [f"### {title}", "", _variant_table(m[part]["rows"]), ""]
        lines += ["### 3. int8 paths on CPU (timed together)", "",
                  table([[r["path"], f"{r['size_bytes'] / 1e3:,.1f}", f"{r['size_ratio']:.3f}",
                          f"{r['latency_ms_b1']:.3f}", f"{r['latency_ratio_b1']:.2f}",
                          f"{r['latency_ms_b64']:.3f}", f"{r['latency_ratio_b64']:.2f}",
                          f"{r['accuracy']:.2f}", f"{r['accuracy_change']:+.2f}"]
                         for r in m["paths"]],
                        ["path", "size KB", "size x", "b1 ms", "b1 x", "b64 ms", "b64 x",
                         "acc %", "Δ acc pt"]), ""]
        q = _pick(m["int8"]["rows"], "onnx-int8")
        p = _pick(m["prune"]["rows"], "pruned")
        goals += [
            [name, "int8 size ratio", f"<= {GOAL_INT8_SIZE}", f"{q['size_ratio']:.3f}",
             verdict(q["size_ratio"] <= GOAL_INT8_SIZE)],
            [name, "int8 latency ratio b1", f"<= {GOAL_INT8_LAT}", f"{q['latency_ratio_b1']:.2f}",
             verdict(q["latency_ratio_b1"] <= GOAL_INT8_LAT)],
            [name, "int8 latency ratio b64", f"<= {GOAL_INT8_LAT}",
             f"{q['latency_ratio_b64']:.2f}", verdict(q["latency_ratio_b64"] <= GOAL_INT8_LAT)],
            [name, "int8 accuracy change (pt)", f">= {GOAL_INT8_ACC}",
             f"{q['accuracy_change']:+.2f}", verdict(q["accuracy_change"] >= GOAL_INT8_ACC)],
            [name, "pruned 50% + FT latency ratio b1", "(info)", f"{p['latency_ratio_b1']:.2f}",
             ""],
            [name, "pruned 50% + FT latency ratio b64", f"<= {GOAL_PRUNE_LAT}",
             f"{p['latency_ratio_b64']:.2f}", verdict(p["latency_ratio_b64"] <= GOAL_PRUNE_LAT)],
            [name, "pruned 50% + FT accuracy change (pt)", f">= {GOAL_PRUNE_ACC}",
             f"{p['accuracy_change']:+.2f}", verdict(p["accuracy_change"] >= GOAL_PRUNE_ACC)],
        ]
    lines += ["## Goals (ratios against the original torch fp32 model)", "",
              table(goals, ["model", "figure", "goal", "measured", "verdict"]), "",
              "The int8 latency goal is stated for an MLP big enough to matter; the CNN's rows "
              "are for information.", ""]
    lines += ["## CPU used by other processes, per phase", "",
              table([[k, f"{v['wall_s']:.1f}", f"{v['own_cores']:.2f}", f"{v['foreign_cores']:.2f}"]
                     for k, v in res["cpu_by_phase"].items()],
                    ["phase", "wall s", "this run (cores)", "other processes (cores)"])]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="a smoke run (short timing, few epochs)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch (and ONNX Runtime) threads; default 1, as in a Ray task with "
                        "num_cpus=1 (Ray sets OMP_NUM_THREADS to the task's CPUs)")
    p.add_argument("--models", default="CNN,MLP", help="comma-separated subset of CNN,MLP")
    p.add_argument("--json", metavar="OUT", help="where to write the results (default "
                   "bench/results/compress-<date>.json)")
    args = p.parse_args(argv)
    args.measure_s = 2.0 if args.quick else 12.0
    args.ft = 1 if args.quick else 3
    epochs = {"CNN": 2 if args.quick else 8, "MLP": 2 if args.quick else 5}
    import torch

    torch.set_num_threads(args.threads)
    res: dict[str, Any] = {"machine": machine_facts(), "quick": args.quick,
                           "threads": torch.get_num_threads(),
                           "config": {"measure_s": args.measure_s, "finetune_epochs": args.ft,
                                      "train_epochs": epochs}, "models": {}}
    for n in ("torchao", "torch-pruning", "onnx", "onnxruntime", "scikit-learn"):
        res["machine"]["versions"][n] = _harness._version(n)
    log(format_facts(res["machine"]))
    _harness.MONITOR = _harness.CpuMonitor()
    t0 = time.perf_counter()
    data = load_data()
    for name, make, key in (("CNN", make_cnn, "img"), ("MLP", make_mlp, "flat")):
        if name not in args.models.split(","):
            continue
        Xtr, Ytr, Xte, Yte = data[key]
        log(f"{name}: training {epochs[name]} epochs")
        with phase(f"{name} training"):
            model = train(make(), Xtr, Ytr, epochs[name])
        res["models"][name] = run_model(name, model, data[key], args)
    _harness.MONITOR.stop()
    res["cpu_by_phase"] = _harness.MONITOR.phases
    res["loadavg_end"] = list(os.getloadavg())
    res["wall_s"] = time.perf_counter() - t0
    print(report(res))
    out = Path(args.json) if args.json else \
        ROOT / "results" / f"compress-{res['machine']['date']}{'-quick' if args.quick else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1, default=str))
    log(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
