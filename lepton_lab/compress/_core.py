"""``compress()``: prune, fine-tune, quantize, export, then measure every variant."""

from __future__ import annotations

import contextlib
import copy
import platform
import time
from pathlib import Path
from typing import Any, Callable

from ..errors import LeptonUsageError
from . import _export, _measure, _prune, _quantize
from ._report import CompressResult, Variant
from ._settings import CompressSettings, Data, as_data, as_tensor

Progress = Callable[[str, int, int], None]


def compress(model: Any, settings: CompressSettings | dict[str, Any] | None = None, *,
             calib: Any = None, eval: Any = None, example_input: Any = None,
             progress: Progress | None = None) -> CompressResult:
    """Compress ``model`` as ``settings`` say and measure every step; see the package
    docstring (``help(lepton_lab.compress)``) for the flags and an example.

    ``calib``: ``X`` or ``(X, Y)`` (arrays or tensors, batch first) used for pruning's trace,
    fine-tuning (with labels) and int8 calibration. ``eval``: ``(X, Y)`` for accuracy (integer
    labels) and the inputs that are timed. ``example_input``: one batch, when there is no
    calib data. ``progress(stage, done, total)`` is called as the stages advance; the stages
    are ``prepare``, ``prune``, ``finetune`` (per epoch), ``quantize``, ``export``,
    ``measure`` (per batch size) and ``accuracy`` (per variant).
    The model passed in is never modified: every variant is made from a deep copy."""
    import torch
    from torch import nn

    t_start = time.perf_counter()
    if not isinstance(model, nn.Module):
        raise LeptonUsageError(f"compress() needs a torch.nn.Module, got {type(model).__name__}")
    if settings is None:
        settings = CompressSettings()
    elif isinstance(settings, dict):
        try:
            settings = CompressSettings(**settings)
        except TypeError as e:
            raise LeptonUsageError(f"bad compress settings: {e}") from None
    elif not isinstance(settings, CompressSettings):
        raise LeptonUsageError(f"settings must be a CompressSettings, got "
                               f"{type(settings).__name__}")
    if progress is not None and not callable(progress):
        raise LeptonUsageError("progress must be a callable progress(stage, done, total)")
    report: Progress = progress or (lambda stage, done, total: None)
    device = _device(settings)
    if settings.quantize == "fp8":
        _quantize.check_fp8(device)

    calib_d, eval_d = as_data(calib, "calib"), as_data(eval, "eval")
    example = _example(calib_d, eval_d, example_input)
    report("prepare", 0, 1)
    original = copy.deepcopy(model).to(device).eval()
    out = _check_fits(original, example, calib_d, eval_d, device)
    if eval_d is not None and eval_d.classes:
        _check_labels(eval_d, out, "eval")
    if calib_d is not None and calib_d.classes:
        _check_labels(calib_d, out, "calib")
    report("prepare", 1, 1)

    variants = [Variant("original", module=original, format="torch",
                        settings={"source": "the model as given"})]
    base, prefix = original, ""
    if settings.prune > 0:
        pruned, info = _prune.prune(original, settings, example.to(device), report)
        if settings.finetune_epochs > 0:
            if calib_d is None:
                info["finetune"] = "skipped: no calib data"
            else:
                info.update(_prune.finetune(pruned, calib_d, settings, device, report))
        variants.append(Variant("pruned", module=pruned, format="torch", settings=info))
        base, prefix = pruned, "pruned+"

    # A torch-side quantized variant goes last (after an fp32 ONNX export, if any): it is the
    # most compressed one, so result.best picks it when it passes.
    quantized: list[Variant] = []
    q, engine = settings.quantize, settings.int8_engine
    if q is not None and not (q == "int8" and engine == "onnxruntime"):
        report("quantize", 0, 1)
        if q == "int8":
            module, info = _quantize.torchao_int8(base)
        elif q == "fp8":
            module, info = _quantize.torchao_fp8(base, device)
        else:
            module, info = _quantize.to_bf16(base)
        quantized.append(Variant(prefix + q, module=module.to(device).eval(), format="torch",
                                 settings=info))
        report("quantize", 1, 1)

    check_X = _measure.rows_of(eval_d.X if eval_d is not None else
                               calib_d.X if calib_d is not None else example, 64)
    if settings.export == "onnx" or (q == "int8" and engine == "onnxruntime"):
        report("export", 0, 2)
        onnx_bytes, info = _export.export_onnx(base, example)
        fp32 = _export.OnnxModel(onnx_bytes, device)
        info["max_abs_diff_vs_torch"] = diff = _export.verify_onnx(fp32, base, check_X)
        info["from"] = "pruned" if prefix else "original"
        variants.append(Variant("onnx", onnx_bytes=onnx_bytes, format="onnx", settings=info,
                                max_abs_diff=diff))
        report("export", 1, 2)
        if q == "int8" and engine == "onnxruntime":
            report("quantize", 0, 1)
            cal = calib_d.X if calib_d is not None else None
            q_bytes, info = _quantize.ort_int8(onnx_bytes, None if cal is None else cal.numpy())
            q_model = _export.OnnxModel(q_bytes, device)
            xs = check_X.numpy()
            diff = float(abs(q_model.run(xs) - fp32.run(xs)).max())
            info["max_abs_diff_vs_fp32_onnx"] = diff
            variants.append(Variant("onnx-int8", onnx_bytes=q_bytes, format="onnx",
                                    settings=info, max_abs_diff=diff))
            report("quantize", 1, 1)
        report("export", 2, 2)
    variants += quantized

    _measure_all(variants, settings, device, check_X, eval_d, report)
    info = {"device": _describe(device), "target": settings.target,
            "threads": torch.get_num_threads(), "torch": torch.__version__,
            "elapsed_s": time.perf_counter() - t_start}
    return CompressResult(variants=variants, settings=settings, info=info)


def _measure_all(variants: list[Variant], settings: CompressSettings, device: str,
                 timing_X: Any, eval_d: Data | None, report: Progress) -> None:
    runners = {v.name: _measure.Runner(v, device) for v in variants}
    for v in variants:
        if v.format == "onnx":
            v.settings["providers"] = list(runners[v.name].onnx.providers)
    for v in variants:
        if v.format == "onnx":
            v.params = _export.onnx_params(v.onnx_bytes)
            v.size_bytes = len(v.onnx_bytes)
        else:
            v.params = _prune.count_params(v.module)
            v.size_bytes = _measure.torch_size(v.module)
    lat = _measure.latencies(runners, timing_X, settings.measure_s, progress=report)
    for v in variants:
        v.latency_ms_b1, v.latency_ms_b64 = lat[v.name][1], lat[v.name][64]
    if eval_d is not None and eval_d.classes:
        for i, v in enumerate(variants):
            report("accuracy", i, len(variants))
            v.accuracy = _measure.accuracy(runners[v.name], eval_d.X, eval_d.Y)
        report("accuracy", len(variants), len(variants))
        base = variants[0].accuracy
        for v in variants:
            v.passed = v.accuracy >= base - settings.max_accuracy_drop


def _device(settings: CompressSettings) -> str:
    import torch

    if settings.target == "gpu":
        if not torch.cuda.is_available():
            raise LeptonUsageError("--target gpu needs a GPU on the cluster (none is visible "
                                   "here); run with --gpus 1 or use --target cpu")
        return "cuda"
    return "cpu"


def _describe(device: str) -> str:
    import torch

    if device == "cuda":
        return f"GPU {torch.cuda.get_device_name()}"
    name = platform.processor() or "CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    return f"CPU {name}, {torch.get_num_threads()} torch threads"


def _example(calib: Data | None, eval_d: Data | None, example_input: Any) -> Any:
    if example_input is not None:
        ex = as_tensor(example_input, "example_input")
    elif calib is not None:
        ex = calib.X
    elif eval_d is not None:
        ex = eval_d.X
    else:
        raise LeptonUsageError("compress() needs calib data (X or (X, Y)) or an example_input "
                               "batch to know the model's input shape")
    shape = tuple(ex.shape[1:])
    for d, what in ((calib, "calib"), (eval_d, "eval")):
        if d is not None and tuple(d.X.shape[1:]) != shape:
            raise LeptonUsageError(f"{what} inputs have shape {tuple(d.X.shape[1:])} per sample "
                                   f"but the model's input is {shape} (batch, *{shape}); pass "
                                   f"{what} data shaped like the model input")
    return ex[:1].contiguous()


def _check_fits(model: Any, example: Any, calib: Data | None, eval_d: Data | None,
                device: str) -> Any:
    """Run the model once on 2 rows; a failure is a one-line error naming the input shape."""
    import torch

    X = calib.X if calib is not None else eval_d.X if eval_d is not None else example
    x = _measure.rows_of(X, 2).to(device)
    try:
        with torch.no_grad():
            out = model(x)
    except Exception as e:
        msg = str(e).splitlines()[0] if str(e) else ""
        raise LeptonUsageError(f"the model fails on inputs of shape {tuple(x.shape)} "
                               f"(batch, *{tuple(x.shape[1:])}) ({type(e).__name__}: {msg}); "
                               "pass data shaped like the model input") from None
    first = out[0] if isinstance(out, (tuple, list)) else out
    if not isinstance(first, torch.Tensor) or first.ndim == 0 or len(first) != 2:
        raise LeptonUsageError("the model must return a tensor (batch first) to be compressed, "
                               f"got {type(first).__name__}")
    return first


def _check_labels(d: Data, out: Any, what: str) -> None:
    n = out.shape[1] if out.ndim == 2 else None
    if n is None:
        raise LeptonUsageError(f"{what} has integer labels but the model returns shape "
                               f"{tuple(out.shape)}, not (batch, classes); pass float targets "
                               "or no labels")
    lo, hi = int(d.Y.min()), int(d.Y.max())
    if lo < 0 or hi >= n:
        raise LeptonUsageError(f"{what} labels range over [{lo}, {hi}] but the model has {n} "
                               f"outputs; labels must be class indices in [0, {n - 1}]")
