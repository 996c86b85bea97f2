"""``lepton compare`` and ``lepton reproduce``: what differs between two runs."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: environment keys that differ between any two runs and say nothing about reproducibility
VOLATILE_ENV = ("ray.address",)
_MISSING = "—"


@dataclass
class Comparison:
    a: str
    b: str
    parameters: list[tuple[str, Any, Any]] = field(default_factory=list)
    metrics: list[tuple[str, Any, Any, float | None, bool]] = field(default_factory=list)
    env: list[tuple[str, Any, Any]] = field(default_factory=list)
    inputs: list[tuple[str, Any, Any]] = field(default_factory=list)

    @property
    def metrics_match(self) -> bool:
        return all(ok for *_, ok in self.metrics)

    def to_dict(self) -> dict[str, Any]:
        return {"a": self.a, "b": self.b, "metrics_match": self.metrics_match,
                "parameters": self.parameters, "metrics": self.metrics, "env": self.env,
                "inputs": self.inputs}


def _close(a: Any, b: Any, rtol: float, atol: float) -> tuple[float | None, bool]:
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (a, b))
    if not numeric:
        return None, a == b
    diff = float(b) - float(a)
    if math.isnan(diff):
        return diff, False
    return diff, abs(diff) <= atol + rtol * abs(float(a))


def _diff(a: dict[str, Any], b: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    return [(k, a.get(k, _MISSING), b.get(k, _MISSING)) for k in sorted(set(a) | set(b))
            if a.get(k, _MISSING) != b.get(k, _MISSING)]


def compare(a: Any, b: Any, *, rtol: float = 1e-6, atol: float = 0.0) -> Comparison:
    """Differences between two PipelineRun records: parameters, metrics (each within the
    tolerance or not), environment and input hashes."""
    from ._env import flatten

    comp = Comparison(a.id, b.id, parameters=_diff(a.parameters, b.parameters))
    for name in sorted(set(a.metrics) | set(b.metrics)):
        va, vb = a.metrics.get(name, _MISSING), b.metrics.get(name, _MISSING)
        diff, ok = _close(va, vb, rtol, atol)
        comp.metrics.append((name, va, vb, diff, ok))
    env_a, env_b = flatten(a.env), flatten(b.env)
    comp.env = [d for d in _diff(env_a, env_b) if d[0] not in VOLATILE_ENV]
    comp.inputs = _diff(a.inputs, b.inputs)
    return comp


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    text = str(value)
    return text if len(text) <= 40 else text[:37] + "..."


def format_comparison(comp: Comparison, *, env_limit: int = 20) -> str:
    lines = [f"{comp.a} vs {comp.b}"]
    lines.append("parameters: " + ("same" if not comp.parameters else ""))
    lines += [f"  {k:<24} {_fmt(x):>14} -> {_fmt(y)}" for k, x, y in comp.parameters]
    lines.append("metrics:" + ("" if comp.metrics else " none recorded"))
    for name, x, y, diff, ok in comp.metrics:
        d = "" if diff is None else f"  ({diff:+.3g})"
        lines.append(f"  {'ok  ' if ok else 'DIFF'} {name:<20} {_fmt(x):>14} -> {_fmt(y)}{d}")
    lines.append("inputs: " + ("same" if not comp.inputs else ""))
    lines += [f"  {k}: {_fmt(x)} -> {_fmt(y)}" for k, x, y in comp.inputs]
    env = comp.env
    lines.append("environment: " + ("same" if not env else f"{len(env)} difference(s)"))
    lines += [f"  {k:<36} {_fmt(x)} -> {_fmt(y)}" for k, x, y in env[:env_limit]]
    if len(env) > env_limit:
        lines.append(f"  ... and {len(env) - env_limit} more (--json shows all)")
    return "\n".join(lines)


def reproduce(key: str, *, rtol: float = 1e-6, atol: float = 0.0, run_id: str | None = None,
              output: Path | None = None, cell_timeout: float | None = 1800.0
              ) -> tuple[Any, Comparison]:
    """Re-execute a recorded run with its parameters and seed; returns (new run, comparison).

    The new run is recorded with ``reproduces`` pointing at the original. A failing re-run
    raises :class:`PipelineFailed` like any run.
    """
    from ..store import get_store
    from ._env import sha256_file
    from ._run import RunOptions, check_notebook, run_notebook

    store = get_store()
    original = store.get_pipeline_run(key)
    nb = check_notebook(original.notebook)
    declared = tuple(p for p in original.inputs if p != original.notebook)
    opts = RunOptions(parameters=tuple(original.parameters.items()), seed=original.seed,
                      inputs=declared, run_id=run_id, reproduces=original.id, output=output,
                      cell_timeout=cell_timeout)
    recorded = original.inputs.get(original.notebook)
    if recorded and sha256_file(nb) != recorded:
        print(f"lepton reproduce: note: {nb.name} changed since run {original.id}")
    new = run_notebook(nb, opts)
    return new, compare(original, new, rtol=rtol, atol=atol)
