"""The dashboard's figures, drawn with matplotlib's object API (no pyplot state, so pages and
tests can draw at once) and embedded as PNG ``<img>`` tags with an ``alt`` text.

Each figure has a title, labelled axes with units and a legend wherever a panel has more
than one series, so that it reads at a glance.
"""

from __future__ import annotations

import base64
import io
import math
import statistics
from typing import Any

from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from ._html import esc

#: Prefixes that name the split of a metric: ``val_loss`` plots beside ``loss``.
SPLITS = ("train_", "val_", "valid_", "test_", "eval_", "train/", "val/", "test/", "eval/")
COLOURS = ["#0969da", "#cf222e", "#1a7f37", "#8250df", "#bc4c00", "#6e7781"]


def img(fig: Figure, alt: str, dpi: int = 100) -> str:
    """``fig`` as an inline PNG ``<img>`` (the figure is closed afterwards)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return (f'<img class="lepton-plot" alt="{esc(alt)}" style="max-width:100%" '
            f'src="data:image/png;base64,{data}">')


def _base(name: str) -> str:
    for prefix in SPLITS:
        if name.startswith(prefix) and len(name) > len(prefix):
            return name[len(prefix):]
    return name


def _ylabel(name: str, ys: list[float]) -> str:
    low = name.lower()
    if "acc" in low:
        return f"{name} (%)" if ys and max(ys) > 1.0 else f"{name} (fraction)"
    if low.endswith("_ms") or "latency" in low:
        return f"{name} (ms)"
    if "samples_per_s" in low or "throughput" in low:
        return f"{name} (samples/s)"
    return name


def curves_figure(curves: dict[str, dict[str, Any]], title: str, max_panels: int = 6) -> Figure:
    """One panel per metric family (``loss`` with ``val_loss``...), x = epoch or step."""
    groups: dict[str, list[str]] = {}
    for name in curves:
        groups.setdefault(_base(name), []).append(name)
    names = list(groups)[:max_panels]
    cols = min(3, max(1, len(names)))
    rows = math.ceil(len(names) / cols) if names else 1
    fig = Figure(figsize=(4.6 * cols, 3.3 * rows), layout="constrained")
    fig.suptitle(title, fontsize=13, fontweight="bold")
    for i, group in enumerate(names):
        ax = fig.add_subplot(rows, cols, i + 1)
        all_y: list[float] = []
        for j, name in enumerate(groups[group]):
            c = curves[name]
            ax.plot(c["x"], c["y"], color=COLOURS[j % len(COLOURS)], linewidth=1.6,
                    marker="o" if len(c["x"]) <= 30 else None, markersize=3, label=name)
            all_y += c["y"]
        first = curves[groups[group][0]]
        ax.set_xlabel(first["xlabel"])
        ax.set_ylabel(_ylabel(group, all_y))
        ax.set_title(group)
        ax.grid(alpha=0.3)
        if len(groups[group]) > 1:
            ax.legend(fontsize=9)
    if not names:
        ax = fig.add_subplot(1, 1, 1)
        ax.text(0.5, 0.5, "no curves recorded", ha="center", va="center")
        ax.set_axis_off()
    return fig


def throughput_figure(rates: dict[int, float], title: str = "Throughput per rank") -> Figure:
    """Samples/s per rank; ranks slower than the median by 1.5x are red (stragglers)."""
    fig = Figure(figsize=(max(4.5, 0.9 * len(rates) + 2.5), 3.2), layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    ranks = sorted(rates)
    values = [rates[r] for r in ranks]
    median = statistics.median(values) if values else 0.0
    slow = [v * 1.5 < median for v in values]
    ax.bar([str(r) for r in ranks], values,
           color=["#cf222e" if s else "#0969da" for s in slow])
    line = ax.axhline(median, color="#6e7781", linestyle="--", linewidth=1, label="median")
    handles = [Patch(color="#0969da", label="rank"), line]
    if any(slow):
        handles.insert(1, Patch(color="#cf222e", label="straggler (< median / 1.5)"))
    ax.set_xlabel("rank")
    ax.set_ylabel("throughput (samples/s)")
    ax.set_title(title, fontweight="bold")
    ax.legend(handles=handles, fontsize=9, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    ax.grid(axis="y", alpha=0.3)
    return fig


def _scatter(ax: Any, points: list[dict[str, Any]], xkey: str, ykey: str) -> None:
    shown = set()
    for p in points:
        x, y = p.get(xkey), p.get(ykey)
        if x is None or y is None:
            continue
        if p["best"]:
            style, label = dict(marker="*", s=220, color="#1a7f37"), "best (registered)"
        elif p["passed"]:
            style, label = dict(marker="o", s=70, color="#0969da"), "passed"
        else:
            style, label = dict(marker="X", s=80, color="#cf222e"), "failed accuracy check"
        ax.scatter([x], [y], label=None if label in shown else label, zorder=3, **style)
        shown.add(label)
        ax.annotate(p["variant"], (x, y), textcoords="offset points", xytext=(6, 5),
                    fontsize=9)
    ax.grid(alpha=0.3)
    ax.margins(x=0.18, y=0.12)          # room for the variant names beside the points
    ax.xaxis.set_major_locator(MaxNLocator(6))
    ax.yaxis.set_major_locator(MaxNLocator(6))
    if shown:
        ax.legend(fontsize=9)


def tradeoff_figure(points: list[dict[str, Any]], title: str) -> Figure:
    """Accuracy against size and against latency at batch 1, one point per variant (latency
    against size when no variant has an accuracy)."""
    fig = Figure(figsize=(11, 3.9), layout="constrained")
    fig.suptitle(title, fontsize=13, fontweight="bold")
    has_acc = any(p.get("accuracy") is not None for p in points)
    ykey, ylabel = ("accuracy", "accuracy (%)") if has_acc else \
        ("latency_ms_b64", "latency at batch 64 (ms)")
    left = fig.add_subplot(1, 2, 1)
    _scatter(left, points, "size_mb", ykey)
    left.set_xlabel("model size (MB)")
    left.set_ylabel(ylabel)
    left.set_title(f"{ylabel.split(' (')[0]} vs size")
    right = fig.add_subplot(1, 2, 2)
    _scatter(right, points, "latency_ms_b1", ykey)
    right.set_xlabel("latency at batch 1 (ms)")
    right.set_ylabel(ylabel)
    right.set_title(f"{ylabel.split(' (')[0]} vs latency")
    return fig


def utilisation_figure(st: dict[str, Any]) -> Figure:
    """Used share of the cluster's CPUs, GPUs and memory, with used/total as text."""
    gib = 1024 ** 3
    fig = Figure(figsize=(8, 2.6), layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    labels, used, texts = [], [], []
    for key, name, unit, scale in (("CPU", "CPUs", "", 1), ("GPU", "GPUs", "", 1),
                                   ("memory", "memory", " GiB", gib)):
        total = float(st["total"].get(key, 0.0))
        u = float(st["used"].get(key, 0.0))
        labels.append(name)
        used.append(100.0 * u / total if total else 0.0)
        texts.append(f"{u / scale:.3g}/{total / scale:.3g}{unit}" if total else "none")
    ax.barh(labels, [100] * len(labels), color="#eaeef2", label="free")
    ax.barh(labels, used, color="#0969da", label="in use")
    for i, t in enumerate(texts):
        ax.text(101, i, t, va="center", fontsize=10)
    ax.set_xlim(0, 125)
    ax.set_xlabel("in use (% of the cluster)")
    ax.set_title("Cluster utilisation", fontweight="bold")
    ax.invert_yaxis()
    ax.legend(fontsize=9, loc="lower right")
    return fig


def trials_figure(trials: list[dict[str, Any]], metric: str | None) -> Figure | None:
    """The search metric of each trial (a tune run), best first; None without values."""
    values = [(str(t.get("trial_id", i)), float(t[metric])) for i, t in enumerate(trials)
              if metric and isinstance(t.get(metric), (int, float))]
    if not values:
        return None
    fig = Figure(figsize=(max(5, 0.5 * len(values) + 2), 3.2), layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    ax.bar([v[0] for v in values], [v[1] for v in values], color="#0969da", label=metric)
    ax.set_xlabel("trial")
    ax.set_ylabel(_ylabel(metric or "", [v[1] for v in values]))
    ax.set_title(f"{metric} per trial", fontweight="bold")
    ax.tick_params(axis="x", rotation=45)
    ax.legend(fontsize=9)
    return fig
