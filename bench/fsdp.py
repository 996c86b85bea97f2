"""FSDP benchmark (issue 14): per-rank model-state memory and throughput, FSDP against DDP.

One command, one run, both strategies measured on the same machine through the real path
(``%%lepton train --strategy ddp|fsdp`` on the embedded Ray, gloo on CPUs)::

    .venv/bin/python bench/fsdp.py [--quick] [--ranks 2,3] [--json OUT]

The model is the GPT of templates/large_model.ipynb, wider (about 3.2 M parameters), on
random tokens (the text does not matter for memory or speed). Each rank's parameter,
gradient and Adam-state bytes come from ``lepton.training.memory_use`` (with FSDP: its
shards only); throughput is the ranks' samples/s over the run's last window. DDP and FSDP
rounds alternate, so load from other processes hits both alike.

Goal: FSDP per-rank model state <= 0.6x DDP's at 2 ranks (ideal 0.5x). Throughput is
reported as a ratio with no goal: on CPUs FSDP's extra all-gathers cost time.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _cold import head_pid, log  # noqa: E402
from _harness import (  # noqa: E402
    format_facts,
    kill_session,
    machine_facts,
    on_emergency,
    table,
    wait_session_gone,
    watchdog,
)

GOAL_MEMORY_2 = 0.6

MODEL_SRC = '''
import torch, torch.nn as nn, torch.nn.functional as F
class Block(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))
    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=2)
        q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, d))
        return x + self.mlp(self.ln2(x))
class GPT(nn.Module):
    def __init__(self, vocab, d, layers, heads, block):
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.zeros(1, block, d))
        self.blocks = nn.ModuleList(Block(d, heads) for _ in range(layers))
        self.ln, self.head = nn.LayerNorm(d), nn.Linear(d, vocab)
    def forward(self, idx):
        x = self.tok(idx) + self.pos[:, : idx.shape[1]]
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.ln(x))
'''

CELL = '''
import torch, torch.nn.functional as F
import lepton_lab.training as lt
torch.set_num_threads(1)
torch.manual_seed(0)
model = GPT(96, D, LAYERS, 4, 64)
model = lt.prepare_model(model, shard_modules=list(model.blocks))
opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
g = torch.Generator().manual_seed(lt.rank())
for epoch in lt.epochs(1, model=model, optimizer=opt):
    for step in range(STEPS):
        x = torch.randint(96, (8, 65), generator=g)
        loss = F.cross_entropy(model(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten())
        opt.zero_grad(); loss.backward(); opt.step()
        lt.report(loss=loss.item(), samples=8)
'''


def quiet_sink() -> Any:
    """A Sink that keeps only the tail of the output (printed if a run fails)."""
    from lepton_lab.remote._sink import Sink

    class Quiet(Sink):
        tail = ""

        def stream(self, name: str, text: str) -> None:
            self.tail = (self.tail + text)[-4000:]

    return Quiet()


def one_run(strategy: str, ranks: int, steps: int, d: int, layers: int) -> dict[str, Any]:
    from lepton_lab.store import get_store
    from lepton_lab.training._run import TrainSpec, run_train

    ns: dict[str, Any] = {"D": d, "LAYERS": layers, "STEPS": steps}
    exec(MODEL_SRC, ns)
    import ray

    # 3 ranks on a 2-CPU machine: share the CPUs (both strategies alike)
    cpus = min(1.0, int(ray.cluster_resources().get("CPU", 1) / ranks * 10) / 10)
    spec = TrainSpec(workers=ranks, cpus_per_worker=cpus, strategy=strategy, out=("loss",),
                     name=f"bench-{strategy}")
    t0 = time.perf_counter()
    sink = quiet_sink()
    try:
        outcome = run_train(CELL, ns, spec, sink)
    except BaseException:
        log(sink.tail)
        raise
    wall = time.perf_counter() - t0
    rec = get_store().get_run(outcome.job_id)
    memory = rec.metrics.get("memory") or {}
    state = {r: m["params"] + m["grads"] + m["optim"] for r, m in memory.items()}
    return {"strategy": strategy, "ranks": ranks, "wall_s": wall,
            "state_bytes": state, "memory": memory,
            "samples_per_s": sum((rec.metrics.get("throughput") or {}).values())}


def measure(args: argparse.Namespace, out: dict[str, Any]) -> None:
    from lepton_lab import cluster as lc

    lc.ensure_connected()
    for ranks in args.ranks:
        rows = out.setdefault(str(ranks), {"ddp": [], "fsdp": []})
        for i in range(args.rounds):
            order = ("ddp", "fsdp") if i % 2 == 0 else ("fsdp", "ddp")
            for strategy in order:
                with watchdog(600, f"{strategy} on {ranks} ranks"):
                    r = one_run(strategy, ranks, args.steps, args.d, args.layers)
                rows[strategy].append(r)
                per_rank = max(r["state_bytes"].values() or [0]) / 2**20
                log(f"  {ranks} ranks, round {i + 1}: {strategy}: {per_rank:.1f} MiB model "
                    f"state on the largest rank, {r['samples_per_s']:.0f} samples/s")


def run(args: argparse.Namespace) -> dict[str, Any]:
    home = tempfile.mkdtemp(prefix="lepton-bench-fsdp-")
    os.environ["LEPTON_HOME"] = home
    os.environ.pop("RAY_ADDRESS", None)
    on_emergency(lambda: kill_session(head_pid(home) or -1))
    from lepton_lab import cluster as lc
    from lepton_lab.config import reset_config
    from lepton_lab.store import reset_store

    reset_config()
    reset_store()
    out: dict[str, Any] = {}
    try:
        measure(args, out)
    finally:
        with watchdog(120, "the clean-up"):
            pid = head_pid(home)
            lc.stop_embedded()
            left = wait_session_gone(pid) if pid else {}
            if left.get("live"):
                kill_session(pid)  # type: ignore[arg-type]
        shutil.rmtree(home, ignore_errors=True)
    return out


def summarize(res: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    rows, goals = [], {}
    for ranks, by in res["m"].items():
        mem = {s: statistics.median(max(r["state_bytes"].values()) for r in runs)
               for s, runs in by.items()}
        sps = {s: statistics.median(r["samples_per_s"] for r in runs) for s, runs in by.items()}
        mem_ratio = mem["fsdp"] / mem["ddp"]
        sps_ratio = sps["fsdp"] / sps["ddp"] if sps["ddp"] else float("nan")
        ok = mem_ratio <= GOAL_MEMORY_2 if ranks == "2" else None
        goals[f"memory_{ranks}"] = {"ratio": mem_ratio, "ok": ok}
        goals[f"throughput_{ranks}"] = {"ratio": sps_ratio}
        rows.append([ranks, f"{mem['ddp'] / 2**20:.1f} MiB", f"{mem['fsdp'] / 2**20:.1f} MiB",
                     f"{mem_ratio:.3f}x" + ("" if ok is None else (" PASS" if ok else " MISS")),
                     f"{sps['ddp']:.0f}", f"{sps['fsdp']:.0f}", f"{sps_ratio:.2f}x"])
    text = table(rows, ["ranks", "DDP state/rank", "FSDP state/rank", "FSDP/DDP memory",
                        "DDP samples/s", "FSDP samples/s", "FSDP/DDP speed"])
    return text, goals


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="a smoke run (one round, few steps)")
    p.add_argument("--ranks", default="2,3", help="rank counts to measure (default 2,3)")
    p.add_argument("--json", metavar="OUT",
                   help="where to write the results (default bench/results/fsdp-DATE.json)")
    args = p.parse_args(argv)
    args.ranks = [int(r) for r in args.ranks.split(",")]
    args.rounds, args.steps = (1, 10) if args.quick else (2, 40)
    args.d, args.layers = 256, 4
    res: dict[str, Any] = {"machine": machine_facts(), "quick": args.quick,
                           "config": {"ranks": args.ranks, "rounds": args.rounds,
                                      "steps": args.steps, "d_model": args.d,
                                      "layers": args.layers, "batch": 8, "block": 64}}
    log(format_facts(res["machine"]))
    t0 = time.perf_counter()
    res["m"] = run(args)
    res["wall_s"] = time.perf_counter() - t0
    res["loadavg_end"] = list(os.getloadavg())
    text, res["goals"] = summarize(res)
    print(text)
    print(f"\nwhole run: {res['wall_s']:.0f} s; load average at the end "
          f"{res['loadavg_end'][0]:.2f}")
    path = Path(args.json or Path(__file__).parent / "results" /
                f"fsdp-{time.strftime('%Y-%m-%d')}{'-quick' if args.quick else ''}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(res, indent=1, default=str))
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
