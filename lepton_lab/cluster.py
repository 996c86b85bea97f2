"""Connection to the Ray cluster: the embedded local one by default, or an existing one.

The embedded cluster is a real Ray head started with ``ray start --head --block`` in its own
process session, recorded in ``$LEPTON_HOME/cluster.json``. It outlives the kernel that
started it, so detached jobs survive kernel restarts and every kernel, the CLI and the
Jupyter server share one cluster. An explicit address (``RAY_ADDRESS``, ``%lepton connect``)
never falls back to the embedded cluster: if it cannot be reached, that is an error.

This module is the connection API. Ground modules do the rest, and their public names (and
the private ones that other modules and tests use) are re-exported here: ``_embedded``
starts, finds and kills the embedded cluster; ``_ray_auth`` switches this driver between the
embedded cluster's token authentication and the user's; ``_probe`` checks that an address
answers and which versions the nodes run.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

# connect(), check_versions() and stop_embedded() look these names up in this module, so
# patching lepton_lab.cluster.start_embedded or .local_versions (as tests and bench do)
# still takes effect
from ._embedded import (  # noqa: F401
    _kill_group,
    _state_file,
    embedded_starting,
    embedded_state,
    start_embedded,
)
from ._probe import (  # noqa: F401
    _answers,
    _reachable,
    _resolves,
    _split_host_port,
    compare_versions,
    local_versions,
    probe_nodes,
)
from ._ray_auth import (  # noqa: F401
    _embedded_token_path,
    _use_embedded_auth,
    _use_user_auth,
    _user_env,
)
from ._tls import check_files as _check_tls_files
from ._tls import env_says_tls
from ._tls import mismatch as _tls_mismatch
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
    tls: bool = False   # Ray's TLS mode (encrypted, mutually authenticated gRPC)
    versions_checked: bool = False
    node_versions: dict[str, dict[str, str]] = field(default_factory=dict)
    answered_at: float = 0.0   # time.monotonic() of the head's last answer to a probe

    @property
    def is_client(self) -> bool:
        return self.kind == "client"


_CONN: Connection | None = None
_LOCK = threading.RLock()
#: how long a head's answer to a probe stands for ensure_connected
PROBE_REUSE_S = 0.05


# -- the embedded cluster --------------------------------------------------------------------
def stop_embedded() -> dict[str, Any] | None:
    """Stop the embedded cluster (every Lepton kernel on this machine loses it) the way
    ``ray stop`` does. None if none ran; else ``seconds`` it took and how many processes
    were ``forced`` (SIGKILL after the grace time)."""
    state = embedded_state()
    with _LOCK:
        if _CONN is not None and state and _CONN.address == state["address"]:
            disconnect()
    if not state:
        return None
    t0 = time.monotonic()
    forced = _kill_group(int(state["pid"]))
    with contextlib.suppress(OSError):
        _state_file().unlink()
    return {"seconds": time.monotonic() - t0, "forced": forced}


# -- connecting ------------------------------------------------------------------------------
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


#: Ray ends a driver process whose head (GCS) has not answered for 60 s. A kernel or the
#: Jupyter server is that driver: Lepton notices a dead head itself (:func:`head_alive`), so
#: the process is told to wait a day instead, and survives until the cluster is back.
_GCS_WAIT_VAR = "RAY_gcs_rpc_server_reconnect_timeout_s"


@contextlib.contextmanager
def _driver_outlives_the_head():
    """Set Ray's GCS reconnect timeout for this process's ``ray.init`` only (a user's own
    setting wins); child processes, such as ``ray start``, keep Ray's default."""
    old = os.environ.get(_GCS_WAIT_VAR)
    if old is None:
        os.environ[_GCS_WAIT_VAR] = "86400"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(_GCS_WAIT_VAR, None)


def _ray_init(address: str, embedded: bool, tls: bool = False) -> None:
    with _driver_outlives_the_head():
        _ray_init_now(address, embedded, tls)


def _ray_init_now(address: str, embedded: bool, tls: bool = False) -> None:
    import ray

    try:
        # Ray connects on its own when an API is called unconnected (ray.get_actor, .remote);
        # Lepton always connects explicitly, and a thread that outlived a dropped connection
        # (a detached job's follower) must fail, not reconnect behind this module's back
        import ray._private.auto_init_hook as auto_init

        auto_init.enable_auto_connect = False
    except (ImportError, AttributeError):
        pass
    _wait_for_dropped()
    if ray.is_initialized():
        ray.shutdown()
    kwargs: dict[str, Any] = {}
    if embedded:
        _use_embedded_auth(tls)
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
            conn = Connection(state["address"], "embedded", state.get("dashboard_url"),
                              tls=bool(state.get("tls")))
        else:
            target = target.strip()
            if target == "auto":
                raise LeptonUsageError("address 'auto' is ambiguous here; give the head's host:port")
            t0 = time.monotonic()
            if not _reachable(target, cfg.connect_timeout):
                source = "RAY_ADDRESS" if not address and os.environ.get("RAY_ADDRESS") else "address"
                why = (f"nothing answered in {time.monotonic() - t0:.0f} s" if _resolves(target)
                       else "its host name does not resolve")
                raise ClusterUnavailable(
                    f"cannot reach the Ray cluster at {target} ({source}; {why}); start it, fix "
                    "the address, or use `%lepton connect local` for the embedded cluster")
            kind = "client" if target.startswith("ray://") else "address"
            conn = Connection(target, kind, tls=_check_tls(target))
        try:
            _ray_init(conn.address, conn.kind == "embedded", conn.tls)
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
        if threading.current_thread() is not _BG.thread:
            _BG.error = None    # the user's own connection supersedes a failed background start
        return conn


def _check_tls(target: str) -> bool:
    """Whether this process speaks TLS to the cluster at ``target``, after checking that the
    cluster agrees (Ray itself would wait out its whole GCS timeout, then fail obscurely) and
    that the certificate files can be read. One line names the side that expects TLS."""
    env = {k: v for k, v in _user_env().items() if v is not None}
    _check_tls_files(env)
    host, port = _split_host_port(target)
    why = _tls_mismatch(target, host, port, client=env_says_tls(env),
                        timeout=min(5.0, get_config().connect_timeout))
    if why:
        raise ClusterUnavailable(why)
    return env_says_tls(env)


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


# -- a head that stopped answering ------------------------------------------------------------
#: called (without arguments) when the connection is dropped because its head is gone: the
#: layers above forget what lived on that cluster (the warm group registers here)
_ON_LOST: list[Any] = []
_DROPPED: list[threading.Thread] = []
_NOTICES: list[str] = []
_LOST_EMBEDDED: list[str] = []     # the address of an embedded cluster found dead


def on_connection_lost(callback: Any) -> None:
    if callback not in _ON_LOST:
        _ON_LOST.append(callback)


#: called (without arguments) by :func:`ensure_connected` for any work but a one-shot cell:
#: the kernel's warm cell worker gives its CPUs back before other work asks for them
_BEFORE_WORK: list[Any] = []


def before_other_work(callback: Any) -> None:
    if callback not in _BEFORE_WORK:
        _BEFORE_WORK.append(callback)


def head_alive(conn: Connection | None = None, tries: int = 2) -> bool:
    """Whether the connection's head answers on its port (a TCP connect, about 0.1 ms on a
    live head; a dead one is asked ``tries`` times, 0.3 s apart)."""
    conn = conn or _CONN
    if conn is None:
        return False
    for i in range(tries):
        if _answers(conn.address):
            conn.answered_at = time.monotonic()
            return True
        if i + 1 < tries:
            time.sleep(0.3)
    return False


def drop_dead_connection(conn: Connection) -> str:
    """Forget a connection whose head is gone, without waiting on it: Ray's own shutdown of
    this driver runs in a thread (a few seconds against a dead head), and the next connect
    waits for it. Returns the one line that tells the user what happened and what to do."""
    global _CONN
    with _LOCK:
        if _CONN is conn:
            _CONN = None
    for callback in list(_ON_LOST):
        try:
            callback()
        except Exception:  # noqa: BLE001 - forgetting must not fail
            log.debug("connection-lost hook failed", exc_info=True)

    def shut() -> None:
        import ray

        try:
            ray.shutdown()
        except Exception:  # noqa: BLE001
            log.debug("ray.shutdown after a lost head failed", exc_info=True)

    thread = threading.Thread(target=shut, name="lepton-drop", daemon=True)
    thread.start()
    _DROPPED.append(thread)
    if conn.kind == "embedded":
        _LOST_EMBEDDED.append(conn.address)
        return (f"the embedded Ray cluster at {conn.address} stopped (its head is gone); the "
                "next cell starts a fresh one. Variables in this kernel are kept")
    return (f"the Ray cluster at {conn.address} stopped answering (its head is gone); start "
            "it again, then rerun the cell. Variables in this kernel are kept")


def _wait_for_dropped(timeout: float = 20.0) -> None:
    while _DROPPED:
        _DROPPED.pop().join(timeout)


def take_notices() -> list[str]:
    """Lines to show the user once (e.g. "a fresh embedded cluster was started")."""
    out = list(_NOTICES)
    _NOTICES.clear()
    return out


# -- starting in the background ---------------------------------------------------------------
class _Background:
    """A start of the embedded cluster (and this process's connection to it) in a thread, so
    that it overlaps with whatever the user does first. Its failure is told once."""

    def __init__(self) -> None:
        self.thread: threading.Thread | None = None
        self.since = 0.0
        self.error: str | None = None
        self.connect = True

    def run(self) -> None:
        try:
            if self.connect:
                logging.getLogger("ray._private.worker").addFilter(_not_main_thread_filter)
                ensure_connected(_background=True)
            else:
                _up_elsewhere()
        except BaseException as exc:  # noqa: BLE001 - told once, in the next cell
            self.error = str(exc) or type(exc).__name__


_UP = "from lepton_lab import cluster; cluster.start_embedded(); cluster.warm_up()"


def _up_elsewhere() -> None:
    """Start and warm the embedded cluster from a child process, so that this process (the
    Jupyter server) does not become a Ray driver."""
    import subprocess
    import sys

    limit = get_config().start_timeout * 2 + get_config().connect_timeout + 60
    proc = subprocess.run([sys.executable, "-c", _UP], capture_output=True, text=True,
                          timeout=limit, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        raise ClusterUnavailable(lines[-1] if lines else f"exit status {proc.returncode}")


def warm_up() -> None:
    """Connect once and go: the version check runs and is cached in LEPTON_HOME for the
    kernels to come, and Ray keeps the worker that ran it (torch imported) for their first
    cell. Used by ``lepton up`` and the Jupyter server's background start."""
    ensure_connected()
    disconnect()


def _not_main_thread_filter(record: logging.LogRecord) -> bool:
    return "not the main thread" not in record.getMessage()


_BG = _Background()


def start_in_background(connect: bool = True) -> bool:
    """Start (or find) the embedded cluster in a thread, and with ``connect`` connect this
    process to it, unless the user asked for another cluster (an address is set or this
    process is connected), autostart is off, or a start is already under way here.

    Returns whether a start began. The next :func:`ensure_connected` waits for it; a failure
    is raised there once (with the log's path), and the call after that starts anew."""
    cfg = get_config()
    if not cfg.autostart or cfg.address or _CONN is not None or background_pending():
        return False
    _BG.error, _BG.since, _BG.connect = None, time.time(), connect
    _BG.thread = threading.Thread(target=_BG.run, name="lepton-cluster-start", daemon=True)
    _BG.thread.start()
    return True


def background_pending() -> bool:
    return _BG.thread is not None and _BG.thread.is_alive()


def background_state() -> dict[str, Any] | None:
    """What the background start is doing: ``{"state": "starting"|"failed", "since", "error"}``,
    or None when none ran in this process (or it succeeded)."""
    if background_pending():
        return {"state": "starting", "since": _BG.since, "error": None}
    if _BG.error:
        return {"state": "failed", "since": _BG.since, "error": _BG.error}
    return None


def _wait_background() -> None:
    """Wait for this process's background start (Ctrl-C works), and tell its failure once."""
    thread = _BG.thread
    if thread is None:
        return
    deadline = time.monotonic() + get_config().start_timeout * 2 + get_config().connect_timeout
    while thread.is_alive():
        if time.monotonic() > deadline:
            raise ClusterUnavailable(
                f"the embedded Ray cluster has been starting in the background for "
                f"{time.time() - _BG.since:.0f} s (see {get_config().home_path / 'cluster.log'});"
                " wait, or `lepton cluster stop` and run the cell again")
        thread.join(0.1)
    _BG.thread = None
    if _BG.error:
        error, _BG.error = _BG.error, None
        raise ClusterUnavailable(f"starting the embedded Ray cluster in the background failed: "
                                 f"{error}; the next cell tries again")


def ensure_connected(_background: bool = False, *, keep_warm: bool = False) -> Connection:
    """The live connection, connecting (and starting the embedded cluster) on first use.

    Unless ``keep_warm`` (a one-shot cell, or a look at the status), the ``before_other_work``
    hooks run first: what this kernel keeps warm is given back before other work asks for
    resources.

    A connection whose head no longer answers is dropped first: for an address the user
    gave, that is a one-line :class:`ClusterUnavailable` (no silent fallback); for the
    embedded cluster a fresh one is started, and :func:`take_notices` says so.
    """
    if not _background and _BG.thread is not None:
        _wait_background()
    if not keep_warm and _CONN is not None:
        for callback in _BEFORE_WORK:
            try:
                callback()
            except Exception:  # noqa: BLE001 - giving back is best effort
                log.debug("before-other-work hook failed", exc_info=True)
    conn = _CONN
    if conn is not None:
        import ray

        if ray.is_initialized():
            # one probe serves the calls of one cell (the magic's and the core's); a head that
            # dies later is noticed by the cell's own wait (consume) within seconds
            if time.monotonic() - conn.answered_at < PROBE_REUSE_S or head_alive(conn):
                return conn
            reason = drop_dead_connection(conn)
            if conn.kind != "embedded":
                raise ClusterUnavailable(reason)
    with _LOCK:
        conn = connect()
    if _LOST_EMBEDDED and conn.kind == "embedded":
        _NOTICES.append(f"the embedded Ray cluster at {_LOST_EMBEDDED[-1]} had stopped; "
                        f"started a fresh one at {conn.address} (jobs of the old one are lost)")
    _LOST_EMBEDDED.clear()
    if get_config().check_versions and not conn.versions_checked:
        check_versions(conn)
    return conn


# -- versions --------------------------------------------------------------------------------
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
