"""What a compression run returns: the variants, their measurements, a table and a plot."""

from __future__ import annotations

import dataclasses
import html
import math
from typing import Any

FORMATS = ("torch", "onnx")


@dataclasses.dataclass(eq=False)
class Variant:
    """One version of the model and its measurements.

    ``module`` is a ``torch.nn.Module`` (``format="torch"``; ``None`` for an ONNX-only variant),
    ``onnx_bytes`` the ONNX graph (``format="onnx"``). ``size_bytes`` is the serialized
    artifact (``torch.save`` of the state dict, or the ONNX bytes); latencies are medians in
    milliseconds at batch 1 and 64 on the target; ``accuracy`` is in percent on the eval set
    (``None`` without integer labels). ``settings`` says how the variant was made.
    ``max_abs_diff``: for an export, the largest difference from the torch module it came
    from, or for an int8 graph, from the fp32 graph. ``passed``: it loses at most
    ``max_accuracy_drop`` points of accuracy against the original."""

    name: str
    module: Any = None
    onnx_bytes: bytes | None = None
    params: int = 0
    size_bytes: int = 0
    latency_ms_b1: float = math.nan
    latency_ms_b64: float = math.nan
    accuracy: float | None = None
    settings: dict[str, Any] = dataclasses.field(default_factory=dict)
    format: str = "torch"
    max_abs_diff: float | None = None
    passed: bool = True

    def __repr__(self) -> str:
        acc = "n/a" if self.accuracy is None else f"{self.accuracy:.2f}%"
        return (f"Variant({self.name!r}, {self.format}, params={self.params:,}, "
                f"size={self.size_bytes:,} B, b1={self.latency_ms_b1:.3f} ms, "
                f"b64={self.latency_ms_b64:.3f} ms, accuracy={acc})")


def _num(x: Any) -> Any:
    """JSON-safe: NaN/inf become None."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def _jsonable(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, (str, int, bool)) or v is None:
        return v
    if isinstance(v, float):
        return _num(v)
    return str(v)


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or not b or math.isnan(a) or math.isnan(b):
        return None
    return a / b


@dataclasses.dataclass(eq=False)
class CompressResult:
    """The variants of one :func:`~lepton_lab.compress.compress` run, the original first.

    ``best`` is the variant to register: the last (most compressed) one that passed its
    checks. ``rows()`` gives plain dicts (ratios are against the original), ``to_html()`` a
    table and ``plot()`` a matplotlib Figure; in a notebook the result shows as its table."""

    variants: list[Variant]
    settings: Any = None
    info: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def original(self) -> Variant:
        return self.variants[0]

    @property
    def best(self) -> Variant:
        for v in reversed(self.variants):
            if v.passed:
                return v
        return self.variants[0]

    def __getitem__(self, name: str) -> Variant:
        for v in self.variants:
            if v.name == name:
                return v
        raise KeyError(f"no variant {name!r}; there are {[v.name for v in self.variants]}")

    def rows(self) -> list[dict[str, Any]]:
        """One JSON-able dict per variant."""
        o, best = self.original, self.best
        out = []
        for v in self.variants:
            change = None if v.accuracy is None or o.accuracy is None else v.accuracy - o.accuracy
            out.append({
                "variant": v.name, "format": v.format, "params": int(v.params),
                "size_bytes": int(v.size_bytes),
                "size_ratio": _num(_ratio(v.size_bytes, o.size_bytes)),
                "latency_ms_b1": _num(v.latency_ms_b1), "latency_ms_b64": _num(v.latency_ms_b64),
                "latency_ratio_b1": _num(_ratio(v.latency_ms_b1, o.latency_ms_b1)),
                "latency_ratio_b64": _num(_ratio(v.latency_ms_b64, o.latency_ms_b64)),
                "accuracy": _num(v.accuracy), "accuracy_change": _num(change),
                "max_abs_diff": _num(v.max_abs_diff), "passed": bool(v.passed),
                "best": v is best, "settings": _jsonable(v.settings),
            })
        return out

    def to_html(self) -> str:
        """An HTML table of :meth:`rows` (the best variant in bold)."""
        cols = ["variant", "format", "params", "size", "size ×", "b1 ms", "b1 ×", "b64 ms",
                "b64 ×", "accuracy %", "Δ acc pt", "passed"]

        def f(x: Any, spec: str) -> str:
            return "–" if x is None else format(x, spec)

        body = []
        for r in self.rows():
            cells = [r["variant"], r["format"], f"{r['params']:,}", _human(r["size_bytes"]),
                     f(r["size_ratio"], ".2f"), f(r["latency_ms_b1"], ".3f"),
                     f(r["latency_ratio_b1"], ".2f"), f(r["latency_ms_b64"], ".3f"),
                     f(r["latency_ratio_b64"], ".2f"), f(r["accuracy"], ".2f"),
                     f(r["accuracy_change"], "+.2f"), "yes" if r["passed"] else "no"]
            tds = "".join(f"<td>{html.escape(str(c))}</td>" for c in cells)
            style = ' style="font-weight:bold"' if r["best"] else ""
            body.append(f"<tr{style}>{tds}</tr>")
        head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
        caption = ""
        if self.info.get("device"):
            caption = (f"<caption>measured on {html.escape(str(self.info['device']))}; "
                       f"× = ratio to the original; bold = best</caption>")
        return (f'<table class="lepton-compress">{caption}<thead><tr>{head}</tr></thead>'
                f"<tbody>{''.join(body)}</tbody></table>")

    def _repr_html_(self) -> str:
        return self.to_html()

    def __repr__(self) -> str:
        lines = [f"CompressResult(best={self.best.name!r})"]
        lines += [f"  {v!r}" for v in self.variants]
        return "\n".join(lines)

    def plot(self) -> Any:
        """A matplotlib ``Figure`` with bars per variant: size, latency at batch 1 and 64, and
        accuracy (when measured). Built without pyplot, so it is safe in any backend."""
        from matplotlib.figure import Figure

        names = [v.name for v in self.variants]
        best = self.best
        colors = ["#d62728" if v is best else "#1f77b4" for v in self.variants]
        panels = [("size (MB)", [v.size_bytes / 1e6 for v in self.variants]),
                  ("latency batch 1 (ms)", [v.latency_ms_b1 for v in self.variants]),
                  ("latency batch 64 (ms)", [v.latency_ms_b64 for v in self.variants])]
        if any(v.accuracy is not None for v in self.variants):
            panels.append(("accuracy (%)", [v.accuracy if v.accuracy is not None else 0.0
                                            for v in self.variants]))
        fig = Figure(figsize=(3.2 * len(panels), 3.4), layout="constrained")
        axes = fig.subplots(1, len(panels), squeeze=False)[0]
        for ax, (title, values) in zip(axes, panels):
            values = [0.0 if x is None or math.isnan(x) else x for x in values]
            bars = ax.bar(range(len(names)), values, color=colors)
            ax.set_title(title, fontsize=10)
            ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
            ax.bar_label(bars, fmt="%.3g", fontsize=7)
            if title.startswith("accuracy"):
                lo = min(values)
                ax.set_ylim(max(0.0, lo - 5.0), 100.0)
        fig.suptitle(f"compression variants (best: {best.name})", fontsize=11)
        return fig


def _human(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)
