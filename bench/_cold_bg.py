"""Part 4b of the dispatch benchmark: the first cell with the background start (issue 15).

Three cases, each on a real python3 kernel in a brand-new LEPTON_HOME with
``LEPTON_AUTOSTART=1`` (part 4 is the same with it off):

- ``no cluster, cell at once``: nothing runs; ``%load_ext`` starts the embedded cluster in the
  background and the first ``%%lepton`` cell is sent right after it (the worst case: a user who
  runs a prepared notebook top to bottom);
- ``no cluster, load_ext -> usable``: the same start, but the kernel only waits until the
  background start has connected it (the time a user has to type before the first cell does
  not wait), then the first cell;
- ``cluster already up``: ``lepton up`` ran before (a Jupyter server started it, or the user
  did), then a fresh kernel and its first cell at once.
"""

from __future__ import annotations

import subprocess
import time
from typing import Any

from _cold import BIN, TRIVIAL, Kernel, clean_env, fresh_home_run, log
from _harness import phase, watchdog

WAIT_USABLE = """
import time as _t
from lepton_lab import cluster as _c
_t0 = _t.perf_counter()
while _c.current() is None and _t.perf_counter() - _t0 < 200:
    _t.sleep(0.02)
print(_t.perf_counter() - _t0, _c.current() is not None)
"""

CASES = ("no cluster, cell at once", "no cluster, load_ext -> usable", "cluster already up")


def env_for(home: str) -> dict[str, str]:
    return dict(clean_env(home), LEPTON_AUTOSTART="1")


def one_run(case: str, dog: dict[str, bool]) -> dict[str, Any]:
    with fresh_home_run("lepton-bench-bg-", dog, f"part 4b ({case})") as (home, r, kernels):
        r["case"] = case
        if case == "cluster already up":
            t = time.perf_counter()
            up = subprocess.run([str(BIN / "lepton"), "up"], env=env_for(home),
                                capture_output=True, text=True, timeout=240)
            r["lepton_up_s"] = time.perf_counter() - t
            if up.returncode != 0:
                raise RuntimeError(f"lepton up failed: {(up.stdout + up.stderr)[-300:]}")
        t0 = time.perf_counter()
        kernel = Kernel(env_for(home))
        kernels.append(kernel)
        r["kernel_ready_s"] = time.perf_counter() - t0
        t = time.perf_counter()
        kernel.execute("%load_ext lepton_lab", 60)
        r["load_ext_s"] = time.perf_counter() - t
        if case == "no cluster, load_ext -> usable":
            t = time.perf_counter()
            _, out = kernel.execute(WAIT_USABLE, 240)
            waited, ok = out.strip().split()[-2:]
            if ok != "True":
                raise RuntimeError("the background start did not connect within 200 s")
            r["usable_after_load_ext_s"] = r["load_ext_s"] + float(waited)
            r["wait_cell_s"] = time.perf_counter() - t
        t = time.perf_counter()
        reply, out = kernel.execute(f"%%lepton\n{TRIVIAL}", 240, user_expressions={"z": "z"})
        t_end = time.perf_counter()
        r["first_cell_s"] = t_end - t
        r["total_s"] = t_end - t0
        r["z"] = reply["user_expressions"]["z"].get("data", {}).get("text/plain")
    return r


def part4b(repeats: int) -> dict[str, Any]:
    """Every case ``repeats`` times, the cases interleaved so that load hits them alike."""
    runs: dict[str, list[dict[str, Any]]] = {c: [] for c in CASES}
    for i in range(repeats):
        for case in CASES:
            log(f"part 4b: {case}, run {i + 1}/{repeats}")
            with watchdog(480, f"part 4b {case}") as dog, phase(f"part 4b {case} {i + 1}"):
                runs[case].append(one_run(case, dog))
    return runs
