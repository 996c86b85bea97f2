"""ONNX export checked in ONNX Runtime, and the artifacts written to (and read from) the
registry: ``model.pt`` (the whole module object) or ``model.onnx``."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import Any

from .._formats import OnnxModel, quiet_libraries
from ..errors import LeptonError, LeptonUsageError

OPSET = 17
ATOL, RTOL = 1e-4, 1e-3  # fp32 export vs the torch module


class ExportMismatch(LeptonError):
    """The exported ONNX graph does not compute what the torch module computes."""


def export_onnx(module: Any, example: Any) -> tuple[bytes, dict[str, Any]]:
    """Export ``module`` (fp32, on CPU) to ONNX with a dynamic batch axis; returns the bytes
    and how it was exported. The legacy TorchScript exporter is tried first (fast, no extra
    dependencies); the torch.export-based one (``dynamo=True``) if it fails."""
    import copy

    import torch

    m = copy.deepcopy(module).cpu().eval().float()
    x = example[:1].cpu().float()
    errors = []
    for dynamo in (False, True):
        buf = io.BytesIO()
        try:
            with quiet_libraries(), torch.inference_mode(False), torch.no_grad():
                if dynamo:
                    x2 = x.expand(2, *x.shape[1:]).contiguous()  # batch 1 would specialize
                    prog = torch.onnx.export(m, (x2,), dynamo=True, opset_version=18,
                                             input_names=["input"], output_names=["output"],
                                             dynamic_shapes=({0: torch.export.Dim("batch")},),
                                             verbose=False)
                    prog.save(buf)
                else:
                    torch.onnx.export(m, (x,), buf, dynamo=False, opset_version=OPSET,
                                      input_names=["input"], output_names=["output"],
                                      dynamic_axes={"input": {0: "batch"},
                                                    "output": {0: "batch"}})
            data = buf.getvalue()
            if data:
                return data, {"exporter": "torch.onnx dynamo" if dynamo else
                              "torch.onnx TorchScript (dynamo=False)",
                              "opset": 18 if dynamo else OPSET}
        except Exception as e:  # try the other exporter, then report both
            errors.append(f"{'dynamo' if dynamo else 'legacy'}: {type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else ''}")
    raise LeptonUsageError("ONNX export failed with both exporters (" + "; ".join(errors)
                           + "); compress without export=onnx")


def verify_onnx(onnx_model: OnnxModel, module: Any, X: Any, atol: float = ATOL,
                rtol: float = RTOL) -> float:
    """Run ``X`` through the ONNX graph and the torch module, raise :class:`ExportMismatch`
    when they differ beyond the tolerance; returns the max abs difference."""
    import numpy as np
    import torch

    x = X.cpu().float()
    dev = next((p.device for p in module.parameters()), torch.device("cpu"))
    with torch.inference_mode():
        ref = module(x.to(dev))
    ref = (ref[0] if isinstance(ref, (tuple, list)) else ref).float().cpu().numpy()
    got = onnx_model.run(x.numpy())
    if got.shape != ref.shape:
        raise ExportMismatch(f"the ONNX graph returns shape {got.shape}, the torch module "
                             f"{ref.shape}; the export is wrong")
    diff = float(np.max(np.abs(got - ref))) if ref.size else 0.0
    try:
        np.testing.assert_allclose(got, ref, atol=atol, rtol=rtol)
    except AssertionError:
        raise ExportMismatch(f"the ONNX graph differs from the torch module by up to {diff:.3g} "
                             f"(tolerance atol={atol}, rtol={rtol}) on {len(x)} samples; the "
                             "model does something the exporter gets wrong") from None
    return diff


def onnx_params(onnx_bytes: bytes) -> int:
    """Number of weight elements (initializers) of an ONNX graph."""
    import math

    import onnx

    g = onnx.load_from_string(onnx_bytes).graph
    return int(sum(math.prod(i.dims) for i in g.initializer))


# -- artifacts -------------------------------------------------------------------------------
def save_artifact(variant: Any, directory: str | os.PathLike) -> tuple[str, str, int]:
    """Write ``variant`` into ``directory``: ``model.pt`` (the whole module object, on CPU,
    pickled with cloudpickle so classes defined in a notebook load elsewhere too; pruned
    architectures differ from the original class's defaults) or ``model.onnx``.

    Returns ``(path, sha256 hex, size in bytes)``. Read it back with :func:`load_artifact`.
    """
    import copy

    import cloudpickle
    import torch

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    if variant.format == "onnx":
        if not variant.onnx_bytes:
            raise LeptonUsageError(f"variant {variant.name!r} has no ONNX bytes to save")
        path, data = d / "model.onnx", variant.onnx_bytes
    else:
        if variant.module is None:
            raise LeptonUsageError(f"variant {variant.name!r} has no module to save")
        module = variant.module
        if any(p.device.type != "cpu" for p in module.parameters()):
            module = copy.deepcopy(module).cpu()
        buf = io.BytesIO()
        torch.save(module, buf, pickle_module=cloudpickle)
        path, data = d / "model.pt", buf.getvalue()
    tmp = path.with_name(path.name + ".part")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return str(path), hashlib.sha256(data).hexdigest(), len(data)


def load_artifact(path: str | os.PathLike, format: str | None = None) -> Any:
    """Load what :func:`save_artifact` wrote: an ``nn.Module`` (eval mode, on CPU) for
    ``model.pt``, an :class:`OnnxModel` for ``model.onnx``. ``format`` ("torch" or "onnx")
    defaults from the file suffix. Only load files you trust: a ``.pt`` file is a pickle."""
    import torch

    p = Path(path)
    fmt = format or ("onnx" if p.suffix == ".onnx" else "torch")
    if fmt not in ("torch", "onnx"):
        raise LeptonUsageError(f"unknown artifact format {fmt!r}: use torch or onnx")
    if not p.is_file():
        raise LeptonUsageError(f"no artifact at {p}")
    if fmt == "onnx":
        return OnnxModel(p.read_bytes())
    with quiet_libraries():  # unpickling a torchao module imports torchao (noisy)
        module = torch.load(p, map_location="cpu", weights_only=False)
    return module.eval() if hasattr(module, "eval") else module
