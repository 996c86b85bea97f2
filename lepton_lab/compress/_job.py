"""``%lepton compress``: compression as a job on the cluster, results into the registry.

The kernel resolves the model (a notebook variable or a registry ``name[:version]``) and the
calibration/evaluation data, then runs :func:`remote_compress` as an ordinary ``%%lepton``
cell (one task; a GPU when ``--target gpu``), so output, progress, Ctrl-C and remote
tracebacks behave as in any cell. The compressed variants come back as artifact bytes (so a
multi-node cluster needs no shared disk), become new versions of the model with their
lineage, and the before/after report is saved in the store.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import LeptonUsageError
from ..remote._sink import Sink
from ..remote._spec import CellSpec
from ..store import ModelRecord, ReportRecord, get_store

#: What runs on the cluster (a cell body, so the usual cell machinery applies).
_BODY = ("from lepton_lab.compress._job import remote_compress\n"
         "compressed = remote_compress(model, settings, calib, eval_data)\n")


@dataclass
class CompressOutcome:
    original: ModelRecord
    models: list[ModelRecord] = field(default_factory=list)
    report: ReportRecord | None = None
    best: ModelRecord | None = None


def remote_compress(model: Any, settings: Any, calib: Any, eval_data: Any) -> dict[str, Any]:
    """On the cluster: compress with live progress, show the report, return the artifacts."""
    from ..remote._executor import display
    from ..remote._progress import progress
    from . import compress, save_artifact

    bars: dict[str, tuple[Any, int]] = {}

    def on_progress(stage: str, done: int, total: int) -> None:
        bar, seen = bars.get(stage) or (progress(total=total, desc=stage), 0)
        if done > seen:
            bar.update(done - seen)
        bars[stage] = (bar, max(done, seen))

    result = compress(model, settings, calib=calib, eval=eval_data, progress=on_progress)
    display({"text/html": result.to_html(), "text/plain": f"{len(result.variants)} variants"},
            raw=True)
    display(result.plot())
    artifacts = []
    with tempfile.TemporaryDirectory(prefix="lepton-compress-") as tmp:
        for i, variant in enumerate(result.variants):
            if variant.name == "original":
                continue
            directory = Path(tmp) / str(i)
            directory.mkdir()
            path, _sha, _size = save_artifact(variant, directory)
            artifacts.append({"variant": variant.name, "format": variant.format,
                              "data": Path(path).read_bytes(), "params": variant.params,
                              "settings": dict(variant.settings or {})})
    best = getattr(result.best, "name", None)
    return {"rows": result.rows(), "artifacts": artifacts, "best": best}


def _lookup(namespace: dict[str, Any], name: str | None, flag: str) -> Any:
    if name is None:
        return None
    if name not in namespace:
        raise LeptonUsageError(f"{flag} {name}: no variable {name!r} in the notebook; pass the "
                               "name of an array, a tensor or an (X, y) tuple")
    return namespace[name]


def _input_shape(data: Any) -> list[int] | None:
    x = data[0] if isinstance(data, (tuple, list)) else data
    shape = getattr(x, "shape", None)
    return [int(d) for d in shape[1:]] if shape is not None and len(shape) > 1 else None


def compress_model(model: str, settings: Any, *, namespace: dict[str, Any], sink: Sink,
                   calib: str | None = None, eval: str | None = None,  # noqa: A002
                   name: str | None = None, from_run: str | None = None,
                   timeout: float | None = None, origin: str | None = None) -> CompressOutcome:
    """Compress ``model`` (a variable name in ``namespace`` or a registry reference) on the
    cluster and register every compressed variant as a new version.

    ``calib``/``eval`` name notebook variables (``(X, y)`` or ``X``). The original is
    registered first when it is a notebook variable (unchanged models are not duplicated).
    """
    import torch

    from ..registry import load_bytes, read_artifact, register_bytes, register_module
    from ..remote import run_cell

    store = get_store()
    calib_data = _lookup(namespace, calib, "--calib")
    eval_data = _lookup(namespace, eval, "--eval")
    shape = _input_shape(eval_data if eval_data is not None else calib_data)
    candidate = namespace.get(model) if model.isidentifier() else None
    if isinstance(candidate, torch.nn.Module):
        if from_run:
            store.get_run(from_run)   # a clear error for a run that does not exist
        module = candidate
        original = register_module(module, name or model, kind="trained" if from_run
                                   else "imported", run_id=from_run, input_shape=shape)
    elif candidate is not None:
        raise LeptonUsageError(f"{model} is a {type(candidate).__name__}, not a "
                               "torch.nn.Module; pass the model variable or a registry "
                               "name:version")
    else:
        original, data = read_artifact(model)
        if original.format != "torch":
            raise LeptonUsageError(f"{original.ref} is an {original.format} model; compress "
                                   "the torch model it was exported from")
        module = load_bytes(data, "torch")
    base = name or original.name
    cell_ns = {"model": module, "settings": settings, "calib": calib_data,
               "eval_data": eval_data}
    spec = CellSpec(cpus=1, gpus=1.0 if getattr(settings, "target", "cpu") == "gpu" else 0.0,
                    timeout=timeout, name=f"compress-{base}"[:64], out=("compressed",))
    outcome = run_cell(_BODY, cell_ns, spec, sink, origin=origin)
    res = cell_ns["compressed"]
    common = {k: v for k, v in getattr(settings, "__dict__", {}).items()
              if isinstance(v, (int, float, str, bool, type(None)))}
    rows = [dict(r) for r in res["rows"]]
    by_variant = {r.get("variant") or r.get("name"): r for r in rows}
    by_variant.get("original", {})["model"] = original.ref
    made: list[ModelRecord] = []
    best = None
    for art in res["artifacts"]:
        row = by_variant.get(art["variant"], {})
        metrics = {k: v for k, v in row.items() if isinstance(v, (int, float))}
        rec = register_bytes(art["data"], base, format=art["format"], kind="compressed",
                             params=art.get("params"), parent=original.ref,
                             settings=dict(common, **art["settings"], variant=art["variant"],
                                           input_shape=shape),
                             metrics=metrics, description=f"{art['variant']} of {original.ref}")
        row["model"] = rec.ref
        made.append(rec)
        if art["variant"] == res.get("best"):
            best = rec
    report = store.add_report(original.ref, rows, settings=common,
                              target=common.get("target"), job_id=outcome.job_id)
    summary = ", ".join(f"{r.ref} ({r.settings.get('variant')})" for r in made) or "nothing"
    note = f"; best: {best.ref}" if best else ""
    if best is None:
        # no compressed variant kept its accuracy: the original is what to serve
        best = original
        note = f"; no variant passed its checks, so the best is the original {original.ref}"
    sink.status(f"compressed {original.ref}: registered {summary}; report {report.id}{note}")
    return CompressOutcome(original=original, models=made, report=report, best=best)
