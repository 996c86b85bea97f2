"""The cluster status as HTML for a notebook cell (the data and its text form are
:func:`lepton_lab.remote._status.cluster_status` and ``format_text``)."""

from __future__ import annotations

import html
from typing import Any

from ..remote._status import GiB, gpu_text, starting_text


def format_html(st: dict[str, Any]) -> str:
    e = html.escape
    if st.get("state") == "starting":
        return f"<div class='lepton-status'>{e(starting_text(st))}</div>"
    dash = (f'<a href="{e(st["dashboard_url"])}" target="_blank">{e(st["dashboard_url"])}</a>'
            if st["dashboard_url"] else "not available")
    rows = "".join(
        f"<tr><td>{'head' if n['head'] else 'worker'}</td><td>{e(n['hostname'] or n['address'] or '')}"
        f"</td><td>{'alive' if n['alive'] else 'dead'}</td><td>{n['cpus']:g}</td>"
        f"<td>{e(gpu_text(n))}</td><td>{n['memory'] / GiB:.1f} GiB</td></tr>"
        for n in st["nodes"])
    jobs = "".join(
        f"<tr><td><code>{e(j['id'])}</code></td><td>{e(j['kind'])}</td><td>{e(j['name'] or '')}"
        f"</td><td>{e(j['user'] or '')}</td><td>{j['age_s']:.0f} s</td></tr>"
        for j in st["running_jobs"]) or "<tr><td colspan=5>none</td></tr>"
    return (
        f"<div class='lepton-status'><b>{e(st['kind'])} Ray</b> at <code>{e(st['address'])}</code>"
        f" &middot; {'TLS on' if st.get('tls') else 'TLS off'} &middot; dashboard: {dash}<br>"
        f"{st['free']['CPU']:g}/{st['total']['CPU']:g} CPUs free &middot; "
        f"{st['free']['GPU']:g}/{st['total']['GPU']:g} GPUs free &middot; "
        f"{st['free']['memory'] / GiB:.1f}/{st['total']['memory'] / GiB:.1f} GiB memory free"
        "<table><tr><th>role</th><th>node</th><th>state</th><th>CPUs</th><th>GPUs</th>"
        f"<th>memory</th></tr>{rows}</table>"
        "<b>Running Lepton jobs</b><table><tr><th>id</th><th>kind</th><th>name</th><th>user</th>"
        f"<th>age</th></tr>{jobs}</table></div>")
