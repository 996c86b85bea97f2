"""Parts of ``bench/serve.py`` added for issue 15: binary vs JSON bodies at batch 64, batching
on a model whose forward pass dominates, and the cores each process used while it ran.

- :func:`body_formats`: one 64-row request as ``.npy`` and as JSON (``{"inputs": [...]}``),
  to the same endpoint, answered in the same format, rounds in rotating order.
- :func:`heavy_batching`: a wide MLP (one row costs a full read of its weights, so a
  forward pass of 32 rows costs about what one row does), batched (``max_batch`` 32) vs
  unbatched endpoints at concurrency 32.
- :class:`ProcessCores`: CPU seconds per process (grouped by role: load client, ingress,
  replicas, Ray's own) over a phase, from ``/proc``, as cores used.
"""

from __future__ import annotations

import io
import json
import os
import time
from pathlib import Path
from typing import Any

from _cold import log
from _harness import percentile
from _serve_load import NPY, load

JSON_TYPE = "application/json"
_TICK = os.sysconf("SC_CLK_TCK")


# -- cores per process ---------------------------------------------------------------------------
def _role(pid: int, me: int) -> str | None:
    if pid == me:
        return "load client (bench process)"
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(
            errors="replace")
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return None
    if "haproxy" in comm or "haproxy" in cmd.split(" ")[0]:
        return "HAProxy ingress"
    if "ServeReplica" in comm or "ServeReplica" in cmd:
        return "Serve replicas"
    if "ProxyActor" in comm or "ProxyActor" in cmd:
        return "Serve proxy actor"
    if "ServeController" in comm or "ServeController" in cmd:
        return "Serve controller"
    if any(k in cmd for k in ("gcs_server", "raylet", "dashboard", "ray/_private",
                              "log_monitor", "runtime_env", "ray::")):
        return "Ray's own processes"
    if "uvicorn" in cmd or "--baseline" in cmd:
        return "FastAPI baseline"
    return None


def _ticks() -> dict[int, int]:
    out = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                raw = (entry / "stat").read_text()
            except OSError:
                continue
            f = raw[raw.rfind(")") + 2:].split()
            out[int(entry.name)] = int(f[11]) + int(f[12])
    return out


class ProcessCores:
    """``with ProcessCores() as pc: ...`` then ``pc.cores``: role -> average cores used."""

    def __enter__(self) -> ProcessCores:
        self.t0, self.before = time.perf_counter(), _ticks()
        return self

    def __exit__(self, *exc: Any) -> None:
        wall = time.perf_counter() - self.t0
        after, me = _ticks(), os.getpid()
        cores: dict[str, float] = {}
        for pid, ticks in after.items():
            role = _role(pid, me) or "other processes"
            delta = (ticks - self.before.get(pid, 0)) / _TICK
            cores[role] = cores.get(role, 0.0) + delta / wall
        self.cores = {k: round(v, 2) for k, v in sorted(cores.items(), key=lambda kv: -kv[1])}
        self.wall_s = wall


# -- .npy vs JSON at batch 64 --------------------------------------------------------------------
def bodies(rows: Any) -> dict[str, tuple[bytes, dict[str, str]]]:
    import numpy as np

    buf = io.BytesIO()
    np.save(buf, rows)
    js = json.dumps({"inputs": rows.tolist()}, separators=(",", ":")).encode()
    return {".npy": (buf.getvalue(), {"Content-Type": NPY, "Accept": NPY}),
            "JSON": (js, {"Content-Type": JSON_TYPE, "Accept": JSON_TYPE})}


def body_formats(url: str, token: str, rows: Any, rounds: int, per_round: int
                 ) -> dict[str, Any]:
    """p50/p99 of one 64-row request at a time, as .npy and as JSON, alternating."""
    kinds = bodies(rows)
    auth = {"Authorization": f"Bearer {token}"}
    for body, headers in kinds.values():                  # warm-up, checked
        r = load(url, body, headers | auth, 10, 1)
        assert not r["errors"], r["errors"]
    lat: dict[str, list[float]] = {k: [] for k in kinds}
    names = list(kinds)
    for i in range(rounds):
        for name in names[i % 2:] + names[:i % 2]:
            body, headers = kinds[name]
            r = load(url, body, headers | auth, per_round, 1)
            assert not r["errors"], r["errors"]
            lat[name] += r["latencies"]
    out = {n: {"bytes": len(kinds[n][0]), "n": len(v), "p50_ms": percentile(v, 50) * 1e3,
               "p99_ms": percentile(v, 99) * 1e3} for n, v in lat.items()}
    out["npy_over_json_p50"] = out[".npy"]["p50_ms"] / out["JSON"]["p50_ms"]
    log(f"  batch 64: .npy {out['.npy']['p50_ms']:.2f} ms, JSON {out['JSON']['p50_ms']:.2f} ms")
    return out


# -- batching where the forward pass dominates ---------------------------------------------------
def forward_times(model: Any, iters: int = 50) -> dict[str, float]:
    """Milliseconds per forward pass in this process (1 thread), for 1 and 32 rows."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = {}
    try:
        with torch.inference_mode():
            for rows in (1, 32):
                x = torch.rand(rows, 64)
                for _ in range(min(5, iters)):
                    model(x)
                t0 = time.perf_counter()
                for _ in range(iters):
                    model(x)
                out[f"{rows}_rows_ms"] = (time.perf_counter() - t0) / iters * 1e3
    finally:
        torch.set_num_threads(threads)
    return out


def wide_model(path: Path, hidden: int) -> dict[str, Any]:
    """An untrained MLP 64 -> hidden -> hidden -> 10 (throughput does not depend on the
    weights' values), saved whole; returns its forward times in this process (1 thread)."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, hidden),
                          nn.ReLU(), nn.Linear(hidden, 10)).eval()
    torch.save(model, path)
    fw = forward_times(model, iters=10)
    return {"params": sum(p.numel() for p in model.parameters()), "forward": fw,
            "bytes": path.stat().st_size}
