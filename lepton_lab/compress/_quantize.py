"""Quantization with maintained libraries: torchao for torch modules (int8, fp8), a bf16 cast,
and ONNX Runtime int8 for exported graphs (the fastest int8 path on CPU).

``torch.ao.quantization`` (deprecated) is not used.
"""

from __future__ import annotations

import contextlib
import copy
import os
import tempfile
from typing import Any

from torch import nn

from .._formats import quiet_libraries
from ..errors import LeptonUsageError


def _torchao() -> Any:
    with quiet_libraries():
        import torchao.quantization as q
        with contextlib.suppress(Exception):  # imported lazily at the first int8 matmul, noisily
            import torchao.kernel.intmm  # noqa: F401
    return q


def _quantized_layers(model: nn.Module) -> int:
    """Linear layers whose weight is now a quantized tensor subclass."""
    import torch

    return sum(1 for m in model.modules() if isinstance(m, nn.Linear)
               and type(m.weight) not in (torch.Tensor, nn.Parameter))


def torchao_int8(model: nn.Module) -> tuple[nn.Module, dict[str, Any]]:
    """A copy of ``model`` whose Linear layers use int8 weights and dynamically quantized int8
    activations (torchao ``Int8DynamicActivationInt8WeightConfig``)."""
    q = _torchao()
    out = copy.deepcopy(model).eval()
    with quiet_libraries():
        q.quantize_(out, q.Int8DynamicActivationInt8WeightConfig())
    n = _quantized_layers(out)
    if n == 0:
        raise LeptonUsageError("torchao int8 found no nn.Linear layer to quantize in this model; "
                               "use int8_backend='onnxruntime' (quantizes Conv too) or no "
                               "quantization")
    return out, {"quantize": "int8", "backend": "torchao Int8DynamicActivationInt8WeightConfig",
                 "quantized_layers": n}


def check_fp8(device: str) -> None:
    import torch

    if device != "cuda" or not torch.cuda.is_available() \
            or torch.cuda.get_device_capability() < (8, 9):
        raise LeptonUsageError("fp8 needs an H100-class GPU (compute capability >= 8.9) and "
                               "--target gpu; use --quantize int8 on CPU")


def torchao_fp8(model: nn.Module, device: str) -> tuple[nn.Module, dict[str, Any]]:
    """A copy of ``model`` with float8 weights and activations (torchao, GPU only)."""
    check_fp8(device)
    q = _torchao()
    out = copy.deepcopy(model).eval()
    with quiet_libraries():
        q.quantize_(out, q.Float8DynamicActivationFloat8WeightConfig())
    return out, {"quantize": "fp8", "backend": "torchao Float8DynamicActivationFloat8WeightConfig",
                 "quantized_layers": _quantized_layers(out)}


class CastIO(nn.Module):
    """Runs ``inner`` in another dtype: casts floating inputs to ``dtype`` and floating outputs
    back to float32, so the wrapped module is called exactly like the original."""

    def __init__(self, inner: nn.Module, dtype: Any):
        super().__init__()
        self.inner = inner
        self.dtype = dtype

    def forward(self, *args: Any) -> Any:
        import torch

        args = tuple(a.to(self.dtype) if torch.is_tensor(a) and a.is_floating_point() else a
                     for a in args)
        out = self.inner(*args)
        if isinstance(out, (tuple, list)):
            return type(out)(o.float() if torch.is_tensor(o) and o.is_floating_point() else o
                             for o in out)
        return out.float() if out.is_floating_point() else out


def to_bf16(model: nn.Module) -> tuple[nn.Module, dict[str, Any]]:
    """A bfloat16 copy of ``model``, wrapped so that it takes and returns float32."""
    import torch

    out = CastIO(copy.deepcopy(model).to(torch.bfloat16).eval(), torch.bfloat16).eval()
    return out, {"quantize": "bf16", "backend": "torch .to(torch.bfloat16)"}


# -- ONNX Runtime ----------------------------------------------------------------------------
def _op_types(onnx_bytes: bytes) -> set[str]:
    import onnx

    return {n.op_type for n in onnx.load_from_string(onnx_bytes).graph.node}


def ort_int8(onnx_bytes: bytes, calib_X: Any = None, method: str = "auto",
             max_calib: int = 256) -> tuple[bytes, dict[str, Any]]:
    """Quantize an fp32 ONNX graph to int8 with ONNX Runtime; returns (bytes, info).

    ``method="dynamic"``: ``quantize_dynamic`` of the MatMul/Gemm weights (int8 weights,
    activations quantized on the fly; no calibration). Fast on CPU for Linear layers; Conv
    is left in float because ORT's dynamic ConvInteger kernel is slower than float Conv.
    ``method="static"``: ``quantize_static`` in QDQ format, per-channel int8 weights and uint8
    activations calibrated (MinMax) on up to ``max_calib`` rows of ``calib_X``: quantizes
    Conv as well (fused into QLinearConv on CPU).
    ``"auto"``: static when the graph has Conv nodes and calibration data exists, else
    dynamic."""
    import numpy as np
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    ops = _op_types(onnx_bytes)
    if method == "auto":
        method = "static" if "Conv" in ops and calib_X is not None else "dynamic"
    with tempfile.TemporaryDirectory(prefix="lepton-ort-q-") as tmp:
        src, dst = os.path.join(tmp, "model.onnx"), os.path.join(tmp, "model-int8.onnx")
        with open(src, "wb") as f:
            f.write(onnx_bytes)
        with quiet_libraries():
            if method == "dynamic":
                quantize_dynamic(src, dst, weight_type=QuantType.QInt8,
                                 op_types_to_quantize=["MatMul", "Gemm"])
                info = {"backend": "onnxruntime quantize_dynamic (MatMul/Gemm, int8 weights)"}
            elif method == "static":
                X = np.asarray(calib_X[:max_calib], dtype=np.float32)
                name = _input_name(onnx_bytes)

                class Reader(CalibrationDataReader):
                    def __init__(self) -> None:
                        self.it = iter([{name: X[i:i + 32]} for i in range(0, len(X), 32)])

                    def get_next(self) -> Any:
                        return next(self.it, None)

                quantize_static(src, dst, Reader(), quant_format=QuantFormat.QDQ,
                                per_channel=True, activation_type=QuantType.QUInt8,
                                weight_type=QuantType.QInt8,
                                calibrate_method=CalibrationMethod.MinMax)
                info = {"backend": "onnxruntime quantize_static (QDQ, per-channel int8 weights, "
                                   f"uint8 activations, MinMax on {len(X)} calib rows)"}
            else:
                raise ValueError(f"unknown ORT int8 method {method!r}")
        with open(dst, "rb") as f:
            out = f.read()
    info.update(quantize="int8", method=method)
    return out, info


def _input_name(onnx_bytes: bytes) -> str:
    import onnx

    g = onnx.load_from_string(onnx_bytes).graph
    inits = {i.name for i in g.initializer}
    return next(i.name for i in g.input if i.name not in inits)
