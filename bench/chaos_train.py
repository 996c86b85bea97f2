"""Node-loss repeats (issue 14): the elastic-training case of ``tests/integration/
test_multinode.py`` run N times on one real multi-node cluster of this machine::

    .venv/bin/python bench/chaos_train.py [--repeats 10] [--json OUT]

The cluster is ``tests/integration/multinode.py``'s: a head and two worker nodes, each a
``ray start --block`` with one CPU in its own session. A real kernel (RAY_ADDRESS set to that
head) runs ``%%lepton train --workers 2-3 --max-failures 2`` with a checkpoint after each of
EPOCHS epochs; during epoch KILL_EPOCH the worker node of the highest rank on a worker node is
lost as a machine is (SIGKILL to its whole session: ``ray start``, raylet, agents, workers).
Before each repeat the lost node is started again, so every repeat starts with three nodes.

Reported per repeat: finished (the run succeeded with every epoch done, counted once), the
world sizes, the epochs replayed (goal: at most one checkpoint interval, i.e. 1), the time from
the kill to the ranks training again, and the run's wall time. The whole run is bounded
(``--budget`` seconds, default 1500): repeats that do not fit are reported as not run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import format_facts, machine_facts, table  # noqa: E402

from tests.integration.conftest import KernelClient, text_of  # noqa: E402
from tests.integration.multinode import TRAIN_CELL, MultiNodeCluster, kill_when_marked  # noqa: E402

EPOCHS, STEPS, SLEEP, KILL_EPOCH, KILL_AFTER = 4, 4, 0.9, 2, 2.5
SETTLE = 3.0
#: a run that starts with fewer ranks than nodes loses no node (the killer waits for every
#: rank): it is reported, not counted, and another repeat runs instead (at most this many)
SPARE = 5


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run(k: KernelClient, code: str, timeout: float = 120) -> tuple[dict, str]:
    reply, msgs = k.execute(code, timeout=timeout)
    return reply, text_of(msgs)


def last_json(k: KernelClient, code: str) -> dict:
    reply, out = run(k, code)
    if reply["status"] != "ok":
        raise RuntimeError(f"{reply.get('ename')}: {reply.get('evalue')}")
    return json.loads(out.strip().splitlines()[-1])


def alive_names(k: KernelClient, want: int, timeout: float = 90) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while True:
        raw = last_json(k, "print(json.dumps({n['NodeID']: [r[12:] for r in n['Resources'] "
                           "if r.startswith('lepton_node_')] for n in ray.nodes() "
                           "if n['Alive']}))")
        names = {nid: (lab[0] if lab else "head") for nid, lab in raw.items()}
        if len(names) == want or time.monotonic() > deadline:
            return names
        time.sleep(0.5)


def wait_free_cpus(k: KernelClient, want: float, timeout: float = 120) -> float:
    """Every node's CPU free again (the last run's actors gone), so the run starts with one
    rank per node; returns the free CPUs seen last."""
    deadline = time.monotonic() + timeout
    while True:
        free = last_json(k, "print(json.dumps(ray.available_resources().get('CPU', 0)))")
        if free >= want or time.monotonic() > deadline:
            return free
        time.sleep(0.5)


def one_repeat(i: int, cluster: MultiNodeCluster, k: KernelClient, root: Path) -> dict:
    cluster.restart_lost()
    names = alive_names(k, 1 + len(cluster.workers))
    wait_free_cpus(k, 1 + len(cluster.workers))
    time.sleep(SETTLE)   # Ray Train's elastic policy sizes the run from a view that lags
    marks = root / f"marks{i}"
    marks.mkdir()
    run(k, f"EPOCHS, STEPS, SLEEP, KILL_EPOCH, MARKS = {EPOCHS}, {STEPS}, {SLEEP}, "
           f"{KILL_EPOCH}, {str(marks)!r}")
    box: dict = {}
    killer = threading.Thread(target=kill_when_marked, daemon=True,
                              args=(cluster, names, str(marks), 3, KILL_AFTER, box))
    killer.start()
    t0 = time.monotonic()
    reply, out = run(k, f"%%lepton train --workers 2-3 --max-failures 2 --name chaos-{i}\n"
                        + TRAIN_CELL, timeout=420)
    wall = time.monotonic() - t0
    killer.join(timeout=5)
    if killer.is_alive():    # fewer ranks than nodes started: nothing was killed
        box.setdefault("error", f"no kill: {len(os.listdir(marks))} rank(s) reached epoch "
                                f"{KILL_EPOCH}")
    row = {"repeat": i, "wall_s": wall, "cell": reply["status"], "kill": box}
    if reply["status"] != "ok":
        row["error"] = f"{reply.get('ename')}: {reply.get('evalue')}"[:300]
        return row
    rec = last_json(k, f"from lepton_lab.store import get_store\n_r = get_store().get_run("
                       f"'chaos-{i}')\nprint(json.dumps({{'status': _r.status, "
                       f"'metrics': _r.metrics}}))")
    elastic = rec["metrics"].get("elastic") or {}
    fails = elastic.get("failures") or []
    row.update(status=rec["status"], world=elastic.get("world"),
               last_epoch=rec["metrics"].get("epoch"), failures=len(fails))
    row["finished"] = rec["status"] == "succeeded" and row["last_epoch"] == EPOCHS - 1
    if "error" in box:
        row["error"] = box["error"]
    if fails and "at" in box:
        f = fails[0]
        row.update(replayed=f.get("epochs_replayed"), resume_epoch=f.get("resume_epoch"),
                   recover_s=f["resumed_at"] - box["at"], controller_s=f.get("recovery_s"),
                   node_named=f.get("nodes_lost", [{}])[0].get("node_id") == box["node_id"])
    return row


def report(all_rows: list[dict], repeats: int, facts: dict) -> str:
    rows = [r for r in all_rows if "at" in r["kill"]]          # a node was lost
    skipped = len(all_rows) - len(rows)
    done = [r for r in rows if r.get("finished")]
    rec = [r["recover_s"] for r in rows if "recover_s" in r]
    rep = [r.get("replayed") for r in rows if r.get("replayed") is not None]
    body = [[str(r["repeat"]), ("yes" if r.get("finished") else "NO") if "at" in r["kill"]
             else "(no kill)",
             str(r.get("world", "-")), str(r.get("replayed", "-")),
             f"{r['recover_s']:.1f}" if "recover_s" in r else "-", f"{r['wall_s']:.1f}",
             r.get("error", "")[:80]] for r in all_rows]
    lines = [format_facts(facts), "",
             table(body, ["repeat", "finished", "world", "epochs replayed",
                          "recovered s after kill", "run s", "error"]), "",
             f"finished: {len(done)}/{repeats} (ran {len(rows)}); epochs replayed: "
             f"max {max(rep, default='-')}, total {sum(rep)}; recovery after kill: median "
             f"{statistics.median(rec):.1f} s, max {max(rec):.1f} s" if rec else
             f"finished: {len(done)}/{repeats} (ran {len(rows)})"]
    lines.append(f"runs that started with fewer ranks than nodes (no node lost, not counted):"
                 f" {skipped}")
    ok = len(done) == repeats and all(x is not None and x <= 1 for x in rep) \
        and len(rep) == repeats
    lines.append(f"goal: {repeats}/{repeats} finished, at most one checkpoint interval (1 epoch)"
                 f" replayed each -> {'PASS' if ok else 'MISS'}")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--budget", type=float, default=1500, help="seconds for all repeats")
    ap.add_argument("--json", help="write the rows and the machine facts here")
    args = ap.parse_args()
    facts = machine_facts()
    root = Path(tempfile.mkdtemp(prefix="lchaos-"))
    cluster = MultiNodeCluster(workers=2, head_cpus=1, root=str(root / "c")).start()
    rows: list[dict] = []
    k = None
    started = time.monotonic()
    try:
        k = KernelClient(cluster.kernel_env(root / "home"))
        reply, out = run(k, "%load_ext lepton_lab\nimport json, ray\nfrom lepton_lab.cluster "
                            "import ensure_connected\n_conn = ensure_connected()")
        if reply["status"] != "ok":
            raise RuntimeError(out[-2000:])
        i = 0
        while sum(1 for r in rows if "at" in r["kill"]) < args.repeats \
                and i < args.repeats + SPARE:
            if time.monotonic() - started > args.budget:
                log(f"budget of {args.budget:.0f} s spent")
                break
            i += 1
            row = one_repeat(i, cluster, k, root)
            log(f"repeat {i}: {json.dumps(row, default=str)}")
            rows.append(row)
    finally:
        if k is not None:
            k.stop()
        cluster.stop()
    text = report(rows, args.repeats, facts)
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": facts, "rows": rows}, indent=1,
                                              default=str))
    killed = [r for r in rows if "at" in r["kill"]]
    return 0 if len(killed) == args.repeats and all(r.get("finished") for r in killed) else 1


if __name__ == "__main__":
    sys.exit(main())
