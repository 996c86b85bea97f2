"""Training benchmark: what running a training loop through Lepton costs next to plain torch.

One command, one run, every baseline measured beside Lepton on the same machine::

    .venv/bin/python bench/train.py [--quick] [--json OUT]

The model, data and batch size are the same everywhere: a 2-conv CNN (16 and 32 channels,
3x3, max-pool after each, one linear layer) on sklearn's bundled ``load_digits`` (1797 images,
8x8 upsampled bilinearly to 32x32 so a step is ~15 ms, not trivially small), batch 64 per
rank, SGD with momentum, ``torch.set_num_threads(1)`` in every training process. Every
throughput figure is measured *inside* the training process by the same function
(``bench_train`` in ``LOOP_SRC``): one warm-up epoch, then a fixed number of epochs timed with
``time.perf_counter``; samples/s = samples processed / seconds (summed over ranks for DDP).

Parts
-----
a. the hand-written loop in this process (the baseline), timed round-robin with (b) and (c);
b. the same loop as a cell on a ``--workers 1`` warm group (``run_cell(..., CellSpec(workers=1))``);
c. the same loop through ``run_train(..., TrainSpec(workers=1))`` with Lepton's helpers
   (``prepare_model``, ``prepare_loader``, ``epochs``, ``report`` every step).
   Goals: (b) and (c) >= 0.97x (a). A diagnostic (a') runs the helper loop in this process,
   outside any cell, round-robin with (a) and (c): it separates the helpers' own cost from
   that of running under Ray Train.
d. 2-rank DDP (gloo): a ``--workers 2`` warm group cell vs ``torch.multiprocessing.spawn`` of
   2 processes running the same per-rank loop, alternating (the group is started, runs one
   cell and is stopped each round).   Goal: >= 0.95x mp.spawn.
e. start-up: the first ``run_train`` of a 1-epoch tiny cell vs a bare Ray Train
   ``TorchTrainer(...).fit()`` of the same tiny loop, both on the already-running embedded
   cluster (bare first; the ray.train files are read once beforehand so neither pays a cold
   disk cache); and a trivial ``--workers 1`` cell on a warm group (median).  Goal: <= 0.5 s.

The warm group is stopped (and its processes waited for) before the Ray Train runs and
before the mp.spawn baseline, so nothing of ours competes with a measurement. A monitor
samples every process's CPU time each second and reports, per phase, the cores used by this
run and by everything else, and, inside each run's timed window, the cores used by the
training process(es), by the rest of this run (Ray, Lepton, this driver) and by others. ``--quick`` is a smoke run (3 timed epochs, one round each).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import subprocess
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
    interleaved,
    kill_pids,
    kill_session,
    machine_facts,
    on_emergency,
    phase,
    quiet,
    wait_session_gone,
    watchdog,
)
from _train_cases import BATCH, LOOP_SRC, SIZE, TINY, cell_body, load_data, loop_namespace  # noqa: E402
from _train_report import report  # noqa: E402


def quiet_sink() -> Any:
    """A Sink that drops a cell's output but keeps its tail (printed if the cell fails)."""
    from lepton_lab.remote._sink import Sink

    class QuietSink(Sink):
        def __init__(self) -> None:
            self.tail = ""

        def stream(self, name: str, text: str) -> None:
            self.tail = (self.tail + text)[-4000:]

    return QuietSink()


def _sps(results: list[dict[str, Any]]) -> float:
    return sum(r["sps"] for r in results)


# -- the contenders -------------------------------------------------------------------------
def run_local(x: Any, y: Any, epochs: int, helpers: bool = False) -> dict[str, Any]:
    """(a): the hand-written loop in this process (with ``helpers``: Lepton's helpers, outside
    any cell, to tell their own cost from that of running under Ray Train)."""
    t0 = time.perf_counter()
    ranks = loop_namespace()["bench_train"](x, y, epochs, BATCH, helpers=helpers)
    return {"sps": _sps(ranks), "ranks": ranks, "wall_s": time.perf_counter() - t0}


def run_in_cell(kind: str, ns: dict[str, Any], epochs: int, workers: int) -> dict[str, Any]:
    """(b)/(d): the loop as a warm-group cell; (c): as a %%lepton train cell."""
    from lepton_lab import CellSpec, run_cell
    from lepton_lab.training._run import TrainSpec, run_train

    sink = quiet_sink()
    t0 = time.perf_counter()
    try:
        if kind == "train":
            body = cell_body(f"bench_train(X, Y, {epochs}, {BATCH}, helpers=True)")
            run_train(body, ns, TrainSpec(workers=workers), sink)
        else:
            body = cell_body(f"bench_train(X, Y, {epochs}, {BATCH})")
            run_cell(body, ns, CellSpec(workers=workers), sink)
    except BaseException:
        log(f"the {kind} cell failed; its output ended with:\n{sink.tail}")
        raise
    ranks = ns.pop("bench_result")
    return {"sps": _sps(ranks), "ranks": ranks, "wall_s": time.perf_counter() - t0}


def _spawn_rank(rank: int, port: int, x: Any, y: Any, epochs: int, repeats: int,
                out: str) -> None:
    """One process of the mp.spawn DDP baseline (gloo), running the same per-rank loop."""
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=2)
    train = loop_namespace()["bench_train"]
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        ranks = train(x, y, epochs, BATCH)
        runs.append({"sps": _sps(ranks), "ranks": ranks, "wall_s": time.perf_counter() - t0})
    if rank == 0:
        Path(out).write_text(json.dumps(runs))
    dist.destroy_process_group()


def run_spawn(x: Any, y: Any, epochs: int, repeats: int, scratch: str) -> tuple[list, float]:
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = os.path.join(scratch, "spawn-results.json")
    t0 = time.perf_counter()
    mp.spawn(_spawn_rank, args=(port, x, y, epochs, repeats, out), nprocs=2, join=True)
    return json.loads(Path(out).read_text()), time.perf_counter() - t0


def _bare_loop(config: dict[str, Any]) -> None:
    """train_loop_per_worker of the bare TorchTrainer: the same tiny loop, nothing else.

    It stays in this script: cloudpickle sends a ``__main__`` function by value, whereas one
    from a bench module would be sent by reference, which Ray's workers cannot import."""
    g: dict[str, Any] = {"__name__": "bench_loop"}
    exec(compile(config["src"], "<bench-loop>", "exec"), g)
    g["bench_train"](config["X"], config["Y"], 1, config["batch"], warmup=0)


def bare_fit(xt: Any, yt: Any, storage: str) -> dict[str, float]:
    """(e) baseline: a bare Ray Train run from this driver, import of ray.train included."""
    t0 = time.perf_counter()
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    imported = time.perf_counter() - t0
    trainer = TorchTrainer(_bare_loop,
                           train_loop_config={"src": LOOP_SRC, "X": xt, "Y": yt, "batch": BATCH},
                           scaling_config=ScalingConfig(num_workers=1,
                                                        resources_per_worker={"CPU": 1}),
                           run_config=RunConfig(name="bench-bare", storage_path=storage))
    with quiet():
        trainer.fit()
    return {"wall_s": time.perf_counter() - t0, "import_s": imported}


def lepton_tiny(ns: dict[str, Any]) -> dict[str, float]:
    """(e): wall time of run_train for the same tiny 1-epoch loop."""
    from lepton_lab.training._run import TrainSpec, run_train

    sink = quiet_sink()
    body = cell_body(f"bench_train(XT, YT, 1, {BATCH}, warmup=0)")
    t0 = time.perf_counter()
    try:
        out = run_train(body, ns, TrainSpec(workers=1), sink)
    except BaseException:
        log(f"the tiny train cell failed; its output ended with:\n{sink.tail}")
        raise
    ns.pop("bench_result", None)
    return {"wall_s": time.perf_counter() - t0, "in_task_s": out.elapsed}


# -- keeping the machine quiet between measurements ------------------------------------------
def settle(total: float, timeout: float = 60.0) -> None:
    """Wait until every CPU of the cluster is free again, then a second for exits to finish."""
    import ray

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ray.available_resources().get("CPU", 0.0) >= total:
            break
        time.sleep(0.2)
    else:
        log(f"warning: the cluster's CPUs were not all free after {timeout:.0f} s")
    time.sleep(1.0)


def stop_warm_group(total: float) -> None:
    """stop_group(), then wait for the ranks' processes to exit."""
    from lepton_lab.remote._group import group_info, stop_group

    info = group_info() or {}
    pids = [r["pid"] for r in info.get("ranks", []) if "pid" in r]
    stop_group()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(os.path.exists(f"/proc/{p}") for p in pids):
        time.sleep(0.2)
    settle(total)


def rounds(contenders: dict[str, Any], n: int) -> dict[str, list[dict[str, Any]]]:
    """Run each contender ``n`` times, round-robin with a rotating order (as interleaved())."""
    names = list(contenders)
    out: dict[str, list[dict[str, Any]]] = {k: [] for k in names}
    for i in range(n):
        k = i % len(names)
        for name in names[k:] + names[:k]:
            res = contenders[name]()
            out[name].append(res)
            log(f"  round {i + 1}/{n}: {name}: {res['sps']:.0f} samples/s")
    return out


class WindowMonitor(_harness.CpuMonitor):
    """The harness's CPU monitor, keeping every sample so that the CPU use inside one run's
    timed window (reported by the training process itself) can be split afterwards into the
    training process(es), the rest of this run (Ray, Lepton, this driver) and other processes.
    """

    def __init__(self, every: float = 1.0):
        self.history: list[tuple[float, dict[int, int], float, float]] = []
        super().__init__(every)

    def _sample(self) -> None:
        super()._sample()
        with self._lock:
            self.history.append((time.perf_counter(), dict(self._last), self.own, self.foreign))

    def window(self, t0: float, t1: float, pids: list[int]) -> dict[str, float] | None:
        inside = [h for h in self.history if t0 <= h[0] <= t1]
        if len(inside) < 2 or inside[-1][0] - inside[0][0] < 1.0:
            return None
        (s0, p0, o0, f0), (s1, p1, o1, f1) = inside[0], inside[-1]
        dt = s1 - s0
        train = sum(p1.get(p, 0) - p0.get(p, 0) for p in pids) / os.sysconf("SC_CLK_TCK") / dt
        return {"span_s": dt, "training": train, "rest_of_run": (o1 - o0) / dt - train,
                "others": (f1 - f0) / dt}


def add_windows(runs: list[dict[str, Any]]) -> None:
    """Attach the CPU split of each run's timed window (its ranks' windows, overlapping)."""
    mon = _harness.MONITOR
    if not isinstance(mon, WindowMonitor):
        return
    for r in runs:
        t1 = min(q["t_end"] for q in r["ranks"])
        t0 = max(q["t_end"] - q["seconds"] for q in r["ranks"])
        r["cpu_in_window"] = mon.window(t0, t1, [q["pid"] for q in r["ranks"]])


# -- the run ---------------------------------------------------------------------------------
def measure(args: argparse.Namespace, out: dict[str, Any]) -> None:
    import ray
    import torch

    from lepton_lab import CellSpec, run_cell
    from lepton_lab import cluster as lc

    torch.set_num_threads(1)
    x, y = load_data()
    ns: dict[str, Any] = {"X": x, "Y": y, "XT": x[:TINY].clone(), "YT": y[:TINY].clone()}
    ep = args.epochs

    log("starting the embedded cluster")
    t0 = time.perf_counter()
    with watchdog(300, "the cluster start"), phase("cluster start"):
        lc.ensure_connected()
    out["cluster_start_s"] = time.perf_counter() - t0
    _harness.MONITOR.add_session(head_pid(os.environ["LEPTON_HOME"]))
    total = float(ray.cluster_resources().get("CPU", 0.0))
    out["cluster_cpus"] = total

    # (b) + (e) trivial: a --workers 1 warm group; (a) round-robin with it
    log("(b) --workers 1 warm group vs (a) this process")
    with watchdog(600, "part b"):
        sink = quiet_sink()
        t0 = time.perf_counter()
        with phase("group --workers 1 start"):
            run_cell("z = 1", ns, CellSpec(workers=1), sink)
        out["group1_start_s"] = time.perf_counter() - t0
        with phase("trivial --workers 1 cells"):
            out["trivial_group_cell_s"] = interleaved(
                {"z = 1 on --workers 1": (None, lambda _: run_cell("z = 1", ns,
                                                                    CellSpec(workers=1), sink))},
                args.trivial, 2, log)["z = 1 on --workers 1"]
        with phase("a vs b"):
            out["ab"] = rounds({"a": lambda: run_local(x, y, ep),
                                "b": lambda: run_in_cell("group", ns, ep, 1)}, args.rounds)
        stop_warm_group(total)

    # (e) start-up: bare TorchTrainer first, then the first %%lepton train of this process
    log("(e) cold start: bare TorchTrainer.fit(), then the first run_train")
    with watchdog(300, "part e"):
        with phase("read ray.train once (file cache)"):
            subprocess.run([sys.executable, "-c", "import ray.train.torch"], check=True,
                           capture_output=True, timeout=120)
        with phase("e: bare TorchTrainer.fit()"):
            out["bare_fit"] = bare_fit(ns["XT"], ns["YT"], os.path.join(args.scratch, "bare"))
        settle(total)
        with phase("e: first run_train"):
            out["lepton_first_train"] = lepton_tiny(ns)
        settle(total)

    # (c) %%lepton train with the helpers, round-robin with (a)
    log("(c) run_train (helpers) vs (a) this process")
    with watchdog(600, "part c"), phase("a vs c"):
        def train_c() -> dict[str, Any]:
            res = run_in_cell("train", ns, ep, 1)
            settle(total)
            return res
        out["ac"] = rounds({"a": lambda: run_local(x, y, ep),
                            "a_helpers": lambda: run_local(x, y, ep, helpers=True),
                            "c": train_c}, args.rounds_c)

    # (d) 2 ranks, alternating: the warm group (started, one cell, stopped), then mp.spawn
    # with nothing of ours left running (or the other way round), so load from other
    # processes that drifts over the part hits both alike
    log("(d) 2-rank DDP: --workers 2 warm group and mp.spawn, alternating")
    out["d_group"], out["d_spawn"], out["group2_start_s"], out["spawn_wall_s"] = [], [], [], []
    with watchdog(600, "part d"):
        for i in range(args.rounds):
            for which in (("group", "spawn") if i % 2 == 0 else ("spawn", "group")):
                if which == "group":
                    t0 = time.perf_counter()
                    with phase(f"d: group --workers 2 start {i + 1}"):
                        run_cell("z = 1", ns, CellSpec(workers=2), quiet_sink())
                    out["group2_start_s"].append(time.perf_counter() - t0)
                    with phase(f"d: --workers 2 group {i + 1}"):
                        res = run_in_cell("group", ns, ep, 2)
                    out["d_group"].append(res)
                    stop_warm_group(total)
                else:
                    with phase(f"d: mp.spawn {i + 1}"):
                        runs, wall = run_spawn(x, y, ep, 1, args.scratch)
                    res = runs[0]
                    out["d_spawn"].append(res)
                    out["spawn_wall_s"].append(wall)
                    settle(total)
                log(f"  round {i + 1}/{args.rounds}: {which}: {res['sps']:.0f} samples/s")
    time.sleep(1.5)  # one more monitor sample after the last window
    for runs in [*out["ab"].values(), *out["ac"].values(), out["d_group"], out["d_spawn"]]:
        add_windows(runs)


def run(args: argparse.Namespace) -> dict[str, Any]:
    home = tempfile.mkdtemp(prefix="lepton-bench-train-")
    args.scratch = home
    os.environ["LEPTON_HOME"] = home
    os.environ.pop("RAY_ADDRESS", None)
    on_emergency(lambda: kill_session(head_pid(home) or -1))
    on_emergency(lambda: kill_pids(descendants(os.getpid())))
    from lepton_lab import cluster as lc
    from lepton_lab.config import reset_config
    from lepton_lab.remote._group import stop_group
    from lepton_lab.store import reset_store

    reset_config()
    reset_store()
    out: dict[str, Any] = {"lepton_home": home}
    try:
        measure(args, out)
    finally:
        log("cleaning up")
        with watchdog(120, "the clean-up"):
            with contextlib.suppress(Exception):
                stop_group()
            pid = head_pid(home)
            lc.stop_embedded()
            out["leftover_processes"] = wait_session_gone(pid) if pid else {}
            if out["leftover_processes"].get("live"):
                kill_session(pid)  # type: ignore[arg-type]
        shutil.rmtree(home, ignore_errors=True)
    return out



def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="a smoke run (3 epochs, one round)")
    p.add_argument("--json", metavar="OUT",
                   help="where to write the results (default bench/results/train-DATE.json)")
    args = p.parse_args(argv)
    args.epochs, args.rounds, args.rounds_c, args.trivial = \
        (3, 1, 1, 5) if args.quick else (10, 3, 2, 10)
    res: dict[str, Any] = {"machine": machine_facts(), "quick": args.quick,
                           "config": {"epochs": args.epochs, "warmup_epochs": 1,
                                      "rounds": args.rounds, "rounds_c": args.rounds_c,
                                      "trivial_cells": args.trivial, "batch": BATCH,
                                      "image_size": SIZE, "tiny_samples": TINY,
                                      "torch_threads": 1, "loop_src": LOOP_SRC}}
    log(format_facts(res["machine"]))
    _harness.MONITOR = WindowMonitor()
    t0 = time.perf_counter()
    res["m"] = run(args)
    _harness.MONITOR.stop()
    res["cpu_by_phase"] = _harness.MONITOR.phases
    res["loadavg_end"] = list(os.getloadavg())
    res["wall_s"] = time.perf_counter() - t0
    text = report(res)
    print(text)
    print(f"\nwhole run: {res['wall_s']:.0f} s")
    dest = args.json or str(Path(__file__).resolve().parent / "results" /
                            f"train-{res['machine']['date']}{'-quick' if args.quick else ''}.json")
    Path(dest).write_text(json.dumps(res, indent=1, default=str))
    log(f"results: {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
