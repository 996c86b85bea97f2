"""Site and user defaults for Lepton Lab.

Every setting can be set three ways, strongest first: a traitlets config file
(``c.LeptonConfig.home = ...`` in ``jupyter_server_config.py`` or ``ipython_config.py``),
an environment variable (named in each trait's help), or the default shown here.
"""

from __future__ import annotations

import os
from pathlib import Path

from traitlets import Bool, Float, Int, Unicode, default
from traitlets.config import Configurable


class LeptonConfig(Configurable):
    """Settings shared by the magics, the command-line tool and the server extension."""

    home = Unicode(
        help="Directory holding the state store, the audit log and the embedded cluster's "
        "files. Env: LEPTON_HOME. Default: ~/.lepton",
    ).tag(config=True)

    address = Unicode(
        "",
        help="Ray cluster to use instead of the embedded local one: a head address "
        "(host:port) or a ray:// client address. Env: RAY_ADDRESS. Empty means embedded.",
    ).tag(config=True)

    connect_timeout = Float(
        15.0, help="Seconds to wait for an existing cluster to answer before giving up."
    ).tag(config=True)

    start_timeout = Float(
        120.0, help="Seconds to wait for the embedded local Ray cluster to start."
    ).tag(config=True)

    stream_interval = Float(
        0.05, help="Seconds between batches of streamed output from the cluster."
    ).tag(config=True)

    interrupt_grace = Float(
        1.5,
        help="Seconds a warm-group rank gets to stop after an interrupt before it is killed.",
    ).tag(config=True)

    warm_cell_s = Float(
        help="Keep one worker of this kernel for this many seconds after a one-shot CPU cell, so "
        "that the next cell with the same resources skips Ray's worker lease (about 0.5 ms of a "
        "2-3 ms trivial cell). It holds that cell's CPUs meanwhile; any other work of the "
        "kernel (a warm group, training, a deployment, a detached job, a cell with other "
        "resources) gives it back first, and GPU cells never keep one. 0 keeps none. "
        "Env: LEPTON_WARM_CELL_S. Default: 20",
    ).tag(config=True)

    rank_tail_lines = Int(
        8, help="Lines of output shown per non-zero rank when --all-ranks is not given."
    ).tag(config=True)

    job_ttl_hours = Float(
        24.0, help="Hours a finished detached job keeps its output and results on the cluster."
    ).tag(config=True)

    check_versions = Bool(
        True,
        help="Compare Python, cloudpickle, torch and lepton_lab versions between the kernel "
        "and every cluster node before shipping anything. Env: LEPTON_CHECK_VERSIONS=0 to skip.",
    ).tag(config=True)

    autostart = Bool(
        help="Start (or find) the embedded cluster in the background as soon as a kernel loads "
        "the extension or the Jupyter server starts, so that the first cell does not wait for "
        "it. Never when an address is set (RAY_ADDRESS, %lepton connect). "
        "Env: LEPTON_AUTOSTART=0 to turn off. Default: on",
    ).tag(config=True)

    idle_stop_minutes = Float(
        help="Stop a cluster started by `lepton up` after this many minutes without a running "
        "or new job. Env: LEPTON_IDLE_STOP_MINUTES. Default: 0 (never; a laptop keeps it).",
    ).tag(config=True)

    tls = Bool(
        help="Start the embedded cluster with Ray's TLS mode: every connection between its "
        "processes, its nodes and the kernels is encrypted and needs a certificate from the "
        "cluster's own CA (made under LEPTON_HOME/tls). Token authentication stays on. "
        "Env: LEPTON_TLS=1. `lepton up --tls` does the same for one start. Default: off",
    ).tag(config=True)

    dashboard = Bool(
        True, help="Start the Ray dashboard with the embedded cluster (needed for the state API)."
    ).tag(config=True)

    serve_host = Unicode(
        "127.0.0.1",
        help="Address Ray Serve's HTTP proxy listens on for endpoints. Env: LEPTON_SERVE_HOST. "
        "Loopback by default; use 0.0.0.0 to serve other machines (tokens still apply).",
    ).tag(config=True)

    serve_port = Int(
        help="Port of Ray Serve's HTTP proxy for endpoints. Env: LEPTON_SERVE_PORT. Default: 8000",
    ).tag(config=True)

    serve_ingress = Unicode(
        help="How HTTP reaches endpoints on the embedded cluster: 'haproxy' (Ray Serve's "
        "HAProxy ingress, RAY_SERVE_ENABLE_HA_PROXY=1; about 3x lower latency here, see "
        "docs/benchmarks.md) or 'proxy' (Ray Serve's Python proxy). Requests are batched "
        "behind either. On an existing cluster its own environment decides. "
        "Env: LEPTON_SERVE_INGRESS. Default: haproxy",
    ).tag(config=True)

    max_request_mb = Float(
        16.0, help="Largest request body an endpoint accepts, in MiB (larger gets HTTP 413)."
    ).tag(config=True)

    @default("serve_host")
    def _default_serve_host(self) -> str:
        return os.environ.get("LEPTON_SERVE_HOST", "127.0.0.1")

    @default("serve_ingress")
    def _default_serve_ingress(self) -> str:
        value = os.environ.get("LEPTON_SERVE_INGRESS", "haproxy").strip().lower()
        if value not in ("haproxy", "proxy"):
            import logging

            logging.getLogger("lepton_lab").warning(
                "LEPTON_SERVE_INGRESS=%r is not 'haproxy' or 'proxy'; using haproxy", value)
            return "haproxy"
        return value

    @default("serve_port")
    def _default_serve_port(self) -> int:
        return int(os.environ.get("LEPTON_SERVE_PORT", "8000"))

    @default("home")
    def _default_home(self) -> str:
        return os.environ.get("LEPTON_HOME") or str(Path.home() / ".lepton")

    @default("address")
    def _default_address(self) -> str:
        return os.environ.get("RAY_ADDRESS", "")

    @default("autostart")
    def _default_autostart(self) -> bool:
        return os.environ.get("LEPTON_AUTOSTART", "1") not in ("0", "false", "no")

    @default("warm_cell_s")
    def _default_warm_cell_s(self) -> float:
        return _env_amount("LEPTON_WARM_CELL_S", 20.0)

    @default("idle_stop_minutes")
    def _default_idle_stop(self) -> float:
        return _env_amount("LEPTON_IDLE_STOP_MINUTES", 0.0)

    @default("tls")
    def _default_tls(self) -> bool:
        return os.environ.get("LEPTON_TLS", "0").strip().lower() in ("1", "true", "yes", "on")

    @default("check_versions")
    def _default_check_versions(self) -> bool:
        return os.environ.get("LEPTON_CHECK_VERSIONS", "1") not in ("0", "false", "no")

    @property
    def home_path(self) -> Path:
        path = Path(self.home).expanduser()
        path.mkdir(parents=True, exist_ok=True)
        return path


def _env_amount(name: str, default: float) -> float:
    """A non-negative number from the environment; ``default`` when unset or not a number."""
    try:
        return max(0.0, float(os.environ.get(name, default)))
    except ValueError:
        return default


_CONFIG: LeptonConfig | None = None


def get_config() -> LeptonConfig:
    """The process-wide settings, created on first use (so env vars set before it count)."""
    global _CONFIG
    if _CONFIG is None:
        _CONFIG = LeptonConfig()
    return _CONFIG


def reset_config() -> None:
    """Forget the settings so the next :func:`get_config` re-reads the environment."""
    global _CONFIG
    _CONFIG = None
