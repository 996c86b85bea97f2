"""IPython side of a training job's live view: progress, curves, per-rank throughput, warnings.

Reads a :class:`~lepton_lab.remote._monitor.TrainMonitor`; redraws the text at most a few
times a second and the curve at most once a second (matplotlib renders in the kernel, so the
ranks spend no time on plots).
"""

from __future__ import annotations

import html
import io
import time
from typing import Any, Callable

TEXT_EVERY = 0.25
PLOT_EVERY = 1.0


def render_curves(monitor: Any) -> bytes | None:
    """The loss and metric curves of rank 0 as a PNG (None before the first point)."""
    series = monitor.series()
    if not series:
        return None
    from matplotlib.figure import Figure

    losses = {k: v for k, v in series.items() if "loss" in k.lower()}
    others = {k: v for k, v in series.items() if k not in losses}
    panels = [p for p in (losses, others) if p]
    fig = Figure(figsize=(4.2 * len(panels), 2.6))
    xlabel = "epoch" if any(p.get("epoch") is not None for p in monitor.history[-1:]) else "step"
    for i, panel in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        for name, (xs, ys) in panel.items():
            ax.plot(xs, ys, label=name, linewidth=1.2)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    return buf.getvalue()


def _mib(n: Any) -> str:
    return f"{n / 2**20:,.1f} MiB" if n else "-"


def rank_table(monitor: Any) -> str:
    """Per rank: throughput (straggler flag) and memory (its parameters, gradients and
    optimizer state, which FSDP shards, and its peak RSS or CUDA memory)."""
    rates, memory = monitor.rates(), monitor.memory
    ranks = sorted(set(rates) | set(memory))
    if len(rates) < 2 and not memory:
        return ""
    slow = set(monitor.stragglers())
    flag = "<b style='color:#c62828'>straggler</b>"
    right = "style='text-align:right'"
    rows = []
    for r in ranks:
        m = memory.get(r, {})
        state = sum(m.get(k, 0) for k in ("params", "grads", "optim"))
        peak = m.get("cuda_peak") or m.get("peak_rss")
        rate = f"{rates[r]:,.0f}/s" if r in rates else "-"
        rows.append(f"<tr><td>rank {r}</td><td {right}>{rate}</td>"
                    f"<td {right}>{_mib(state)}</td><td {right}>{_mib(peak)}</td>"
                    f"<td>{flag if r in slow else ''}</td></tr>")
    peak_name = "peak CUDA" if any(m.get("cuda_peak") for m in memory.values()) else "peak RSS"
    return ("<table style='font-size:90%'><tr><th>rank</th><th>samples/s</th>"
            f"<th title='parameters + gradients + optimizer state on this rank'>model state</th>"
            f"<th>{peak_name}</th><th></th></tr>{''.join(rows)}</table>")


class TrainView:
    """ipywidgets box for one training job; ``show`` puts it into the output area."""

    def __init__(self, show: Callable[[Any], None]):
        import ipywidgets as w

        self.bar = w.FloatProgress(value=0.0, min=0.0, max=1.0, bar_style="info",
                                   layout=w.Layout(width="40%"))
        self.label = w.HTML()
        self.plot = w.Image(format="png", layout=w.Layout(max_width="900px"))
        self.ranks = w.HTML()
        self.warnings = w.HTML()
        self.box = w.VBox([w.HBox([w.Label("training"), self.bar, self.label]), self.plot,
                           self.ranks, self.warnings])
        self._text_at = self._plot_at = 0.0
        self._plotted = -1
        show(self.box)

    def update(self, monitor: Any, final: bool = False) -> None:
        now = time.monotonic()
        if final or now - self._text_at >= TEXT_EVERY:
            self._text_at = now
            frac = monitor.fraction
            if frac is not None:
                self.bar.value = frac
            if final:
                self.bar.bar_style = "success" if frac is None or frac >= 0.999 else "warning"
            self.label.value = html.escape(monitor.summary_line())
            self.ranks.value = rank_table(monitor)
            if monitor.warnings:
                items = "".join(f"<li>{html.escape(t)}</li>" for t in monitor.warnings[-8:])
                self.warnings.value = f"<ul style='color:#c62828;margin:0'>{items}</ul>"
        if monitor.version != self._plotted and (final or now - self._plot_at >= PLOT_EVERY):
            self._plot_at, self._plotted = now, monitor.version
            png = render_curves(monitor)
            if png:
                self.plot.value = png
