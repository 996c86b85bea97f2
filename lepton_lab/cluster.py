"""Connection to the Ray cluster: the embedded local one by default, or an existing one.

The embedded cluster is a real Ray head started with ``ray start --head --block`` in its own
process session, recorded in ``$LEPTON_HOME/cluster.json``. It outlives the kernel that
started it, so detached jobs survive kernel restarts and every kernel, the CLI and the
Jupyter server share one cluster. An explicit address (``RAY_ADDRESS``, ``%lepton connect``)
never falls back to the embedded cluster: if it cannot be reached, that is an error.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import get_config
from .errors import ClusterUnavailable, LeptonUsageError, VersionMismatch

log = logging.getLogger("lepton_lab")

NAMESPACE = "lepton"  # Ray namespace of Lepton's named (detached) actors


@dataclass
class Connection:
    """The cluster this process is connected to."""

    address: str
    kind: str  # "embedded" | "address" | "client"
    dashboard_url: str | None = None
    versions_checked: bool = False
    node_versions: dict[str, dict[str, str]] = field(default_factory=dict)

    @property
    def is_client(self) -> bool:
        return self.kind == "client"


_CONN: Connection | None = None
_LOCK = threading.RLock()


# -- helpers ---------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _split_host_port(address: str) -> tuple[str, int]:
    rest = address.split("://", 1)[-1]
    host, sep, port = rest.rpartition(":")
    if not sep or not port.isdigit():
        raise LeptonUsageError(
            f"cluster address {address!r} is not host:port or ray://host:port, "
            "e.g. `%lepton connect 10.0.0.5:6379` or `%lepton connect ray://head:10001`"
        )
    return host or "127.0.0.1", int(port)


def _reachable(address: str, timeout: float) -> bool:
    """TCP probe. A refused connection (nothing listens) gives up after 3 s, since a head that
    is still starting opens its port within that; an unanswered one waits ``timeout``."""
    host, port = _split_host_port(address)
    start = time.monotonic()
    while True:
        try:
            with socket.create_connection((host, port), timeout=min(1.0, timeout)):
                return True
        except ConnectionRefusedError:
            if time.monotonic() - start >= min(3.0, timeout):
                return False
        except OSError:
            if time.monotonic() - start >= timeout:
                return False
        time.sleep(0.2)


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


def start_embedded(timeout: float | None = None) -> dict[str, Any]:
    """Start (or find) the embedded local Ray head; returns its recorded state.

    Ray gives its own processes 30 s to register; on an overloaded machine that can fail,
    so one such failure is retried.
    """
    try:
        return _start_embedded(timeout)
    except ClusterUnavailable as exc:
        if "timed out during startup" not in str(exc):
            raise
        log.warning("the embedded Ray cluster timed out during startup; retrying once")
        return _start_embedded(timeout)


def _start_embedded(timeout: float | None = None) -> dict[str, Any]:
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
            return state
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
        env = _with_env(dict(os.environ, RAY_USAGE_STATS_ENABLED="0"),
                        {**_embedded_auth_env(), "RAY_ADDRESS": None})
        out = open(logfile, "w")
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env=env)
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
            "dashboard_url": f"http://127.0.0.1:{dash}" if cfg.dashboard else None,
            "pid": proc.pid,
            "started": time.time(),
            "log": str(logfile),
        }
        _state_file().write_text(json.dumps(state, indent=1))
        return state


def _kill_group(pgid: int, grace: float = 3.0) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and _pid_alive(pgid):
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:  # reap it if it is our child (no zombie left behind)
        try:
            if os.waitpid(pgid, os.WNOHANG)[0]:
                break
        except (ChildProcessError, OSError):
            break
        time.sleep(0.05)


def stop_embedded() -> bool:
    """Stop the embedded cluster (every Lepton kernel on this machine loses it). True if one ran."""
    state = embedded_state()
    with _LOCK:
        if _CONN is not None and state and _CONN.address == state["address"]:
            disconnect()
    if not state:
        return False
    _kill_group(int(state["pid"]))
    with contextlib.suppress(OSError):
        _state_file().unlink()
    return True


_AUTH_VARS = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")
# the user's own Ray auth settings while the embedded cluster's are applied in this process
_user_auth: dict[str, str | None] | None = None


def _embedded_token_path() -> Path:
    """The embedded cluster's token: one per LEPTON_HOME, readable by its owner only.

    `ray start` refuses to create a token itself, and ~/.ray/auth_token belongs to the user's
    other clusters, so the embedded cluster keeps its own beside its state.
    """
    path = get_config().home_path / "ray_auth_token"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    return path


def _embedded_auth_env() -> dict[str, str | None]:
    """Ray token authentication for the embedded cluster; None means: unset the variable."""
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(_embedded_token_path()),
            "RAY_AUTH_TOKEN": None}


def _with_env(base: dict[str, str], changes: dict[str, str | None]) -> dict[str, str]:
    env = dict(base)
    for k, v in changes.items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    return env


# -- connecting ------------------------------------------------------------------------------
def _use_embedded_auth() -> None:
    global _user_auth
    if _user_auth is None:
        _user_auth = {k: os.environ.get(k) for k in _AUTH_VARS}
    _apply_auth_env(_embedded_auth_env())


def _use_user_auth() -> None:
    """The user's settings for their own cluster, re-applied even when unchanged in case Ray
    was imported before they were set."""
    global _user_auth
    env, _user_auth = _user_auth, None
    _apply_auth_env(env if env is not None else {}, force=True)


def _apply_auth_env(env: dict[str, str | None], force: bool = False) -> None:
    """Switch this driver to a cluster's auth settings even if Ray was imported earlier.

    Ray caches RAY_AUTH_MODE and the token in C++ when first imported; it refreshes those caches
    the same way when it enables token auth itself, so do that too (best effort on other versions).
    """
    if not force and all(os.environ.get(k) == v for k, v in env.items()):
        return
    for k, v in env.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    with contextlib.suppress(Exception):
        from ray._raylet import AuthenticationTokenLoader, Config

        Config.initialize("")
        AuthenticationTokenLoader.instance().reset_cache()


_CLIENT_TRIES = 3
_TRANSIENT_CLIENT = ("Starting Ray client server failed", "Proxy failed to Connect")


def _transient_client_failure(msg: str) -> bool:
    return any(t in msg for t in _TRANSIENT_CLIENT)


def _client_failure_reason(msg: str) -> str:
    """Ray Client's init failure is a header plus the server's whole traceback; the last line
    of that traceback is the reason."""
    lines = [ln.strip() for ln in msg.splitlines() if ln.strip()]
    if len(lines) > 1 and lines[0].startswith("Initialization failure"):
        return f"the Ray Client server refused the session: {lines[-1]}"
    return lines[0] if lines else "the Ray Client server refused the session"


def _ray_init(address: str, embedded: bool) -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()
    kwargs: dict[str, Any] = {}
    if embedded:
        _use_embedded_auth()
        kwargs["_node_ip_address"] = "127.0.0.1"
    else:
        _use_user_auth()
    if address.startswith("ray://"):
        # Ray Client: the server runs ray.init for us and accepts only a few options. The head
        # starts one server process per client; on a busy head that start can miss Ray's own
        # deadline, which is worth one more try.
        for attempt in range(_CLIENT_TRIES):
            try:
                ray.init(address=address, log_to_driver=False)
                return
            except ConnectionAbortedError as exc:
                if attempt + 1 == _CLIENT_TRIES or not _transient_client_failure(str(exc)):
                    raise ConnectionAbortedError(_client_failure_reason(str(exc))) from None
                log.warning("Ray Client server on %s did not start in time; retrying", address)
                ray.shutdown()
    ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING,
             configure_logging=True, **kwargs)


def connect(address: str | None = None) -> Connection:
    """Connect this process to a cluster and return the connection.

    ``address`` None means: ``RAY_ADDRESS`` / the configured address if set, else the embedded
    local cluster (started if needed). An explicit address that cannot be reached raises
    :class:`ClusterUnavailable`; there is no fallback to the local cluster.
    """
    global _CONN
    cfg = get_config()
    with _LOCK:
        target = address or cfg.address or None
        if target in ("local", "embedded"):
            target = None
        if target is None:
            state = start_embedded()
            conn = Connection(state["address"], "embedded", state.get("dashboard_url"))
        else:
            target = target.strip()
            if target == "auto":
                raise LeptonUsageError("address 'auto' is ambiguous here; give the head's host:port")
            t0 = time.monotonic()
            if not _reachable(target, cfg.connect_timeout):
                source = "RAY_ADDRESS" if not address and os.environ.get("RAY_ADDRESS") else "address"
                raise ClusterUnavailable(
                    f"cannot reach the Ray cluster at {target} ({source}; nothing answered in "
                    f"{time.monotonic() - t0:.0f} s); start it, fix the address, or use "
                    "`%lepton connect local` for the embedded cluster")
            kind = "client" if target.startswith("ray://") else "address"
            conn = Connection(target, kind)
        try:
            _ray_init(conn.address, conn.kind == "embedded")
        except Exception as exc:  # ray raises ConnectionError, RuntimeError, ...
            hint = ""
            if conn.kind != "embedded" and os.environ.get("RAY_AUTH_MODE", "") != "token":
                hint = ("; if the cluster uses Ray token authentication, set RAY_AUTH_MODE=token "
                        "and provide its token (~/.ray/auth_token or RAY_AUTH_TOKEN) before "
                        "starting the kernel")
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            raise ClusterUnavailable(f"could not connect to Ray at {conn.address}: {first}{hint}"
                                     ) from None
        if conn.dashboard_url is None and conn.kind != "client":
            conn.dashboard_url = _dashboard_url()
        _CONN = conn
        return conn


def _dashboard_url() -> str | None:
    try:
        import ray

        ctx = ray.get_runtime_context()
        url = getattr(ctx, "dashboard_url", None) or ray.worker.get_dashboard_url()
    except Exception:
        return None
    if url and not url.startswith("http"):
        url = "http://" + url
    return url or None


def disconnect() -> None:
    global _CONN
    import ray

    with _LOCK:
        if ray.is_initialized():
            ray.shutdown()
        _CONN = None


def current() -> Connection | None:
    return _CONN


def ensure_connected() -> Connection:
    """The live connection, connecting (and starting the embedded cluster) on first use."""
    with _LOCK:
        if _CONN is not None:
            import ray

            if ray.is_initialized():
                return _CONN
        conn = connect()
    if get_config().check_versions and not conn.versions_checked:
        check_versions(conn)
    return conn


# -- versions --------------------------------------------------------------------------------
_PROBE_SRC = '''
def probe():
    import importlib.metadata as md, platform, shutil, subprocess, sys, os, socket
    def v(name):
        try:
            return md.version(name)
        except Exception:
            return None
    gpus = []
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,memory.used,"
                                  "utilization.gpu", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True, timeout=10).stdout
            for line in out.strip().splitlines():
                name, total, used, util = [p.strip() for p in line.split(",")]
                gpus.append({"name": name, "memory_total_mb": float(total),
                             "memory_used_mb": float(used), "utilization": float(util)})
        except Exception:
            pass
    return {"python": platform.python_version(), "cloudpickle": v("cloudpickle"),
            "torch": v("torch"), "lepton_lab": v("lepton-lab"), "ray": v("ray"),
            "hostname": socket.gethostname(), "gpus": gpus}
'''


def _make_probe():
    # Built from source in a throw-away module so cloudpickle ships it by value: the probe
    # must run even where lepton_lab is missing, to say so.
    ns: dict[str, Any] = {"__name__": "_lepton_probe"}
    exec(compile(_PROBE_SRC, "<lepton-probe>", "exec"), ns)
    return ns["probe"]


def local_versions() -> dict[str, str | None]:
    import importlib.metadata as md
    import platform

    def v(name: str) -> str | None:
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            return None

    return {"python": platform.python_version(), "cloudpickle": v("cloudpickle"),
            "torch": v("torch"), "lepton_lab": v("lepton-lab")}


def compare_versions(local: dict[str, Any], remote: dict[str, Any]) -> list[str]:
    """Human-readable differences that break shipping cells (Python compared by minor version)."""
    diffs = []
    for key in ("python", "cloudpickle", "torch", "lepton_lab"):
        a, b = local.get(key), remote.get(key)
        if key == "python" and a and b:
            same = a.split(".")[:2] == b.split(".")[:2]
        else:
            same = a == b
        if not same:
            diffs.append(f"{key} {a or 'missing'} (kernel) vs {b or 'missing'} (cluster)")
    return diffs


def probe_nodes(timeout: float = 60.0) -> dict[str, dict[str, Any]]:
    """Run the probe once on every alive node; node id -> versions and GPU facts."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    probe = ray.remote(num_cpus=0, max_retries=0)(_make_probe())
    refs = {}
    for node in ray.nodes():
        if node.get("Alive"):
            strategy = NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
            refs[node["NodeID"]] = probe.options(scheduling_strategy=strategy).remote()
    ready, pending = ray.wait(list(refs.values()), num_returns=len(refs), timeout=timeout)
    if pending:
        for ref in pending:
            ray.cancel(ref, force=True)
        raise ClusterUnavailable(f"{len(pending)} cluster node(s) did not answer a version probe "
                                 f"within {timeout:.0f} s; check `ray status` on the cluster")
    return {nid: ray.get(ref) for nid, ref in refs.items()}


def _versions_cache_key(local: dict[str, Any]) -> str:
    import ray

    nodes = sorted(n["NodeID"] for n in ray.nodes() if n.get("Alive"))
    return json.dumps([local, nodes], sort_keys=True)


def check_versions(conn: Connection) -> None:
    """Fail fast if any node runs different Python/cloudpickle/torch/lepton_lab versions.

    A passed check is remembered in LEPTON_HOME for the same local versions and the same set
    of live nodes (node ids change whenever a node restarts), so new kernels skip the probe.
    """
    local = local_versions()
    cache = get_config().home_path / "versions_ok.json"
    key = _versions_cache_key(local)
    try:
        cached = json.loads(cache.read_text())
        if cached.get("key") == key:
            conn.node_versions = cached["nodes"]
            conn.versions_checked = True
            return
    except (OSError, ValueError, KeyError):
        pass
    results = probe_nodes()
    conn.node_versions = results
    problems = []
    for nid, remote in results.items():
        diffs = compare_versions(local, remote)
        if diffs:
            problems.append(f"node {remote.get('hostname') or nid[:8]}: " + "; ".join(diffs))
    if problems:
        raise VersionMismatch(
            "kernel and cluster versions differ, so cells cannot be shipped safely: "
            + " | ".join(problems)
            + ". Install the kernel's versions on the cluster (or the cluster's in the kernel).")
    conn.versions_checked = True
    try:
        tmp = cache.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"key": key, "nodes": results}))
        tmp.replace(cache)
    except OSError:
        pass
