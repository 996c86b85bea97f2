"""The endpoints page: status and latency of every endpoint, and the "try it" form's core.

Status comes from the store (what deploy recorded) and from the endpoint itself: each one's
``GET /NAME/healthz`` is timed (no token needed, no Ray connection), so the page shows
whether it answers right now and how fast. "Try it" turns a drawn digit, an uploaded image or
an ``.npy`` file into one input row of the model's recorded shape and calls ``POST
/NAME/predict`` with the token the viewer typed; the token is passed on, never stored,
printed or put in an error message.
"""

from __future__ import annotations

import io
import math
import statistics
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from ..errors import LeptonError, LeptonUsageError
from ..store import get_store

#: Side of the drawing grid of the "try it" form (the digits model's 8x8 images).
GRID = 8
#: Health probes per endpoint; the page shows their median round trip.
PROBES = 3


def _probe(url: str | None, timeout: float) -> tuple[str, float | None]:
    """("answering" | "not answering" | "no address", median ms of PROBES health checks)."""
    if not url:
        return "no address", None
    times = []
    for _ in range(PROBES):
        t0 = time.perf_counter()
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=timeout) as r:
                r.read()
        except (urllib.error.URLError, OSError, ValueError):
            return "not answering", None
        times.append((time.perf_counter() - t0) * 1000.0)
    return "answering", statistics.median(times)


def endpoint_rows(probe: bool = True, timeout: float = 2.0) -> list[dict[str, Any]]:
    """Every deployed endpoint (newest first): name, model, status (recorded), health
    (answering now?), latency_ms (median health round trip), url, replicas, max_batch,
    token_hint, updated, error. ``probe=False`` skips the HTTP checks."""
    from ._data import fmt_time

    recs = get_store().list_endpoints()
    urls = [r.url if r.status != "deleted" else None for r in recs]
    if probe and recs:
        with ThreadPoolExecutor(max_workers=min(8, len(recs))) as pool:
            probes = list(pool.map(lambda u: _probe(u, timeout), urls))
    else:
        probes = [("not checked", None)] * len(recs)
    rows = []
    for rec, (health, latency) in zip(recs, probes):
        cfg = rec.config or {}
        auto = cfg.get("autoscale")
        replicas = (f"{auto[0]}–{auto[1]} (autoscaling)" if isinstance(auto, (list, tuple))
                    and len(auto) == 2 else str(cfg.get("replicas", "–")))
        rows.append({"name": rec.name, "model": rec.model, "status": rec.status,
                     "health": health, "latency_ms": latency, "url": rec.url or "",
                     "replicas": replicas, "max_batch": cfg.get("max_batch"),
                     "auth": bool(rec.token_hash), "token_hint": rec.token_hint or "",
                     "updated": fmt_time(rec.updated), "error": rec.error or ""})
    return rows


def input_shape(endpoint: str) -> tuple[int, ...] | None:
    """The per-row input shape of the model behind ``endpoint`` (None when not recorded)."""
    from ..serve._app import sample_shape

    store = get_store()
    rec = store.get_endpoint(endpoint)
    try:
        model = store.get_model(rec.model)
    except LeptonError:
        return None
    return sample_shape(model.settings.get("input_shape", model.metrics.get("input_shape")))


def default_ink(shape: tuple[int, ...] | None) -> float:
    """The value of a fully inked pixel: 16 for the 64-feature digits (scikit-learn's 8x8
    digits hold 0..16), else 1."""
    return 16.0 if shape is not None and math.prod(shape) == 64 else 1.0


# -- inputs -----------------------------------------------------------------------------------
def grid_to_pixels(cells: list[bool] | list[int], size: int = GRID) -> np.ndarray:
    """The drawing grid (row-major, truthy = ink) as a ``size x size`` array of 0/1."""
    if len(cells) != size * size:
        raise LeptonUsageError(f"the drawing has {len(cells)} cells, not {size * size}")
    return np.asarray([1.0 if c else 0.0 for c in cells], dtype=np.float32).reshape(size, size)


def image_to_pixels(data: bytes) -> np.ndarray:
    """An uploaded PNG/JPEG as grayscale in 0..1 with ink = 1 (a light background, as in a
    photo of a digit on paper, is inverted)."""
    from PIL import Image, UnidentifiedImageError

    try:
        img = Image.open(io.BytesIO(data)).convert("L")
    except (UnidentifiedImageError, OSError):
        raise LeptonUsageError("the upload is not an image this page can read; use a PNG "
                               "or JPEG, or an .npy file with one input row") from None
    arr = np.asarray(img, dtype=np.float32) / 255.0
    return 1.0 - arr if arr.mean() > 0.5 else arr


def _resize(pixels: np.ndarray, h: int, w: int) -> np.ndarray:
    if pixels.shape == (h, w):
        return pixels
    from PIL import Image

    img = Image.fromarray((np.clip(pixels, 0, 1) * 255).astype(np.uint8))
    return np.asarray(img.resize((w, h), Image.BILINEAR), dtype=np.float32) / 255.0


def to_model_input(pixels: np.ndarray, shape: tuple[int, ...] | None,
                   ink: float | None = None) -> np.ndarray:
    """One input row (batch of 1, float32) of ``shape`` from a 2-D ink image in 0..1.

    ``shape`` ``(64,)`` -> an 8x8 image flattened; ``(H, W)``, ``(C, H, W)`` -> resized
    (and repeated over C); unknown -> the image flattened as it is. Pixels are scaled to
    ``ink`` (default :func:`default_ink`).
    """
    pixels = np.asarray(pixels, dtype=np.float32)
    if pixels.ndim != 2:
        raise LeptonUsageError(f"expected a 2-D image, got shape {pixels.shape}")
    scale = default_ink(shape) if ink is None else float(ink)
    if shape is None:
        return (pixels.reshape(1, -1) * scale).astype(np.float32)
    if len(shape) == 1:
        side = math.isqrt(shape[0])
        if side * side != shape[0]:
            raise LeptonUsageError(f"the model takes {shape[0]} features, which is not a "
                                   "square image; upload an .npy row instead")
        img = _resize(pixels, side, side).reshape(1, shape[0])
    elif len(shape) == 2:
        img = _resize(pixels, *shape)[None]
    elif len(shape) == 3 and shape[0] in (1, 3):
        one = _resize(pixels, shape[1], shape[2])
        img = np.repeat(one[None], shape[0], axis=0)[None]
    else:
        raise LeptonUsageError(f"cannot make an image input of shape {shape}; upload an "
                               ".npy row instead")
    return (img * scale).astype(np.float32)


def npy_to_input(data: bytes, shape: tuple[int, ...] | None) -> np.ndarray:
    """An uploaded ``.npy``: one row of ``shape`` (a batch axis is added when missing)."""
    try:
        arr = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError):
        raise LeptonUsageError("the .npy upload cannot be read (numpy.save format, no "
                               "pickled objects)") from None
    if shape is not None and tuple(arr.shape) == tuple(shape):
        arr = arr[None]
    return arr


def prepare_upload(filename: str, data: bytes, shape: tuple[int, ...] | None,
                   ink: float | None = None) -> np.ndarray:
    """The model input for an uploaded file: ``.npy`` as is, anything else as an image."""
    if filename.lower().endswith(".npy"):
        return npy_to_input(data, shape)
    return to_model_input(image_to_pixels(data), shape, ink)


def try_endpoint(name: str, x: np.ndarray, token: str | None,
                 timeout: float = 15.0) -> dict[str, Any]:
    """Call endpoint ``name`` on ``x``; {ok, latency_ms, outputs, top} or {ok: False,
    error} with a one-line reason (the token never appears in it)."""
    from ..serve import predict

    t0 = time.perf_counter()
    try:
        out = predict(name, x, token=token or None, timeout=timeout)
    except LeptonError as exc:
        return {"ok": False, "error": str(exc).splitlines()[0] if str(exc) else "failed"}
    ms = (time.perf_counter() - t0) * 1000.0
    out = np.asarray(out)
    first = out[0] if out.ndim >= 1 and len(out) else out
    top = None
    if np.ndim(first) == 1 and np.size(first) > 1:   # one score per class
        scores = np.asarray(first, dtype=np.float64)
        exp = np.exp(scores - scores.max())
        probs = exp / exp.sum()
        order = np.argsort(-scores)[:3]
        top = [{"class": int(i), "score": float(scores[i]), "prob": float(probs[i])}
               for i in order]
    return {"ok": True, "latency_ms": ms, "outputs": np.asarray(first).tolist(), "top": top}
