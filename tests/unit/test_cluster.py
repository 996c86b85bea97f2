"""Pure parts of the Ray connection (lepton_lab/cluster.py), with Ray forbidden."""

from __future__ import annotations

import os
import socket
import time

import pytest

from lepton_lab import _ray_auth, cluster
from lepton_lab.config import get_config, reset_config
from lepton_lab.errors import ClusterUnavailable, LeptonUsageError

LOCAL = {"python": "3.11.9", "cloudpickle": "3.1.2", "torch": "2.13.0", "lepton_lab": "0.1.0"}


def test_same_versions_and_python_patch_levels_agree():
    assert cluster.compare_versions(LOCAL, dict(LOCAL)) == []
    assert cluster.compare_versions(LOCAL, dict(LOCAL, python="3.11.2")) == []


@pytest.mark.parametrize("key, remote_value", [
    ("python", "3.12.1"), ("cloudpickle", "3.0.0"), ("torch", "2.4.0"), ("lepton_lab", "0.2.0"),
    ("torch", None),
])
def test_each_differing_package_is_named(key, remote_value):
    diffs = cluster.compare_versions(LOCAL, dict(LOCAL, **{key: remote_value}))
    assert len(diffs) == 1
    (msg,) = diffs
    assert msg.startswith(f"{key} ")
    assert LOCAL[key] in msg and (remote_value or "missing") in msg
    assert msg.index("(kernel)") < msg.index("(cluster)")


def test_several_differences_and_missing_on_both_sides():
    remote = {"python": "3.10.0", "cloudpickle": None, "torch": "2.13.0"}
    diffs = cluster.compare_versions(dict(LOCAL, torch=None), remote)
    names = [d.split()[0] for d in diffs]
    assert names == ["python", "cloudpickle", "torch", "lepton_lab"]
    assert "missing (kernel)" in diffs[2] and "missing (cluster)" in diffs[3]


def test_local_versions_reports_this_interpreter():
    import platform

    versions = cluster.local_versions()
    assert versions["python"] == platform.python_version()
    assert set(versions) == {"python", "cloudpickle", "torch", "lepton_lab"}
    assert cluster.compare_versions(versions, versions) == []


@pytest.mark.parametrize("address, expected", [
    ("10.0.0.5:6379", ("10.0.0.5", 6379)),
    ("ray://head:10001", ("head", 10001)),
    (":6379", ("127.0.0.1", 6379)),
])
def test_split_host_port(address, expected):
    assert cluster._split_host_port(address) == expected


@pytest.mark.parametrize("address", ["head", "head:", "head:port", "ray://head", "10.0.0.5:-1",
                                     "", "head:63 79"])
def test_split_host_port_rejects_bad_addresses(address):
    with pytest.raises(LeptonUsageError, match="host:port") as info:
        cluster._split_host_port(address)
    assert "\n" not in str(info.value)


def closed_port() -> int:
    """A port on 127.0.0.1 with nothing listening (bound and released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_explicit_address_fails_fast_without_fallback():
    # the autouse fixture makes start_embedded/ray.init raise RayForbidden (a BaseException),
    # so a fallback to the embedded cluster would fail this test loudly
    target = f"127.0.0.1:{closed_port()}"
    start = time.monotonic()
    with pytest.raises(ClusterUnavailable) as info:
        cluster.connect(target)
    elapsed = time.monotonic() - start
    assert elapsed < 5.0, f"took {elapsed:.1f} s to give up on a refused port"
    assert target in str(info.value)
    assert "(address;" in str(info.value)
    assert cluster.current() is None


def test_ray_address_env_is_the_target(monkeypatch):
    target = f"127.0.0.1:{closed_port()}"
    monkeypatch.setenv("RAY_ADDRESS", target)
    reset_config()
    assert get_config().address == target
    get_config().connect_timeout = 0.5
    start = time.monotonic()
    with pytest.raises(ClusterUnavailable) as info:
        cluster.connect()
    assert time.monotonic() - start < 3.0
    assert target in str(info.value) and "RAY_ADDRESS" in str(info.value)
    assert cluster.current() is None


def test_unreachable_address_error_renders_one_line():
    get_config().connect_timeout = 0.3
    with pytest.raises(ClusterUnavailable) as info:
        cluster.connect(f"127.0.0.1:{closed_port()}")
    (line,) = info.value._render_traceback_()
    assert line.startswith("ClusterUnavailable: cannot reach the Ray cluster")


@pytest.mark.parametrize("address", ["auto", " auto "])
def test_auto_is_refused(address):
    with pytest.raises(LeptonUsageError, match="auto"):
        cluster.connect(address)


@pytest.mark.parametrize("address", ["local", "embedded"])
def test_local_means_the_embedded_cluster(address, monkeypatch):
    # "local" must go to the embedded cluster, not be probed as a host name
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{closed_port()}")
    reset_config()
    from .conftest import RayForbidden

    with pytest.raises(RayForbidden, match="embedded"):
        cluster.connect(address)


def test_reachable_probe_sees_a_listening_socket():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        assert cluster._reachable(f"127.0.0.1:{port}", 1.0) is True
    assert cluster._reachable(f"127.0.0.1:{closed_port()}", 0.3) is False


def test_embedded_state_ignores_missing_corrupt_and_dead(lepton_home):
    assert cluster.embedded_state() is None
    state_file = lepton_home / "cluster.json"
    state_file.write_text("{not json")
    assert cluster.embedded_state() is None
    import json
    import subprocess
    import sys

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    state_file.write_text(json.dumps({"address": "127.0.0.1:1", "pid": dead.pid}))
    assert cluster.embedded_state() is None
    import os

    state_file.write_text(json.dumps({"address": "127.0.0.1:1", "pid": os.getpid()}))
    assert cluster.embedded_state()["address"] == "127.0.0.1:1"


SERVER_TRACE = """Initialization failure from server:
Traceback (most recent call last):
  File "proxier.py", line 777, in Datapath
    raise RuntimeError(
RuntimeError: Proxy failed to Connect to backend! Check `ray_client_server.err`
"""


def test_client_failure_reason_is_the_servers_last_line():
    reason = cluster._client_failure_reason(SERVER_TRACE)
    assert "\n" not in reason
    assert reason.endswith("RuntimeError: Proxy failed to Connect to backend! Check "
                           "`ray_client_server.err`")
    assert cluster._client_failure_reason("plain reason") == "plain reason"


def test_only_server_start_failures_are_retried():
    assert cluster._transient_client_failure(SERVER_TRACE)
    assert not cluster._transient_client_failure(
        "Initialization failure from server:\nCall to `ray.init()` on the server failed with: "
        "bad token")


def test_embedded_token_is_private_and_stable(tmp_path):
    path = cluster._embedded_token_path()
    assert path.parent == get_config().home_path
    assert path.stat().st_mode & 0o777 == 0o600
    token = path.read_text()
    assert len(token) == 64
    assert cluster._embedded_token_path().read_text() == token


def test_embedded_auth_is_undone_for_the_users_cluster(monkeypatch):
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.setenv("RAY_AUTH_TOKEN", "users-own-token")
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    # the saved user settings live in the auth module; lepton_lab.cluster re-exports the functions
    monkeypatch.setattr(_ray_auth, "_user_auth", None)
    cluster._use_embedded_auth()
    assert "RAY_AUTH_TOKEN" not in os.environ
    assert os.environ["RAY_AUTH_TOKEN_PATH"] == str(cluster._embedded_token_path())
    cluster._use_embedded_auth()  # a second embedded connect keeps the user's values
    cluster._use_user_auth()
    assert os.environ["RAY_AUTH_TOKEN"] == "users-own-token"
    assert "RAY_AUTH_TOKEN_PATH" not in os.environ
    assert os.environ["RAY_AUTH_MODE"] == "token"


# -- the background start (issue 15) -----------------------------------------------------------
@pytest.fixture
def autostart(lepton_home, monkeypatch):
    """LEPTON_AUTOSTART on, no address; the start under test is reset afterwards."""
    monkeypatch.setenv("LEPTON_AUTOSTART", "1")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    reset_config()
    yield lepton_home
    if cluster._BG.thread is not None:
        cluster._BG.thread.join(10)
    cluster._BG.thread, cluster._BG.error = None, None


def test_a_failed_background_start_is_told_once_with_its_log_then_retried(autostart,
                                                                          monkeypatch):
    calls = []

    def failing_start(timeout=None):
        calls.append(time.monotonic())
        raise ClusterUnavailable(f"the embedded Ray cluster failed to start (see "
                                 f"{autostart / 'cluster.log'}): boom")

    monkeypatch.setattr(cluster, "start_embedded", failing_start)
    assert cluster.start_in_background() is True
    with pytest.raises(ClusterUnavailable) as first:
        cluster.ensure_connected()
    assert "in the background failed" in str(first.value)
    assert str(autostart / "cluster.log") in str(first.value)
    assert "\n" not in str(first.value)
    # the next call starts anew, in the foreground, and says so without "background"
    with pytest.raises(ClusterUnavailable) as second:
        cluster.ensure_connected()
    assert "in the background" not in str(second.value) and len(calls) == 2


def test_status_says_starting_while_the_background_start_runs(autostart, monkeypatch):
    from lepton_lab.remote._status import cluster_status, format_text

    release = __import__("threading").Event()

    def slow_start(timeout=None):
        release.wait(20)
        raise ClusterUnavailable("stopped by the test")

    monkeypatch.setattr(cluster, "start_embedded", slow_start)
    assert cluster.start_in_background() is True
    assert cluster.start_in_background() is False          # one start at a time
    try:
        st = cluster_status()                               # answers at once, no wait
        assert st["state"] == "starting"
        text = format_text(st)
        assert "starting in the background" in text and "cluster.log" in text
    finally:
        release.set()


@pytest.mark.parametrize("env", [{"LEPTON_AUTOSTART": "0"}, {"RAY_ADDRESS": "127.0.0.1:9"}])
def test_no_background_start_when_off_or_an_address_is_set(autostart, monkeypatch, env):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    reset_config()
    monkeypatch.setattr(cluster, "start_embedded",
                        lambda timeout=None: pytest.fail("nothing may start a cluster"))
    assert cluster.start_in_background() is False
    assert cluster._BG.thread is None


@pytest.mark.parametrize("value, expected", [(None, "haproxy"), ("proxy", "proxy"),
                                             ("HAProxy", "haproxy"), ("nginx", "haproxy")])
def test_serve_ingress_setting(monkeypatch, value, expected):
    if value is None:
        monkeypatch.delenv("LEPTON_SERVE_INGRESS", raising=False)
    else:
        monkeypatch.setenv("LEPTON_SERVE_INGRESS", value)
    reset_config()
    try:
        assert get_config().serve_ingress == expected
    finally:
        reset_config()


def test_an_address_whose_host_does_not_resolve_fails_at_once(monkeypatch):
    import time

    from lepton_lab import cluster as lc
    from lepton_lab.errors import ClusterUnavailable

    t0 = time.monotonic()
    with pytest.raises(ClusterUnavailable, match="host name does not resolve"):
        lc.connect("no-such-head.invalid:6379")
    assert time.monotonic() - t0 < 2.0          # not the whole connect timeout
