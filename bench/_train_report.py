"""The text report of the training benchmark (Markdown tables, goals, verdicts)."""

from __future__ import annotations

import statistics
from typing import Any

from _harness import format_facts, table
from _report import verdict
from _train_cases import BATCH

GOAL_SINGLE = 0.97     # (b), (c) vs (a)
GOAL_DDP = 0.95        # (d) group vs mp.spawn
GOAL_TRIVIAL_S = 0.5   # trivial --workers 1 cell on a warm group


def _med(runs: list[dict[str, Any]]) -> float:
    return statistics.median(r["sps"] for r in runs)


def _each(runs: list[dict[str, Any]]) -> str:
    return ", ".join(f"{r['sps']:.0f}" for r in runs)


def _cores(runs: list[dict[str, Any]]) -> str:
    """Median cores used in the timed windows: training process(es) / rest of run / others."""
    ws = [r["cpu_in_window"] for r in runs if r.get("cpu_in_window")]
    if not ws:
        return "n/a"
    return " / ".join(f"{statistics.median(w[k] for w in ws):.2f}"
                      for k in ("training", "rest_of_run", "others"))


def report(res: dict[str, Any]) -> str:
    m = res["m"]
    a_b, b = m["ab"]["a"], m["ab"]["b"]
    a_c, c, a_h = m["ac"]["a"], m["ac"]["c"], m["ac"]["a_helpers"]
    dg, ds = m["d_group"], m["d_spawn"]
    rb, rc, rd = _med(b) / _med(a_b), _med(c) / _med(a_c), _med(dg) / _med(ds)
    bare, lep = m["bare_fit"]["wall_s"], m["lepton_first_train"]["wall_s"]
    triv = statistics.median(m["trivial_group_cell_s"])
    goals = {
        "b_group1_vs_local": {"ratio": rb, "goal": f">= {GOAL_SINGLE}", "met": rb >= GOAL_SINGLE},
        "c_train_vs_local": {"ratio": rc, "goal": f">= {GOAL_SINGLE}", "met": rc >= GOAL_SINGLE},
        "d_group2_vs_spawn": {"ratio": rd, "goal": f">= {GOAL_DDP}", "met": rd >= GOAL_DDP},
        "e_first_train_vs_bare_fit": {"lepton_s": lep, "bare_s": bare, "ratio": lep / bare,
                                      "goal": "report"},
        "diag_helpers_local_vs_local": {"ratio": _med(a_h) / _med(a_c), "goal": "none"},
        "e_trivial_group_cell_s": {"value": triv, "goal": f"<= {GOAL_TRIVIAL_S}",
                                   "met": triv <= GOAL_TRIVIAL_S},
    }
    res["goals"] = goals
    ep, n = res["config"]["epochs"], res["config"]["rounds"]
    rh = _med(a_h) / _med(a_c)
    rows = [
        ["(a) hand-written loop, this process (rounds with b)", _each(a_b), f"{_med(a_b):.0f}",
         "1.00x", "baseline", "", _cores(a_b)],
        ["(b) same loop, `--workers 1` warm-group cell", _each(b), f"{_med(b):.0f}",
         f"{rb:.3f}x", f">= {GOAL_SINGLE}x (a)", verdict(rb >= GOAL_SINGLE), _cores(b)],
        ["(a) hand-written loop, this process (rounds with c)", _each(a_c), f"{_med(a_c):.0f}",
         "1.00x", "baseline", "", _cores(a_c)],
        ["(a') loop with Lepton's helpers, this process, no cell", _each(a_h), f"{_med(a_h):.0f}",
         f"{rh:.3f}x", "(diagnostic)", "", _cores(a_h)],
        ["(c) `run_train` --workers 1, helpers + report() each step", _each(c), f"{_med(c):.0f}",
         f"{rc:.3f}x", f">= {GOAL_SINGLE}x (a)", verdict(rc >= GOAL_SINGLE), _cores(c)],
        ["(d) mp.spawn DDP, 2 procs, gloo (sum of ranks)", _each(ds), f"{_med(ds):.0f}",
         "1.00x", "baseline", "", _cores(ds)],
        ["(d) `--workers 2` warm group, gloo (sum of ranks)", _each(dg), f"{_med(dg):.0f}",
         f"{rd:.3f}x", f">= {GOAL_DDP}x mp.spawn", verdict(rd >= GOAL_DDP), _cores(dg)],
    ]
    lines = [format_facts(res["machine"]), "",
             f"## Training throughput (samples/s; 1 warm-up + {ep} timed epochs per run, "
             f"batch {BATCH} per rank, {n} run(s) per contender unless listed)", "",
             table(rows, ["contender", "each run", "median", "vs baseline", "goal", "verdict",
                          "cores in timed window: training / rest of run / others"]),
             "",
             f"2 ranks vs 1 (scaling on {res['machine']['cpu_count']} cores): mp.spawn "
             f"{_med(ds) / _med(a_b):.2f}x, warm group {_med(dg) / _med(b):.2f}x of their "
             "single-rank counterparts", ""]
    e_rows = [
        ["bare Ray Train `TorchTrainer(...).fit()` (import of ray.train included)",
         f"{bare:.1f}", "1.00x"],
        ["first `run_train` (`%%lepton train`) of this process", f"{lep:.1f}",
         f"{lep / bare:.2f}x"],
    ]
    c_walls = [r["wall_s"] for r in c]
    c_in = [r["ranks"][0]["total_s"] for r in c]
    lines += ["## Start-up (1-epoch tiny cell, 256 samples, 1 worker)", "",
              table(e_rows, ["", "wall s", "vs bare"]), "",
              f"import of ray.train in this process (part of the bare time): "
              f"{m['bare_fit']['import_s']:.1f} s",
              f"later `run_train` calls (c): wall {', '.join(f'{w:.1f}' for w in c_walls)} s, "
              f"of which the loop itself {', '.join(f'{w:.1f}' for w in c_in)} s",
              f"trivial `--workers 1` cell on a warm group: median {triv * 1e3:.0f} ms "
              f"(n={len(m['trivial_group_cell_s'])}, max "
              f"{max(m['trivial_group_cell_s']) * 1e3:.0f} ms) -> goal <= {GOAL_TRIVIAL_S} s: "
              f"{verdict(triv <= GOAL_TRIVIAL_S)}",
              f"cluster start {m['cluster_start_s']:.1f} s; warm group start: --workers 1 "
              f"{m['group1_start_s']:.1f} s, --workers 2 "
              f"{', '.join(f'{w:.1f}' for w in m['group2_start_s'])} s; mp.spawn of 2 "
              f"processes, whole run each: {', '.join(f'{w:.1f}' for w in m['spawn_wall_s'])} s",
              ""]
    threads = {q["threads"] for r in a_b + b + a_c + a_h + c + dg + ds for q in r["ranks"]}
    lines.append(f"torch threads per training process: {sorted(threads)}")
    lines.append("after stopping the cluster: "
                 f"{len(m['leftover_processes'].get('live', []))} live process(es) left")
    cpu = res.get("cpu_by_phase")
    if cpu:
        lines += ["", f"## How busy the {res['machine']['cpu_count']} cores were", "",
                  table([[name, f"{v['wall_s']:.1f}", f"{v['own_cores']:.2f}",
                          f"{v['foreign_cores']:.2f}"] for name, v in cpu.items()],
                        ["phase", "wall s", "cores used by this run",
                         "cores used by other processes"])]
    return "\n".join(lines)
