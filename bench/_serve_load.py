"""The serving benchmark's load generator and baselines.

The load: a minimal HTTP/1.1 keep-alive client on asyncio streams (cheap enough not to be the
bottleneck on 2 cores), ``load()`` for one batch of requests at a given concurrency and
``alternate()`` for rounds of them over several contenders in rotating order.

The baselines: the plain FastAPI + uvicorn server (a subprocess, started as
``serve.py --baseline PORT MODEL_PATH``) and the bare Ray Serve app (``deploy_floor``).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _cold import log
from _harness import kill_session, on_emergency, percentile

NPY = "application/x-npy"
SERVE_PY = Path(__file__).resolve().with_name("serve.py")  # runs baseline_server (--baseline)


# -- a minimal loopback HTTP/1.1 client ------------------------------------------------------------
class Conn:
    """One keep-alive connection; ``post`` returns (status, body)."""

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
            sock = self.writer.get_extra_info("socket")
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        head = [f"POST {path} HTTP/1.1", f"Host: {self.host}:{self.port}",
                f"Content-Length: {len(body)}"] + [f"{k}: {v}" for k, v in headers.items()]
        self.writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
        raw = await self.reader.readuntil(b"\r\n\r\n")
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        hdrs = {k.strip().lower(): v.strip() for k, _, v in
                (ln.partition(":") for ln in lines[1:] if ln)}
        if "content-length" in hdrs:
            data = await self.reader.readexactly(int(hdrs["content-length"]))
        elif hdrs.get("transfer-encoding", "").lower() == "chunked":
            parts = []
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).strip(), 16)
                chunk = await self.reader.readexactly(size + 2)
                if size == 0:
                    break
                parts.append(chunk[:-2])
            data = b"".join(parts)
        else:
            data = await self.reader.read()
        if hdrs.get("connection", "").lower() == "close":
            self.close()
        return status, data

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def _run_load(url: str, body: bytes, headers: dict[str, str], total: int,
                    concurrency: int) -> dict[str, Any]:
    from urllib.parse import urlsplit

    u = urlsplit(url)
    remaining = iter(range(total))
    lat: list[float] = []
    errors: dict[str, int] = {}

    async def worker() -> None:
        conn = Conn(u.hostname, u.port)
        try:
            for _ in remaining:
                t0 = time.perf_counter()
                try:
                    status, _data = await conn.post(u.path, body, headers)
                except (OSError, asyncio.IncompleteReadError) as exc:
                    conn.close()
                    errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                    continue
                if status != 200:
                    errors[str(status)] = errors.get(str(status), 0) + 1
                else:
                    lat.append(time.perf_counter() - t0)
        finally:
            conn.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - t0
    return {"latencies": lat, "wall_s": wall, "errors": errors, "total": total,
            "concurrency": concurrency, "rps": len(lat) / wall}


def load(url: str, body: bytes, headers: dict[str, str], total: int, concurrency: int
         ) -> dict[str, Any]:
    return asyncio.run(asyncio.wait_for(_run_load(url, body, headers, total, concurrency),
                                        timeout=300))


# -- rounds over several contenders, in rotating order -----------------------------------------
def stats(run: dict[str, Any]) -> dict[str, Any]:
    lat = run["latencies"] or [float("nan")]
    return {"n_ok": len(run["latencies"]), "errors": run["errors"],
            "p50_ms": percentile(lat, 50) * 1e3, "p99_ms": percentile(lat, 99) * 1e3,
            "mean_ms": statistics.fmean(lat) * 1e3,
            "rps": run["rps"], "wall_s": run["wall_s"], "concurrency": run["concurrency"]}


def alternate(contenders: dict[str, tuple[str, dict[str, str]]], body: bytes, rounds: int,
              per_round: int, concurrency: int) -> dict[str, dict[str, Any]]:
    """Rounds of ``per_round`` requests per contender, in rotating order; merged samples."""
    names = list(contenders)
    merged = {n: {"latencies": [], "wall_s": 0.0, "errors": {}, "n": 0} for n in names}
    for i in range(rounds):
        k = i % len(names)
        for name in names[k:] + names[:k]:
            url, headers = contenders[name]
            run = load(url, body, headers, per_round, concurrency)
            m = merged[name]
            m["latencies"] += run["latencies"]
            m["wall_s"] += run["wall_s"]
            m["n"] += len(run["latencies"])
            for e, c in run["errors"].items():
                m["errors"][e] = m["errors"].get(e, 0) + c
        log(f"  round {i + 1}/{rounds}")
    out = {}
    for name, m in merged.items():
        out[name] = stats({"latencies": m["latencies"], "wall_s": m["wall_s"],
                           "errors": m["errors"], "rps": m["n"] / m["wall_s"],
                           "concurrency": concurrency})
    return out


# -- the baseline server (run as: serve.py --baseline PORT MODEL_PATH) ---------------------------
def baseline_server(port: int, model_path: str) -> None:
    """Plain FastAPI + uvicorn holding the model: what one would write by hand."""
    import numpy as np
    import torch
    import uvicorn
    from fastapi import FastAPI, Request, Response

    torch.set_num_threads(1)
    model = torch.load(model_path, weights_only=False, map_location="cpu").eval()
    app = FastAPI()

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok"}

    async def predict(request: Request) -> Response:
        x = np.load(io.BytesIO(await request.body()), allow_pickle=False).astype(np.float32)
        with torch.inference_mode():
            y = model(torch.from_numpy(x)).numpy()
        buf = io.BytesIO()
        np.save(buf, y)
        return Response(buf.getvalue(), media_type=NPY)

    # this module's `from __future__ import annotations` leaves names FastAPI cannot resolve
    predict.__annotations__ = {"request": Request, "return": Response}
    app.post("/predict")(predict)

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_baseline(port: int, model_path: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, str(SERVE_PY), "--baseline", str(port),
                             str(model_path)],
                            start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    on_emergency(lambda: kill_session(proc.pid))
    import urllib.request

    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2):
                return proc
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"the baseline server died: {proc.stderr.read()[-500:]!r}")
            if time.monotonic() > deadline:
                raise RuntimeError("the baseline server did not start within 120 s")
            time.sleep(0.2)


def stop_baseline(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        kill_session(proc.pid)
        proc.wait(5)


# -- the bare Ray Serve baseline ---------------------------------------------------------------
def deploy_floor(name: str, answer: bytes) -> str:
    """The least a Ray Serve HTTP app can do per request: read the body, answer constant
    bytes (no model, no auth). Its latency is the floor any Serve endpoint stands on."""
    from ray import serve
    from starlette.responses import Response

    @serve.deployment(name=name, ray_actor_options={"num_cpus": 0.2}, max_ongoing_requests=64,
                      logging_config={"enable_access_log": False})
    class Floor:
        async def __call__(self, request):
            await request.body()
            return Response(answer, media_type=NPY)

    serve.run(Floor.bind(), name=name, route_prefix=f"/{name}")
    return name


def deploy_model_floor(name: str, model_bytes: bytes) -> str:
    """A bare Ray Serve app that runs the same model the way the FastAPI baseline does (read
    the body, ``np.load``, forward pass, ``np.save``; no auth, no batching, no metrics).
    Lepton's endpoint minus this app is what Lepton itself adds to a request."""
    from ray import serve
    from starlette.responses import Response

    @serve.deployment(name=name, ray_actor_options={"num_cpus": 0.2}, max_ongoing_requests=64,
                      logging_config={"enable_access_log": False})
    class ModelFloor:
        def __init__(self, data: bytes):
            import torch

            torch.set_num_threads(1)
            self.torch = torch
            self.model = torch.load(io.BytesIO(data), weights_only=False,
                                    map_location="cpu").eval()

        async def __call__(self, request):
            import numpy as np

            x = np.load(io.BytesIO(await request.body()), allow_pickle=False)
            with self.torch.inference_mode():
                y = self.model(self.torch.from_numpy(x.astype(np.float32))).numpy()
            buf = io.BytesIO()
            np.save(buf, y)
            return Response(buf.getvalue(), media_type=NPY)

    serve.run(ModelFloor.bind(model_bytes), name=name, route_prefix=f"/{name}")
    return name
