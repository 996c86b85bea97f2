"""Serving benchmark (issue 5): a Lepton endpoint next to plain FastAPI + uvicorn.

One command, one run, every baseline measured beside Lepton on the same machine::

    .venv/bin/python bench/serve.py [--quick] [--json OUT]

The model is the same everywhere: a digits MLP (64 -> 2048 -> 2048 -> 10, ReLU; trained one
epoch on sklearn's ``load_digits``), saved whole with ``torch.save`` and registered in the
store; every server runs it with ``torch.set_num_threads(1)`` under ``torch.inference_mode``.
Hidden layers of 2048 make a forward pass cost what a small real model costs (a 17 MB weight
read per call), so batching has something to save; the 64-wide MLP of the tests would make
every figure pure HTTP overhead. Requests are one digit row as ``.npy`` bytes, answered as
``.npy`` bytes (``Accept: application/x-npy``), sent by one loopback client: a minimal HTTP/1.1
keep-alive client on asyncio streams, cheap enough not to be the bottleneck on 2 cores.

Parts
-----
1. latency, one request at a time: (a) a Lepton endpoint (``deploy``, 1 replica, 1 CPU,
   ``max_batch`` 32, bearer token) vs (b) a plain FastAPI + uvicorn server (a subprocess, one
   worker, no auth) holding the same model; blocks of requests alternate between them.
   Goal: p50(a) - p50(b) <= 2 ms.
2. the same two at concurrency 16 (bounded count): p50, p99, requests/s.
3. batching: Lepton endpoints with ``max_batch`` 32 vs ``max_batch`` 1 (1 replica each), at
   concurrency 32, alternating rounds.   Goal: >= 3x the requests/s.
4. one request of 64 rows as ``.npy`` vs the same rows as JSON, to the same endpoint, one at a
   time.   Goal: ``.npy`` not slower than JSON.
5. part 3 again on a model whose forward pass dominates: an MLP 64 -> H -> H -> 10 with
   ``--heavy-hidden`` H (default 8192, ~270 MB of weights read per forward pass, so 32 rows
   cost about what one does).   Goal: >= 3x the requests/s.
Parts 3 and 5 also record the cores each kind of process used (``bench/_serve_extra.py``).
``--parts`` picks parts (e.g. ``--parts 4,5``).

Everything the run starts (cluster under its own LEPTON_HOME in /root/scr, Serve, the
uvicorn subprocess) is stopped at the end, and every phase has a watchdog.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _harness  # noqa: E402
from _cold import head_pid, log  # noqa: E402
from _harness import (  # noqa: E402
    descendants,
    format_facts,
    kill_pids,
    kill_session,
    machine_facts,
    on_emergency,
    phase,
    table,
    wait_session_gone,
    watchdog,
)
from _report import verdict  # noqa: E402
from _serve_extra import ProcessCores, body_formats, forward_times, wide_model  # noqa: E402
from _serve_load import (  # noqa: E402
    NPY,
    alternate,
    baseline_server,
    deploy_floor,
    deploy_model_floor,
    free_port,
    load,
    start_baseline,
    stop_baseline,
)

INGRESS = {"proxy": "Ray Serve's Python proxy",
           "haproxy": "Ray Serve's HAProxy ingress (RAY_SERVE_ENABLE_HA_PROXY=1)"}
HIDDEN = 2048
GOAL_OVERHEAD_MS = 2.0
GOAL_OWN_MS = 0.5    # Lepton over a bare Serve app running the same model
GOAL_BATCH_X = 3.0
SCRATCH = Path("/root/scr")


# -- the model ---------------------------------------------------------------------------------
def train_model(path: Path) -> dict[str, Any]:
    import numpy as np
    import torch
    from sklearn.datasets import load_digits
    from torch import nn

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, HIDDEN), nn.ReLU(),
                          nn.Linear(HIDDEN, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    for i in range(0, len(x), 64):
        opt.zero_grad()
        nn.functional.cross_entropy(model(xt[i:i + 64]), yt[i:i + 64]).backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        acc = float((model(xt).argmax(1) == yt).float().mean())
    torch.save(model, path)
    return {"x": x, "model": model, "accuracy": acc,
            "params": sum(p.numel() for p in model.parameters())}


# -- the run -----------------------------------------------------------------------------------
def measure(args: argparse.Namespace, res: dict[str, Any]) -> None:
    import numpy as np

    from lepton_lab import cluster as lc
    from lepton_lab.serve import DeploySpec, deploy
    from lepton_lab.store import get_store

    model_path = Path(args.home) / "digits-mlp.pt"
    with phase("train"):
        m = train_model(model_path)
    data = model_path.read_bytes()
    rec = get_store().register_model(
        "digits-wide", kind="trained", format="torch", path=str(model_path),
        sha256=hashlib.sha256(data).hexdigest(), size=len(data), params=m["params"],
        settings={"input_shape": [64]})
    res["model"] = {"ref": rec.ref, "layers": [64, HIDDEN, HIDDEN, 10], "params": m["params"],
                    "bytes": len(data), "train_accuracy": m["accuracy"],
                    "forward": forward_times(m["model"])}
    log(f"model {rec.ref}: {m['params']:,} parameters, accuracy {m['accuracy']:.2f}")
    row = m["x"][:1]
    buf = io.BytesIO()
    np.save(buf, row)
    body = buf.getvalue()
    res["request_bytes"] = len(body)

    log("starting the embedded cluster")
    with watchdog(300, "the cluster start"), phase("cluster start"):
        t0 = time.perf_counter()
        lc.ensure_connected()
        res["cluster_start_s"] = time.perf_counter() - t0
    _harness.MONITOR.add_session(head_pid(args.home))
    base_port = free_port()
    proc = start_baseline(base_port, model_path)
    _harness.MONITOR.add_session(proc.pid)
    deployed: list[str] = []
    try:
        want = set(args.parts)
        with watchdog(300, "deploys"), phase("deploys"):
            infos = {}
            names = [("bench-lepton", 32)]
            if "3" in want:
                names += [("bench-b32", 32), ("bench-b1", 1)]
            for name, mb in names:
                t0 = time.perf_counter()
                infos[name] = deploy(rec.ref, DeploySpec(name=name, max_batch=mb,
                                                         batch_wait_ms=5.0, cpus=0.5),
                                     timeout=240)
                deployed.append(name)
                log(f"deployed {name} (max_batch {mb}) in {time.perf_counter() - t0:.1f} s")
            out = io.BytesIO()
            np.save(out, np.zeros((1, 10), np.float32))
            deployed.append(deploy_floor("bench-floor", out.getvalue()))
            deployed.append(deploy_model_floor("bench-model-floor", data))
        res["deploy_s"] = {n: i.deploy_s for n, i in infos.items()}
        npy = {"Content-Type": NPY, "Accept": NPY}

        def lep(name: str) -> tuple[str, dict[str, str]]:
            i = infos[name]
            return i.predict_url, npy | {"Authorization": f"Bearer {i.token}"}

        base = (f"http://127.0.0.1:{base_port}/predict", npy)
        root = infos["bench-lepton"].url.rsplit("/", 1)[0]
        trio = {"lepton": lep("bench-lepton"), "serve + model": (root + "/bench-model-floor", npy),
                "serve floor": (root + "/bench-floor", npy), "fastapi": base}
        for url, headers in trio.values():                       # warm-up, all checked
            for _ in range(20):
                r = load(url, body, headers, 1, 1)
                assert not r["errors"], r["errors"]
        r, n, c = args.rounds, args.seq_per_round, args.conc_per_round
        if "1" in want:
            log(f"part 1: sequential latency, {r} rounds x {n} requests each")
            with watchdog(600, "part 1"), phase("part 1"):
                res["part1"] = alternate(trio, body, r, n, 1)
        if "2" in want:
            log(f"part 2: concurrency 16, {r} rounds x {c} requests each")
            with watchdog(600, "part 2"), phase("part 2"):
                res["part2"] = alternate(trio, body, r, c, 16)
        if "3" in want:
            log(f"part 3: batched vs unbatched at concurrency 32, {r} rounds x {c} requests")
            for name in ("bench-b32", "bench-b1"):
                url, headers = lep(name)
                load(url, body, headers, 64, 32)                         # warm-up
            with watchdog(600, "part 3"), phase("part 3"), ProcessCores() as pc:
                res["part3"] = alternate({"max_batch 32": lep("bench-b32"),
                                          "max_batch 1": lep("bench-b1")}, body, r, c, 32)
            res["part3_cores"] = pc.cores
        if "4" in want:
            log(f"part 4: 64 rows as .npy vs JSON, {r} rounds x {n // 2} requests each")
            with watchdog(600, "part 4"), phase("part 4"):
                res["part4"] = body_formats(infos["bench-lepton"].predict_url,
                                            infos["bench-lepton"].token,
                                            np.tile(m["x"][:64], (1, 1)), r, max(10, n // 2))
        if "5" in want:
            part5(args, res, deployed, rec.ref, body, r, c)
    finally:
        log("cleaning up")
        with watchdog(180, "the clean-up"):
            for name in deployed:
                with contextlib.suppress(Exception):
                    remove(name)
            with contextlib.suppress(Exception):
                from ray import serve

                serve.shutdown()
            stop_baseline(proc)


def remove(name: str) -> None:
    """Undeploy a Lepton endpoint, or delete one of the bare Serve baselines (the floors)."""
    from ray import serve

    from lepton_lab.serve import undeploy

    if name.startswith("bench-") and "floor" in name:
        serve.delete(name)
    else:
        undeploy(name)


def part5(args: argparse.Namespace, res: dict[str, Any], deployed: list[str], ref: str,
          body: bytes, rounds: int, per_round: int) -> None:
    """Part 3 on a wide MLP whose forward pass dominates the request."""
    from lepton_lab.serve import DeploySpec, deploy, undeploy
    from lepton_lab.store import get_store

    hidden = args.heavy_hidden
    path = Path(args.home) / f"wide-{hidden}.pt"
    with phase("part 5 model"):
        info = wide_model(path, hidden)
    data = path.read_bytes()
    rec = get_store().register_model(
        "wide-mlp", kind="imported", format="torch", path=str(path),
        sha256=hashlib.sha256(data).hexdigest(), size=len(data), params=info["params"],
        settings={"input_shape": [64]})
    del data
    res["part5_model"] = {"ref": rec.ref, "layers": [64, hidden, hidden, 10], **info}
    log(f"part 5: {rec.ref}, {info['params']:,} parameters, forward 1 row "
        f"{info['forward']['1_rows_ms']:.1f} ms, 32 rows {info['forward']['32_rows_ms']:.1f} ms")
    # the endpoints of parts 1-4 hold 2 CPUs' worth of replicas on this machine: free them,
    # or the wide model's replicas wait for CPUs until the deploy times out
    with watchdog(180, "part 5 clean-up"):
        for name in list(deployed):
            with contextlib.suppress(Exception):
                remove(name)
                deployed.remove(name)
    eps = {}
    with watchdog(400, "part 5 deploys"), phase("part 5 deploys"):
        for name, mb in (("wide-b32", 32), ("wide-b1", 1)):
            eps[name] = deploy(rec.ref, DeploySpec(name=name, max_batch=mb, batch_wait_ms=5.0,
                                                   cpus=0.5), timeout=300)
            deployed.append(name)
    npy = {"Content-Type": NPY, "Accept": NPY}
    contenders = {f"max_batch {mb}": (eps[name].predict_url,
                                      npy | {"Authorization": f"Bearer {eps[name].token}"})
                  for name, mb in (("wide-b32", 32), ("wide-b1", 1))}
    n = max(64, per_round // 2)
    for url, headers in contenders.values():
        load(url, body, headers, 32, 32)                                  # warm-up
    log(f"part 5: batched vs unbatched at concurrency 32, {rounds} rounds x {n} requests")
    with watchdog(900, "part 5"), phase("part 5"), ProcessCores() as pc:
        res["part5"] = alternate(contenders, body, rounds, n, 32)
    res["part5_cores"] = pc.cores
    for name in ("wide-b32", "wide-b1"):
        with contextlib.suppress(Exception):
            undeploy(name)
            deployed.remove(name)


def run(args: argparse.Namespace) -> dict[str, Any]:
    SCRATCH.mkdir(parents=True, exist_ok=True)
    home = tempfile.mkdtemp(prefix="lepton-bench-serve-", dir=SCRATCH)
    args.home = home
    os.environ["LEPTON_HOME"] = home
    os.environ["LEPTON_SERVE_PORT"] = str(free_port())
    os.environ.pop("RAY_ADDRESS", None)
    on_emergency(lambda: kill_session(head_pid(home) or -1))
    on_emergency(lambda: kill_pids(descendants(os.getpid())))
    from lepton_lab import cluster as lc
    from lepton_lab.config import reset_config
    from lepton_lab.store import reset_store

    reset_config()
    reset_store()
    res: dict[str, Any] = {"lepton_home": home}
    try:
        measure(args, res)
    finally:
        with watchdog(120, "stopping the cluster"):
            pid = head_pid(home)
            lc.stop_embedded()
            res["leftover_processes"] = wait_session_gone(pid) if pid else {}
            if res["leftover_processes"].get("live"):
                kill_session(pid)  # type: ignore[arg-type]
        shutil.rmtree(home, ignore_errors=True)
    return res


# -- report ------------------------------------------------------------------------------------
def _row(name: str, s: dict[str, Any]) -> list[str]:
    errs = sum(s["errors"].values())
    return [name, str(s["n_ok"]), f"{s['p50_ms']:.2f}", f"{s['p99_ms']:.2f}",
            f"{s['mean_ms']:.2f}", f"{s['rps']:.0f}", str(errs)]


def report(res: dict[str, Any]) -> str:
    """Each ingress's run, then the comparison of the ingresses and the cores used."""
    lines = [format_facts(res["machine"]), ""]
    runs = res["ingress"]
    for mode, sub in runs.items():
        lines += [f"# Ingress: {INGRESS[mode]}", "", report_one(sub), ""]
    if len(runs) > 1 and all("part1" in r and "part3" in r for r in runs.values()):
        rows = [[INGRESS[m], f"{r['part1']['lepton']['p50_ms']:.2f}",
                 f"{r['part1']['serve floor']['p50_ms']:.2f}",
                 f"{r['part1']['fastapi']['p50_ms']:.2f}",
                 f"{r['part1']['lepton']['p50_ms'] - r['part1']['serve floor']['p50_ms']:+.2f}",
                 f"{r['goals']['p50_overhead_ms']['value']:+.2f}",
                 f"{r['goals']['batched_vs_unbatched_rps']['value']:.2f}x"]
                for m, r in runs.items()]
        lines += ["# The ingresses side by side (one request at a time, p50 ms)", "",
                  table(rows, ["ingress", "Lepton", "bare Serve", "FastAPI",
                               "Lepton - bare Serve", "Lepton - FastAPI",
                               "batched/unbatched at c=32"]), ""]
    cpu = res.get("cpu_by_phase")
    if cpu:
        lines += [f"## How busy the {res['machine']['cpu_count']} cores were", "",
                  table([[name, f"{v['wall_s']:.1f}", f"{v['own_cores']:.2f}",
                          f"{v['foreign_cores']:.2f}"] for name, v in cpu.items()],
                        ["phase", "wall s", "cores used by this run",
                         "cores used by other processes"])]
    return "\n".join(lines)


def _cores(cores: dict[str, float] | None) -> str:
    if not cores:
        return ""
    return "  cores used, by process: " + ", ".join(f"{k} {v:.2f}" for k, v in cores.items())


def _batching(title: str, part: dict[str, Any], ratio: float, fw: dict[str, float],
              cores: dict[str, float] | None) -> list[str]:
    """A batching part: its table, the ratio against the goal, the model's own times."""
    head = ["contender", "ok", "p50 ms", "p99 ms", "mean ms", "req/s", "errors"]
    return [title, "",
            table([_row("max_batch 32, batch_wait 5 ms", part["max_batch 32"]),
                   _row("max_batch 1 (no batching)", part["max_batch 1"])], head), "",
            f"batched / unbatched throughput: {ratio:.2f}x -> goal >= {GOAL_BATCH_X}x: "
            f"{verdict(ratio >= GOAL_BATCH_X)}",
            f"  model forward in-process: 1 row {fw['1_rows_ms']:.2f} ms, 32 rows "
            f"{fw['32_rows_ms']:.2f} ms ({fw['32_rows_ms'] / 32:.3f} ms/row)", _cores(cores)]


def _model_floor_row(part: dict[str, Any]) -> list[list[str]]:
    if "serve + model" not in part:      # results of runs before the control existed
        return []
    return [_row("bare Serve app running the same model", part["serve + model"])]


def _own_addition(res: dict[str, Any], p1: dict[str, Any]) -> list[str]:
    """Lepton's own addition: its endpoint minus a bare Serve app doing the same work."""
    if "serve + model" not in p1:
        return []
    own = p1["lepton"]["p50_ms"] - p1["serve + model"]["p50_ms"]
    res["goals"]["own_addition_over_serve_ms"] = {"value": own, "goal": f"<= {GOAL_OWN_MS}",
                                                  "met": own <= GOAL_OWN_MS}
    return [f"Lepton's own addition (endpoint - bare Serve app running the same model), p50: "
            f"{own:+.2f} ms -> goal <= {GOAL_OWN_MS} ms: {verdict(own <= GOAL_OWN_MS)}"]


def report_one(res: dict[str, Any]) -> str:
    head = ["contender", "ok", "p50 ms", "p99 ms", "mean ms", "req/s", "errors"]
    res["goals"] = {}
    md = res["model"]
    fw = md["forward"]
    lines = [f"model {md['ref']}: MLP {' -> '.join(map(str, md['layers']))}, "
             f"{md['params']:,} parameters ({md['bytes'] / 2**20:.1f} MiB), 1 torch thread; "
             f"request: one row as .npy ({res['request_bytes']} bytes), answer .npy", ""]
    p1, p2, p3 = res.get("part1"), res.get("part2"), res.get("part3")
    if p1:
        overhead = p1["lepton"]["p50_ms"] - p1["fastapi"]["p50_ms"]
        res["goals"]["p50_overhead_ms"] = {"value": overhead, "goal": f"<= {GOAL_OVERHEAD_MS}",
                                           "met": overhead <= GOAL_OVERHEAD_MS}
        floor_gap = p1["serve floor"]["p50_ms"] - p1["fastapi"]["p50_ms"]
        lines += ["## 1. One request at a time (Lepton: 1 replica, max_batch 32, bearer token; "
                  "FastAPI + uvicorn: 1 worker, no auth)", "",
                  table([_row("Lepton endpoint (Ray Serve)", p1["lepton"]),
                         *_model_floor_row(p1),
                         _row("Serve floor: read body, constant answer", p1["serve floor"]),
                         _row("plain FastAPI + uvicorn", p1["fastapi"])], head), "",
                  f"p50 overhead: {overhead:+.2f} ms -> goal <= {GOAL_OVERHEAD_MS} ms: "
                  f"{verdict(overhead <= GOAL_OVERHEAD_MS)}",
                  f"  of which Ray Serve's floor (proxy hop + body fetch) vs FastAPI: "
                  f"{floor_gap:+.2f} ms; Lepton's handler + model over the floor: "
                  f"{overhead - floor_gap:+.2f} ms (model forward alone: "
                  f"{fw['1_rows_ms']:.2f} ms)", *_own_addition(res, p1), ""]
    if p2:
        lines += ["## 2. Concurrency 16", "",
                  table([_row("Lepton endpoint (Ray Serve)", p2["lepton"]),
                         *_model_floor_row(p2),
                         _row("Serve floor: read body, constant answer", p2["serve floor"]),
                         _row("plain FastAPI + uvicorn", p2["fastapi"])], head), ""]
    if p3:
        ratio = p3["max_batch 32"]["rps"] / p3["max_batch 1"]["rps"]
        res["goals"]["batched_vs_unbatched_rps"] = {"value": ratio, "goal": f">= {GOAL_BATCH_X}",
                                                    "met": ratio >= GOAL_BATCH_X}
        lines += _batching("## 3. Batching at concurrency 32 (Lepton endpoints, 1 replica "
                           "each)", p3, ratio, fw, res.get("part3_cores"))
        if p2:
            lines.append(f"  ceiling: the Serve floor app (no model) does "
                         f"{p2['serve floor']['rps']:.0f} req/s at concurrency 16, so no "
                         f"endpoint here can beat {p2['serve floor']['rps'] / p3['max_batch 1']['rps']:.2f}x "
                         f"the unbatched one; batched reaches "
                         f"{p3['max_batch 32']['rps'] / p2['serve floor']['rps']:.0%} of that ceiling")
        lines.append("")
    p4 = res.get("part4")
    if p4:
        ok = p4["npy_over_json_p50"] <= 1.0
        res["goals"]["npy_not_slower_than_json_b64"] = {"value": p4["npy_over_json_p50"],
                                                        "goal": "<= 1", "met": ok}
        lines += ["## 4. 64 rows in one request: .npy vs JSON (same endpoint, one at a time)", "",
                  table([[k, str(v["bytes"]), str(v["n"]), f"{v['p50_ms']:.2f}",
                          f"{v['p99_ms']:.2f}"] for k, v in p4.items() if isinstance(v, dict)],
                        ["body", "bytes", "n", "p50 ms", "p99 ms"]), "",
                  f".npy / JSON p50: {p4['npy_over_json_p50']:.2f} -> goal <= 1: {verdict(ok)}",
                  ""]
    p5 = res.get("part5")
    if p5:
        wm = res["part5_model"]
        ratio5 = p5["max_batch 32"]["rps"] / p5["max_batch 1"]["rps"]
        res["goals"]["batched_vs_unbatched_rps_wide_model"] = {
            "value": ratio5, "goal": f">= {GOAL_BATCH_X}", "met": ratio5 >= GOAL_BATCH_X}
        lines += _batching(f"## 5. Batching where the forward pass dominates: MLP "
                           f"{' -> '.join(map(str, wm['layers']))} ({wm['params']:,} "
                           f"parameters, {wm['bytes'] / 2**20:.0f} MiB), concurrency 32",
                           p5, ratio5, wm["forward"], res.get("part5_cores")) + [""]
    lines += [f"cluster start {res['cluster_start_s']:.1f} s; deploys: " + ", ".join(
                  f"{k} {v:.1f} s" for k, v in res["deploy_s"].items()),
              "after stopping the cluster: "
              f"{len(res['leftover_processes'].get('live', []))} live process(es) left"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="a smoke run (few requests)")
    p.add_argument("--json", metavar="OUT",
                   help="where to write the results (default bench/results/serve-DATE.json)")
    p.add_argument("--ingress", default="proxy,haproxy",
                   help="comma-separated Serve ingresses to measure, each on its own cluster: "
                        "proxy (Ray Serve's Python proxy), haproxy (its HAProxy ingress, "
                        "Lepton's default)")
    p.add_argument("--parts", default="1,2,3,4,5",
                   help="comma-separated parts to run (default: all); see the module doc")
    p.add_argument("--heavy-hidden", type=int, default=8192, metavar="H",
                   help="hidden width of part 5's wide MLP (default 8192)")
    p.add_argument("--baseline", nargs=2, metavar=("PORT", "MODEL"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.parts = [x.strip() for x in args.parts.split(",") if x.strip()]
    if not set(args.parts) <= {"1", "2", "3", "4", "5"}:
        p.error("--parts takes numbers from 1 to 5, e.g. --parts 4,5")
    if args.baseline:
        baseline_server(int(args.baseline[0]), args.baseline[1])
        return 0
    args.rounds, args.seq_per_round, args.conc_per_round = \
        (2, 50, 200) if args.quick else (5, 200, 400)
    res: dict[str, Any] = {"machine": machine_facts(), "quick": args.quick,
                           "config": {"rounds": args.rounds,
                                      "sequential_per_round": args.seq_per_round,
                                      "concurrent_per_round": args.conc_per_round,
                                      "hidden": HIDDEN, "torch_threads": 1}}
    log(format_facts(res["machine"]))
    _harness.MONITOR = _harness.CpuMonitor()
    t0 = time.perf_counter()
    res["ingress"] = {}
    for mode in args.ingress.split(","):
        if mode not in INGRESS:
            p.error(f"--ingress: {mode!r} is not one of {', '.join(INGRESS)}")
        # read by Serve's controller and proxies when they start: each ingress gets its own
        # cluster (the embedded one inherits this process's environment)
        os.environ["RAY_SERVE_ENABLE_HA_PROXY"] = "1" if mode == "haproxy" else "0"
        log(f"ingress: {INGRESS[mode]}")
        with _harness.phase_prefix(mode):
            res["ingress"][mode] = run(args)
    _harness.MONITOR.stop()
    res["cpu_by_phase"] = _harness.MONITOR.phases
    res["loadavg_end"] = list(os.getloadavg())
    res["wall_s"] = time.perf_counter() - t0
    text = report(res)
    print(text)
    print(f"\nwhole run: {res['wall_s']:.0f} s")
    for sub in res["ingress"].values():
        for part in ("part1", "part2", "part3", "part5"):
            for s in sub.get(part, {}).values():
                s.pop("latencies", None)
    dest = args.json or str(Path(__file__).resolve().parent / "results" /
                            f"serve-{res['machine']['date']}{'-quick' if args.quick else ''}.json")
    Path(dest).write_text(json.dumps(res, indent=1, default=str))
    log(f"results: {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
