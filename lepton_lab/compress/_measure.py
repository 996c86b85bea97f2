"""Measurements of a variant: parameters, artifact size, latency at batch 1 and 64 on the
target, accuracy on the eval set."""

from __future__ import annotations

import io
import statistics
import time
from typing import Any, Callable

BATCHES = (1, 64)
MIN_ROUNDS, MAX_ROUNDS, WARMUP = 3, 200, 3
BLOCK_S, MAX_BLOCK, SETTLE = 0.02, 50, 2


def torch_size(module: Any) -> int:
    """Bytes of ``torch.save(module.state_dict())``: what the weights cost on disk."""
    import torch

    buf = io.BytesIO()
    torch.save(module.state_dict(), buf)
    return buf.getbuffer().nbytes


def rows_of(X: Any, n: int) -> Any:
    """``n`` rows of ``X`` (repeated when it has fewer)."""
    import torch

    return X[torch.arange(n) % len(X)].contiguous()


class Runner:
    """Calls one variant the way it is deployed: a torch module on the target device (under
    ``torch.inference_mode``) or an ONNX Runtime session on NumPy input."""

    def __init__(self, variant: Any, device: str):
        self.variant, self.device = variant, device
        self.cuda = device == "cuda" and variant.format == "torch"
        if variant.format == "onnx":
            from ._export import OnnxModel

            self.onnx = OnnxModel(variant.onnx_bytes, device)

    def prepare(self, X: Any) -> Any:
        """The input in the form the call takes (done once, outside the timed region)."""
        if self.variant.format == "onnx":
            return X.detach().float().cpu().numpy()
        return X.to(self.device)

    def call(self, x: Any) -> Any:
        import torch

        if self.variant.format == "onnx":
            return self.onnx.run(x)
        with torch.inference_mode():
            out = self.variant.module(x)
        if self.cuda:
            torch.cuda.synchronize()
        return out

    def outputs(self, X: Any, batch: int = 256) -> Any:
        """The first output for all of ``X`` as a float32 CPU tensor."""
        import torch

        parts = []
        for i in range(0, len(X), batch):
            out = self.call(self.prepare(X[i:i + batch]))
            out = out[0] if isinstance(out, (tuple, list)) else out
            parts.append(torch.as_tensor(out).detach().float().cpu())
        return torch.cat(parts)


def latencies(runners: dict[str, Runner], X: Any, budget_s: float,
              batches: tuple[int, ...] = BATCHES,
              progress: Callable[[str, int, int], None] | None = None
              ) -> dict[str, dict[int, float]]:
    """Median latency in ms of each runner at each batch size.

    The runners are timed in rounds, in a rotating order, so that load from elsewhere on a
    shared machine hits them alike: compare their ratios more than their milliseconds. In a
    round each runner makes a block of calls lasting about ``BLOCK_S`` whose first
    ``SETTLE`` calls are not counted: the thread pools of torch and ONNX Runtime keep
    spinning for a moment after a call, which would slow the other runtime's next calls.
    After up to ``WARMUP`` untimed calls each (one for a slow model), rounds go on until
    ``budget_s / len(batches)`` seconds have passed (at least ``MIN_ROUNDS``, at most
    ``MAX_ROUNDS``): a model whose call takes T seconds costs about 4 T per batch size when
    it is slower than the budget allows."""
    names = list(runners)
    out: dict[str, dict[int, float]] = {n: {} for n in names}
    per_batch = budget_s / len(batches)
    for bi, b in enumerate(batches):
        inputs = {n: runners[n].prepare(rows_of(X, b)) for n in names}
        block: dict[str, int] = {}
        settle: dict[str, int] = {}
        for n in names:
            calls, t0 = 0, time.perf_counter()
            while calls < WARMUP and (calls == 0 or time.perf_counter() - t0 < BLOCK_S * 5):
                runners[n].call(inputs[n])
                calls += 1
            per_call = (time.perf_counter() - t0) / calls
            # slow calls: one per round, nothing discarded (the spinning lasts well under 1 ms)
            settle[n] = SETTLE if per_call < BLOCK_S / 4 else 0
            block[n] = settle[n] + max(1, min(MAX_BLOCK, int(BLOCK_S / max(per_call, 1e-6))))
        samples: dict[str, list[float]] = {n: [] for n in names}
        t_end = time.perf_counter() + per_batch
        rounds = 0
        while rounds < MAX_ROUNDS and (rounds < MIN_ROUNDS or time.perf_counter() < t_end):
            k = rounds % len(names)
            for n in names[k:] + names[:k]:
                call, x = runners[n].call, inputs[n]
                for i in range(block[n]):
                    t0 = time.perf_counter()
                    call(x)
                    if i >= settle[n]:
                        samples[n].append(time.perf_counter() - t0)
            rounds += 1
        for n in names:
            out[n][b] = statistics.median(samples[n]) * 1e3
        if progress:
            progress("measure", bi + 1, len(batches))
    return out


def accuracy(runner: Runner, X: Any, Y: Any) -> float:
    """Percent of ``X`` whose argmax output equals the integer label ``Y``."""
    out = runner.outputs(X)
    if out.ndim != 2 or out.shape[1] < 2:
        raise ValueError(f"accuracy needs (batch, classes) outputs, got {tuple(out.shape)}")
    return float((out.argmax(1) == Y.cpu()).float().mean()) * 100.0
