"""The parts of bench/gpu_check.py. Each runs in its own process (``python bench/gpu_check.py
--part NAME``), connects to the check's cluster through ``LEPTON_HOME``, and prints one JSON
line of figures. ``DRY`` (``--dry-run``) runs the same code on the CPU at toy sizes, so the
CPU half of every path is exercised where there is no GPU."""

from __future__ import annotations

import os
import statistics
import time
from typing import Any, Callable

DRY = os.environ.get("LEPTON_GPU_CHECK_DRY") == "1"
DEVICE = "cpu" if DRY else "cuda"


def _shell() -> Any:
    from IPython.core.interactiveshell import InteractiveShell

    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "lepton_lab")
    return ip


def _run(ip: Any, line: str, cell: str) -> dict[str, Any]:
    res = ip.run_cell(f"%%lepton {line}\n{cell}")
    if not res.success:
        raise RuntimeError(f"%%lepton {line} failed: {res.error_in_exec or res.error_before_exec}")
    return ip.user_ns


def cell() -> dict[str, Any]:
    """A ``%%lepton --gpus 1`` cell: the device it ran on and a matmul's speed there."""
    ns = _run(_shell(), "" if DRY else "--gpus 1", f"""
import time, torch
dev = "{DEVICE}"
name = torch.cuda.get_device_name(0) if dev == "cuda" else "cpu"
n = {256 if DRY else 8192}
a = torch.randn(n, n, device=dev, dtype=torch.float32 if dev == "cpu" else torch.bfloat16)
(a @ a).sum().item()
t = time.perf_counter(); reps = {2 if DRY else 20}
for _ in range(reps):
    c = a @ a
c.sum().item()
tflops = 2 * n ** 3 * reps / (time.perf_counter() - t) / 1e12
""")
    return {"device": ns["name"], "matmul_tflops": round(ns["tflops"], 2)}


def nccl_group() -> dict[str, Any]:
    """A warm group whose ranks talk NCCL on the GPU (gloo on the CPU in a dry run)."""
    ip = _shell()
    try:
        ns = _run(ip, "--workers 2" if DRY else "--workers 1 --gpus 1", f"""
import time, torch, torch.distributed as dist
t = torch.ones(1 << 20, device="{DEVICE}")
dist.all_reduce(t); t0 = time.perf_counter()
for _ in range(10):
    dist.all_reduce(t)
total = t[0].item(); backend = dist.get_backend(); ms = (time.perf_counter() - t0) * 100
""")
        return {"backend": ns["backend"], "all_reduce_4MiB_ms": round(ns["ms"], 3)}
    finally:
        from lepton_lab.remote._group import stop_group

        stop_group()


LOOP = """
import time, torch
import lepton_lab.training as lt
torch.manual_seed(0)
model = lt.prepare_model(torch.nn.Sequential(torch.nn.Linear(DIM, 4 * DIM), torch.nn.GELU(),
                                             torch.nn.Linear(4 * DIM, DIM)))
opt = torch.optim.AdamW(model.parameters())
x = torch.randn(BATCH, DIM, device=lt.device())
for step in range(STEPS):
    if step == 5:
        t0 = time.perf_counter()
    with lt.autocast():
        loss = model(x).float().pow(2).mean()
    opt.zero_grad(); loss.backward(); opt.step()
loss.item()
sps = BATCH * (STEPS - 5) / (time.perf_counter() - t0)
"""


def bf16_train() -> dict[str, Any]:
    """``%%lepton train --bf16`` against the same loop in plain torch on the same device."""
    import torch

    steps, batch, dim = (8, 16, 128) if DRY else (60, 512, 1024)
    model = torch.nn.Sequential(torch.nn.Linear(dim, 4 * dim), torch.nn.GELU(),
                                torch.nn.Linear(4 * dim, dim)).to(DEVICE)
    opt = torch.optim.AdamW(model.parameters())
    x = torch.randn(batch, dim, device=DEVICE)
    for step in range(steps):
        if step == 5:
            t0 = time.perf_counter()
        with torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=not DRY):
            loss = model(x).float().pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    loss.item()
    raw = batch * (steps - 5) / (time.perf_counter() - t0)
    del model, opt
    ip = _shell()
    ip.user_ns.update(BATCH=batch, STEPS=steps, DIM=dim)
    ns = _run(ip, "train" + ("" if DRY else " --gpus-per-worker 1 --bf16"), LOOP)
    return {"raw_samples_s": round(raw), "lepton_samples_s": round(ns["sps"]),
            "ratio": round(ns["sps"] / raw, 3)}


def cupy_preprocess() -> dict[str, Any]:
    """``Augment`` on the GPU with CuPy against the same work in NumPy."""
    import numpy as np

    from lepton_lab.training.augment import Augment

    n = 64 if DRY else 1024
    images = np.random.default_rng(0).integers(0, 255, (n, 3, 32, 32), dtype=np.uint8)
    out: dict[str, Any] = {}
    for where in (("cpu",) if DRY else ("cpu", "cuda")):
        aug = Augment(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), crop=32, padding=4,
                      flip=0.5, seed=0, device=where)
        aug(images)
        times = []
        for _ in range(5 if DRY else 30):
            t = time.perf_counter()
            x = aug(images)
            if where == "cuda":
                import torch

                torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
        out[f"{where}_ms"] = round(statistics.median(times) * 1e3, 3)
        out[f"{where}_device"] = str(x.device)
    if "cuda_ms" in out:
        out["speedup"] = round(out["cpu_ms"] / out["cuda_ms"], 2)
    return out


def compress() -> dict[str, Any]:
    """bf16 and fp8 variants of a small CNN, measured on the target device."""
    import torch

    from lepton_lab.compress import CompressSettings
    from lepton_lab.compress import compress as run

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 32, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.Flatten(), torch.nn.Linear(32 * 16 * 16, 10))
    x = torch.randn(128, 3, 16, 16)
    rows = []
    for quant in (("bf16",) if DRY else ("bf16", "fp8")):
        res = run(model, CompressSettings(quantize=quant, finetune_epochs=0, measure_s=2.0,
                                          target="cpu" if DRY else "gpu"), example_input=x)
        keep = ("variant", "format", "size_bytes", "latency_ms_b1", "latency_ms_b64", "passed")
        rows += [r for r in ({k: row[k] for k in keep} for row in res.rows()) if r not in rows]
    return {"variants": rows}


def serve_gpu() -> dict[str, Any]:
    """A model served from a replica with a GPU: p50 latency of 50 requests."""
    import numpy as np
    import torch

    from lepton_lab.registry import register_module
    from lepton_lab.serve import DeploySpec, deploy, predict, undeploy

    rec = register_module(torch.nn.Linear(64, 10), "gpu-check")
    spec = DeploySpec(name="gpu-check", gpus=0 if DRY else 0.5, max_batch=16)
    deploy(rec.ref, spec)
    try:
        x = np.random.default_rng(0).standard_normal((1, 64)).astype("float32")
        predict("gpu-check", x)
        times = []
        for _ in range(50):
            t = time.perf_counter()
            predict("gpu-check", x)
            times.append(time.perf_counter() - t)
        return {"p50_ms": round(statistics.median(times) * 1e3, 2)}
    finally:
        undeploy("gpu-check")


def fsdp() -> dict[str, Any]:
    """``--strategy fsdp``: NCCL on the GPU (one rank, shards offloaded to CPU memory, which
    is how one device trains a model bigger than itself); gloo on 2 CPU ranks when dry."""
    ip = _shell()
    ip.user_ns.update(BATCH=8 if DRY else 256, STEPS=8 if DRY else 40, DIM=128 if DRY else 4096)
    line = ("train --workers 2 --strategy fsdp --fsdp-min-params 1000" if DRY else
            "train --gpus-per-worker 1 --strategy fsdp --cpu-offload")
    ns = _run(ip, line, LOOP)
    return {"samples_s": round(ns["sps"]), "line": line}


PARTS: dict[str, Callable[[], dict[str, Any]]] = {
    "cell": cell, "nccl_group": nccl_group, "bf16_train": bf16_train,
    "cupy_preprocess": cupy_preprocess, "compress": compress, "serve_gpu": serve_gpu,
    "fsdp": fsdp,
}
