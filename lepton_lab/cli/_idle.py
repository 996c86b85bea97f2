"""``lepton up``'s idle stop: a small detached process that stops the embedded cluster after
a configured time without a running or new job (``--idle-stop MIN`` or
``LEPTON_IDLE_STOP_MINUTES``; off by default, since on a laptop the cluster costs little
when idle and a restart costs ~20 s).

    python -m lepton_lab.cli._idle MINUTES HEAD_PID

It watches the store of its ``LEPTON_HOME`` (every kernel, the CLI and the server record
their jobs there) and exits when the cluster it watches is gone or was replaced.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from .. import cluster
from ..store import get_store


def last_activity(since: float) -> float | None:
    """When a job last started or ended (``since`` at the earliest); None while one runs."""
    store = get_store()
    if store.list_jobs(status="running", limit=1):
        return None
    latest = since
    for job in store.list_jobs(limit=20):
        latest = max(latest, job.created, job.finished or 0.0)
    return latest


def watch(minutes: float, head_pid: int, poll: float | None = None) -> str:
    """Block until the cluster ``head_pid`` is idle for ``minutes`` (then stop it) or gone.
    Returns what happened, in words."""
    limit = minutes * 60.0
    poll = poll if poll is not None else max(1.0, min(30.0, limit / 10))
    started = time.time()
    while True:
        state = cluster.embedded_state()
        if state is None or int(state["pid"]) != head_pid:
            return "the cluster is gone or was replaced; nothing to do"
        last = last_activity(max(started, float(state.get("started", started))))
        if last is not None and time.time() - last >= limit:
            done = cluster.stop_embedded()
            return (f"idle for {minutes:g} min: stopped the embedded cluster "
                    f"({done['seconds']:.1f} s)" if done else "idle, but already stopped")
        time.sleep(poll)


def spawn(minutes: float, head_pid: int) -> int:
    """Start the watcher, detached from this terminal; returns its pid. Its log is
    ``$LEPTON_HOME/idle-stop.log``."""
    log = cluster.get_config().home_path / "idle-stop.log"
    with open(log, "a") as out:
        proc = subprocess.Popen([sys.executable, "-m", "lepton_lab.cli._idle", str(minutes),
                                 str(head_pid)], stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True,
                                env=dict(os.environ,
                                         LEPTON_HOME=str(cluster.get_config().home_path)))
    (Path(log).parent / "idle-stop.pid").write_text(str(proc.pid))
    return proc.pid


if __name__ == "__main__":
    print(time.strftime("%Y-%m-%d %H:%M:%S"), watch(float(sys.argv[1]), int(sys.argv[2])),
          flush=True)
