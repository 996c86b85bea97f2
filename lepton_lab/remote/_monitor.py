"""The kernel's picture of a running training job, built from the ranks' ``train`` events.

Pure Python (no IPython, no Ray): the notebook view, the command-line tool and the run
record all read the same :class:`TrainMonitor`.

Each rank sends, at most every ~0.25 s, an event payload::

    {"rank": 1, "world": 2, "attempt": 1, "epochs": 15, "steps_per_epoch": 20,
     "points": [[step, epoch, {"loss": 0.31}], ...],   # reported since the last event
     "samples": 640, "seconds": 0.25,                   # processed since the last event
     "warnings": ["loss is nan at step 12"]}
"""

from __future__ import annotations

import statistics
import time
from collections import deque
from typing import Any

#: A rank this many times slower than the median rank is flagged as a straggler.
STRAGGLER_FACTOR = 1.5
#: Throughput is averaged over this many recent events per rank.
RATE_WINDOW = 12
HISTORY_LIMIT = 20_000


class TrainMonitor:
    """Aggregates progress, throughput, history and warnings of one training job."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.world = 1
        self.attempt = 1
        self.epochs: int | None = None
        self.steps_per_epoch: int | None = None
        self.history: list[dict[str, Any]] = []      # rank 0's points, for curves and the record
        self.latest: dict[str, float] = {}            # rank 0's latest value of each metric
        self.step: float | None = None
        self.epoch: float | None = None               # fractional: 2.5 = halfway through epoch 3
        self.warnings: list[str] = []
        self._new_warnings: list[str] = []
        self._window: dict[int, deque[tuple[int, float]]] = {}
        self._samples: dict[int, int] = {}
        #: each rank's latest memory report: params/grads/optim bytes (its shards), peak RSS
        self.memory: dict[int, dict[str, int]] = {}
        self.version = 0                               # bumps on every change, for redraws

    # -- input ---------------------------------------------------------------------------
    def add(self, payload: dict[str, Any]) -> None:
        rank = int(payload.get("rank", 0))
        self.world = max(self.world, int(payload.get("world", 1)))
        attempt = int(payload.get("attempt", 1))
        if attempt > self.attempt:
            self.attempt = attempt
            self._warn(f"the worker group restarted after a failure (attempt {attempt}); "
                       "training resumes from the latest checkpoint")
        if payload.get("epochs"):
            self.epochs = int(payload["epochs"])
        if payload.get("steps_per_epoch"):
            self.steps_per_epoch = int(payload["steps_per_epoch"])
        seconds = float(payload.get("seconds") or 0.0)
        samples = int(payload.get("samples") or 0)
        if seconds > 0:
            self._window.setdefault(rank, deque(maxlen=RATE_WINDOW)).append((samples, seconds))
        self._samples[rank] = self._samples.get(rank, 0) + samples
        if payload.get("memory"):
            self.memory[rank] = dict(payload["memory"])
        for text in payload.get("warnings") or ():
            self._warn(text if self.world == 1 else f"rank {rank}: {text}")
        if rank == 0:
            for step, epoch, metrics in payload.get("points") or ():
                point = {"step": step, "epoch": epoch, **metrics}
                self.history.append(point)
                self.latest.update(metrics)
                self.step, self.epoch = step, epoch if epoch is not None else self.epoch
            if len(self.history) > HISTORY_LIMIT:
                del self.history[:len(self.history) - HISTORY_LIMIT]
        self.version += 1

    def _warn(self, text: str) -> None:
        if text not in self.warnings:
            self.warnings.append(text)
            self._new_warnings.append(text)

    def take_new_warnings(self) -> list[str]:
        new, self._new_warnings = self._new_warnings, []
        return new

    # -- derived -------------------------------------------------------------------------
    def rates(self) -> dict[int, float]:
        """Samples per second of each rank over its recent window."""
        out = {}
        for rank, window in self._window.items():
            secs = sum(s for _, s in window)
            if secs > 0:
                out[rank] = sum(n for n, _ in window) / secs
        return out

    def stragglers(self) -> list[int]:
        """Ranks more than :data:`STRAGGLER_FACTOR` times slower than the median rank."""
        rates = {r: v for r, v in self.rates().items() if v > 0}
        if len(rates) < 2:
            return []
        median = statistics.median(rates.values())
        return sorted(r for r, v in rates.items() if v * STRAGGLER_FACTOR < median)

    @property
    def samples_per_s(self) -> float:
        return sum(self.rates().values())

    @property
    def fraction(self) -> float | None:
        """How much of the run is done (0..1) when the number of epochs is known."""
        if not self.epochs or self.epoch is None:
            return None
        return min(max(self.epoch / self.epochs, 0.0), 1.0)

    def eta(self) -> float | None:
        frac = self.fraction
        if not frac or frac >= 1.0:
            return None
        elapsed = time.monotonic() - self.started
        return elapsed * (1.0 - frac) / frac

    def series(self) -> dict[str, tuple[list[float], list[float]]]:
        """Metric name -> (x, y) over rank 0's history; x is the epoch when known, else step."""
        out: dict[str, tuple[list[float], list[float]]] = {}
        for p in self.history:
            x = p["epoch"] if p.get("epoch") is not None else p.get("step")
            if x is None:
                continue
            for k, v in p.items():
                if k in ("step", "epoch") or not isinstance(v, (int, float)):
                    continue
                xs, ys = out.setdefault(k, ([], []))
                xs.append(float(x))
                ys.append(float(v))
        return out

    def summary_line(self) -> str:
        parts = []
        if self.epoch is not None and self.epochs:
            parts.append(f"epoch {min(self.epoch, self.epochs):.2f}/{self.epochs}")
        elif self.step is not None:
            parts.append(f"step {self.step:g}")
        if self.rates():
            parts.append(f"{self.samples_per_s:,.0f} samples/s")
        eta = self.eta()
        if eta is not None:
            parts.append(f"ETA {eta:.0f} s")
        parts += [f"{k}={v:.4g}" for k, v in list(self.latest.items())[:4]]
        slow = self.stragglers()
        if slow:
            parts.append("stragglers: " + ", ".join(f"rank {r}" for r in slow))
        return "  ".join(parts)
