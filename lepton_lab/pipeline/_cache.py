"""The cell cache behind ``%%lepton --cache``.

A cached cell runs on the cluster once; later runs whose cell source and inputs are unchanged
get the stored result instead: the names the cell assigned come back into the kernel and its
output (text, figures, tables) is shown again. The key is a SHA-256 of the cell source, the
flags that change what the cell computes, and a hash of every value the cell reads from the
kernel (modules by name). A value that cannot be pickled makes the cell uncacheable, which it
says, and the cell simply runs.

Re-running a pipeline after fixing a late cell therefore does not retrain: the training cell
is a cache hit. Entries live under ``$LEPTON_HOME/cache/cells/``; delete the folder to clear.
"""

from __future__ import annotations

import hashlib
import time
import types
from pathlib import Path
from typing import Any, Callable

from ..remote._sink import Sink

MAX_EVENTS_BYTES = 8 * 1024 * 1024


def cache_dir() -> Path:
    from ..config import get_config

    return get_config().home_path / "cache" / "cells"


def cache_key(body: str, namespace: dict[str, Any], reads: set[str] | frozenset[str],
              flags: dict[str, Any]) -> tuple[str | None, str | None]:
    """(key, None), or (None, why) when an input cannot be hashed."""
    import cloudpickle

    h = hashlib.sha256()
    h.update(body.encode())
    h.update(repr(sorted(flags.items())).encode())
    for name in sorted(reads):
        if name not in namespace:
            continue
        value = namespace[name]
        h.update(name.encode())
        try:
            _digest(value, h, cloudpickle)
        except Exception as exc:  # noqa: BLE001 - any pickling failure: no caching
            return None, f"'{name}' cannot be pickled ({type(exc).__name__})"
    return h.hexdigest(), None


def _digest(value: Any, h: Any, cloudpickle: Any, depth: int = 0) -> None:
    """Feed ``value``'s content to ``h``. Arrays, tensors and modules are hashed by dtype,
    shape and bytes: their pickles are not stable (torch writes a fresh serialization id into
    every one), so the same data would never hit the cache."""
    if isinstance(value, types.ModuleType):
        h.update(b"module:" + value.__name__.encode())
        return
    kind = type(value)
    mod = kind.__module__.split(".")[0]
    if depth < 8 and kind in (list, tuple, dict):
        items = value.items() if kind is dict else enumerate(value)
        h.update(f"{kind.__name__}:{len(value)}".encode())
        for k, v in items:
            h.update(repr(k).encode())
            _digest(v, h, cloudpickle, depth + 1)
        return
    if mod == "numpy" and hasattr(value, "tobytes") and hasattr(value, "dtype"):
        import numpy as np

        arr = np.ascontiguousarray(value)
        h.update(f"ndarray:{arr.dtype}:{arr.shape}".encode())
        h.update(arr.tobytes() if arr.dtype != object else cloudpickle.dumps(arr))
        return
    if mod == "torch":
        import torch

        if isinstance(value, torch.Tensor):
            t = value.detach().to("cpu").contiguous()
            h.update(f"tensor:{t.dtype}:{tuple(t.shape)}".encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
            return
    if hasattr(value, "state_dict") and hasattr(value, "named_modules"):   # nn.Module
        h.update(f"module:{kind.__module__}.{kind.__qualname__}:{value!r}".encode())
        _digest(dict(value.state_dict()), h, cloudpickle, depth + 1)
        return
    h.update(hashlib.sha256(cloudpickle.dumps(value)).digest())


class _Recorder(Sink):
    """Passes every event on and keeps the output events to replay on a cache hit."""

    def __init__(self, inner: Sink):
        self.inner, self.events, self.size, self.complete = inner, [], 0, True

    def _keep(self, event: tuple, size: int) -> None:
        self.size += size
        if self.size > MAX_EVENTS_BYTES:
            self.complete = False
        elif self.complete:
            self.events.append(event)

    def stream(self, name, text):
        self._keep(("stream", name, text), len(text))
        self.inner.stream(name, text)

    def display(self, data, metadata, display_id, update):
        self._keep(("display", data, metadata, None, False), sum(len(str(v)) for v in data.values()))
        self.inner.display(data, metadata, display_id, update)

    def progress(self, *args):
        self.inner.progress(*args)

    def clear(self, wait):
        self.inner.clear(wait)

    def status(self, text):
        self.inner.status(text)

    def close(self):
        self.inner.close()

    def train_event(self, payload):
        self.inner.train_event(payload)

    def train_view(self, monitor):
        self.inner.train_view(monitor)


def run_cached(body: str, namespace: dict[str, Any], flags: dict[str, Any], sink: Sink,
               run: Callable[[Sink], Any]) -> bool:
    """Replay a stored result of ``body`` or ``run(sink)`` it and store what it left.

    ``run`` returns the core's outcome (with ``.values``, ``.status``, ``.job_id``); ``flags``
    are the resource-independent flags that change the result. True on a cache hit.
    """
    import cloudpickle

    from ..remote._analysis import analyze

    key, why = cache_key(body, namespace, analyze(body).reads, flags)
    if key is None:
        sink.status(f"--cache: not cached, {why}; the cell runs")
        run(sink)
        return False
    path = cache_dir() / f"{key}.pkl"
    if path.is_file():
        try:
            entry = cloudpickle.loads(path.read_bytes())
        except Exception:  # noqa: BLE001 - a damaged entry is a miss
            entry = None
        if entry is not None:
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(entry["created"]))
            sink.status(f"--cache hit: the result of job {entry['job_id']} ({when}); cell and "
                        "inputs unchanged, nothing ran")
            for event in entry["events"]:
                sink.handle(event)
            namespace.update(entry["values"])
            return True
    recorder = _Recorder(sink)
    outcome = run(recorder)
    if outcome is not None and getattr(outcome, "status", None) == "succeeded":
        try:
            data = cloudpickle.dumps({"values": outcome.values, "events": recorder.events,
                                      "job_id": outcome.job_id, "created": time.time()})
        except Exception as exc:  # noqa: BLE001
            sink.status(f"--cache: the result was not stored ({type(exc).__name__})")
            return False
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(data)
        tmp.replace(path)
    return False
