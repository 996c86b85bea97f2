"""HTML pieces of the dashboard pages: navigation, tables, key/value lists, notices.

Every value from the store is escaped: run names, parameters and errors are user data and a
dashboard viewer must not get script injected into their page. Links between pages are
relative (``run.ipynb?run=ID``), so they keep working behind a proxy's base URL, and carry no
token (the login cookie set by the first ``?token=`` visit authenticates them).
"""

from __future__ import annotations

import html
from typing import Any, Callable, Iterable, Sequence
from urllib.parse import urlencode

from ._data import fmt_duration, fmt_time, fmt_value

#: (notebook, title) of every page, in navigation order.
PAGES = (("runs.ipynb", "Runs"), ("run.ipynb", "Run detail"),
         ("compression.ipynb", "Compression"), ("endpoints.ipynb", "Endpoints"),
         ("cluster.ipynb", "Cluster"))

STATUS_COLOURS = {"succeeded": "#1a7f37", "running": "#0969da", "failed": "#cf222e",
                  "cancelled": "#6e7781", "timeout": "#bc4c00", "lost": "#6e7781",
                  "answering": "#1a7f37", "not answering": "#cf222e",
                  "deploying": "#0969da", "alive": "#1a7f37", "dead": "#cf222e",
                  "connected": "#1a7f37", "disconnected": "#6e7781",
                  "completed": "#1a7f37", "skipped": "#6e7781"}

CSS = """<style>
.lepton-nav{display:flex;gap:18px;align-items:baseline;padding:6px 0 10px;
  border-bottom:1px solid #d0d7de;margin-bottom:12px;font-size:15px}
.lepton-nav b{font-size:18px;margin-right:12px}
.lepton-nav a{text-decoration:none;color:#0969da}
.lepton-nav a.here{color:#1f2328;font-weight:600;border-bottom:2px solid #fd8c73}
table.lepton{border-collapse:collapse;font-size:13px;margin:6px 0 14px}
table.lepton th{background:#f6f8fa;text-align:left;padding:4px 10px;
  border-bottom:1px solid #d0d7de;white-space:nowrap}
table.lepton td{padding:3px 10px;border-bottom:1px solid #eaeef2;vertical-align:top;
  text-align:left}
table.lepton th{text-align:left}
#lepton-runs td{white-space:nowrap}
#lepton-runs td:nth-child(8){white-space:normal}
table.lepton td.num{text-align:right;font-variant-numeric:tabular-nums}
table.lepton tr.best td{font-weight:600}
table.lepton a,.lepton-page a{color:#0969da;text-decoration:none}
.lepton-badge{color:#fff;border-radius:10px;padding:1px 8px;font-size:12px;white-space:nowrap}
.lepton-note{background:#f6f8fa;border-left:4px solid #0969da;padding:8px 12px;margin:8px 0}
.lepton-warn{background:#fff8f0;border-left:4px solid #bc4c00;padding:8px 12px;margin:8px 0}
.lepton-chip{background:#eaeef2;border-radius:4px;padding:0 5px;margin-right:4px;
  font-family:monospace;font-size:12px;white-space:nowrap}
</style>"""


def esc(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def link(page: str, text: Any, **query: Any) -> str:
    q = urlencode({k: v for k, v in query.items() if v not in (None, "")})
    href = page + (f"?{q}" if q else "")
    return f'<a href="{esc(href)}">{esc(text)}</a>'


def nav(current: str, subtitle: str = "") -> str:
    """The page header: the app name and a link to every page (``current`` highlighted)."""
    items = []
    for page, title in PAGES:
        cls = ' class="here"' if page == current else ""
        items.append(f'<a{cls} href="{esc(page)}">{esc(title)}</a>')
    sub = f'<span style="color:#656d76">{esc(subtitle)}</span>' if subtitle else ""
    return f'{CSS}<div class="lepton-nav"><b>Lepton Lab</b>{"".join(items)}{sub}</div>'


def badge(status: str) -> str:
    colour = STATUS_COLOURS.get(status, "#6e7781")
    return f'<span class="lepton-badge" style="background:{colour}">{esc(status)}</span>'


def note(text: str, warn: bool = False) -> str:
    return f'<div class="{"lepton-warn" if warn else "lepton-note"}">{esc(text)}</div>'


def chips(d: dict[str, Any], limit: int = 8) -> str:
    items = list(d.items())
    out = "".join(f'<span class="lepton-chip">{esc(k)}={esc(fmt_value(v))}</span>'
                  for k, v in items[:limit])
    return out + (f" +{len(items) - limit}" if len(items) > limit else "")


def table(rows: Iterable[Sequence[str]], headers: Sequence[str], *,
          numeric: Sequence[int] = (), row_class: Callable[[int], str] | None = None,
          table_id: str = "") -> str:
    """A table of already-escaped HTML cells (use :func:`esc` on plain values)."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    thead = f"<thead><tr>{head}</tr></thead>" if any(headers) else ""
    body = []
    for i, row in enumerate(rows):
        cls = row_class(i) if row_class else ""
        tds = "".join(f'<td class="num">{c}</td>' if j in numeric else f"<td>{c}</td>"
                      for j, c in enumerate(row))
        body.append(f'<tr class="{cls}">{tds}</tr>' if cls else f"<tr>{tds}</tr>")
    ident = f' id="{esc(table_id)}"' if table_id else ""
    return f'<table class="lepton"{ident}>{thead}<tbody>{"".join(body)}</tbody></table>'


def kv_table(d: dict[str, Any], headers: Sequence[str] = ("name", "value")) -> str:
    if not d:
        return '<p style="color:#656d76">none recorded</p>'
    return table(([esc(k), esc(fmt_value(v))] for k, v in d.items()), headers)


def runs_table(rows: list[dict[str, Any]], metrics: list[str]) -> str:
    """The runs overview: one row per run, its id linking to the run page."""
    if not rows:
        return note("No runs match. Runs appear here when `lepton run NOTEBOOK` or "
                    "`%%lepton train` records one.")
    headers = ["run", "kind", "name", "status", "user", "started", "duration",
               "parameters"] + metrics
    body = []
    for r in rows:
        cells = [link("run.ipynb", r["id"], run=r["id"]), esc(r["kind"]), esc(r["name"]),
                 badge(r["status"]), esc(r["user"]), esc(fmt_time(r["created"])),
                 esc(fmt_duration(r["duration"])), chips(r["params"])]
        cells += [esc(fmt_value(r["metrics"][m])) if m in r["metrics"] else "–"
                  for m in metrics]
        body.append(cells)
    numeric = range(8, 8 + len(metrics))
    return table(body, headers, numeric=list(numeric), table_id="lepton-runs")


def run_links(rows: list[dict[str, Any]], limit: int = 20) -> str:
    """Recent runs as links, for the run page opened without ``?run=``."""
    if not rows:
        return note("No runs are recorded yet.")
    items = "".join(f"<li>{link('run.ipynb', r['id'], run=r['id'])} {esc(r['kind'])} "
                    f"{esc(r['name'])} {badge(r['status'])}</li>" for r in rows[:limit])
    return f"<p>Pick a run:</p><ul>{items}</ul>"


def cells_table(cells: list[dict[str, Any]]) -> str:
    rows = [[esc(c.get("execution_count") or "–"),
             esc("–" if c.get("index") is None else c["index"]),
             esc(", ".join(c.get("tags") or ())), badge(str(c.get("status") or "–")),
             esc(fmt_duration(c.get("duration"))), esc(c.get("ename") or "")]
            for c in cells]
    return table(rows, ["executed", "cell", "tags", "status", "duration", "error"],
                 numeric=[0, 1, 4], table_id="lepton-cells")


def trials_table(trials: list[dict[str, Any]], limit: int = 50) -> str:
    keys: list[str] = []
    for t in trials[:limit]:
        for k in t:
            if k not in keys and not str(k).startswith(("date", "time_", "hostname", "node_ip",
                                                        "pid", "timestamp")):
                keys.append(k)
    keys = keys[:12]
    rows = [[esc(fmt_value(t.get(k))) for k in keys] for t in trials[:limit]]
    return table(rows, keys)


def compression_table(points: list[dict[str, Any]]) -> str:
    def num(v: Any, spec: str) -> str:
        return "–" if v is None else esc(format(v, spec))

    rows = [[esc(p["variant"]), esc(p["format"]),
             num(p["params"], ",") if isinstance(p["params"], int) else "–",
             num(p["size_mb"], ".3f"), num(p["size_ratio"], ".2f"),
             num(p["latency_ms_b1"], ".3f"), num(p["latency_ms_b64"], ".3f"),
             num(p["accuracy"], ".2f"), num(p["accuracy_change"], "+.2f"),
             "yes" if p["passed"] else "no"] for p in points]
    return table(rows, ["variant", "format", "parameters", "size (MB)", "size ×",
                        "latency b1 (ms)", "latency b64 (ms)", "accuracy (%)", "Δ accuracy (pt)",
                        "passed"], numeric=[2, 3, 4, 5, 6, 7, 8],
                 row_class=lambda i: "best" if points[i]["best"] else "",
                 table_id="lepton-variants")


def endpoints_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return note("No endpoints are deployed. `%lepton deploy MODEL --name NAME` "
                    "creates one.")
    body = [[esc(r["name"]), esc(r["model"]), badge(r["status"]), badge(r["health"]),
             "–" if r["latency_ms"] is None else esc(f"{r['latency_ms']:.1f}"),
             esc(r["replicas"]), esc(r["max_batch"] if r["max_batch"] is not None else "–"),
             ("token " + esc(r["token_hint"])) if r["auth"] else "none",
             f"<code>{esc(r['url'])}</code>", esc(r["updated"]), esc(r["error"])]
            for r in rows]
    return table(body, ["endpoint", "model", "recorded", "now", "health latency (ms)",
                        "replicas", "max batch", "auth", "URL", "updated", "error"],
                 numeric=[4], table_id="lepton-endpoints")


def prediction(result: dict[str, Any]) -> str:
    """The "try it" answer: top classes with softmax probabilities, or the error line."""
    if not result.get("ok"):
        return note(result.get("error") or "the request failed", warn=True)
    head = f"<p>answered in <b>{result['latency_ms']:.1f} ms</b></p>"
    if result.get("top"):
        first = result["top"][0]
        rows = [[esc(t["class"]), esc(f"{t['score']:.3f}"), esc(f"{t['prob'] * 100:.1f}%")]
                for t in result["top"]]
        return (f"{head}<p style='font-size:20px'>predicted class <b id='lepton-predicted'>"
                f"{esc(first['class'])}</b></p>"
                + table(rows, ["class", "score", "softmax"], numeric=[1, 2]))
    return head + f"<pre>{esc(fmt_value(result['outputs']))}</pre>"


def cluster_tables(st: dict[str, Any]) -> str:
    gib = 1024 ** 3
    nodes = [[esc("head" if n["head"] else "worker"), esc(n.get("hostname") or n["address"]),
              badge("alive" if n["alive"] else "dead"),
              esc(f"{n['cpus']:g}"), esc(f"{n['gpus']:g}"), esc(f"{n['memory'] / gib:.1f}")]
             for n in st.get("nodes", [])]
    jobs = [[f"<code>{esc(j['id'])}</code>", esc(j["kind"]), esc(j["name"] or ""),
             esc(j["user"] or ""), esc(fmt_duration(j["age_s"]))]
            for j in st.get("running_jobs", [])]
    out = (f"<p><b>{esc(st.get('kind'))}</b> Ray at <code>{esc(st.get('address'))}</code>; "
           f"Ray dashboard: {esc(st.get('dashboard_url') or 'not available')}</p>"
           + table(nodes, ["role", "node", "state", "CPUs", "GPUs", "memory (GiB)"],
                   numeric=[3, 4, 5], table_id="lepton-nodes")
           + "<h3>Running Lepton jobs</h3>")
    out += table(jobs, ["job", "kind", "name", "user", "running for"]) if jobs else \
        "<p>none</p>"
    return out
