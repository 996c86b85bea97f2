"""Deploy, list, inspect and remove endpoints.

An endpoint is a Ray Serve application named after it, at route prefix ``/<name>`` on the
Serve HTTP proxy (``serve_host``/``serve_port`` of the settings). Serve's controller and proxy
are detached: endpoints outlive the kernel that deployed them and every kernel sees them.
The store keeps one record per endpoint (model, URL, settings, status and the SHA-256 of its
token); the live state comes from ``serve.status()``.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from typing import Any

from ..config import get_config
from ..errors import InfeasibleRequest, LeptonError, LeptonUsageError
from ..store import EndpointNotFound, check_name, get_store
from . import _artifacts, _auth
from ._app import sample_shape

log = logging.getLogger("lepton_lab.serve")

MAX_BATCH = 4096
POLL_S = 0.25
# tokens returned by deploy() in this process, so predict(name, x) works in the same kernel;
# in memory only, never written anywhere
_TOKENS: dict[str, str] = {}


class DeployError(LeptonError):
    """An endpoint did not come up (its record in the store says why)."""

    http_status = 502


@dataclass(frozen=True)
class DeploySpec:
    """How to serve a model. Invalid values raise a one-line :class:`LeptonUsageError`.

    ``replicas`` is a fixed replica count; ``autoscale=(min, max)`` lets Serve scale between
    those instead (``replicas`` must then stay 1). Up to ``max_batch`` requests go through the
    model in one forward pass: a lone request runs at once, requests that arrive together or
    during a forward pass share the next one, and a batch that is not full waits up to
    ``batch_wait_ms`` only for requests already inside the replica; 1 turns batching off.
    ``cpus``/``gpus`` are per replica. ``auth=False`` serves without a bearer token.
    """

    name: str
    replicas: int = 1
    gpus: float = 0.0
    max_batch: int = 32
    batch_wait_ms: float = 5.0
    autoscale: tuple[int, int] | None = None
    cpus: float = 1.0
    auth: bool = True

    def __post_init__(self) -> None:
        check_name(self.name, "endpoint")
        _int(self.replicas, "replicas", 1, 1024)
        _num(self.cpus, "cpus", 0.0, 1024.0)
        _num(self.gpus, "gpus", 0.0, 64.0)
        _int(self.max_batch, "max_batch", 1, MAX_BATCH)
        _num(self.batch_wait_ms, "batch_wait_ms", 0.0, 10_000.0)
        if self.cpus == 0 and self.gpus == 0:
            raise LeptonUsageError("a replica needs cpus > 0 or gpus > 0")
        if self.autoscale is not None:
            if (not isinstance(self.autoscale, (tuple, list)) or len(self.autoscale) != 2):
                raise LeptonUsageError("autoscale must be (min_replicas, max_replicas), "
                                       "e.g. (1, 4)")
            lo, hi = self.autoscale
            _int(lo, "autoscale min", 0, 1024)
            _int(hi, "autoscale max", 1, 1024)
            if lo > hi:
                raise LeptonUsageError(f"autoscale min {lo} is above max {hi}")
            if self.replicas != 1:
                raise LeptonUsageError("give replicas or autoscale, not both")
            object.__setattr__(self, "autoscale", (lo, hi))
        if not isinstance(self.auth, bool):
            raise LeptonUsageError("auth must be True or False")

    @property
    def max_ongoing(self) -> int:
        """Requests one replica takes at once: room for two full batches, and at least 64.

        Past it, Serve's router holds requests back with a backoff of up to 0.5 s each try,
        which at a few dozen concurrent clients costs far more than queueing in the replica.
        """
        return max(2 * self.max_batch, 64)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["autoscale"] = list(self.autoscale) if self.autoscale else None
        return d


def _int(v: Any, what: str, lo: int, hi: int) -> None:
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise LeptonUsageError(f"{what} must be a whole number from {lo} to {hi}, not {v!r}")


def _num(v: Any, what: str, lo: float, hi: float) -> None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
        raise LeptonUsageError(f"{what} must be a number from {lo:g} to {hi:g}, not {v!r}")


@dataclass
class DeployInfo:
    """A deployed endpoint. ``token`` is the plaintext bearer token, given only by the deploy
    that created it (None on a redeploy that kept the token, or with ``auth=False``)."""

    name: str
    model_ref: str
    url: str
    token: str | None = field(default=None, repr=False)
    token_hint: str | None = None
    replicas: int | tuple[int, int] = 1
    status: str = "running"
    deploy_s: float = 0.0
    config: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def predict_url(self) -> str:
        return f"{self.url}/predict"

    def __repr__(self) -> str:
        tok = _auth.hint(self.token) if self.token else (self.token_hint or "none")
        return (f"DeployInfo(name={self.name!r}, model_ref={self.model_ref!r}, url={self.url!r}, "
                f"token={tok!r}, replicas={self.replicas!r}, status={self.status!r})")

    __str__ = __repr__


# -- the cluster side ---------------------------------------------------------------------------
_SERVE_CONN: list[Any] = [None]    # the connection Serve's cached client belongs to


def _connect() -> Any:
    """The live connection. On a new one (another cluster, or the same head restarted) Serve's
    cached controller client is dropped: Ray keys that cache by job id, and a restarted head
    numbers its jobs from 1 again, so the old cluster's controller handle would be reused."""
    from ..cluster import ensure_connected

    conn = ensure_connected()
    if _SERVE_CONN[0] is not conn:
        if _SERVE_CONN[0] is not None:
            _forget_serve_client()
        _SERVE_CONN[0] = conn
    return conn


def _forget_serve_client() -> None:
    import sys

    context = sys.modules.get("ray.serve.context")
    if context is None:
        return
    with contextlib.suppress(Exception):
        forget = getattr(context, "_disconnect", None)
        if forget is not None:
            forget()
        else:
            context._set_global_client(None)


def _cluster_host(conn: Any) -> str:
    rest = conn.address.split("://", 1)[-1]
    return rest.rpartition(":")[0] or "127.0.0.1"


def _is_local(host: str) -> bool:
    return host in ("127.0.0.1", "localhost", "::1", "0.0.0.0", "", socket.gethostname())


@contextlib.contextmanager
def _quiet_serve() -> Any:
    """Serve logs every start, connect and delete at INFO in the notebook: keep warnings."""
    logger = logging.getLogger("ray.serve")     # serve.start may reset its level: filter

    def keep(record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING

    logger.addFilter(keep)
    try:
        yield
    finally:
        logger.removeFilter(keep)


def _serve_client() -> Any:
    from ray.serve.context import _get_global_client

    return _get_global_client(raise_if_no_controller_running=False)


def ensure_serve() -> tuple[str, int]:
    """Start Serve's controller and HTTP proxy (detached) unless running; (host, port) of the
    proxy as running, which may differ from the settings if another kernel started it."""
    from ray import serve

    cfg = get_config()
    conn = _connect()
    if _serve_client() is None:
        if _is_local(_cluster_host(conn)) and _is_local(cfg.serve_host):
            _check_port_free(cfg.serve_host, cfg.serve_port)
        serve.start(http_options={"host": cfg.serve_host, "port": cfg.serve_port})
    host, port = cfg.serve_host, cfg.serve_port
    try:
        opts = _serve_client().get_serve_details().get("http_options") or {}
        host, port = opts.get("host") or host, int(opts.get("port") or port)
    except Exception as exc:  # older/newer Serve: keep the settings
        log.debug("could not read Serve's HTTP options: %s", exc)
    if port != cfg.serve_port:
        log.warning("Serve already runs its HTTP proxy on port %s (settings say %s); endpoints "
                    "use %s", port, cfg.serve_port, port)
    return host, port


def _check_port_free(host: str, port: int) -> None:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host if host not in ("", "localhost") else "127.0.0.1", port))
        except OSError:
            raise LeptonUsageError(
                f"port {port} on {host} is taken by another program, so Serve's HTTP proxy "
                "cannot start there; set LEPTON_SERVE_PORT to a free port") from None


def _base_url(host: str, port: int, conn: Any) -> str:
    if host in ("0.0.0.0", "::", ""):
        host = _cluster_host(conn)
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


def check_feasible(spec: DeploySpec) -> None:
    """Fail at once if the cluster can never hold the replicas that must run."""
    import ray

    need = {"CPU": spec.cpus, "GPU": spec.gpus}
    need = {k: v for k, v in need.items() if v}
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    count = spec.autoscale[0] if spec.autoscale else spec.replicas
    slots = sum(min(int(r.get(k, 0.0) // v + 1e-9) for k, v in need.items()) for r in nodes)
    if slots == 0 or slots < count:
        total = {k: sum(r.get(k, 0.0) for r in nodes) for k in ("CPU", "GPU")}
        have = ", ".join(f"{v:g} {k}" for k, v in total.items())
        ask = ", ".join(f"{v:g} {k}" for k, v in need.items())
        raise InfeasibleRequest(
            f"endpoint {spec.name!r}: {count} replica(s) of {ask} do not fit on this cluster "
            f"({len(nodes)} node(s), {have}); ask for fewer or smaller replicas")


def _replica_config(spec: DeploySpec, rec: Any, token_hash: str | None) -> dict[str, Any]:
    shape = sample_shape(rec.settings.get("input_shape", rec.metrics.get("input_shape")))
    return {"name": spec.name, "model_ref": rec.ref, "format": rec.format,
            "token_hash": token_hash, "max_bytes": int(get_config().max_request_mb * 2**20),
            "max_batch": spec.max_batch, "batch_wait_s": spec.batch_wait_ms / 1000.0,
            "gpus": spec.gpus, "cpus": spec.cpus,
            "sample_shape": list(shape) if shape else None,
            "input_dtype": rec.settings.get("input_dtype")}


def _deployment(spec: DeploySpec) -> Any:
    from ray import serve

    from ._app import EndpointReplica

    opts: dict[str, Any] = {
        "name": spec.name,
        "max_ongoing_requests": spec.max_ongoing,
        "ray_actor_options": {"num_cpus": spec.cpus, "num_gpus": spec.gpus},
        "graceful_shutdown_timeout_s": 5.0,
        "health_check_period_s": 5.0,
        "health_check_timeout_s": 30.0,
        "logging_config": {"enable_access_log": False},
    }
    if spec.autoscale:
        lo, hi = spec.autoscale
        opts["autoscaling_config"] = {"min_replicas": lo, "max_replicas": hi,
                                      "initial_replicas": max(lo, 1),
                                      "target_ongoing_requests": max(2, spec.max_batch // 2)}
    else:
        opts["num_replicas"] = spec.replicas
    return serve.deployment(EndpointReplica, **opts)


def deploy(model_ref: str, spec: DeploySpec, timeout: float = 120.0, *,
           rotate_token: bool = False, _keep_token: bool = False) -> DeployInfo:
    """Serve ``model_ref`` (``name[:version]`` in the registry) as endpoint ``spec.name``.

    Waits up to ``timeout`` seconds for the endpoint to answer. Deploying over a live
    endpoint of the same name updates it in place and keeps its token unless
    ``rotate_token``; the returned ``token`` is then None.
    """
    if not isinstance(spec, DeploySpec):
        raise LeptonUsageError("spec must be a DeploySpec, e.g. DeploySpec(name='digits-api')")
    from ..registry import read_artifact

    store = get_store()
    rec, artifact = read_artifact(model_ref)   # ModelNotFound, unreadable, changed: one line
    t0 = time.monotonic()
    conn = _connect()
    check_feasible(spec)
    with _quiet_serve():
        host, port = ensure_serve()
    url = f"{_base_url(host, port, conn)}/{spec.name}"
    try:
        existing = store.get_endpoint(spec.name)
    except EndpointNotFound:
        existing = None
    previous = (existing.config or {}).get("model_sha256") if existing else None
    token, token_hash, hint = _token_for(spec, existing, rotate_token, _keep_token)
    config = spec.to_dict() | {"model_sha256": rec.sha256, "format": rec.format,
                               "max_ongoing": spec.max_ongoing}
    store.put_endpoint(spec.name, model=rec.ref, status="deploying", url=url,
                       token_hash=token_hash, token_hint=hint, config=config)
    store.audit("deploy", cluster=conn.address,
                detail=f"{spec.name} {rec.ref} sha256 {rec.sha256[:16]}")
    from ray import serve

    old = serve.status().applications.get(spec.name)
    try:
        stored = _artifacts.stash(rec.sha256, artifact)
        del artifact
        app = _deployment(spec).bind(stored, _replica_config(spec, rec, token_hash))
        serve_run = getattr(serve, "_run", None)
        with _quiet_serve():
            if serve_run is not None:     # returns at once; we wait below, with a timeout
                serve_run(app, _blocking=False, name=spec.name, route_prefix=f"/{spec.name}")
            else:
                serve.run(app, name=spec.name, route_prefix=f"/{spec.name}")
        _wait_running(spec.name, t0 + timeout, timeout)
        _wait_answering(url, t0 + timeout, timeout)
    except BaseException as exc:
        msg = _failure_message(exc)
        if old is not None:   # a failed update: Serve keeps the old replicas while it can
            msg += "; the previous version may still be serving"
        store.set_endpoint_status(spec.name, "failed", error=msg)
        store.audit("deploy", cluster=conn.address, outcome="failed", detail=spec.name)
        if old is None:
            with contextlib.suppress(Exception), _quiet_serve():
                serve.delete(spec.name, _blocking=False)
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        raise DeployError(f"endpoint {spec.name!r} ({rec.ref}) failed to deploy: {msg}"
                          ) from None
    store.set_endpoint_status(spec.name, "running", url=url)
    store.audit("deploy", cluster=conn.address, outcome="running", detail=spec.name)
    if previous and previous != rec.sha256:      # the old version's bytes, if now unused
        _drop_unused(previous)
    if token:
        _TOKENS[spec.name] = token
    replicas = spec.autoscale or spec.replicas
    return DeployInfo(spec.name, rec.ref, url, token, hint, replicas, "running",
                      time.monotonic() - t0, config)


def _token_for(spec: DeploySpec, old: Any, rotate: bool, keep: bool = False
               ) -> tuple[str | None, str | None, str | None]:
    """(plaintext or None, hash, hint): a new token, or the token of ``old`` (the endpoint's
    record, or None) kept while it is live (with ``keep``, also when it is not live any more:
    a redeploy)."""
    if not spec.auth:
        return None, None, None
    if not rotate:
        kept = ("running", "deploying", "failed") if keep else ("running", "deploying")
        if old is not None and old.status in kept and old.token_hash:
            return None, old.token_hash, old.token_hint
    token = _auth.generate_token()
    return token, _auth.hash_token(token), _auth.hint(token)


def _failure_message(exc: BaseException) -> str:
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted while waiting for the endpoint"
    if isinstance(exc, LeptonError):
        return str(exc)
    return f"{type(exc).__name__}: {_last_error_line(str(exc))}"


def _last_error_line(text: str) -> str:
    """The meaningful line of a Serve failure message (often a whole remote traceback)."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    for ln in reversed(lines):
        if ("Error" in ln or "Exception" in ln) and not ln.startswith(("File ", "Traceback")):
            return ln[:400]
    return (lines[-1] if lines else "no details")[:400]


def _wait_running(name: str, deadline: float, timeout: float) -> None:
    """Wait for Serve to run ``name``. The controller marks an updated application DEPLOYING
    before ``serve.run`` returns, so a RUNNING seen here is the new version's."""
    from ray import serve

    status, message = "NOT_STARTED", ""
    while True:
        app = serve.status().applications.get(name)
        if app is not None:
            status, message = str(app.status.value if hasattr(app.status, "value")
                                  else app.status), app.message or ""
            if status == "RUNNING":
                return
            if status == "DEPLOY_FAILED":
                detail = message
                for dep in app.deployments.values():
                    if dep.message:
                        detail = dep.message
                raise LeptonError(_last_error_line(detail) or "Serve reports DEPLOY_FAILED")
        if time.monotonic() > deadline:
            raise LeptonError(f"not RUNNING after {timeout:g} s (Serve status {status}"
                              f"{': ' + _last_error_line(message) if message else ''})")
        time.sleep(POLL_S)


def _wait_answering(url: str, deadline: float, timeout: float) -> None:
    """Serve reports RUNNING before every proxy routes the prefix: wait for a 200."""
    last = ""
    while True:
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=5) as r:
                if r.status == 200:
                    return
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code}"
        except (urllib.error.URLError, OSError) as exc:
            last = str(getattr(exc, "reason", exc))
        if time.monotonic() > deadline:
            raise LeptonError(
                f"Serve runs it, but {url}/healthz did not answer within {timeout:g} s ({last}); "
                "if the cluster is on another machine, set LEPTON_SERVE_HOST=0.0.0.0")
        time.sleep(POLL_S)


def undeploy(name: str, timeout: float = 60.0) -> None:
    """Delete endpoint ``name``: its Serve application goes, its record is marked deleted."""
    from ray import serve

    check_name(name, "endpoint")
    store = get_store()
    rec = store.get_endpoint(name)            # EndpointNotFound: one line
    _connect()
    live = _serve_client() is not None and name in serve.status().applications
    if rec.status == "deleted" and not live:
        raise EndpointNotFound(f"endpoint {name!r} is already deleted")
    if live:
        with _quiet_serve():
            serve.delete(name, _blocking=False)
        deadline = time.monotonic() + timeout
        while name in serve.status().applications:
            if time.monotonic() > deadline:
                raise LeptonError(f"endpoint {name!r} was not deleted within {timeout:g} s; "
                                  "`%lepton endpoints` shows its state")
            time.sleep(POLL_S)
    store.set_endpoint_status(name, "deleted")
    store.audit("undeploy", outcome="deleted", detail=name)
    _TOKENS.pop(name, None)
    _drop_unused((rec.config or {}).get("model_sha256"))


def _drop_unused(sha256: str | None) -> None:
    """Remove a model's bytes from the cluster's store once no endpoint of this store that
    may still run (running, deploying, failed) uses them."""
    if not sha256:
        return
    for other in get_store().list_endpoints():
        if other.status != "deleted" and (other.config or {}).get("model_sha256") == sha256:
            return
    with contextlib.suppress(Exception):
        _artifacts.drop(sha256)


def redeploy(name: str, timeout: float = 180.0) -> DeployInfo:
    """Serve endpoint ``name`` again as it was recorded (model version, replicas, batching,
    resources) and with the same token, so its clients go on unchanged: for an endpoint that
    is no longer on the cluster (the cluster or its head was restarted) or that failed."""
    check_name(name, "endpoint")
    rec = get_store().get_endpoint(name)
    if rec.status == "deleted":
        raise LeptonUsageError(f"endpoint {name!r} was deleted; `%lepton deploy MODEL --name "
                               f"{name}` creates it again (with a new token)")
    fields = set(DeploySpec.__dataclass_fields__)
    config = {k: v for k, v in (rec.config or {}).items() if k in fields}
    if config.get("autoscale"):
        config["autoscale"] = tuple(config["autoscale"])
    config["name"] = name
    return deploy(rec.model, DeploySpec(**config), timeout, _keep_token=True)


# -- status -------------------------------------------------------------------------------------
def _live_apps() -> dict[str, Any] | None:
    """Serve's applications by name; None if no cluster is reachable (nothing is started)."""
    from ..cluster import current, embedded_state

    if current() is None and not get_config().address and embedded_state() is None:
        return None
    try:
        _connect()
        if _serve_client() is None:
            return {}
        from ray import serve

        return dict(serve.status().applications)
    except LeptonError:
        return None


def _merge(rec: Any, apps: dict[str, Any] | None) -> dict[str, Any]:
    d = rec.to_dict()
    d.pop("token_hash", None)
    if apps is None:
        d.update(live="NO CLUSTER", replicas={}, message="")
        return d
    app = apps.get(rec.name)
    if app is None:
        if rec.status == "running":   # recorded as serving, but not on this cluster
            d.update(live="LOST", replicas={},
                     message=f"not on the cluster any more (it or its head was restarted); "
                             f"`%lepton redeploy {rec.name}` serves it again, same token")
        else:
            d.update(live="NOT RUNNING" if rec.status != "deleted" else "DELETED", replicas={},
                     message="")
        return d
    replicas: dict[str, int] = {}
    messages = [app.message] if app.message else []
    for dep in app.deployments.values():
        for state, n in dep.replica_states.items():
            key = str(getattr(state, "value", state))
            replicas[key] = replicas.get(key, 0) + int(n)
        if dep.message:
            messages.append(dep.message)
    status = str(getattr(app.status, "value", app.status))
    d.update(live=status, replicas=replicas,
             message=_last_error_line(messages[-1]) if messages else "")
    return d


def list_endpoints(include_deleted: bool = False) -> list[dict[str, Any]]:
    """Every endpoint in the store (newest first) with Serve's live status: ``live`` is
    RUNNING, DEPLOYING, UNHEALTHY, DEPLOY_FAILED..., LOST (recorded as running but absent
    from Serve: the cluster or its head was restarted), NOT RUNNING (absent, and not recorded
    as running) or NO CLUSTER; ``replicas`` counts replicas by state."""
    records = get_store().list_endpoints(include_deleted=include_deleted)
    apps = _live_apps() if records else None
    return [_merge(r, apps) for r in records]


def endpoint_status(name: str) -> dict[str, Any]:
    """One endpoint's record merged with its live Serve status (see :func:`list_endpoints`)."""
    check_name(name, "endpoint")
    return _merge(get_store().get_endpoint(name), _live_apps())
