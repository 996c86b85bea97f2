"""The ``tls`` part of the dispatch benchmark: what Ray's TLS mode costs a cell (issue text:
"trivial cell and 64 MiB transfer, TLS vs plain, same run").

Two real 2-node clusters on loopback (``tests/integration/multinode.py``: a head and one
worker node, each a ``ray start --block`` with one CPU in its own session, token auth on), one
plain and one with ``RAY_USE_TLS=1`` and a CA + node certificate made by
``lepton_lab._tls.ensure_local()`` in a temporary LEPTON_HOME. They are started one after the
other (a node start is CPU-bound).

A Ray driver is connected to one cluster per process, so each cluster gets its own driver: a
child process (this file run as a script) with the cluster's ``kernel_env`` and an IPython
shell with ``%load_ext lepton_lab``. It holds the CPU of the node it is attached to (the head)
with an idle actor, so every cell and task of the part runs on the *other* node and a 64 MiB
argument has to cross nodes. The children wait on stdin for ``prep <kind>`` (untimed: e.g. a
fresh array) and ``go <kind>`` (timed in the child) and answer one JSON line each; the parent
drives both through ``_harness.interleaved`` (one measurement at a time, the two drivers
alternating round by round), so load from other processes hits plain and TLS alike.

Measured, each on both clusters after a short untimed pause (``SETTLE_S``): a trivial
``%%lepton`` cell, the same cell sent right after another one, a trivial raw Ray task and a
trivial streaming-generator task (the floor under the cell; a cell is one), ``ray.put`` of a
fresh 64 MiB array + a task on the other node reading it, and a ``%%lepton`` cell reading a
fresh 64 MiB array from the namespace.
Reported: p50/p90 of each and the TLS/plain ratio of the p50s. Both clusters and both
drivers are stopped at the end, and that no process of a node's session is left is checked.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _harness  # noqa: E402
from _harness import (  # noqa: E402
    MiB,
    kill_pids,
    kill_session,
    ms,
    on_emergency,
    percentile,
    phase,
    processes_in_session,
    quiet,
    table,
    watchdog,
)

REPO = Path(__file__).resolve().parents[1]
BIG_BYTES = 64 * MiB
TRIVIAL = "z = 1"
CLUSTERS = ("plain", "TLS")
#: an untimed pause before every timed step, so each starts with both clusters quiet, as a
#: notebook cell run by hand does. A cell leaves work behind after its result is back, and a
#: cell sent sooner waits for it: without the pause a trivial cell took ~7 ms when the other
#: driver's cell had run just before it and 30-100 ms right after one of its own, so its p50
#: and the TLS/plain ratio depended on the order (0.5x to 9x in runs without the pause).
#: Back to back (a notebook's "run all") is measured on its own, as the second of two cells
#: sent one right after the other.
SETTLE_S = 0.25
#: what a child can time: kind -> the measurement's name in the report
KINDS = {
    "trivial_cell": "trivial %%lepton cell (z = 1)",
    "trivial_cell_b2b": "trivial %%lepton cell right after another (back to back)",
    "trivial_task": "raw Ray task, trivial (the floor under the cell)",
    "trivial_gen": "raw Ray streaming-generator task, trivial (as a cell's)",
    "put_task": "64 MiB: ray.put(a) + task on the other node reading it",
    "big_cell": "64 MiB: %%lepton cell reading a (n = a.nbytes)",
}
TRIVIAL_KINDS = ("trivial_cell", "trivial_cell_b2b", "trivial_task", "trivial_gen")
BIG_KINDS = ("put_task", "big_cell")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- the summary (no Ray, no processes: unit-tested) -------------------------------------------
def summarize_tls(samples: dict[str, dict[str, list[float]]]) -> list[dict[str, Any]]:
    """One row per measurement: n, p50 and p90 of each cluster, and TLS p50 / plain p50."""
    rows = []
    for measure, by in samples.items():
        plain, tls = by.get("plain") or [], by.get("TLS") or []
        row: dict[str, Any] = {"measurement": measure, "n_plain": len(plain), "n_tls": len(tls)}
        for key, xs in (("plain", plain), ("tls", tls)):
            row[f"{key}_p50"] = percentile(xs, 50)
            row[f"{key}_p90"] = percentile(xs, 90)
        ok = plain and tls and row["plain_p50"] > 0
        row["ratio_p50"] = row["tls_p50"] / row["plain_p50"] if ok else float("nan")
        rows.append(row)
    return rows


def _fmt(x: float) -> str:
    return "-" if math.isnan(x) else ms(x)


def tls_table(rows: list[dict[str, Any]]) -> str:
    body = [[r["measurement"], f"{r['n_plain']}/{r['n_tls']}", _fmt(r["plain_p50"]),
             _fmt(r["tls_p50"]),
             "-" if math.isnan(r["ratio_p50"]) else f"{r['ratio_p50']:.2f}x",
             _fmt(r["plain_p90"]), _fmt(r["tls_p90"])] for r in rows]
    return table(body, ["measurement", "n plain/TLS", "plain p50 ms", "TLS p50 ms",
                        "TLS/plain (p50)", "plain p90 ms", "TLS p90 ms"])


def tls_report(t: dict[str, Any], cpu: dict[str, dict[str, float]] | None = None) -> list[str]:
    """The Markdown section of the part (appended to the dispatch report)."""
    lines = ["## TLS vs plain: two 2-node clusters on loopback, same run", "",
             "Each cluster: a head and one worker node (`ray start`, 1 CPU each, token auth); "
             "its own driver process holds the head's CPU, so every cell and task runs on the "
             "worker node and the 64 MiB arrays cross nodes. Timed in the driver, the two "
             f"drivers alternating round by round, each step after an untimed {SETTLE_S:g} s "
             "pause.", ""]
    starts = t.get("cluster_start_s") or {}
    if starts:
        speaks = t.get("gcs_speaks_tls") or {}
        lines += ["cluster start (both nodes): " + ", ".join(
            f"{k} {v:.1f} s" for k, v in starts.items())
            + ("; head's GCS port answers in TLS: " + ", ".join(
                f"{k} {v}" for k, v in speaks.items()) if speaks else ""), ""]
    if t.get("summary"):
        lines += [tls_table(t["summary"]), ""]
    if t.get("error"):
        lines += [f"the TLS part failed: {t['error']}", ""]
    for name, phase_name in (("trivial rounds", "tls part: trivial rounds"),
                             ("64 MiB rounds", "tls part: 64 MiB rounds")):
        v = (cpu or {}).get(phase_name)
        if v:
            lines.append(f"machine during the {name}: this run {v['own_cores']:.2f} cores, "
                         f"other processes {v['foreign_cores']:.2f} cores "
                         f"({v['wall_s']:.0f} s)")
    left = t.get("leftover_processes") or {}
    live = [x for r in left.values() for x in r.get("live", [])]
    lines.append(f"after stopping both clusters: {len(live)} live process(es) of their nodes "
                 f"left" + (f" ({'; '.join(live)[:400]})" if live else ""))
    return lines + [""]


# -- the parent's side ---------------------------------------------------------------------------
def _tls_env(home: Path) -> dict[str, str]:
    """The CA and node certificate under ``home/tls`` (made in a child process, so this one's
    LEPTON_HOME and config are untouched), as the environment Ray reads."""
    code = ("import json; from lepton_lab._tls import ensure_local; "
            "print(json.dumps(ensure_local()))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, cwd=REPO, env=dict(os.environ, LEPTON_HOME=str(home)))
    if proc.returncode != 0:
        raise RuntimeError(f"ensure_local() failed: {proc.stderr[-1500:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


class Driver:
    """A child driver process connected to one cluster; every wait is bounded."""

    def __init__(self, name: str, env: dict[str, str], log_path: Path):
        self.name, self.log_path = name, log_path
        self._log = open(log_path, "w")
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--driver"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self._log, env=env, cwd=REPO, text=True, bufsize=1)
        on_emergency(lambda: kill_pids([self.proc.pid]))
        self._q: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True, name=f"driver-{name}").start()

    def _read(self) -> None:
        with contextlib.suppress(Exception):
            for line in self.proc.stdout:  # type: ignore[union-attr]
                self._q.put(line)
        self._q.put(None)

    def _tail(self) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text()[-1500:]
        return ""

    def reply(self, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{self.name} driver: no answer within {timeout:.0f} s")
            try:
                line = self._q.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                raise RuntimeError(f"{self.name} driver exited (rc {self.proc.poll()}): "
                                   f"{self._tail()}")
            with contextlib.suppress(ValueError):
                msg = json.loads(line)
                if msg.get("error"):
                    raise RuntimeError(f"{self.name} driver: {msg['error']}")
                return msg

    def ask(self, cmd: str, timeout: float = 180) -> dict[str, Any]:
        self.proc.stdin.write(cmd + "\n")  # type: ignore[union-attr]
        self.proc.stdin.flush()  # type: ignore[union-attr]
        return self.reply(timeout)

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.proc.stdin.write("quit\n")  # type: ignore[union-attr]
            self.proc.stdin.flush()  # type: ignore[union-attr]
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            with contextlib.suppress(Exception):
                self.proc.wait(timeout=10)
        self._log.close()


def _rounds(drivers: dict[str, Driver], kinds: tuple[str, ...], iters: int, warmup: int,
            samples: dict[str, dict[str, list[float]]], round_trip: dict[str, list[float]]
            ) -> None:
    """Time each of ``kinds`` on both drivers with ``interleaved``: child-side times into
    ``samples``, the parent's round trips (pipe included) into ``round_trip``.

    One ``interleaved`` per kind, with just the plain and the TLS driver as contenders: with
    two, the order alternates and each is preceded by itself and by the other equally often.
    (All kinds in one rotation would always put the TLS cell right after the plain one, and a
    cell's time depends on what ran just before it.)"""
    for kind in kinds:
        log(f"  {KINDS[kind]}")
        got: dict[str, list[float]] = {}
        contenders: dict[str, Any] = {}
        for cname, drv in drivers.items():
            key = f"{KINDS[kind]} [{cname}]"
            got[key] = []

            def prepare(drv: Driver = drv, kind: str = kind) -> None:
                drv.ask(f"prep {kind}")
                time.sleep(SETTLE_S)

            def run(_: Any, drv: Driver = drv, kind: str = kind, key: str = key) -> None:
                got[key].append(drv.ask(f"go {kind}")["s"])

            contenders[key] = (prepare, run)
        trips = _harness.interleaved(contenders, iters, warmup, log)
        for cname in drivers:
            key = f"{KINDS[kind]} [{cname}]"
            samples.setdefault(KINDS[kind], {})[cname] = got[key][warmup:]  # warm-ups first
            round_trip[key] = trips[key]


def _kill_nodes(cluster: Any) -> None:
    for node in [*cluster.workers, cluster.head]:
        if node.proc is not None:
            kill_session(node.proc.pid)


def part_tls(args: Any) -> dict[str, Any]:
    sys.path.insert(0, str(REPO))
    from lepton_lab._tls import speaks_tls
    from tests.integration.multinode import MultiNodeCluster

    it, wu = (10, 2) if args.quick else (args.iters, args.warmup)
    big, bwu = (3, 1) if args.quick else (args.big_iters, args.big_warmup)
    root = Path(tempfile.mkdtemp(prefix="ltls-"))   # short: Ray's sockets live under it
    out: dict[str, Any] = {"config": {"iters": it, "warmup": wu, "big_iters": big,
                                      "big_warmup": bwu, "big_bytes": BIG_BYTES},
                           "cluster_start_s": {}, "drivers": {}, "samples": {},
                           "round_trip": {}}
    clusters: dict[str, Any] = {}
    drivers: dict[str, Driver] = {}
    dogs: list[dict[str, bool]] = []
    try:
        tls_env = _tls_env(root / "home-certs")
        envs = {"plain": {"RAY_USE_TLS": "0"}, "TLS": tls_env}
        for cname in CLUSTERS:
            log(f"tls part: starting the {cname} cluster (head + 1 worker node)")
            with watchdog(420, f"the {cname} cluster start") as dog, \
                    phase(f"tls part: start the {cname} cluster"):
                dogs.append(dog)
                c = MultiNodeCluster(workers=1, head_cpus=1, root=str(root / cname),
                                     extra_env=envs[cname])
                clusters[cname] = c
                on_emergency(lambda c=c: _kill_nodes(c))
                t0 = time.perf_counter()
                c.start()
                out["cluster_start_s"][cname] = time.perf_counter() - t0
            # the head's GCS port answers in TLS exactly on the TLS cluster, or the part
            # would compare nothing
            speaks = speaks_tls("127.0.0.1", c.port)
            out.setdefault("gcs_speaks_tls", {})[cname] = speaks
            if speaks is not None and speaks is not (cname == "TLS"):
                raise RuntimeError(f"the {cname} cluster's GCS port: speaks TLS = {speaks}")
            if _harness.MONITOR is not None:
                for node in [c.head, *c.workers]:
                    _harness.MONITOR.add_session(node.sid)
        for cname in CLUSTERS:   # one after the other too: import ray + connect is CPU-bound
            log(f"tls part: starting the {cname} driver")
            env = dict(clusters[cname].kernel_env(root / f"home-{cname}"),
                       **(tls_env if cname == "TLS" else {}), LEPTON_AUTOSTART="0")
            with watchdog(300, f"the {cname} driver start") as dog, \
                    phase(f"tls part: start the {cname} driver"):
                dogs.append(dog)
                drivers[cname] = Driver(cname, env, root / f"driver-{cname}.log")
                out["drivers"][cname] = drivers[cname].reply(240)
        log(f"tls part: trivial cells and tasks, {it} rounds")
        with watchdog(600, "the TLS part's trivial rounds") as dog, \
                phase("tls part: trivial rounds"):
            dogs.append(dog)
            _rounds(drivers, TRIVIAL_KINDS, it, wu, out["samples"], out["round_trip"])
        log(f"tls part: 64 MiB across nodes, {big} rounds")
        with watchdog(600, "the TLS part's 64 MiB rounds") as dog, \
                phase("tls part: 64 MiB rounds"):
            dogs.append(dog)
            _rounds(drivers, BIG_KINDS, big, bwu, out["samples"], out["round_trip"])
    except (Exception, KeyboardInterrupt) as exc:
        if isinstance(exc, KeyboardInterrupt) and not any(d["fired"] for d in dogs):
            raise
        out["error"] = f"{type(exc).__name__}: {str(exc)[:800]}"
        for cname, c in clusters.items():
            with contextlib.suppress(OSError):
                out.setdefault("node_log_tails", {})[cname] = c.head.log.read_text()[-1500:]
        log(f"tls part: failed: {out['error']}")
    finally:
        log("tls part: stopping the drivers and both clusters")
        with watchdog(180, "the TLS part's clean-up"), phase("tls part: clean-up"):
            for drv in drivers.values():
                drv.stop()
            left: dict[str, dict[str, list[str]]] = {}
            for cname, c in clusters.items():
                sids = [n.sid for n in [c.head, *c.workers] if n.sid]
                c.stop()
                live = [p for sid in sids for p in processes_in_session(sid)[0]]
                left[cname] = {"live": live}
            out["leftover_processes"] = left
        shutil.rmtree(root, ignore_errors=True)
    out["summary"] = summarize_tls(out["samples"])
    for r in out["summary"]:
        log(f"tls part: {r['measurement']}: plain p50 {_fmt(r['plain_p50'])} ms, TLS p50 "
            f"{_fmt(r['tls_p50'])} ms, ratio {r['ratio_p50']:.2f}")
    return out


# -- the child: one driver, connected to one cluster ---------------------------------------------
class _Child:
    def __init__(self) -> None:
        import numpy as np
        import ray
        from IPython.testing.globalipapp import start_ipython
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        self.np, self.ray = np, ray
        self.counter = itertools.count()
        self.ip = start_ipython()
        self.ip.run_line_magic("load_ext", "lepton_lab")
        t0 = time.perf_counter()
        self.cell(TRIVIAL)                       # connects (RAY_ADDRESS of the cluster)
        self.connect_s = time.perf_counter() - t0
        self.here = ray.get_runtime_context().get_node_id()
        alive = [n for n in ray.nodes() if n["Alive"]]
        others = [n["NodeID"] for n in alive if n["NodeID"] != self.here]
        if len(others) != 1:
            raise RuntimeError(f"expected one node besides the driver's, got {others}")
        self.other = others[0]
        here_strategy = NodeAffinitySchedulingStrategy(self.here, soft=False)
        self.there = NodeAffinitySchedulingStrategy(self.other, soft=False)

        @ray.remote(num_cpus=1)
        class Hold:
            def ping(self) -> int:
                return 1

        # the driver node's only CPU: every cell (1 CPU) runs on the other node from now on
        self.hold = Hold.options(scheduling_strategy=here_strategy).remote()
        ray.get(self.hold.ping.remote(), timeout=120)

        @ray.remote
        def noop() -> int:
            return 1

        @ray.remote
        def noop_gen():
            yield 1

        @ray.remote
        def read(x: Any) -> int:
            return x.nbytes

        self.noop = noop.options(scheduling_strategy=self.there)
        self.noop_gen = noop_gen.options(scheduling_strategy=self.there)
        self.read = read.options(scheduling_strategy=self.there)
        self.cell("node = __import__('ray').get_runtime_context().get_node_id()")
        self.cell_node = self.ip.user_ns["node"]
        if self.cell_node != self.other:
            raise RuntimeError(f"a cell ran on {self.cell_node}, not on the other node "
                               f"{self.other}")
        self.a: Any = None

    def info(self) -> dict[str, Any]:
        import ray

        return {"ready": True, "connect_s": self.connect_s, "driver_node": self.here,
                "other_node": self.other, "tls": os.environ.get("RAY_USE_TLS"),
                "ray_version": ray.__version__}

    def cell(self, body: str, line: str = "") -> None:
        with quiet():
            self.ip.run_cell_magic("lepton", line, body)

    def drain(self, gen: Any) -> None:
        """Read a streaming generator to its end, as Lepton's consume loop does."""
        while True:
            ready, _ = self.ray.wait([gen], num_returns=1, timeout=60)
            if not ready:
                raise TimeoutError("streaming generator: nothing within 60 s")
            try:
                ref = next(gen)
            except StopIteration:
                return
            self.ray.get(ref, timeout=60)

    def fresh(self) -> Any:  # a new 64 MiB object each time: nothing can be cached
        return self.np.full(BIG_BYTES // 8, float(next(self.counter)))

    def prep(self, kind: str) -> None:
        if kind == "put_task":
            self.a = self.fresh()
        elif kind == "big_cell":
            self.ip.user_ns["a"] = self.fresh()

    def go(self, kind: str) -> float:
        ray = self.ray
        if kind not in KINDS:
            raise ValueError(f"unknown kind {kind!r}")
        if kind == "trivial_cell_b2b":
            self.cell(TRIVIAL)                   # untimed: the cell the timed one follows
        t0 = time.perf_counter()
        if kind in ("trivial_cell", "trivial_cell_b2b"):
            self.cell(TRIVIAL)
        elif kind == "trivial_task":
            ray.get(self.noop.remote(), timeout=60)
        elif kind == "trivial_gen":
            self.drain(self.noop_gen.remote())
        elif kind == "put_task":
            n = ray.get(self.read.remote(ray.put(self.a)), timeout=120)
        else:
            self.cell("n = a.nbytes")
        took = time.perf_counter() - t0
        if kind.startswith("trivial_cell") and self.ip.user_ns.get("z") != 1:
            raise RuntimeError("the trivial cell did not set z = 1")
        if kind == "put_task" and n != BIG_BYTES:
            raise RuntimeError(f"the task read {n} bytes")
        if kind == "big_cell" and self.ip.user_ns.get("n") != BIG_BYTES:
            raise RuntimeError(f"the cell read {self.ip.user_ns.get('n')} bytes")
        self.a = None
        return took


def driver_main() -> int:
    """Answer one JSON line per command on the original stdout; everything else that would
    be printed goes to stderr (the parent's log file)."""
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)

    def say(obj: dict[str, Any]) -> None:
        proto.write(json.dumps(obj) + "\n")
        proto.flush()

    try:
        child = _Child()
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        say({"error": f"driver set-up: {type(exc).__name__}: {str(exc)[:800]}"})
        return 1
    say(child.info())
    for line in sys.stdin:
        cmd, _, kind = line.strip().partition(" ")
        if cmd == "quit":
            break
        try:
            if cmd == "prep":
                child.prep(kind)
                say({"ok": True})
            elif cmd == "go":
                say({"s": child.go(kind)})
            else:
                say({"error": f"unknown command {cmd!r}"})
        except Exception as exc:  # noqa: BLE001 - reported to the parent
            say({"error": f"{cmd} {kind}: {type(exc).__name__}: {str(exc)[:800]}"})
    return 0


if __name__ == "__main__" and sys.argv[1:] == ["--driver"]:
    sys.exit(driver_main())
