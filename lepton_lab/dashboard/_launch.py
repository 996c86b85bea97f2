"""Start Voila on loopback serving the dashboard notebooks, with a token required.

Voila's own default is no token at all; here a random one is generated unless
``LEPTON_DASHBOARD_TOKEN`` gives one. The token travels to the Voila process in its
environment (never on its command line, where ``ps`` would show it), and that process drops
it from the environment before any page's kernel starts. Viewers get Voila's usual sandbox:
its kernels accept only widget (comm) messages, so nobody can run code of their own.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode

from ..config import get_config
from ..errors import LeptonError, LeptonUsageError

TOKEN_ENV = "LEPTON_DASHBOARD_TOKEN"
DEFAULT_PORT = 8866
PAGES = ("runs", "run", "compression", "endpoints", "cluster")
#: JupyterLab extensions of this environment that only work inside JupyterLab.
LAB_ONLY = ("ipyparallel-labextension", "lepton-lab")


@dataclass(frozen=True)
class DashboardSpec:
    """What ``lepton dashboard`` was asked for.

    ``port`` 0 picks a free one; ``run`` opens that run's page; ``page`` the page to open
    otherwise; ``timeout`` is how long to wait for Voila to answer (seconds).
    """

    port: int = DEFAULT_PORT
    run: str | None = None
    page: str = "runs"
    timeout: float = 60.0
    ip: str = field(default="127.0.0.1", repr=False)

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise LeptonUsageError(f"--port {self.port} must be 0..65535 (0 picks a free one)")
        if self.page not in PAGES:
            raise LeptonUsageError(f"--page {self.page!r} must be one of {', '.join(PAGES)}")
        if self.timeout <= 0:
            raise LeptonUsageError("--timeout must be positive (seconds)")


def dashboard_dir() -> Path:
    """The folder of dashboard notebooks: the source tree's ``templates/dashboards`` in a
    development install, else the copy installed under ``share/lepton_lab/templates``."""
    here = Path(__file__).resolve().parents[2] / "templates" / "dashboards"
    if here.is_dir():
        return here
    installed = Path(sys.prefix) / "share" / "lepton_lab" / "templates" / "dashboards"
    if installed.is_dir():
        return installed
    raise LeptonError(f"the dashboard notebooks are missing (looked in {here} and "
                      f"{installed}); reinstall lepton-lab")


def free_port(ip: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((ip, 0))
        return sock.getsockname()[1]


def _check_port(ip: str, port: int) -> None:
    with socket.socket() as sock:
        # as tornado does: a port whose last connections are in TIME_WAIT is free
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((ip, port))
        except OSError:
            raise LeptonUsageError(f"port {port} on {ip} is in use; pick another with --port "
                                   "(0 picks a free one)") from None


def voila_argv(root: Path, port: int, ip: str = "127.0.0.1",
               runtime_dir: Path | None = None) -> list[str]:
    """Voila's command line (without the token, which goes through the environment)."""
    argv = [str(root), "--no-browser", f"--Voila.ip={ip}", f"--Voila.port={port}",
            "--Voila.port_retries=0",
            # tracebacks can carry paths and values; the page shows one-line errors itself
            "--VoilaConfiguration.show_tracebacks=False",
            "--VoilaConfiguration.theme=light",
            # lab extensions that need JupyterLab itself (its console, its sidebar) fail to
            # activate in a Voila page; they are not loaded there
            *(f"--VoilaConfiguration.extension_denylist={name}" for name in LAB_ONLY),
            # a page's kernel lives while its tab is open; one whose tab went away without
            # saying so is shut down after 5 idle minutes
            "--MappingKernelManager.cull_idle_timeout=300",
            "--MappingKernelManager.cull_interval=60"]
    if runtime_dir is not None:
        argv.append(f"--Voila.connection_dir_root={runtime_dir}")
    return argv


def page_path(page: str = "runs", **query: str | None) -> str:
    """The path of a page below the server root, e.g. ``/voila/render/run.ipynb?run=ID``."""
    q = urlencode({k: v for k, v in query.items() if v})
    return f"/voila/render/{page}.ipynb" + (f"?{q}" if q else "")


@dataclass
class Dashboard:
    """A running dashboard server (stop it with :meth:`stop`)."""

    proc: subprocess.Popen
    port: int
    token: str = field(repr=False)
    log_path: Path
    ip: str = "127.0.0.1"

    @property
    def base_url(self) -> str:
        return f"http://{self.ip}:{self.port}"

    def url(self, page: str = "runs", with_token: bool = True, **query: str | None) -> str:
        """A page's full URL; ``with_token`` adds ``token=`` (the first visit needs it)."""
        if with_token:
            query = {**query, "token": self.token}
        return self.base_url + page_path(page, **query)

    def stop(self, timeout: float = 20.0) -> None:
        """Stop Voila and its page kernels (its whole process group)."""
        if self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout)

    def log_tail(self, lines: int = 5) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.strip().splitlines()[-lines:])


def start(spec: DashboardSpec, token: str | None = None,
          home: str | os.PathLike[str] | None = None) -> Dashboard:
    """Start Voila on ``spec.ip:spec.port`` and wait (``spec.timeout``) until it answers.

    ``token`` defaults to ``$LEPTON_DASHBOARD_TOKEN`` or a new random one; ``home`` (the
    Lepton home whose store the pages read) to the configured one. Raises a one-line
    :class:`LeptonError` when Voila exits or does not answer in time (and stops it).
    """
    token = token or os.environ.get(TOKEN_ENV) or secrets.token_urlsafe(24)
    if len(token) < 16:
        raise LeptonUsageError(f"{TOKEN_ENV} is too short to be a token: use at least 16 "
                               "characters, or unset it for a random one")
    root = dashboard_dir()
    port = spec.port or free_port(spec.ip)
    _check_port(spec.ip, port)
    home_path = Path(home).expanduser().resolve() if home else get_config().home_path
    run_dir = home_path / "dashboard"
    run_dir.mkdir(parents=True, exist_ok=True)
    log_path = run_dir / f"voila-{port}.log"
    env = dict(os.environ, **{TOKEN_ENV: token, "LEPTON_HOME": str(home_path)})
    env.pop("QUERY_STRING", None)
    cmd = [sys.executable, "-m", "lepton_lab.dashboard._voila_main",
           *voila_argv(root, port, spec.ip, run_dir)]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, cwd=str(root),
                                start_new_session=True)
    dash = Dashboard(proc, port, token, log_path, spec.ip)
    try:
        wait_ready(dash, spec.timeout)
    except BaseException:
        dash.stop()
        raise
    return dash


def wait_ready(dash: Dashboard, timeout: float) -> None:
    """Poll the login page (it needs no token) until Voila answers, exits, or time is up."""
    deadline = time.monotonic() + timeout
    url = f"{dash.base_url}/login"
    while True:
        if dash.proc.poll() is not None:
            tail = dash.log_tail(1)
            raise LeptonError(f"voila exited with code {dash.proc.returncode}"
                              + (f": {tail}" if tail else "") + f" (log: {dash.log_path})")
        try:
            with urllib.request.urlopen(url, timeout=2.0) as r:
                if r.status == 200:
                    return
        except urllib.error.HTTPError:
            return               # it answers; any HTTP status means the server is up
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            raise LeptonError(f"voila did not answer on {dash.base_url} within {timeout:g} s "
                              f"(log: {dash.log_path})")
        time.sleep(0.2)
