"""Whole sections of the dashboard pages as HTML (tables and figures together), so that the
Voila notebooks only wire widgets and the unit tests can check a page without a browser."""

from __future__ import annotations

import base64
import mimetypes
from typing import Any

from . import _html, _plots
from ._html import esc


def file_img(path: str, alt: str, max_bytes: int = 5 * 2**20) -> str:
    """A recorded figure file (PNG, JPEG, SVG) inline, or a note when it cannot be read."""
    mime = mimetypes.guess_type(path)[0] or ""
    if not mime.startswith("image/"):
        return _html.note(f"{alt}: {path} is not an image")
    try:
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)
    except OSError as exc:
        return _html.note(f"{alt}: cannot read {path} ({exc.strerror})", warn=True)
    if len(data) > max_bytes:
        return _html.note(f"{alt}: {path} is larger than {max_bytes >> 20} MB; not shown")
    b64 = base64.b64encode(data).decode("ascii")
    return (f'<figure style="display:inline-block;margin:4px 12px 12px 0">'
            f'<img class="lepton-figure" alt="{esc(alt)}" style="max-width:560px" '
            f'src="data:{mime};base64,{b64}"><figcaption>{esc(alt)}</figcaption></figure>')


def _side_by_side(*parts: str) -> str:
    cells = "".join(f'<div style="min-width:280px">{p}</div>' for p in parts)
    return f'<div style="display:flex;gap:32px;flex-wrap:wrap">{cells}</div>'


def _section(title: str, body: str) -> str:
    return f"<h3>{esc(title)}</h3>{body}"


def run_html(d: dict[str, Any]) -> str:
    """The run page: summary, parameters and metrics, curves, throughput, trials, cells,
    recorded figures and tables, environment, inputs and artifacts."""
    parts = [f'<h2>Run <code id="lepton-run-id">{esc(d["id"])}</code> '
             f'{_html.badge(d["summary"].get("status", ""))}</h2>']
    if d.get("error"):
        parts.append(_html.note(f"error: {d['error']}", warn=True))
    parts.append(_side_by_side(
        _section("Summary", _html.kv_table(d["summary"], ("", ""))),
        _section("Parameters", _html.kv_table(d["params"], ("parameter", "value"))),
        _section("Metrics (last value)", _html.kv_table(d["metrics"], ("metric", "value")))))
    label = "Training curves" if d["kind"] in ("train", "tune") else "Recorded series"
    if d["curves"]:
        parts.append(_section(label, _plots.img(
            _plots.curves_figure(d["curves"], f"{label} of {d['summary'].get('name')}"
                                 if d["summary"].get("name") not in (None, "–")
                                 else label), label)))
    elif d["kind"] == "train":
        parts.append(_section(label, _html.note("no metrics were reported during this run "
                                                "(lepton_lab.training.report(...) records "
                                                "them)")))
    if d["kind"] == "train":
        if d["throughput"]:
            parts.append(_section("Throughput per rank", _plots.img(
                _plots.throughput_figure(d["throughput"]), "Throughput per rank")))
        else:
            parts.append(_section("Throughput per rank", _html.note(
                "per-rank throughput was not recorded for this run")))
    if d["trials"]:
        metric = d["params"].get("metric")
        fig = _plots.trials_figure(d["trials"], metric)
        body = (_plots.img(fig, f"{metric} per trial") if fig is not None else "") + \
            _html.trials_table(d["trials"])
        parts.append(_section(f"Trials ({len(d['trials'])})", body))
    if d["cells"]:
        parts.append(_section("Cells", _html.cells_table(d["cells"])))
    if d["figures"]:
        parts.append(_section("Figures", "".join(file_img(p, name)
                                                 for name, p in d["figures"].items())))
    for name, rows in (d.get("tables") or {}).items():
        if isinstance(rows, list) and rows and all(isinstance(r, dict) for r in rows):
            keys = list(dict.fromkeys(k for r in rows[:200] for k in r))[:12]
            body = _html.table(([esc(_html.fmt_value(r.get(k))) for k in keys]
                                for r in rows[:200]), keys)
            parts.append(_section(f"Table: {name}", body))
    parts.append(_section("Environment", _html.kv_table(d["env"], ("", ""))))
    if d["inputs"]:
        parts.append(_section("Inputs", _html.table(
            ([esc(k), f"<code>{esc(v)}</code>"] for k, v in d["inputs"].items()),
            ["file", "sha256"])))
    if d["artifacts"]:
        parts.append(_section("Artifacts", _html.kv_table(d["artifacts"], ("name", "where"))))
    return "".join(parts)


def compression_html(report: dict[str, Any] | None) -> str:
    """The trade-off plot and table of one compression report."""
    if report is None:
        return _html.note("No compression reports yet. `%lepton compress MODEL ...` "
                          "records one.")
    title = f"Compression trade-off of {report['model']} ({report['target']})"
    head = (f"<p>report <code>{esc(report['id'])}</code>, {esc(report['created'])}; "
            f"settings: {_html.chips(report['settings'], limit=12)}</p>")
    if not report["points"]:
        return head + _html.note("this report has no variants")
    return head + _plots.img(_plots.tradeoff_figure(report["points"], title), title) + \
        _html.compression_table(report["points"])


def cluster_html(st: dict[str, Any]) -> str:
    """Utilisation bars and node/job tables, or a plain "disconnected" notice."""
    if not st.get("connected"):
        return (f"<h2>Cluster {_html.badge('disconnected')}</h2>"
                + _html.note(st.get("reason") or "no cluster is reachable"))
    return (f"<h2>Cluster {_html.badge('connected')}</h2>"
            + _plots.img(_plots.utilisation_figure(st), "Cluster utilisation")
            + _html.cluster_tables(st))
