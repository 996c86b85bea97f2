"""Part 4 of the dispatch benchmark: the first cell on a fresh kernel, Ray start included.

Each run uses a brand-new LEPTON_HOME (so no cluster is running there), a real python3 kernel
through jupyter_client, and stops its cluster with ``lepton cluster stop`` afterwards, checking
that no process of the cluster's session is left.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _harness import kill_pids, kill_session, on_emergency, phase, wait_session_gone, watchdog

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TRIVIAL = "z = 1"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def clean_env(home: str) -> dict[str, str]:
    """A kernel's environment in ``home``: part 4 measures the start without the background
    start (the way the first cell worked before issue 15); part 4b turns it on."""
    env = dict(os.environ, LEPTON_HOME=home, LEPTON_AUTOSTART="0")
    env.pop("RAY_ADDRESS", None)
    return env


def head_pid(home: str) -> int | None:
    try:
        return int(json.loads((Path(home) / "cluster.json").read_text())["pid"])
    except (OSError, ValueError, KeyError):
        return None


def stop_cluster_cli(home: str) -> dict[str, Any]:
    """`lepton cluster stop` with that LEPTON_HOME, then check its whole session is gone."""
    pid = head_pid(home)
    t0 = time.perf_counter()
    proc = subprocess.run([str(BIN / "lepton"), "cluster", "stop"], env=clean_env(home),
                          capture_output=True, text=True, timeout=90)
    stopped = time.perf_counter() - t0
    left = wait_session_gone(pid) if pid else {"live": [], "zombies": []}
    if left["live"]:  # report it, but leave nothing behind either way
        kill_session(pid)  # type: ignore[arg-type]
    return {"stop_s": stopped, "stop_output": (proc.stdout + proc.stderr).strip(),
            "leftover_processes": left}


# -- part 4: the first cell on a fresh kernel ------------------------------------------------
# Sent to the kernel after %load_ext: times the three connection steps of the first cell by
# wrapping them (module globals, so the magic's own calls go through the wrappers).
_PROBE = r'''
import json as _bench_json, time as _bench_time
import lepton_lab.cluster as _bench_lc
_bench_t = {}
def _bench_wrap(name):
    orig = getattr(_bench_lc, name)
    def timed(*a, **k):
        t0 = _bench_time.perf_counter()
        try:
            return orig(*a, **k)
        finally:
            _bench_t[name] = _bench_t.get(name, 0.0) + _bench_time.perf_counter() - t0
    setattr(_bench_lc, name, timed)
for _n in ("start_embedded", "_ray_init", "check_versions"):
    _bench_wrap(_n)
'''


class Kernel:
    """A real python3 kernel through jupyter_client; every wait is bounded."""

    def __init__(self, env: dict[str, str]):
        from jupyter_client.manager import KernelManager

        self.km = KernelManager(kernel_name="python3")
        self.km.start_kernel(env=env, cwd=str(REPO))
        on_emergency(lambda: kill_pids([self.km.provisioner.pid]))  # type: ignore[union-attr]
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=90)

    def execute(self, code: str, timeout: float, **kw: Any) -> tuple[dict, str]:
        """Run code; return (execute_reply content, its stdout+stderr text)."""
        msg_id = self.kc.execute(code, **kw)
        deadline = time.monotonic() + timeout
        reply, idle, text = None, False, []
        while not (reply and idle):
            if time.monotonic() > deadline:
                raise TimeoutError(f"kernel: no reply within {timeout:.0f} s to {code[:60]!r}")
            with contextlib.suppress(queue.Empty):
                m = self.kc.get_iopub_msg(timeout=0.05)
                if m["parent_header"].get("msg_id") == msg_id:
                    if m["msg_type"] == "stream":
                        text.append(m["content"]["text"])
                    elif m["msg_type"] == "status":
                        idle = m["content"]["execution_state"] == "idle"
            if reply is None:
                with contextlib.suppress(queue.Empty):
                    r = self.kc.get_shell_msg(timeout=0.01)
                    if r["parent_header"].get("msg_id") == msg_id:
                        reply = r["content"]
        if reply["status"] != "ok":
            raise RuntimeError(f"kernel: {code[:60]!r} failed: {reply.get('ename')}: "
                               f"{reply.get('evalue')}")
        return reply, "".join(text)

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.kc.stop_channels()
        with contextlib.suppress(Exception):
            self.km.shutdown_kernel(now=True)


@contextlib.contextmanager
def fresh_home_run(prefix: str, dog: dict[str, bool], what: str):
    """A run in a brand-new LEPTON_HOME: yields ``(home, result dict, kernels to stop)``.

    A failure (e.g. Ray's own start-up timeout on an overloaded machine, or the watchdog's
    interrupt) becomes the result's ``error`` with the cluster log's tail; whatever happened,
    the kernels are stopped, the cluster with ``lepton cluster stop`` (checking that nothing
    of it is left) and the home is removed."""
    home = tempfile.mkdtemp(prefix=prefix)
    on_emergency(lambda: kill_session(head_pid(home) or -1))
    r: dict[str, Any] = {"lepton_home": home}
    kernels: list[Kernel] = []
    try:
        yield home, r, kernels
    except (Exception, KeyboardInterrupt) as exc:
        if isinstance(exc, KeyboardInterrupt) and not dog["fired"]:
            raise
        r["error"] = f"{type(exc).__name__}: {str(exc)[:500]}"
        with contextlib.suppress(OSError):
            r["cluster_log_tail"] = (Path(home) / "cluster.log").read_text()[-3000:]
        log(f"{what}: the run failed: {r['error']}")
    finally:
        r["loadavg"] = list(os.getloadavg())
        for kernel in kernels:
            kernel.stop()
        r.update(stop_cluster_cli(home))
        shutil.rmtree(home, ignore_errors=True)


def cold_first_cell(dog: dict[str, bool]) -> dict[str, Any]:
    """Kernel process start -> result of its first %%lepton cell, in a brand-new LEPTON_HOME."""
    with fresh_home_run("lepton-bench-cold-", dog, "part 4") as (home, r, kernels):
        t0 = time.perf_counter()
        kernel = Kernel(clean_env(home))
        kernels.append(kernel)
        r["kernel_ready_s"] = time.perf_counter() - t0
        t = time.perf_counter()
        kernel.execute("%load_ext lepton_lab", 60)
        r["load_ext_s"] = time.perf_counter() - t
        t = time.perf_counter()
        kernel.execute(_PROBE, 30)
        r["instrument_s"] = time.perf_counter() - t
        t = time.perf_counter()
        reply, out = kernel.execute(f"%%lepton\n{TRIVIAL}", 240,
                                    user_expressions={"z": "z"})
        t_end = time.perf_counter()
        r["first_cell_s"] = t_end - t
        r["total_s"] = t_end - t0
        r["z"] = reply["user_expressions"]["z"].get("data", {}).get("text/plain")
        r["cell_output"] = out.strip()
        _, tjson = kernel.execute("print(_bench_json.dumps(_bench_t))", 30)
        parts = json.loads(tjson.strip().splitlines()[-1])
        r["ray_start_s"] = parts.get("start_embedded", 0.0)
        r["connect_s"] = parts.get("_ray_init", 0.0)
        r["version_probe_s"] = parts.get("check_versions", 0.0)
        r["first_task_s"] = r["first_cell_s"] - r["ray_start_s"] - r["connect_s"] \
            - r["version_probe_s"]
    return r


_START_NO_DASH = r'''
import time
t0 = time.perf_counter()
from lepton_lab import cluster, config
config._CONFIG = config.LeptonConfig(dashboard=False)
cluster.start_embedded()
print(time.perf_counter() - t0)
'''


def cluster_start_alone(dashboard: bool) -> dict[str, Any]:
    """`lepton cluster start` as its own process (or the same start with the dashboard off)."""
    home = tempfile.mkdtemp(prefix="lepton-bench-start-")
    on_emergency(lambda: kill_session(head_pid(home) or -1))
    r: dict[str, Any] = {"start_s": float("nan"), "rc": None, "output": ""}
    cmd = [str(BIN / "lepton"), "cluster", "start"] if dashboard else \
        [sys.executable, "-c", _START_NO_DASH]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, env=clean_env(home), capture_output=True, text=True,
                              timeout=200)  # Lepton's own start timeout is 120 s
        r.update(start_s=time.perf_counter() - t0, rc=proc.returncode,
                 output=(proc.stdout + proc.stderr).strip()[-300:])
    except subprocess.TimeoutExpired:
        r.update(start_s=time.perf_counter() - t0, rc="timeout", output="no result in 200 s")
    finally:
        r.update(stop_cluster_cli(home))
        shutil.rmtree(home, ignore_errors=True)
    return r


def import_ray_s() -> float:
    code = "import time; t = time.perf_counter(); import ray; print(time.perf_counter() - t)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, env=clean_env(tempfile.gettempdir()))
    return float(out.stdout.strip().splitlines()[-1])


def part4(repeats: int, start_pairs: int) -> dict[str, Any]:
    runs = []
    for i in range(repeats):
        log(f"part 4: cold first cell, run {i + 1}/{repeats}")
        with watchdog(420, "the cold first cell") as dog, phase(f"part 4 run {i + 1}"):
            runs.append(cold_first_cell(dog))
    # With and without the dashboard alternate, so both see the same background load.
    alone, nodash = [], []
    for i in range(start_pairs):
        log(f"part 4: cluster start alone, with and without the dashboard ({i + 1}/{start_pairs})")
        with watchdog(300, "the cluster start alone"), phase(f"part 4 start alone {i + 1}"):
            alone.append(cluster_start_alone(dashboard=True))
        with watchdog(300, "the cluster start without the dashboard"), \
                phase(f"part 4 start, no dashboard {i + 1}"):
            nodash.append(cluster_start_alone(dashboard=False))
    return {"runs": runs, "start_alone": alone, "start_no_dashboard": nodash,
            "import_ray_s": import_ray_s()}
