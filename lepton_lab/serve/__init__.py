"""Model endpoints on Ray Serve: deploy a registered model, call it over HTTP, remove it.

::

    from lepton_lab.serve import DeploySpec, deploy, predict, undeploy
    info = deploy("digits:2", DeploySpec(name="digits-api", replicas=2, max_batch=32))
    info.token                       # the bearer token: shown once, only its hash is kept
    y = predict("digits-api", x)     # POST /digits-api/predict with .npy bytes
    undeploy("digits-api")

Importing this package does not import Ray; the functions connect to the cluster on use.
This module holds the small HTTP client; ``_manage`` deploys, ``_app`` is the replica.
"""

from __future__ import annotations

import io
import json
import urllib.error
import urllib.request
from typing import Any

import numpy as np

from ..errors import LeptonError, LeptonUsageError
from ..store import EndpointNotFound, get_store
from ._app import NPY, first_line
from ._auth import generate_token, hash_token
from ._manage import (
    _TOKENS,
    DeployError,
    DeployInfo,
    DeploySpec,
    deploy,
    endpoint_status,
    list_endpoints,
    redeploy,
    undeploy,
)

__all__ = ["DeployError", "DeployInfo", "DeploySpec", "deploy", "endpoint_status", "redeploy",
           "generate_token", "hash_token", "list_endpoints", "predict", "undeploy"]


# -- the client ---------------------------------------------------------------------------------
def predict(name: str, data: Any, *, token: str | None = None, timeout: float = 30.0
            ) -> np.ndarray:
    """Call endpoint ``name`` (or a full endpoint URL) on ``data`` (rows along axis 0);
    returns the outputs as a NumPy array. ``token`` defaults to the one this process got
    from :func:`deploy`."""
    if name.startswith(("http://", "https://")):
        url, label = name.rstrip("/"), name
    else:
        rec = get_store().get_endpoint(name)
        if rec.status == "deleted" or not rec.url:
            raise EndpointNotFound(f"endpoint {name!r} is not deployed")
        url, label = rec.url, name
        token = token or _TOKENS.get(name)
    if isinstance(data, np.ndarray):
        arr = data
    else:
        if hasattr(data, "detach"):       # a torch tensor
            data = data.detach().cpu().numpy()
        arr = np.asarray(data)
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
    headers = {"Content-Type": NPY, "Accept": NPY}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(f"{url}/predict", data=buf.getvalue(), headers=headers,
                                 method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            body = r.read()
    except urllib.error.HTTPError as exc:
        raise _http_error(label, exc) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise LeptonError(f"endpoint {label} at {url} does not answer ({reason}); "
                          "`%lepton endpoints` shows its state") from None
    return np.load(io.BytesIO(body), allow_pickle=False)


def _http_error(label: str, exc: urllib.error.HTTPError) -> LeptonError:
    try:
        msg = json.loads(exc.read()).get("error") or exc.reason
    except Exception:
        msg = exc.reason
    code = exc.code
    if code == 401:
        return LeptonUsageError(f"endpoint {label} refused the request: {msg} (HTTP 401); pass "
                                "token= (the one deploy returned)")
    if code == 404:
        return LeptonUsageError(f"endpoint {label} is not being served (HTTP 404); "
                                "`%lepton endpoints` shows its state")
    if 400 <= code < 500:
        return LeptonUsageError(f"endpoint {label}: {first_line(Exception(msg))} (HTTP {code})")
    return LeptonError(f"endpoint {label} failed: {first_line(Exception(msg))} (HTTP {code})")
