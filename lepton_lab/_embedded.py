"""The embedded local Ray cluster: starting it, finding it, and killing its process group.

The embedded cluster is a real Ray head started with ``ray start --head --block`` in its own
process session, recorded in ``$LEPTON_HOME/cluster.json``. It outlives the kernel that
started it, so detached jobs survive kernel restarts and every kernel, the CLI and the
Jupyter server share one cluster.

A ground module: it imports nothing from lepton_lab but :mod:`lepton_lab.config`,
:mod:`lepton_lab.errors` and the other ground modules. Disconnecting this process before the
cluster goes away is the connection API's part (:func:`lepton_lab.cluster.stop_embedded`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ._probe import _reachable
from ._ray_auth import _embedded_auth_env, _with_env
from .config import get_config
from .errors import ClusterUnavailable, LeptonUsageError

log = logging.getLogger("lepton_lab")


# -- helpers ---------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _state_file() -> Path:
    return get_config().home_path / "cluster.json"


def _starting_file() -> Path:
    return get_config().home_path / "cluster.starting"


def embedded_starting() -> dict[str, Any] | None:
    """A start of the embedded cluster under way in some process: its ``pid``, ``since``
    (time.time()) and ``log``; None when none is (or its process is gone)."""
    try:
        info = json.loads(_starting_file().read_text())
    except (OSError, ValueError):
        return None
    return info if _pid_alive(int(info.get("pid", -1))) else None


def embedded_state() -> dict[str, Any] | None:
    """The recorded embedded cluster, if its head process is still alive."""
    path = _state_file()
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not _pid_alive(int(state.get("pid", -1))):
        return None
    return state


# -- the embedded cluster --------------------------------------------------------------------
def _ray_executable() -> str:
    candidate = Path(sys.executable).parent / "ray"
    if candidate.exists():
        return str(candidate)
    import shutil

    found = shutil.which("ray")
    if not found:
        raise ClusterUnavailable("the `ray` command is not installed; `pip install 'ray[default]'`")
    return found


def start_embedded(timeout: float | None = None, tls: bool | None = None) -> dict[str, Any]:
    """Start (or find) the embedded local Ray head; returns its recorded state.

    ``tls``: start it in Ray's TLS mode (None: the ``tls`` setting). A cluster that already
    runs is used as it is, unless ``tls`` was asked for explicitly and differs.

    Ray gives its own processes 30 s to register; on an overloaded machine that can fail,
    so one such failure is retried.
    """
    try:
        return _start_embedded(timeout, tls)
    except ClusterUnavailable as exc:
        if "timed out during startup" not in str(exc):
            raise
        log.warning("the embedded Ray cluster timed out during startup; retrying once")
        return _start_embedded(timeout, tls)


def _start_embedded(timeout: float | None = None, tls: bool | None = None) -> dict[str, Any]:
    """Start (or find) the embedded local Ray head; returns its recorded state.

    A file lock makes concurrent kernels share one start instead of racing two clusters.
    """
    cfg = get_config()
    timeout = cfg.start_timeout if timeout is None else timeout
    home = cfg.home_path
    with open(home / "cluster.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        state = embedded_state()
        if state and _reachable(state["address"], 2.0):
            if tls is not None and bool(state.get("tls")) != tls:
                running = "with TLS" if state.get("tls") else "without TLS"
                raise LeptonUsageError(
                    f"the embedded Ray cluster at {state['address']} is already running "
                    f"{running}; `lepton down` first, then `lepton up{' --tls' if tls else ''}`")
            return state
        tls = cfg.tls if tls is None else tls
        port, dash, client, agent = (_free_port() for _ in range(4))
        logfile = home / "cluster.log"
        cmd = [
            _ray_executable(), "start", "--head", "--block",
            "--node-ip-address", "127.0.0.1",
            "--port", str(port),
            "--ray-client-server-port", str(client),
            "--dashboard-agent-listen-port", str(agent),
            "--disable-usage-stats",
        ]
        if cfg.dashboard:
            cmd += ["--include-dashboard", "true", "--dashboard-host", "127.0.0.1",
                    "--dashboard-port", str(dash)]
        else:
            cmd += ["--include-dashboard", "false"]
        # no drain on SIGTERM: nothing routes to this node from elsewhere (see _kill_group)
        env = _with_env(dict(os.environ, RAY_USAGE_STATS_ENABLED="0",
                             RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0"),
                        {**_embedded_auth_env(tls), "RAY_ADDRESS": None})
        # every Python process of the cluster (workers, agents) defers the import that costs
        # `import ray` 1.5 s here (lepton_lab/_lazyimport.py), through a sitecustomize
        site = str(Path(__file__).resolve().parent / "_site")
        env["PYTHONPATH"] = os.pathsep.join([site] + [p for p in env.get(
            "PYTHONPATH", "").split(os.pathsep) if p and p != site])
        # the endpoints' ingress: read by Serve's controller, proxies and replicas at start
        # (a RAY_SERVE_ENABLE_HA_PROXY the user set wins)
        env.setdefault("RAY_SERVE_ENABLE_HA_PROXY", "1" if cfg.serve_ingress == "haproxy"
                       else "0")
        # HAProxy's files default to one /tmp/haproxy-serve per machine: one per cluster here
        # (short: Ray adds the node id, and HAProxy refuses socket paths over about 90 bytes)
        import hashlib
        import tempfile

        ha = Path("/tmp" if os.path.isdir("/tmp") else tempfile.gettempdir()) / \
            f"lhap-{hashlib.sha1(str(home).encode()).hexdigest()[:6]}"
        for key, path in (("CONFIG_FILE_LOC", ha / "haproxy.cfg"),
                          ("SOCKET_PATH", ha / "admin.sock"), ("SERVER_STATE_BASE", ha),
                          ("SERVER_STATE_FILE", ha / "server-state")):
            env.setdefault(f"RAY_SERVE_HAPROXY_{key}", str(path))
        _starting_file().write_text(json.dumps({"pid": os.getpid(), "since": time.time(),
                                                "log": str(logfile)}))
        try:
            return _launch(cmd, env, logfile, timeout, cfg.dashboard, port, dash, client, tls)
        finally:
            with contextlib.suppress(OSError):
                _starting_file().unlink()


def _launch(cmd: list[str], env: dict[str, str], logfile: Path, timeout: float,
            dashboard: bool, port: int, dash: int, client: int,
            tls: bool = False) -> dict[str, Any]:
    """Run ``ray start --block`` in its own session and wait until it says it started."""
    with open(logfile, "w") as out:      # the child keeps its own copy of the file
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True, env=env)
    deadline = time.monotonic() + timeout
    while True:
        if "Ray runtime started" in logfile.read_text(errors="replace"):
            break
        if proc.poll() is not None:
            tail = logfile.read_text(errors="replace")[-600:]
            raise ClusterUnavailable(f"the embedded Ray cluster failed to start (see {logfile}): "
                                     f"{tail.strip().splitlines()[-1] if tail.strip() else 'no output'}")
        if time.monotonic() > deadline:
            _kill_group(proc.pid)
            raise ClusterUnavailable(
                f"the embedded Ray cluster did not start within {timeout:.0f} s (see {logfile})")
        time.sleep(0.1)
    state = {
        "address": f"127.0.0.1:{port}",
        "client_address": f"ray://127.0.0.1:{client}",
        "dashboard_url": f"http://127.0.0.1:{dash}" if dashboard else None,
        "pid": proc.pid,
        "started": time.time(),
        "log": str(logfile),
        "tls": tls,
    }
    _state_file().write_text(json.dumps(state, indent=1))
    return state


def _group_members(pgid: int) -> list[Any]:
    """The live (not zombie) processes of the embedded cluster: its leader started a new
    session, so they are that session's processes (whatever process group Ray put them in)."""
    import psutil

    out = []
    for proc in psutil.process_iter(["pid", "name", "status"]):
        try:
            if os.getsid(proc.pid) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                out.append(proc)
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    return out


def _kill_group(pgid: int, grace: float = 5.0) -> int:
    """Stop the embedded Ray gracefully, as ``ray stop`` would, and SIGKILL only what is left
    after ``grace`` seconds. Returns how many processes needed SIGKILL.

    SIGTERM goes to the ``ray start --block`` leader: its handler stops the node's processes
    in Ray's own order (the raylet first, so its agents exit with it instead of complaining;
    the GCS last, since the others report to it while they stop). The leader was started
    with no drain wait (see :func:`_start_embedded`): nothing routes traffic to this node
    from elsewhere, so there is nothing to drain."""
    import psutil

    deadline = time.monotonic() + grace
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pgid, signal.SIGTERM)
    left = _group_members(pgid)
    if left and not any(p.pid == pgid for p in left):   # no leader to do it: SIGTERM them all
        for proc in left:
            with contextlib.suppress(psutil.Error):
                proc.terminate()
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = _group_members(pgid)
    for proc in left:
        with contextlib.suppress(psutil.Error):    # what is left when the grace time is up
            proc.kill()
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:  # reap it if it is our child (no zombie left behind)
        try:
            if os.waitpid(pgid, os.WNOHANG)[0]:
                break
        except (ChildProcessError, OSError):
            break
        time.sleep(0.05)
    return len(left)