"""The text report of the dispatch benchmark (Markdown tables, goals, verdicts)."""

from __future__ import annotations

import statistics
from typing import Any

from _harness import MiB, format_facts, ms, summarize, table

GOAL_VS_RAY = 2.0      # lepton p50 <= 2x a raw Ray task (issue 15; it was 3x before)
GOAL_COLD_S = 12.0     # first cell on a fresh kernel, Ray start included
BIG_BYTES = 64 * MiB


def _rows(samples: dict[str, list[float]], base: str, big: bool = False) -> list[list[str]]:
    b = summarize(samples[base])["p50"]
    rows = []
    for name, xs in samples.items():
        s = summarize(xs)
        row = [name, str(s["n"]), ms(s["p50"]), ms(s["p99"]), ms(s["min"]),
               f"{s['p50'] / b:.2f}x"]
        if big:
            row.insert(5, f"{BIG_BYTES / 1e6 / s['p50']:.0f}")
        rows.append(row)
    return rows


def _left(reports: list[dict[str, list[str]]]) -> str:
    live = [x for r in reports for x in r.get("live", [])]
    zombies = [x for r in reports for x in r.get("zombies", [])]
    text = f"{len(live)} live process(es) left, {len(zombies)} zombie(s)"
    detail = "; ".join(live + zombies)
    return text + (f" ({detail[:400]})" if detail else "")


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def report(res: dict[str, Any]) -> str:
    lines = [format_facts(res["machine"]), ""]
    goals: dict[str, Any] = {}
    hdr = ["", "n", "p50 ms", "p99 ms", "min ms"]
    w = res.get("warm")
    if w:
        p1 = w["part1"]
        lines += ["## 1. Trivial cell (`z = 1`), one-shot", "",
                  table(_rows(p1, "raw Ray task: ray.get(f.remote())"),
                        hdr + ["p50 vs raw Ray task"]), ""]
        lep = summarize(p1["%%lepton (IPython magic)"])["p50"]
        ray_ = summarize(p1["raw Ray task: ray.get(f.remote())"])["p50"]
        px = summarize(p1["ipyparallel %%px, 2 engines"])["p50"]
        goals["lepton_p50_vs_ray_task"] = {"ratio": lep / ray_, "goal": f"<= {GOAL_VS_RAY}",
                                           "met": lep / ray_ <= GOAL_VS_RAY}
        goals["lepton_p50_vs_px"] = {"ratio": lep / px, "goal": "< 1", "met": lep < px}
        lines += [f"goal: %%lepton p50 <= {GOAL_VS_RAY:g}x raw Ray task: {lep / ray_:.2f}x -> "
                  f"{verdict(lep / ray_ <= GOAL_VS_RAY)}",
                  f"goal: %%lepton p50 below %%px (2 engines): {lep / px:.2f}x of %%px -> "
                  f"{verdict(lep < px)}", ""]
        off = w.get("part1_off")
        if off:
            lep_off = summarize(off["%%lepton, warm cell worker off"])["p50"]
            ray_off = summarize(off["raw Ray task: ray.get(f.remote())"])["p50"]
            lines += ["The same cell with the kernel's warm cell worker off (each cell a Ray "
                      "task), interleaved with a raw task in a pass of its own:", "",
                      table(_rows(off, "raw Ray task: ray.get(f.remote())"),
                            hdr + ["p50 vs raw Ray task"]), "",
                      f"warm cell worker off: %%lepton p50 {lep_off / ray_off:.2f}x raw Ray "
                      "task (no goal; the default is on)", ""]
        bd = w["breakdown"]
        total = statistics.median(bd["%%lepton total"])
        lines += ["## Where a warm trivial %%lepton cell spends its time "
                  "(instrumented pass, medians)", ""]
        brow = [[k, ms(statistics.median(v)), f"{statistics.median(v) / total:.0%}"]
                for k, v in bd.items()]
        lines += [table(brow, ["step", "median ms", "of total"]), ""]
        lines += ["## 2. Trivial cell on 2 ranks / 2 engines", "",
                  f"warm group start (first `--workers 2` cell, not in the timings): "
                  f"{w['group_start_s']:.1f} s", "",
                  table(_rows(w["part2"], "ipyparallel %%px, 2 engines"), hdr + ["p50 vs %%px"]),
                  ""]
        g = summarize(w["part2"]["%%lepton --workers 2 (IPython magic)"])["p50"]
        px2 = summarize(w["part2"]["ipyparallel %%px, 2 engines"])["p50"]
        goals["group_p50_vs_px"] = {"ratio": g / px2, "goal": "< 1 (by analogy)", "met": g < px2}
        lines += [f"--workers 2 p50 vs %%px p50: {g / px2:.2f}x -> {verdict(g < px2)} "
                  "(no explicit goal; 'below %%px' applied by analogy)", ""]
        lines += ["## 3. Sending a fresh 64 MiB NumPy array", "",
                  table(_rows(w["part3"], "raw Ray: ray.put(a) + task reading it", big=True),
                        hdr + ["MB/s (64 MiB / p50)", "p50 vs raw Ray"]), ""]
    if res.get("cold_bg"):
        lines += _cold_bg_report(res["cold_bg"], goals) + [""]
    c = res.get("cold")
    if c:
        lines += _cold_report(c, goals)
    if w:
        lines.append("after stopping the warm cluster (in-process stop_embedded()): "
                     + _left([w["leftover_processes"]]))
    lines.append(f"load avg at the end: {' '.join(f'{x:.2f}' for x in res['loadavg_end'])}")
    cpu = res.get("cpu_by_phase")
    if cpu:
        lines += ["", f"## How busy the {res['machine']['cpu_count']} cores were (CPU time of "
                  "every process, sampled each second)", "",
                  table([[name, f"{v['wall_s']:.1f}", f"{v['own_cores']:.2f}",
                          f"{v['foreign_cores']:.2f}"] for name, v in cpu.items()],
                        ["phase", "wall s", "cores used by this run",
                         "cores used by other processes"])]
    res["goals"] = goals
    return "\n".join(lines)


GOAL_UP_S = 2.0        # first cell on a fresh kernel while the embedded cluster is up


def _med(rows: list[dict[str, Any]], key: str) -> str:
    got = [r[key] for r in rows if key in r]
    return f"{statistics.median(got):.2f}" if got else "-"


def _cold_bg_report(c: dict[str, list[dict[str, Any]]], goals: dict[str, Any]) -> list[str]:
    """Part 4b: the background start (bench/_cold_bg.py)."""
    lines = ["## 4b. First cell with the background start (`LEPTON_AUTOSTART=1`)", ""]
    keys = [("`lepton up` before the kernel", "lepton_up_s"),
            ("kernel process start -> ready", "kernel_ready_s"),
            ("%load_ext lepton_lab", "load_ext_s"),
            ("%load_ext -> cluster usable (connected)", "usable_after_load_ext_s"),
            ("first %%lepton cell, send -> result", "first_cell_s"),
            ("TOTAL: kernel process start -> first cell's result", "total_s")]
    rows = []
    for label, key in keys:
        rows.append([label] + [_med([r for r in runs if "error" not in r], key)
                               for runs in c.values()])
    rows.append(["runs ok / tried"] + [f"{sum('error' not in r for r in runs)}/{len(runs)}"
                                      for runs in c.values()])
    rows.append(["1-min load avg after the runs"] + [
        ", ".join(f"{r['loadavg'][0]:.1f}" for r in runs) for runs in c.values()])
    lines += [table(rows, ["seconds (median)"] + list(c)), ""]
    for case, runs in c.items():
        lines += [f"{case}: run failed: {r['error'][:200]}" for r in runs if "error" in r]
    at_once = [r["total_s"] for r in c.get("no cluster, cell at once", []) if "error" not in r]
    up = [r["first_cell_s"] for r in c.get("cluster already up", []) if "error" not in r]
    if at_once:
        tot = statistics.median(at_once)
        goals["cold_bg_first_cell_s"] = {"value": tot, "goal": f"<= {GOAL_COLD_S:g}",
                                         "met": tot <= GOAL_COLD_S}
        lines.append(f"goal: first cell on a fresh kernel, no cluster running, <= "
                     f"{GOAL_COLD_S:g} s from kernel start: median {tot:.1f} s -> "
                     f"{verdict(tot <= GOAL_COLD_S)}")
    if up:
        first = statistics.median(up)
        goals["cold_up_first_cell_s"] = {"value": first, "goal": f"<= {GOAL_UP_S:g}",
                                         "met": first <= GOAL_UP_S}
        lines.append(f"goal: first cell on a fresh kernel while the cluster is up <= "
                     f"{GOAL_UP_S:g} s: median {first:.1f} s (send -> result) -> "
                     f"{verdict(first <= GOAL_UP_S)}")
    return lines


def _cold_report(c: dict[str, Any], goals: dict[str, Any]) -> list[str]:
    keys = [("kernel process start -> ready", "kernel_ready_s"),
            ("%load_ext lepton_lab", "load_ext_s"),
            ("(bench instrumentation cell)", "instrument_s"),
            ("first %%lepton cell, send -> result", "first_cell_s"),
            ("  of which: Ray start (start_embedded)", "ray_start_s"),
            ("  of which: connect (import ray + ray.init)", "connect_s"),
            ("  of which: version probe on every node", "version_probe_s"),
            ("  of which: the cell's task + the rest", "first_task_s"),
            ("TOTAL: kernel process start -> first cell's result", "total_s")]
    lines = ["## 4. First cell on a fresh kernel (new LEPTON_HOME, Ray start included)", ""]
    ok = [r for r in c["runs"] if "error" not in r]
    labels = [f"run {i + 1}" for i, r in enumerate(c["runs"]) if "error" not in r]
    for i, r in enumerate(c["runs"]):
        if "error" in r:
            lines.append(f"run {i + 1} FAILED: {r['error']} (1-min load avg {r['loadavg'][0]:.1f})")
    if ok:
        rows = [[label] + [f"{r[k]:.2f}" for r in ok]
                + [f"{statistics.median(r[k] for r in ok):.2f}"] for label, k in keys]
        rows.append(["1-min load avg after the run"] + [f"{r['loadavg'][0]:.1f}" for r in ok]
                    + [""])
        lines += [table(rows, ["seconds"] + labels + ["median"]), ""]
        tot = statistics.median(r["total_s"] for r in ok)
        first = statistics.median(r["first_cell_s"] for r in ok)
        goals["cold_first_cell_s"] = {"value": tot, "first_cell_only": first,
                                      "goal": f"<= {GOAL_COLD_S:g}", "met": tot <= GOAL_COLD_S,
                                      "failed_runs": len(c["runs"]) - len(ok)}
        lines += [f"goal: first cell <= {GOAL_COLD_S:g} s from kernel process start: median "
                  f"{tot:.1f} s -> {verdict(tot <= GOAL_COLD_S)} (the cell alone, kernel already "
                  f"up: {first:.1f} s -> {verdict(first <= GOAL_COLD_S)})"]
    else:
        goals["cold_first_cell_s"] = {"value": None, "met": False, "failed_runs": len(c["runs"])}
        lines.append(f"goal: first cell <= {GOAL_COLD_S:g} s: MISS (every run failed)")
    for label, key in (("cluster start alone (`lepton cluster start`, its own process)",
                        "start_alone"), ("the same start without the dashboard",
                                         "start_no_dashboard")):
        got = [r for r in c[key] if r["rc"] == 0]
        each = ", ".join(f"{r['start_s']:.1f}" + ("" if r["rc"] == 0 else " FAILED")
                         for r in c[key])
        med = f"median {statistics.median(r['start_s'] for r in got):.1f} s" if got else "no run"
        lines.append(f"{label}: {med} (each run: {each} s)")
        lines += [f"  failed run: rc {r['rc']}: {r['output'][-200:]}" for r in c[key]
                  if r["rc"] != 0]
    lines += [f"`import ray` in a fresh process: {c['import_ray_s']:.2f} s",
              "after `lepton cluster stop`: " + _left(
                  [r["leftover_processes"]
                   for r in c["runs"] + c["start_alone"] + c["start_no_dashboard"]]),
              ""]
    return lines


