"""Dispatch benchmark (issue 2): what a remote cell costs next to raw Ray and ipyparallel.

One command, one run, every baseline measured beside Lepton on the same machine::

    .venv/bin/python bench/dispatch.py [--quick] [--json OUT]

Parts
-----
1. a trivial ``%%lepton`` cell (the real magic in an IPython shell) vs a raw Ray task vs
   ipyparallel ``%%px`` on 2 engines.   Goal: p50 <= 2x raw Ray and below %%px.
2. a trivial ``%%lepton --workers 2`` cell (warm group) vs ``%%px`` on 2 engines.
3. a fresh 64 MiB NumPy array read by a cell vs ``ray.put`` + task vs ipyparallel ``push``.
4. the first cell on a fresh kernel, including the local Ray start (subprocess, new
   LEPTON_HOME).   Goal: <= 12 s.
tls (only with ``--parts tls``): a trivial cell and a 64 MiB transfer across nodes on two 2-node
   clusters, one plain and one with Ray's TLS mode, same run (bench/_tls_part.py).

Contenders of a part are timed round-robin (rotating order), so load from other processes on
a shared machine hits them alike; their ratios are the figures to trust, more than the
absolute milliseconds. A monitor samples every process's CPU time each second and reports,
per phase, how many cores this run and everything else on the machine used: a phase where
"other processes" is well above 0 ran on a shared, noisy machine. Every cluster the run
starts is stopped at the end, and every wait has a timeout (a watchdog interrupts a stuck
phase and, failing that, kills what it started). ``--quick`` is a smoke run (10 trivial
rounds, 3 big ones, one cold start); results for docs/benchmarks.md come from a full run.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
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
from _cold import head_pid, log, part4  # noqa: E402
from _cold_bg import part4b  # noqa: E402
from _harness import (  # noqa: E402
    MiB,
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
from _report import report  # noqa: E402
from _tls_part import part_tls, tls_report  # noqa: E402

TRIVIAL = "z = 1"
BIG_BYTES = 64 * MiB
PARTS = ("warm", "cold", "coldbg", "tls")   # tls (bench/_tls_part.py) only when asked for


def _drain(gen: Any) -> None:
    """Read a Ray streaming generator to its end, as Lepton's consume loop does."""
    import ray

    while True:
        ready, _ = ray.wait([gen], num_returns=1, timeout=60)
        if not ready:
            raise TimeoutError("streaming generator: nothing within 60 s")
        try:
            ref = next(gen)
        except StopIteration:
            return
        ray.get(ref, timeout=60)


def _magic(ip: Any, line: str, body: str):
    def run(_: Any) -> None:
        with quiet():
            ip.run_cell_magic("lepton", line, body)
    return run


def warm_worker_ready(ip: Any) -> None:
    """Two cells in a row start the kernel's warm cell worker in the background; wait until
    Ray has placed it, so that the timed cells measure the warm path (the first two cells
    after a pause run as tasks: part 1 with the worker off measures that path). It starts
    only on CPUs free in Ray's view, which lags a moment behind work that just ended: then
    the next cells try again."""
    import ray

    from lepton_lab.remote import _warm

    for _ in range(12):
        if _warm._W is not None:
            break
        _magic(ip, "", TRIVIAL)(None)
        time.sleep(0.05)
    if _warm._W is not None:
        ray.get(_warm._W.ready_ref, timeout=60)
    _magic(ip, "", TRIVIAL)(None)
    assert _warm.info() and _warm.info()["ready"], "the warm cell worker did not start"


def part1(ip: Any, rc: Any, iters: int, warmup: int) -> dict[str, list[float]]:
    import ray

    from lepton_lab import CellSpec, TextSink, run_cell

    @ray.remote
    def noop() -> int:
        return 1

    @ray.remote
    def noop_gen():
        yield 1

    ns: dict[str, Any] = {}

    def px(_: Any) -> None:
        with quiet():
            ip.run_cell_magic("px", "", TRIVIAL)

    contenders = {
        "%%lepton (IPython magic)": (None, _magic(ip, "", TRIVIAL)),
        "run_cell() core, no IPython": (None, lambda _: run_cell(TRIVIAL, ns, CellSpec(),
                                                                  TextSink())),
        "raw Ray task: ray.get(f.remote())": (None, lambda _: ray.get(noop.remote(), timeout=60)),
        "raw Ray streaming-generator task": (None, lambda _: _drain(noop_gen.remote())),
        "ipyparallel %%px, 2 engines": (None, px),
        "ipyparallel rc[:].execute, 2 engines": (
            None, lambda _: rc[:].execute(TRIVIAL, block=False).get(timeout=60)),
        "ipyparallel rc[0].execute, 1 engine": (
            None, lambda _: rc[0].execute(TRIVIAL, block=False).get(timeout=60)),
    }
    warm_worker_ready(ip)
    samples = interleaved(contenders, iters, warmup, log)
    assert ip.user_ns["z"] == 1 and ns["z"] == 1
    return samples


def breakdown(ip: Any, iters: int) -> dict[str, list[float]]:
    """Where a warm trivial %%lepton cell spends its time (a separate, instrumented pass).

    Wraps the steps of ``run_cell`` (looked up as module globals at call time)."""
    import lepton_lab.remote as remote
    from lepton_lab.remote import _runner
    from lepton_lab.store import _store

    acc: dict[str, float] = {}

    def timed(fn: Any, key: str) -> Any:
        def wrapper(*a: Any, **k: Any) -> Any:
            t0 = time.perf_counter()
            try:
                res = fn(*a, **k)
            finally:
                acc[key] = acc.get(key, 0.0) + time.perf_counter() - t0
            if key == "finish_outcome":
                acc["cell body on the worker (execute())"] = res.elapsed
            return res
        return wrapper

    orig_task = _runner._remote_task

    def remote_task() -> Any:
        task = orig_task()

        class Opts:
            def options(self, **kw: Any) -> Any:
                opt = task.options(**kw)

                class Submit:
                    def remote(self, *a: Any) -> Any:
                        return timed(opt.remote, "submit (.remote())")(*a)
                return Submit()
        return Opts()

    patches = [(remote, "run_cell", "run_cell total"), (_runner, "analyze", "analyze"),
               (_runner, "ensure_connected", "ensure_connected"),
               (_runner, "check_feasible", "check_feasible"),
               (_runner, "ship_values", "ship_values"), (_runner, "consume", "consume (wait)"),
               (_runner, "finish_outcome", "finish_outcome"),
               (_runner._warm, "take", "warm worker: take()"),
               (_store.Store, "create_job", "store.create_job"),
               (_store.Store, "finish_job", "store.finish_job")]
    saved = [(obj, name, getattr(obj, name)) for obj, name, _ in patches]
    for obj, name, key in patches:
        setattr(obj, name, timed(getattr(obj, name), key))
    _runner._remote_task = remote_task
    rows: dict[str, list[float]] = {}
    run = _magic(ip, "", TRIVIAL)
    warm_worker_ready(ip)
    try:
        for i in range(iters + 2):
            acc.clear()
            t0 = time.perf_counter()
            run(None)
            acc["%%lepton total"] = time.perf_counter() - t0
            if i >= 2:  # two warm-ups
                for k, v in acc.items():
                    rows.setdefault(k, []).append(v)
    finally:
        for obj, name, orig in saved:
            setattr(obj, name, orig)
        _runner._remote_task = orig_task
    return rows


def part1_off(ip: Any, iters: int, warmup: int) -> dict[str, list[float]]:
    """Part 1's cell with the kernel's warm cell worker off (each cell a Ray task, as before
    2026-12-05), against the same raw task, in the same run."""
    import ray

    from lepton_lab.config import get_config
    from lepton_lab.remote import _warm

    @ray.remote
    def noop() -> int:
        return 1

    cfg = get_config()
    saved = cfg.warm_cell_s
    cfg.warm_cell_s = 0.0
    _warm.release()
    try:
        contenders = {
            "%%lepton, warm cell worker off": (None, _magic(ip, "", TRIVIAL)),
            "raw Ray task: ray.get(f.remote())": (None, lambda _: ray.get(noop.remote(),
                                                                          timeout=60)),
        }
        return interleaved(contenders, iters, warmup, log)
    finally:
        cfg.warm_cell_s = saved


def part3(ip: Any, rc: Any, iters: int, warmup: int) -> dict[str, list[float]]:
    import numpy as np
    import ray

    @ray.remote
    def read(x: Any) -> int:
        return x.nbytes

    n = BIG_BYTES // 8
    counter = itertools.count()

    def fresh() -> Any:  # a new 64 MiB object each time: nothing can be cached
        return np.full(n, float(next(counter)))

    def lepton_prepare() -> Any:
        ip.user_ns["a"] = fresh()
        return None

    lepton_run = _magic(ip, "", "n = a.nbytes")

    def lepton(_: Any) -> None:
        lepton_run(None)
        assert ip.user_ns["n"] == BIG_BYTES

    def raw(a: Any) -> None:
        assert ray.get(read.remote(ray.put(a)), timeout=120) == BIG_BYTES

    contenders = {
        "%%lepton cell reading a (n = a.nbytes)": (lepton_prepare, lepton),
        "raw Ray: ray.put(a) + task reading it": (fresh, raw),
        "ipyparallel rc[:].push, 2 engines": (
            fresh, lambda a: rc[:].push({"a": a}, block=False).get(timeout=120)),
        "ipyparallel rc[0].push, 1 engine": (
            fresh, lambda a: rc[0].push({"a": a}, block=False).get(timeout=120)),
    }
    return interleaved(contenders, iters, warmup, log)


def part2(ip: Any, rc: Any, iters: int, warmup: int) -> tuple[dict[str, list[float]], float]:
    import ray

    t0 = time.perf_counter()
    _magic(ip, "--workers 2", TRIVIAL)(None)  # starts the warm group (not timed below)
    group_start = time.perf_counter() - t0

    @ray.remote(num_cpus=0)  # the group holds both CPUs of this machine
    class Rank:
        def ping(self) -> int:
            return 1

    actors = [Rank.remote() for _ in range(2)]
    ray.get([a.ping.remote() for a in actors], timeout=120)

    def px(_: Any) -> None:
        with quiet():
            ip.run_cell_magic("px", "", TRIVIAL)

    contenders = {
        "%%lepton --workers 2 (IPython magic)": (None, _magic(ip, "--workers 2", TRIVIAL)),
        "raw Ray: 2 actors, one call each": (
            None, lambda _: ray.get([a.ping.remote() for a in actors], timeout=60)),
        "ipyparallel %%px, 2 engines": (None, px),
        "ipyparallel rc[:].execute, 2 engines": (
            None, lambda _: rc[:].execute(TRIVIAL, block=False).get(timeout=60)),
    }
    samples = interleaved(contenders, iters, warmup, log)
    for a in actors:
        ray.kill(a)
    return samples, group_start


def warm(args: argparse.Namespace) -> dict[str, Any]:
    home = tempfile.mkdtemp(prefix="lepton-bench-warm-")
    os.environ["LEPTON_HOME"] = home
    os.environ.pop("RAY_ADDRESS", None)
    on_emergency(lambda: kill_session(head_pid(home) or -1))
    on_emergency(lambda: kill_pids(descendants(os.getpid())))
    import ipyparallel as ipp
    from IPython.testing.globalipapp import start_ipython

    from lepton_lab import cluster as lc
    from lepton_lab.config import reset_config
    from lepton_lab.remote._group import stop_group
    from lepton_lab.store import reset_store

    reset_config()
    reset_store()
    out: dict[str, Any] = {"lepton_home": home}
    ipc = rc = None
    try:
        ip = start_ipython()
        ip.run_line_magic("load_ext", "lepton_lab")
        log("warm: starting the embedded cluster (first %%lepton cell)")
        t0 = time.perf_counter()
        with watchdog(300, "the warm cluster start"), phase("warm cluster start"):
            _magic(ip, "", TRIVIAL)(None)
        out["first_cell_with_cluster_start_s"] = time.perf_counter() - t0
        log("warm: starting ipyparallel (2 engines)")
        t0 = time.perf_counter()
        ipc = ipp.Cluster(n=2, engine_timeout=90, log_level=40)
        # quiet(): ipyparallel draws a progress bar while its engines register
        with watchdog(240, "the ipyparallel start"), quiet(), phase("ipyparallel start"):
            rc = ipc.start_and_connect_sync()
            rc.wait_for_engines(2, timeout=90)
        out["ipyparallel_start_s"] = time.perf_counter() - t0
        view = rc[:]
        view.block = True
        view.activate()  # %%px in the same IPython shell
        it, wu, big, bwu = args.iters, args.warmup, args.big_iters, args.big_warmup
        log(f"part 1: trivial cells, {it} rounds")
        with watchdog(600, "part 1"), phase("part 1"):
            out["part1"] = part1(ip, rc, it, wu)
        log(f"part 1, warm cell worker off: {it} rounds")
        with watchdog(600, "part 1 off"), phase("part 1 off"):
            out["part1_off"] = part1_off(ip, it, wu)
        log(f"breakdown: instrumented trivial %%lepton cells, {it} runs")
        with watchdog(300, "the breakdown"), phase("breakdown"):
            out["breakdown"] = breakdown(ip, it)
        log(f"part 3: 64 MiB array, {big} rounds")
        with watchdog(600, "part 3"), phase("part 3"):
            out["part3"] = part3(ip, rc, big, bwu)
        log(f"part 2: --workers 2, {it} rounds")
        with watchdog(600, "part 2"), phase("part 2"):
            out["part2"], out["group_start_s"] = part2(ip, rc, it, wu)
    finally:
        log("warm: cleaning up")
        with watchdog(120, "the clean-up"):
            with contextlib.suppress(Exception):
                stop_group()
            if ipc is not None:
                with contextlib.suppress(Exception):
                    if rc is not None:
                        rc.close()
                    ipc.stop_cluster_sync()
            pid = head_pid(home)
            lc.stop_embedded()
            out["leftover_processes"] = wait_session_gone(pid) if pid else {}
            if out["leftover_processes"].get("live"):
                kill_session(pid)  # type: ignore[arg-type]
        shutil.rmtree(home, ignore_errors=True)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="few iterations (a smoke run)")
    p.add_argument("--json", metavar="OUT", help="write every raw sample and summary here")
    p.add_argument("--parts", default="warm,cold,coldbg",
                   help="comma-separated: warm (parts 1-3), cold (part 4), coldbg (part 4b, "
                        "the background start), tls (TLS vs plain on two 2-node clusters); "
                        "default warm,cold,coldbg")
    args = p.parse_args(argv)
    if not set(filter(None, args.parts.split(","))) <= set(PARTS):
        p.error(f"--parts: unknown part(s) {args.parts!r}; known: {', '.join(PARTS)}")
    args.iters, args.warmup = (10, 2) if args.quick else (50, 5)
    args.big_iters, args.big_warmup = (3, 1) if args.quick else (10, 2)
    cold_repeats, start_pairs = (1, 1) if args.quick else (3, 2)
    parts = set(args.parts.split(","))
    res: dict[str, Any] = {"machine": machine_facts(), "quick": args.quick,
                           "config": {"iters": args.iters, "warmup": args.warmup,
                                      "big_iters": args.big_iters, "big_warmup": args.big_warmup,
                                      "cold_repeats": cold_repeats, "start_pairs": start_pairs,
                                      "big_bytes": BIG_BYTES}}
    log(format_facts(res["machine"]))
    _harness.MONITOR = _harness.CpuMonitor()
    t0 = time.perf_counter()
    if "cold" in parts:  # first, while nothing else of ours runs: a really fresh machine state
        res["cold"] = part4(cold_repeats, start_pairs)
    if "coldbg" in parts:
        res["cold_bg"] = part4b(cold_repeats)
    if "warm" in parts:
        res["warm"] = warm(args)
    if "tls" in parts:
        res["tls"] = part_tls(args)
    _harness.MONITOR.stop()
    res["cpu_by_phase"] = _harness.MONITOR.phases
    res["loadavg_end"] = list(os.getloadavg())
    res["wall_s"] = time.perf_counter() - t0
    text = report(res)
    if res.get("tls"):
        text += "\n\n" + "\n".join(tls_report(res["tls"], res["cpu_by_phase"]))
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1, default=str))
        log(f"raw numbers: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
