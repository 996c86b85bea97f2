"""One real local Ray cluster for the whole integration session (starting one costs ~20 s).

The cluster is Lepton's embedded cluster under a temporary LEPTON_HOME, exported in the
environment so real kernels started by the tests (jupyter_client, nbclient) share it.
"""

from __future__ import annotations

import contextlib
import os
import queue
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def lepton_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("lepton-home")
    old = os.environ.get("LEPTON_HOME")
    os.environ["LEPTON_HOME"] = str(home)
    os.environ.pop("RAY_ADDRESS", None)
    # endpoints of the session (the quickstart's too, in its own kernel) on a port that is
    # free here: 8000 may be taken by something else on a developer's machine
    os.environ.setdefault("LEPTON_SERVE_PORT", str(free_port()))
    from lepton_lab.config import reset_config
    from lepton_lab.store import reset_store

    reset_config()
    reset_store()
    yield home
    if old is None:
        os.environ.pop("LEPTON_HOME", None)
    else:
        os.environ["LEPTON_HOME"] = old
    reset_config()
    reset_store()


@pytest.fixture(scope="session")
def cluster(lepton_home):
    """The shared embedded cluster; this test process is connected to it as a driver."""
    from lepton_lab import cluster as lc

    conn = lc.ensure_connected()
    yield conn
    from lepton_lab.remote._group import stop_group

    stop_group()
    lc.stop_embedded()


@pytest.fixture(scope="session")
def ip(cluster):
    """A real IPython InteractiveShell with the extension loaded."""
    from IPython.testing.globalipapp import start_ipython

    shell = start_ipython()
    shell.run_line_magic("load_ext", "lepton_lab")
    return shell


@contextlib.contextmanager
def digits_in(ip, *leftovers: str):
    """sklearn's digits as tensors ``X`` (scaled to [0, 1]) and ``Y`` in the shell's namespace;
    the names a test's cells leave behind are removed afterwards."""
    import torch
    from sklearn.datasets import load_digits

    d = load_digits()
    ip.user_ns["X"] = torch.tensor(d.data, dtype=torch.float32) / 16.0
    ip.user_ns["Y"] = torch.tensor(d.target)
    try:
        yield ip
    finally:
        for name in leftovers:
            ip.user_ns.pop(name, None)


def wait_for_free_cpus(timeout: float = 5.0) -> float:
    """Seconds until every CPU of the cluster is free again (per Ray's state), or fail."""
    import ray

    start = time.monotonic()
    total = ray.cluster_resources().get("CPU", 0)
    while time.monotonic() - start < timeout:
        if abs(ray.available_resources().get("CPU", 0) - total) < 1e-6:
            return time.monotonic() - start
        time.sleep(0.05)
    raise AssertionError(f"CPUs not freed within {timeout} s: "
                         f"{ray.available_resources().get('CPU', 0)}/{total} free")


def running_lepton_tasks() -> list:
    """Tasks named lepton:* that Ray's state API reports as running."""
    from ray.util.state import list_tasks

    from lepton_lab.cluster import current

    # an explicit address: with none, Ray's state API picks the newest cluster on the machine
    tasks = list_tasks(address=current().dashboard_url, filters=[("state", "=", "RUNNING")],
                       limit=1000, raise_on_missing_output=False)
    return [t for t in tasks if str(getattr(t, "name", "")).startswith("lepton:")]


class KernelClient:
    """A real IPython kernel (python3 kernel spec) with helpers that keep iopub messages."""

    def __init__(self, env: dict[str, str] | None = None):
        """``env``: the kernel's whole environment (default: this process's)."""
        from jupyter_client.manager import KernelManager

        self.km = KernelManager(kernel_name="python3")
        self.km.start_kernel(env=dict(os.environ) if env is None else env, cwd=str(REPO))
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=60)

    def execute(self, code: str, timeout: float = 120, on_msg=None) -> tuple[dict, list[dict]]:
        """Run code; return (execute_reply content, [iopub messages with arrival times])."""
        msg_id = self.kc.execute(code)
        msgs = []
        deadline = time.monotonic() + timeout
        reply = None
        idle = False
        while time.monotonic() < deadline and not (reply and idle):
            try:
                m = self.kc.get_iopub_msg(timeout=0.1)
                m["t"] = time.monotonic()
                if m["parent_header"].get("msg_id") == msg_id:
                    msgs.append(m)
                    if on_msg:
                        on_msg(m)
                    if m["msg_type"] == "status" and m["content"]["execution_state"] == "idle":
                        idle = True
            except queue.Empty:
                pass
            if reply is None:
                try:
                    r = self.kc.get_shell_msg(timeout=0.01)
                    if r["parent_header"].get("msg_id") == msg_id:
                        reply = r["content"]
                        reply["t"] = time.monotonic()
                except queue.Empty:
                    pass
        if reply is None:
            raise AssertionError(f"no reply within {timeout} s for {code[:80]!r}")
        return reply, msgs

    def stop(self):
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=True)


def text_of(msgs: list[dict], name: str | None = None) -> str:
    return "".join(m["content"]["text"] for m in msgs
                   if m["msg_type"] == "stream" and (name is None or m["content"]["name"] == name))


@pytest.fixture
def kernel(cluster):
    k = KernelClient()
    yield k
    k.stop()
