"""``lepton_lab.record(name, value)``: metrics recorded from inside a notebook.

A record is a display output with its own MIME type, so it travels inside the executed
notebook: the pipeline engine reads it back from there whether the kernel ran on this machine
or on a cluster worker, and an interactive run simply shows the value. This is what
scrapbook's ``glue`` did; scrapbook is no longer maintained.

    import lepton_lab
    for epoch in range(epochs):
        ...
        lepton_lab.record("loss", loss, step=epoch)   # a series: a curve in the dashboards
    lepton_lab.record("accuracy", acc)                # a scalar: compared by `lepton compare`
    lepton_lab.record("confusion", fig)               # a matplotlib figure, kept by reference
    lepton_lab.record("per_class", df)                # a small table (DataFrame or list of dicts)
    lepton_lab.record("weights", Path("ckpt.pt"))     # an artifact, by reference
"""

from __future__ import annotations

import base64
import io
import json
import math
import numbers
import os
import sys
from pathlib import Path
from typing import Any

from ..errors import LeptonUsageError

MIME = "application/vnd.lepton.record+json"
TABLE_ROWS = 200


def _scalar(value: Any) -> float | int | bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    item = getattr(value, "item", None)      # numpy / torch scalars and one-element tensors
    size = getattr(value, "size", None)
    numel = getattr(value, "numel", None)
    one = (callable(numel) and numel() == 1) or size == 1 or (callable(size) and size() == 1)
    if callable(item) and one:
        return _scalar(item())
    return None


def _figure_png(value: Any) -> bytes | None:
    fig = value
    if type(value).__module__.startswith("matplotlib.axes"):
        fig = value.figure
    if not type(fig).__module__.startswith("matplotlib.figure"):
        return None
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return buf.getvalue()


def _table(value: Any) -> list[dict[str, Any]] | None:
    to_dict = getattr(value, "to_dict", None)
    if callable(to_dict) and hasattr(value, "columns"):        # a pandas DataFrame
        return json.loads(value.head(TABLE_ROWS).to_json(orient="records"))
    if isinstance(value, (list, tuple)) and value and all(isinstance(r, dict) for r in value):
        return json.loads(json.dumps(list(value)[:TABLE_ROWS], default=str))
    return None


def bundle(name: str, value: Any, step: int | float | None = None) -> dict[str, Any]:
    """The display bundle for one record (``text/plain`` plus the record itself)."""
    if not isinstance(name, str) or not name.strip() or len(name) > 100:
        raise LeptonUsageError("record(name, value): the name must be a non-empty string of at "
                               "most 100 characters")
    if step is not None and _scalar(step) is None:
        raise LeptonUsageError(f"record({name!r}, ..., step=...): the step must be a number")
    payload: dict[str, Any] = {"name": name}
    if step is not None:
        payload["step"] = _scalar(step)
    data: dict[str, Any] = {}
    scalar = _scalar(value)
    if scalar is not None:
        if isinstance(scalar, float) and not math.isfinite(scalar):
            payload.update(kind="scalar", value=str(scalar))
        else:
            payload.update(kind="scalar", value=scalar)
        text = f"{name} = {scalar:.6g}" if isinstance(scalar, float) else f"{name} = {scalar}"
    elif isinstance(value, str):
        payload.update(kind="text", value=value[:2000])
        text = f"{name} = {value[:200]!r}"
    elif isinstance(value, os.PathLike):
        path = Path(value).expanduser().resolve()
        payload.update(kind="artifact", value=str(path))
        text = f"{name}: artifact {path}"
    elif (png := _figure_png(value)) is not None:
        payload.update(kind="figure")
        data["image/png"] = base64.b64encode(png).decode()
        text = f"{name}: figure"
    elif (rows := _table(value)) is not None:
        payload.update(kind="table", value=rows)
        text = f"{name}: table of {len(rows)} rows"
    else:
        raise LeptonUsageError(
            f"record({name!r}, ...): a {type(value).__name__} cannot be recorded; record a "
            "number, a string, a table (DataFrame or list of dicts), a matplotlib figure or a "
            "path (pathlib.Path) to an artifact")
    data[MIME] = payload
    data["text/plain"] = text
    return data


def record(name: str, value: Any, *, step: int | float | None = None) -> None:
    """Record a metric, table, figure or artifact reference for the pipeline run.

    Outside a pipeline run the value is only shown. Inside a ``%%lepton`` cell the record
    travels back to the notebook with the cell's other output.
    """
    data = bundle(name, value, step)
    from ..remote._executor import current_emitter

    emitter = current_emitter()
    if emitter is not None:                       # inside a %%lepton cell on the cluster
        emitter.display(data, raw=True)
        return
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    if shell is not None:     # a notebook kernel: show it as IPython.display would
        shell.display_pub.publish(data=data, metadata={})
    else:
        print(data["text/plain"])


def collect(nb: Any, figures_dir: Path | None = None) -> dict[str, Any]:
    """Every record in an executed notebook, as the run record's ``metrics``, ``series``,
    ``tables``, ``figures`` and ``artifacts``. Figures are written under ``figures_dir``."""
    metrics: dict[str, Any] = {}
    series: dict[str, list] = {}
    tables: dict[str, list] = {}
    figures: dict[str, str] = {}
    artifacts: dict[str, str] = {}
    for cell in nb.get("cells", []):
        for out in cell.get("outputs", []) or []:
            payload = (out.get("data") or {}).get(MIME)
            if not isinstance(payload, dict) or "name" not in payload:
                continue
            name, kind = payload["name"], payload.get("kind")
            if kind in ("scalar", "text"):
                value = payload.get("value")
                metrics[name] = value
                points = series.setdefault(name, [])
                step = payload.get("step", len(points))
                if kind == "scalar" and isinstance(value, (int, float)):
                    points.append([step, value])
            elif kind == "table":
                tables[name] = payload.get("value") or []
            elif kind == "artifact":
                artifacts[name] = payload.get("value")
            elif kind == "figure" and figures_dir is not None:
                png = out["data"].get("image/png")
                if png:
                    figures_dir.mkdir(parents=True, exist_ok=True)
                    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
                    path = figures_dir / f"{safe}.png"
                    path.write_bytes(base64.b64decode(png))
                    figures[name] = str(path)
    # a name recorded once without a step is a plain metric, not a curve
    series = {k: v for k, v in series.items() if len(v) > 1}
    return {"metrics": metrics, "series": series, "tables": tables, "figures": figures,
            "artifacts": artifacts}
