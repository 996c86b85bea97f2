"""The Serve deployment behind an endpoint, and the pure HTTP helpers it uses.

Routes, relative to the endpoint's prefix ``/<name>``:

- ``POST /predict`` -- bearer token (unless deployed without auth). Body: JSON
  ``{"inputs": [[...], ...]}`` or ``numpy.save`` bytes (``Content-Type: application/x-npy``).
  Answer: JSON ``{"outputs": [...]}``, or ``.npy`` bytes with ``Accept: application/x-npy``.
- ``GET /healthz`` -- ``{"status": "ok"}``, no token.
- ``GET /openapi.json`` -- an OpenAPI 3.1 description, no token.

The replica is a plain Serve deployment class (no FastAPI ingress: one less layer on every
request). Requests' arrays are batched by :mod:`._batcher` (a lone request goes through at
once; requests that arrive together or during a forward pass share the next one), concatenated
along axis 0, run through the model in one forward pass and split back. Module level imports
only numpy, so the helpers are testable without Ray, torch or onnxruntime.
"""

from __future__ import annotations

import io
import json
import logging
import time
from typing import Any

import numpy as np

from ._auth import check_auth
from ._batcher import Batcher
from ._openapi import JSON, NPY, openapi

log = logging.getLogger("lepton_lab.serve")

NPY_MAGIC = b"\x93NUMPY"
BATCH_BUCKETS = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]
LATENCY_BUCKETS_MS = [0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000]
_ALLOWED = {"/predict": "POST", "/healthz": "GET", "/openapi.json": "GET", "": "GET"}


class HttpError(Exception):
    """An HTTP error answer: status, one-line message (the JSON body's ``error``), headers."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


# -- pure helpers ------------------------------------------------------------------------------
def first_line(exc: BaseException, limit: int = 300) -> str:
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    return line[:limit]


def relative_path(path: str, root_path: str = "") -> str:
    """The request path below the endpoint's route prefix, without a trailing slash."""
    if root_path and path.startswith(root_path):
        path = path[len(root_path):]
    return path.rstrip("/")


def check_route(path: str, method: str) -> None:
    """404 for an unknown path, 405 (with ``Allow``) for a wrong method."""
    allowed = _ALLOWED.get(path)
    if allowed is None:
        raise HttpError(404, f"no route {path or '/'!r}; POST /predict, GET /healthz or "
                             "GET /openapi.json")
    if method != allowed and not (allowed == "GET" and method == "HEAD"):
        raise HttpError(405, f"method {method} is not allowed on {path or '/'}; use {allowed}",
                        {"Allow": allowed})


def authorize(authorization: str | None, token_hash: str | None) -> None:
    reason = check_auth(authorization, token_hash)
    if reason is not None:
        challenge = 'Bearer realm="lepton"'
        if "invalid" in reason:
            challenge += ', error="invalid_token"'
        raise HttpError(401, reason, {"WWW-Authenticate": challenge})


def check_content_length(value: str | None, limit: int) -> int | None:
    """The declared body length, or None; 413 if it is over ``limit`` bytes."""
    if value is None:
        return None
    try:
        n = int(value)
        if n < 0:
            raise ValueError
    except ValueError:
        raise HttpError(400, f"Content-Length {value[:40]!r} is not a byte count") from None
    if n > limit:
        raise HttpError(413, too_large(limit))
    return n


def too_large(limit: int) -> str:
    return (f"request body is larger than this endpoint's limit of {limit / 2**20:g} MiB; "
            "send fewer rows per request")


def media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def parse_inputs(body: bytes, content_type: str | None, dtype: Any = np.float32) -> np.ndarray:
    """The request's input array: JSON ``{"inputs": ...}`` or ``.npy`` bytes; 400/415 if not.

    Numbers and booleans are cast to ``dtype`` (the model's input type); anything else is
    refused. The first axis is the batch: a scalar or an empty batch is refused.
    """
    kind = media_type(content_type)
    if not kind:
        kind = NPY if body.startswith(NPY_MAGIC) else JSON
    if kind in (NPY, "application/octet-stream"):
        arr = _load_npy(body)
    elif kind == JSON or kind.endswith("+json"):
        arr = _load_json(body, dtype)
    else:
        raise HttpError(415, f"unsupported Content-Type {kind!r}; send {JSON} "
                             f'({{"inputs": [[...], ...]}}) or {NPY} (numpy.save bytes)')
    if arr.dtype.kind not in "biuf":
        raise HttpError(400, f"inputs must be numbers, not {arr.dtype} values")
    if arr.ndim == 0:
        raise HttpError(400, "inputs must be an array whose first axis is the batch, "
                             "e.g. [[0.1, 0.2, ...]] for one row")
    if arr.shape[0] == 0:
        raise HttpError(400, "inputs is empty: send at least one row")
    try:
        with np.errstate(over="ignore", invalid="ignore"):
            out = np.ascontiguousarray(arr.astype(dtype, copy=False))
    except (TypeError, ValueError, OverflowError) as exc:
        raise HttpError(400, f"inputs cannot be converted to {np.dtype(dtype)}: "
                             f"{first_line(exc)}") from None
    if out.dtype.kind == "f" and not np.isfinite(out).all():
        # NaN, infinity, or a value too large for the model's type: the answer would be
        # NaN, which JSON cannot carry
        raise HttpError(400, f"inputs hold NaN or infinite values (or values too large for "
                             f"{out.dtype})")
    return out


def _load_npy(body: bytes) -> np.ndarray:
    if not body.startswith(NPY_MAGIC):
        raise HttpError(400, "body is not a .npy file (numpy.save bytes expected)")
    _check_npy_header(body)
    try:
        arr = np.load(io.BytesIO(body), allow_pickle=False)
    except Exception as exc:  # ValueError, EOFError, OSError ... on a malformed file
        raise HttpError(400, f"malformed .npy body: {first_line(exc)}") from None
    if not isinstance(arr, np.ndarray):
        raise HttpError(400, "body must hold one array (numpy.save), not an archive")
    return arr


def _check_npy_header(body: bytes) -> None:
    """400 unless the header's shape and type account for exactly the bytes that follow it:
    a small body that claims a huge array is refused before anything is allocated."""
    from numpy.lib import format as npformat

    f = io.BytesIO(body)
    try:
        version = npformat.read_magic(f)
        read = (npformat.read_array_header_1_0 if version == (1, 0)
                else npformat.read_array_header_2_0)
        shape, _fortran, dtype = read(f, max_header_size=10_000)
    except Exception as exc:  # ValueError on a malformed or unknown header
        raise HttpError(400, f"malformed .npy body: {first_line(exc)}") from None
    if dtype.hasobject:
        raise HttpError(400, "a .npy body of Python objects needs pickle, which endpoints "
                             "never load: send numbers")
    count = 1
    for dim in shape:
        count *= int(dim)
    need, have = count * dtype.itemsize, len(body) - f.tell()
    if need != have:
        raise HttpError(400, f"malformed .npy body: its header says shape {tuple(shape)} "
                             f"({need} bytes) but {have} bytes follow")


def _load_json(body: bytes, dtype: Any) -> np.ndarray:
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise HttpError(400, f"malformed JSON body: {first_line(exc)}") from None
    except RecursionError:
        raise HttpError(400, "JSON body nests too deeply; send rows of numbers") from None
    if not isinstance(doc, dict) or "inputs" not in doc:
        raise HttpError(400, 'JSON body must be an object {"inputs": [[...], ...]}')
    inputs = doc["inputs"]
    if not isinstance(inputs, list):
        raise HttpError(400, '"inputs" must be a list of rows, e.g. [[0.1, 0.2, ...]]')
    try:
        with np.errstate(over="ignore", invalid="ignore"):    # too large: refused below
            arr = np.asarray(inputs, dtype=dtype)
    except RecursionError:
        raise HttpError(400, '"inputs" nests too deeply; send rows of numbers') from None
    except (TypeError, ValueError, OverflowError) as exc:
        raise HttpError(400, '"inputs" must be a rectangular array of numbers '
                             f"({first_line(exc, 120)})") from None
    if arr.dtype.kind == "f" and np.isnan(arr).any():      # JSON null (or NaN) became NaN
        raise HttpError(400, '"inputs" holds null or NaN values')
    return arr


def sample_shape(recorded: Any) -> tuple[int, ...] | None:
    """The per-row input shape the registry recorded (``settings["input_shape"]``, the
    shape without the batch axis, e.g. ``[64]`` or ``[1, 28, 28]``); None when unknown or
    when a dimension is free (None, -1, a name)."""
    if not isinstance(recorded, (list, tuple)) or not recorded:
        return None
    if not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in recorded):
        return None
    return tuple(recorded)


def check_shape(arr: np.ndarray, expected: tuple[int, ...] | None) -> None:
    """400 if the rows of ``arr`` do not have the model's per-row shape."""
    if expected is None or tuple(arr.shape[1:]) == tuple(expected):
        return
    want = "(n, " + ", ".join(str(d) for d in expected) + ")"
    raise HttpError(400, f"inputs have shape {tuple(arr.shape)}; this model expects {want}")


def encode_outputs(out: np.ndarray, accept: str | None) -> tuple[bytes, str]:
    """Response body and its media type: ``.npy`` if the client accepts it, else JSON."""
    if accept and NPY in accept:
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(out), allow_pickle=False)
        return buf.getvalue(), NPY
    return json.dumps({"outputs": out.tolist()}, separators=(",", ":")).encode(), JSON


def error_body(message: str) -> bytes:
    return json.dumps({"error": message}).encode()


def split_outputs(out: np.ndarray, sizes: list[int]) -> list[np.ndarray]:
    """Split a batched output back into the requests' parts (by rows)."""
    total = sum(sizes)
    if out.ndim == 0 or out.shape[0] != total:
        raise ValueError(f"the model's output has shape {tuple(out.shape)}: its first axis is "
                         f"not the batch ({total} rows in)")
    return np.split(out, np.cumsum(sizes)[:-1]) if len(sizes) > 1 else [out]


def model_error(exc: BaseException) -> HttpError:
    """A model's exception on an input, as an HTTP error (400: the input was refused)."""
    if isinstance(exc, HttpError):
        return exc
    msg = first_line(exc)
    if "out of memory" in msg.lower():
        return HttpError(503, f"the model ran out of memory: {msg}; send fewer rows")
    return HttpError(400, f"the model refused the input: {type(exc).__name__}: {msg}")


# -- the deployment ----------------------------------------------------------------------------
class EndpointReplica:
    """One replica of an endpoint (wrapped with ``serve.deployment`` when deployed).

    ``artifact`` names the model file's bytes in the cluster's key-value store, put there by
    the deploying kernel (:mod:`._artifacts`): nothing needs a disk shared with the cluster.
    ``config`` carries the rest (see ``_manage._replica_config``).
    """

    def __init__(self, artifact: dict[str, Any], config: dict[str, Any]):
        from ._artifacts import fetch

        artifact = fetch(artifact)
        self.name = config["name"]
        self.model_ref = config["model_ref"]
        self._token_hash = config.get("token_hash")
        self._max_bytes = int(config["max_bytes"])
        self._shape = tuple(config["sample_shape"]) if config.get("sample_shape") else None
        self._dtype: Any = np.dtype(config.get("input_dtype") or "float32")
        self._device = "cpu"
        self._model: Any = None
        self._session: Any = None
        if config["format"] == "onnx":
            self._load_onnx(artifact, float(config.get("gpus") or 0))
        else:
            self._load_torch(artifact, float(config.get("gpus") or 0), config.get("cpus"))
        del artifact
        self._openapi = json.dumps(openapi(self.name, self.model_ref, self._shape,
                                           bool(self._token_hash), self._max_bytes)).encode()
        self._health = json.dumps({"status": "ok", "endpoint": self.name}).encode()
        from ray.util.metrics import Counter, Histogram

        tags = ("endpoint", "code")
        self._requests = Counter("lepton_endpoint_requests",
                                 description="HTTP requests to a Lepton endpoint, by status code",
                                 tag_keys=tags)
        self._latency = Histogram("lepton_endpoint_latency_ms",
                                  description="Time a Lepton endpoint replica spent on a "
                                              "request (ms), by status code",
                                  boundaries=LATENCY_BUCKETS_MS, tag_keys=tags)
        self._batch_sizes = Histogram("lepton_endpoint_batch_size",
                                      description="Requests per forward pass of a Lepton "
                                                  "endpoint replica",
                                      boundaries=BATCH_BUCKETS, tag_keys=("endpoint",))
        self._requests.set_default_tags({"endpoint": self.name})
        self._latency.set_default_tags({"endpoint": self.name})
        self._batch_sizes.set_default_tags({"endpoint": self.name})
        max_batch = int(config["max_batch"])
        self._batcher: Batcher | None = None
        self._arriving = 0   # predict requests reading or parsing their body (this event loop)
        if max_batch > 1:
            self._batcher = Batcher(self._infer, max_batch, float(config["batch_wait_s"]),
                                    arriving=lambda: self._arriving,
                                    on_batch=self._batch_sizes.observe)

    # model loading
    def _load_torch(self, artifact: bytes, gpus: float, cpus: Any) -> None:
        import torch

        if cpus:
            torch.set_num_threads(max(1, int(round(float(cpus)))))
        if gpus > 0 and torch.cuda.is_available():
            self._device = "cuda"
        try:
            model = torch.load(io.BytesIO(artifact), weights_only=False,
                               map_location=self._device)
        except (AttributeError, ModuleNotFoundError) as exc:
            raise RuntimeError(
                f"cannot load {self.model_ref} on the cluster: {first_line(exc)} (the model's "
                "class must be importable there: define it in a module installed on the "
                "cluster, not in the notebook)") from None
        if not isinstance(model, torch.nn.Module):
            raise RuntimeError(f"{self.model_ref} is a {type(model).__name__}, not a "
                               "torch.nn.Module saved with torch.save(module)")
        model.eval()
        param = next(iter(model.parameters()), None)
        if param is not None and param.dtype.is_floating_point:
            self._dtype = np.dtype(str(param.dtype).replace("torch.", ""))
        self._model = model
        self._torch = torch

    def _load_onnx(self, artifact: bytes, gpus: float) -> None:
        import onnxruntime as ort

        providers = ["CPUExecutionProvider"]
        if gpus > 0 and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
            self._device = "cuda"
        self._session = ort.InferenceSession(artifact, providers=providers)
        inp = self._session.get_inputs()[0]
        self._input_name = inp.name
        onnx_types = {"tensor(float)": "float32", "tensor(double)": "float64",
                      "tensor(float16)": "float16", "tensor(int64)": "int64",
                      "tensor(int32)": "int32", "tensor(uint8)": "uint8", "tensor(bool)": "bool"}
        self._dtype = np.dtype(onnx_types.get(inp.type, "float32"))
        if self._shape is None:        # the graph's input shape, batch axis first
            self._shape = sample_shape(list(inp.shape)[1:])
        self._model = self._session

    # inference
    def _forward(self, x: np.ndarray) -> np.ndarray:
        if self._session is not None:
            return self._session.run(None, {self._input_name: x})[0]
        torch = self._torch
        t = torch.from_numpy(x)
        if self._device != "cpu":
            t = t.to(self._device, non_blocking=True)
        with torch.inference_mode():
            y = self._model(t)
        if isinstance(y, (tuple, list)):
            y = y[0]
        if not isinstance(y, torch.Tensor):
            raise TypeError(f"the model returned a {type(y).__name__}, not a tensor")
        return y.detach().cpu().numpy()

    def _infer(self, arrays: list[np.ndarray]) -> list[Any]:
        """One forward pass per group of same-shaped inputs; outputs (or errors) in order.

        If a batch fails, its requests are retried one by one so that only the bad ones fail.
        """
        groups: dict[tuple, list[int]] = {}
        for i, a in enumerate(arrays):
            groups.setdefault((a.shape[1:], a.dtype.str), []).append(i)
        results: list[Any] = [None] * len(arrays)
        for idx in groups.values():
            try:
                x = arrays[idx[0]] if len(idx) == 1 else np.concatenate([arrays[i] for i in idx])
                parts = split_outputs(self._forward(x), [arrays[i].shape[0] for i in idx])
                for i, part in zip(idx, parts):
                    results[i] = part
            except Exception as exc:
                if len(idx) == 1:
                    results[idx[0]] = model_error(exc)
                    continue
                for i in idx:
                    try:
                        results[i] = split_outputs(self._forward(arrays[i]),
                                                   [arrays[i].shape[0]])[0]
                    except Exception as one:
                        results[i] = model_error(one)
        return results

    # HTTP
    async def __call__(self, request: Any) -> Any:
        from starlette.responses import Response

        t0 = time.perf_counter()
        headers: dict[str, str] = {}
        try:
            body, media = await self._handle(request)
            status = 200
        except HttpError as exc:
            status, body, media, headers = exc.status, error_body(exc.message), JSON, exc.headers
        except Exception as exc:  # a bug of ours: say what, not where
            log.exception("endpoint %s: request failed", self.name)
            status, body, media = 500, error_body(f"internal error: {type(exc).__name__}"), JSON
        code = {"code": str(status)}
        self._requests.inc(1, tags=code)
        self._latency.observe((time.perf_counter() - t0) * 1e3, tags=code)
        return Response(body, status_code=status, media_type=media, headers=headers)

    async def _handle(self, request: Any) -> tuple[bytes, str]:
        scope = request.scope
        path = relative_path(scope.get("path", ""), scope.get("root_path", ""))
        check_route(path, request.method)
        if path == "/healthz":
            return self._health, JSON
        if path == "/openapi.json":
            return self._openapi, JSON
        if path == "":
            return json.dumps({"endpoint": self.name, "predict": "POST predict",
                               "openapi": "openapi.json"}).encode(), JSON
        hdrs = request.headers
        authorize(hdrs.get("authorization"), self._token_hash)
        check_content_length(hdrs.get("content-length"), self._max_bytes)
        self._arriving += 1
        try:
            body = await self._read_body(request)
            arr = parse_inputs(body, hdrs.get("content-type"), self._dtype)
            check_shape(arr, self._shape)
        finally:
            self._arriving -= 1
        if self._batcher is not None:
            out = await self._batcher.submit(arr)
        else:                                  # max_batch 1: no batching, no hand-off
            out = self._infer([arr])[0]
        if isinstance(out, Exception):
            raise out
        return encode_outputs(out, hdrs.get("accept"))

    async def _read_body(self, request: Any) -> bytes:
        chunks, total = [], 0
        async for chunk in request.stream():
            total += len(chunk)
            if total > self._max_bytes:
                raise HttpError(413, too_large(self._max_bytes))
            chunks.append(chunk)
        return b"".join(chunks)

    def check_health(self) -> None:
        if self._model is None:
            raise RuntimeError(f"endpoint {self.name}: the model is not loaded")

    def __repr__(self) -> str:
        return f"EndpointReplica({self.name!r}, model={self.model_ref!r})"
