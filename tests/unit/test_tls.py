"""Ray's TLS mode, without Ray: the CA and node certificates Lepton makes (owner-only, a
chain that verifies, the names a node is reached by), the probe that tells a TLS server from
a plain one, and the one-line errors for a mismatch or a missing file."""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
import threading

import pytest

from lepton_lab import _tls
from lepton_lab.errors import ClusterUnavailable, LeptonUsageError


def _mode(path) -> int:
    return path.stat().st_mode & 0o777


def test_local_files_are_owner_only_and_the_chain_verifies(lepton_home, tmp_path):
    from cryptography import x509

    env = _tls.ensure_local()
    assert env["RAY_USE_TLS"] == "1"
    d = lepton_home / "tls"
    assert _mode(d) == 0o700
    for name in ("ca.crt", "ca.key", "node.crt", "node.key"):
        assert _mode(d / name) == 0o600, name
    cert = x509.load_pem_x509_certificate((d / "node.crt").read_bytes())
    ca = x509.load_pem_x509_certificate((d / "ca.crt").read_bytes())
    cert.verify_directly_issued_by(ca)                # raises if the CA did not sign it
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in sans.get_values_for_type(x509.DNSName)
    assert any(str(ip) == "127.0.0.1" for ip in sans.get_values_for_type(x509.IPAddress))
    # a second call reuses the files (a running cluster keeps its certificate)
    before = (d / "node.crt").read_bytes()
    assert _tls.ensure_local() == env and (d / "node.crt").read_bytes() == before


def test_a_certificate_for_another_node_names_it_and_keeps_the_ca_key_home(lepton_home):
    from cryptography import x509

    files = _tls.for_node("10.1.2.3")
    d = lepton_home / "tls" / "nodes" / "10.1.2.3"
    assert sorted(p.name for p in d.iterdir()) == ["ca.crt", "node.crt", "node.key"]
    cert = x509.load_pem_x509_certificate(open(files["RAY_TLS_SERVER_CERT"], "rb").read())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["10.1.2.3"]
    with pytest.raises(LeptonUsageError, match="not a host name or IP address"):
        _tls.for_node("../../etc")


class _Server:
    """A one-connection-at-a-time server on loopback: TLS with the given context, or plain
    (reads what comes and hangs up, as a plain gRPC server does with a ClientHello)."""

    def __init__(self, ctx: ssl.SSLContext | None):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.port = self.sock.getsockname()[1]
        self.ctx = ctx
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            try:
                if self.ctx is None:
                    conn.recv(1024)
                    conn.sendall(b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")   # an HTTP/2 frame
                else:
                    with self.ctx.wrap_socket(conn, server_side=True) as tls:
                        tls.recv(1)
            except (OSError, ssl.SSLError):
                pass
            finally:
                conn.close()


def _server_ctx(client_auth: bool) -> ssl.SSLContext:
    env = _tls.ensure_local()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(env["RAY_TLS_SERVER_CERT"], env["RAY_TLS_SERVER_KEY"])
    if client_auth:                                   # as Ray's servers: mutual TLS
        ctx.load_verify_locations(env["RAY_TLS_CA_CERT"])
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def test_the_probe_tells_tls_from_plain_and_from_nothing(lepton_home):
    assert _tls.speaks_tls("127.0.0.1", _Server(_server_ctx(client_auth=True)).port) is True
    assert _tls.speaks_tls("127.0.0.1", _Server(_server_ctx(client_auth=False)).port) is True
    assert _tls.speaks_tls("127.0.0.1", _Server(None).port) is False
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        nobody = s.getsockname()[1]
    assert _tls.speaks_tls("127.0.0.1", nobody) is None


def test_a_mismatch_is_one_line_that_says_which_side_expects_what(lepton_home):
    tls_port = _Server(_server_ctx(client_auth=True)).port
    plain_port = _Server(None).port
    line = _tls.mismatch(f"127.0.0.1:{tls_port}", "127.0.0.1", tls_port, client=False)
    assert "uses TLS but this process does not" in line and "\n" not in line
    line = _tls.mismatch(f"127.0.0.1:{plain_port}", "127.0.0.1", plain_port, client=True)
    assert "this process uses TLS (RAY_USE_TLS=1) but the Ray cluster" in line
    assert _tls.mismatch("x", "127.0.0.1", tls_port, client=True) is None
    assert _tls.mismatch("x", "127.0.0.1", plain_port, client=False) is None


def test_connect_refuses_a_mismatch_before_ray_is_touched(lepton_home, monkeypatch):
    from lepton_lab import cluster

    port = _Server(_server_ctx(client_auth=True)).port
    monkeypatch.delenv("RAY_USE_TLS", raising=False)
    with pytest.raises(ClusterUnavailable, match="uses TLS but this process does not"):
        cluster.connect(f"127.0.0.1:{port}")         # ray.init is forbidden in unit tests


def test_missing_or_unreadable_files_are_named(tmp_path):
    with pytest.raises(ClusterUnavailable, match="RAY_TLS_SERVER_CERT is not set"):
        _tls.check_files({"RAY_USE_TLS": "1", "RAY_TLS_CA_CERT": str(tmp_path)})
    missing = str(tmp_path / "nope.crt")
    with pytest.raises(ClusterUnavailable, match="nope.crt, which cannot be read"):
        _tls.check_files({"RAY_USE_TLS": "true", "RAY_TLS_CA_CERT": missing,
                          "RAY_TLS_SERVER_CERT": missing, "RAY_TLS_SERVER_KEY": missing})
    _tls.check_files({"RAY_USE_TLS": "0"})           # off: nothing to check


def test_the_embedded_clusters_tls_env_is_applied_and_the_users_comes_back(lepton_home,
                                                                             monkeypatch):
    from lepton_lab import _ray_auth

    monkeypatch.setattr(_ray_auth, "_user_auth", None)
    monkeypatch.setenv("RAY_USE_TLS", "1")
    monkeypatch.setenv("RAY_TLS_CA_CERT", "/users/own/ca.crt")
    _ray_auth._use_embedded_auth(tls=False)           # a plain embedded cluster: TLS off
    assert "RAY_USE_TLS" not in os.environ and "RAY_TLS_CA_CERT" not in os.environ
    _ray_auth._use_embedded_auth(tls=True)            # a TLS one: this LEPTON_HOME's files
    assert os.environ["RAY_TLS_CA_CERT"] == str(lepton_home / "tls" / "ca.crt")
    assert _ray_auth._user_env()["RAY_TLS_CA_CERT"] == "/users/own/ca.crt"
    _ray_auth._use_user_auth()
    assert os.environ["RAY_TLS_CA_CERT"] == "/users/own/ca.crt"
    assert os.environ["RAY_USE_TLS"] == "1"


def test_join_command_needs_a_tls_cluster(lepton_home):
    env = dict(os.environ, LEPTON_HOME=str(lepton_home))
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run([sys.executable, "-m", "lepton_lab.cli", "tls", "join-command"],
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "lepton: no embedded cluster is running: `lepton up --tls` first, or give the head "
        "with --address HOST:PORT"]
    proc = subprocess.run([sys.executable, "-m", "lepton_lab.cli", "tls", "join-command",
                           "--address", "10.0.0.5:6379", "--host", "10.0.0.7"],
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("RAY_USE_TLS=1 ") and last.endswith(
        "ray start --address 10.0.0.5:6379 --node-ip-address 10.0.0.7")
    assert str(lepton_home / "tls" / "nodes" / "10.0.0.7" / "node.key") in last


def test_processes_making_the_files_at_once_agree_on_one_ca(lepton_home):
    """Kernels that start together must not make two CAs (each would sign with its own key)."""
    from cryptography import x509

    code = "from lepton_lab import _tls; _tls.ensure_local()"
    env = dict(os.environ, LEPTON_HOME=str(lepton_home))
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env) for _ in range(4)]
    assert all(p.wait(60) == 0 for p in procs)
    d = lepton_home / "tls"
    ca = x509.load_pem_x509_certificate((d / "ca.crt").read_bytes())
    x509.load_pem_x509_certificate((d / "node.crt").read_bytes()).verify_directly_issued_by(ca)
