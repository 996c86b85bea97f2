"""Model bytes for endpoint replicas, kept in the cluster's own key-value store (the GCS).

Serve checkpoints every application's constructor arguments in one GCS entry, and a gRPC
message there is limited (512 MiB): with the model's bytes inline, two endpoints of a 270 MB
model already failed (``KVStoreError: 8``, resource exhausted). So the deploying kernel puts
the bytes into the key-value store once per SHA-256, in chunks, and a replica gets a small
reference (:func:`stash`) that it resolves when it starts or restarts (:func:`fetch`),
checking the hash. Nothing needs a disk shared with the cluster, and the kernel may be gone
when a replica restarts.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

NAMESPACE = "lepton"
PREFIX = "lepton:artifact:"
CHUNK = 32 * 2**20


def _kv() -> Any:
    from ray.experimental import internal_kv

    return internal_kv


def stash(sha256: str, data: bytes) -> dict[str, Any]:
    """Put ``data`` into the cluster's key-value store unless it is there already; returns the
    reference a replica resolves with :func:`fetch`. The chunk count is written last, so a
    put cut short is not taken for a whole one."""
    kv = _kv()
    key = PREFIX + sha256
    chunks = max(1, -(-len(data) // CHUNK))
    meta = kv._internal_kv_get(f"{key}:meta", namespace=NAMESPACE)
    if meta is None or json.loads(meta).get("size") != len(data):
        view = memoryview(data)
        for i in range(chunks):
            kv._internal_kv_put(f"{key}:{i}", bytes(view[i * CHUNK:(i + 1) * CHUNK]),
                                overwrite=True, namespace=NAMESPACE)
        kv._internal_kv_put(f"{key}:meta", json.dumps({"chunks": chunks, "size": len(data)}),
                            overwrite=True, namespace=NAMESPACE)
    return {"artifact": key, "sha256": sha256, "size": len(data), "chunks": chunks}


def fetch(ref: dict[str, Any]) -> bytes:
    """The bytes a :func:`stash` reference names, checked against its SHA-256."""
    kv = _kv()
    parts = []
    for i in range(int(ref["chunks"])):
        part = kv._internal_kv_get(f"{ref['artifact']}:{i}", namespace=NAMESPACE)
        if part is None:
            raise RuntimeError(f"the model's bytes ({ref['artifact']}) are gone from the "
                               "cluster's store; deploy the endpoint again")
        parts.append(part)
    data = b"".join(parts)
    if len(data) != ref["size"] or hashlib.sha256(data).hexdigest() != ref["sha256"]:
        raise RuntimeError(f"the model's bytes ({ref['artifact']}) do not match their "
                           "SHA-256; deploy the endpoint again")
    return data


def drop(sha256: str) -> None:
    """Remove a model's bytes from the cluster's store (no endpoint uses them any more)."""
    kv = _kv()
    key = PREFIX + sha256
    meta = kv._internal_kv_get(f"{key}:meta", namespace=NAMESPACE)
    kv._internal_kv_del(f"{key}:meta", namespace=NAMESPACE)
    chunks = json.loads(meta).get("chunks", 0) if meta else 0
    for i in range(chunks):
        kv._internal_kv_del(f"{key}:{i}", namespace=NAMESPACE)


def stashed() -> set[str]:
    """SHA-256s of the models whose bytes are in the cluster's store."""
    keys = _kv()._internal_kv_list(PREFIX, namespace=NAMESPACE)
    out = set()
    for k in keys:
        k = k.decode() if isinstance(k, bytes) else k
        if k.endswith(":meta"):
            out.add(k[len(PREFIX):-len(":meta")])
    return out
