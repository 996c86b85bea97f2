"""Encrypted cluster traffic: Ray's TLS mode, with a certificate authority and node
certificates that Lepton makes and keeps under ``$LEPTON_HOME/tls`` (owner-only).

Ray encrypts its gRPC traffic (GCS, raylets, object transfers, workers, drivers) when every
process of the cluster, and every driver, has ``RAY_USE_TLS=1`` and the three files
``RAY_TLS_CA_CERT``, ``RAY_TLS_SERVER_CERT`` and ``RAY_TLS_SERVER_KEY``. Each side shows its
certificate and checks the other's against the CA (mutual TLS), so a process without a
certificate from this CA cannot talk to the cluster at all. Ray's token authentication stays
on beside it.

Layout of ``$LEPTON_HOME/tls`` (directory 0700, keys 0600):

- ``ca.crt``, ``ca.key``: the CA; the key never leaves this directory.
- ``node.crt``, ``node.key``: this machine's certificate (loopback, its host name, its
  addresses), used by the embedded cluster and by this machine's kernels.
- ``nodes/<host>/``: a certificate for another machine (``lepton tls join-command --host``),
  with a copy of ``ca.crt``: the three files that machine needs.

A ground module: it imports nothing from lepton_lab but :mod:`lepton_lab.config` and
:mod:`lepton_lab.errors`, and ``cryptography`` only inside the functions that make files.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import re
import socket
import ssl
from pathlib import Path

from .config import get_config
from .errors import ClusterUnavailable, LeptonUsageError

TLS_VARS = ("RAY_USE_TLS", "RAY_TLS_CA_CERT", "RAY_TLS_SERVER_CERT", "RAY_TLS_SERVER_KEY")
_DAYS = 825          # the longest validity that common TLS clients accept for a leaf


def tls_dir() -> Path:
    path = get_config().home_path / "tls"
    path.mkdir(mode=0o700, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def env_says_tls(env: dict[str, str] | None = None) -> bool:
    """Whether an environment asks Ray for TLS (as Ray itself reads RAY_USE_TLS)."""
    env = os.environ if env is None else env
    return env.get("RAY_USE_TLS", "0").strip().lower() in ("1", "true")


# -- making certificates ---------------------------------------------------------------------
def _write_private(path: Path, data: bytes) -> None:
    """Write a file readable by its owner only (created so, never widened in between)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    tmp.replace(path)


def _key():
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _pem_cert(cert) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return cert.public_bytes(serialization.Encoding.PEM)


def _name(text: str):
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Lepton Lab"),
                      x509.NameAttribute(NameOID.COMMON_NAME, text)])


def ensure_ca() -> tuple[Path, Path]:
    """The CA's certificate and key, made on first use."""
    d = tls_dir()
    crt, key_path = d / "ca.crt", d / "ca.key"
    if crt.exists() and key_path.exists():
        return crt, key_path
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    key = _key()
    now = datetime.datetime.now(datetime.timezone.utc)
    name = _name(f"Lepton Lab cluster CA ({socket.gethostname()})")
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                         crl_sign=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    _write_private(key_path, _pem_key(key))
    _write_private(crt, _pem_cert(cert))
    return crt, key_path


def _check_host(host: str) -> str:
    host = host.strip()
    if not host or not re.fullmatch(r"[A-Za-z0-9.:_-]{1,253}", host):
        raise LeptonUsageError(f"{host!r} is not a host name or IP address; give the address "
                               "the node is reached at, e.g. --host 10.0.0.7")
    return host


def _local_names() -> list[str]:
    names = ["127.0.0.1", "localhost", socket.gethostname()]
    with contextlib.suppress(OSError):
        names.append(socket.gethostbyname(socket.gethostname()))
    with contextlib.suppress(OSError):     # the address Ray picks for this node: the one
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:   # the default route uses
            s.connect(("192.0.2.1", 9))      # (a documentation address; nothing is sent)
            names.append(s.getsockname()[0])
    return list(dict.fromkeys(n for n in names if n))


def issue(directory: Path, hosts: list[str]) -> tuple[Path, Path]:
    """A node certificate for ``hosts`` (names or addresses), signed by the CA, written as
    ``node.crt`` / ``node.key`` in ``directory``. Good for both ends of a connection."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import ExtendedKeyUsageOID

    ca_crt, ca_key = ensure_ca()
    ca = x509.load_pem_x509_certificate(ca_crt.read_bytes())
    signer = serialization.load_pem_private_key(ca_key.read_bytes(), password=None)
    sans: list = []
    for host in dict.fromkeys(_check_host(h) for h in hosts):
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            pass
        sans.append(x509.DNSName(host))     # gRPC also matches an address against DNS names
    key = _key()
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(_name(f"ray node {hosts[0]}"))
            .issuer_name(ca.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=_DAYS))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                  ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .sign(signer, hashes.SHA256()))
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    crt, key_path = directory / "node.crt", directory / "node.key"
    _write_private(key_path, _pem_key(key))
    _write_private(crt, _pem_cert(cert))
    return crt, key_path


@contextlib.contextmanager
def _locked():
    """One process at a time makes files here (two kernels starting at once must not make
    two CAs and sign with the other's key)."""
    import fcntl

    with open(tls_dir() / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def ensure_local() -> dict[str, str]:
    """This machine's TLS files (made on first use), as the environment Ray reads."""
    d = tls_dir()
    crt, key = d / "node.crt", d / "node.key"
    with _locked():
        ca_crt, _ = ensure_ca()
        if not (crt.exists() and key.exists()) or _expires_soon(crt):
            issue(d, _local_names())
    return {"RAY_USE_TLS": "1", "RAY_TLS_CA_CERT": str(ca_crt),
            "RAY_TLS_SERVER_CERT": str(crt), "RAY_TLS_SERVER_KEY": str(key)}


def _expires_soon(crt: Path, days: int = 30) -> bool:
    from cryptography import x509

    try:
        cert = x509.load_pem_x509_certificate(crt.read_bytes())
    except ValueError:
        return True
    left = cert.not_valid_after_utc - datetime.datetime.now(datetime.timezone.utc)
    return left < datetime.timedelta(days=days)


def for_node(host: str) -> dict[str, str]:
    """Files for another machine that joins the embedded cluster: ``nodes/<host>/`` with
    ``ca.crt``, ``node.crt`` and ``node.key``; returned as the paths of this copy."""
    host = _check_host(host)
    d = tls_dir() / "nodes" / host
    with _locked():
        crt, key = issue(d, [host])
        ca_crt, _ = ensure_ca()
        ca_copy = d / "ca.crt"
        ca_copy.write_bytes(ca_crt.read_bytes())
    return {"dir": str(d), "RAY_TLS_CA_CERT": str(ca_copy),
            "RAY_TLS_SERVER_CERT": str(crt), "RAY_TLS_SERVER_KEY": str(key)}


def check_files(env: dict[str, str] | None = None) -> None:
    """With RAY_USE_TLS on, the three files must be set and readable, or one line says which."""
    env = os.environ if env is None else env
    if not env_says_tls(env):
        return
    for var in TLS_VARS[1:]:
        path = env.get(var)
        if not path:
            raise ClusterUnavailable(
                f"RAY_USE_TLS is on but {var} is not set; set RAY_TLS_CA_CERT, "
                "RAY_TLS_SERVER_CERT and RAY_TLS_SERVER_KEY (`lepton tls join-command` prints "
                "them for the embedded cluster)")
        if not os.access(path, os.R_OK):
            raise ClusterUnavailable(f"{var} names {path}, which cannot be read; point it at "
                                     "the cluster's certificate file")


# -- which side speaks TLS ---------------------------------------------------------------------
def speaks_tls(host: str, port: int, timeout: float = 3.0) -> bool | None:
    """Whether the server at host:port answers a TLS ClientHello with TLS (True), with
    something else or by hanging up (False), or not at all in ``timeout`` (None).

    Ray's gRPC ports speak either TLS or plain HTTP/2: a plain server reads the ClientHello as
    a broken HTTP/2 preface and closes, or answers with an HTTP/2 frame, never a TLS record.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2"])
    try:
        raw = socket.create_connection((host, port), timeout=timeout)
    except OSError:
        return None
    try:
        with ctx.wrap_socket(raw, server_hostname=None):   # the handshake, in ``timeout``
            return True               # a server certificate came back: TLS
    except ssl.SSLError as exc:
        # an alert (e.g. "certificate required") is still the server speaking TLS
        reason = (getattr(exc, "reason", None) or str(exc)).upper()
        return "ALERT" in reason
    except (socket.timeout, TimeoutError):
        return None
    except OSError:
        return False                  # reset or closed before any TLS record: plain
    finally:
        with contextlib.suppress(OSError):
            raw.close()


def mismatch(address: str, host: str, port: int, client: bool | None = None,
             timeout: float = 3.0) -> str | None:
    """One line if this process (``client``: whether it speaks TLS; None: as RAY_USE_TLS
    says) and the cluster at ``address`` disagree about TLS, else None (also when the probe
    cannot tell)."""
    server = speaks_tls(host, port, timeout)
    client = env_says_tls() if client is None else client
    if server is None or server == client:
        return None
    if server:
        return (f"the Ray cluster at {address} uses TLS but this process does not (RAY_USE_TLS "
                "is not set): set RAY_USE_TLS=1 and RAY_TLS_CA_CERT, RAY_TLS_SERVER_CERT, "
                "RAY_TLS_SERVER_KEY to the cluster's files before starting the kernel")
    return (f"this process uses TLS (RAY_USE_TLS=1) but the Ray cluster at {address} does not: "
            "unset RAY_USE_TLS before starting the kernel, or start the cluster with TLS "
            "(`lepton up --tls`)")
