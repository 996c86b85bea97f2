"""Compress a trained PyTorch model: prune, fine-tune, quantize, export -- and measure it all.

Every run keeps the original and each step as a *variant*, measured the same way on the
target: parameters, artifact size, latency at batch 1 and batch 64 (medians, timed
round-robin) and accuracy on the eval set. The model passed in is never modified.

Example (a classifier trained on 8x8 digits)::

    from lepton_lab.compress import compress, CompressSettings, save_artifact

    settings = CompressSettings(prune=0.5, finetune_epochs=2, quantize="int8", export="onnx")
    result = compress(model, settings, calib=(X_train, y_train), eval=(X_test, y_test))
    result              # in a notebook: the table (ratios against the original)
    result.plot()       # bars of size, latency b1/b64 and accuracy per variant
    result.best         # the most compressed variant that kept its accuracy
    save_artifact(result.best, "out/")   # -> (path, sha256, size)

which yields the variants ``original``, ``pruned``, ``onnx`` and ``onnx-int8``.

Settings (:class:`CompressSettings`; the ``%lepton compress`` flags of the same names)
----------------------------------------------------------------------------------------
``prune`` (0..0.95, default 0)
    Structured pruning with torch-pruning: that fraction of the channels (Conv) or neurons
    (Linear) of every layer is removed, lowest L2 magnitude first, following the
    dependencies between layers (a removed output channel also removes the next layer's
    input channel and the BatchNorm entry). The layers really shrink: fewer parameters and
    less compute, not a mask. The classifier's outputs are kept. Variant ``pruned``.
``finetune_epochs`` (default 2)
    After pruning, that many epochs of Adam (``lr``, ``batch_size``) on ``calib=(X, Y)``:
    cross-entropy for integer labels, MSE for float targets. Skipped without labels.
``quantize`` (``int8``, ``bf16``, ``fp8`` or none)
    ``int8`` on CPU goes through ONNX Runtime (``onnxruntime.quantization``): it was the
    fastest int8 path measured on CPU (``bench/compress.py``: for a 64-2048-2048-10 MLP on
    one thread, 0.26x / 0.11x the latency of torch fp32 at batch 1 / 64, where torchao's
    int8 took 1.4x / 0.42x). Linear-only graphs get dynamic quantization (int8 weights,
    activations quantized on the fly); graphs with Conv layers get static QDQ quantization
    calibrated on the calib data (dynamic, Linear layers only, without calib data).
    Variants ``onnx`` (fp32, checked) and ``onnx-int8``.
    ``int8`` on GPU uses torchao (``Int8DynamicActivationInt8WeightConfig``: int8 weights and
    activations in the Linear layers); variant ``int8`` / ``pruned+int8``.
    ``int8_backend="torchao"`` or ``"onnxruntime"`` forces one path.
    ``bf16``: the model in bfloat16 (it still takes and returns float32).
    ``fp8``: torchao float8 weights and activations, on an H100-class GPU only
    (compute capability >= 8.9, ``target="gpu"``).
``export`` (``onnx`` or none)
    ``torch.onnx.export`` with a dynamic batch axis, then run in ONNX Runtime and compared
    with the torch module (atol 1e-4, rtol 1e-3 in fp32; the largest difference is kept in
    ``Variant.max_abs_diff``). A mismatch raises :class:`ExportMismatch`.
``target`` (``cpu`` or ``gpu``)
    Where the variants run and are timed. ``gpu`` needs a CUDA GPU.
``max_accuracy_drop`` (points, default 1.0)
    A variant that loses more accuracy than this against the original fails its check and
    is not picked as ``result.best``.
``measure_s`` (default 4)
    Seconds spent timing all the variants (half at batch 1, half at batch 64).

Artifacts: :func:`save_artifact` writes ``model.pt`` (the whole module object; pruned
architectures differ from what the class's constructor builds) or ``model.onnx``;
:func:`load_artifact` reads them back (an ``nn.Module``, or an :class:`OnnxModel` callable).
"""

from __future__ import annotations

from ._core import compress
from ._export import ExportMismatch, OnnxModel, load_artifact, save_artifact
from ._report import CompressResult, Variant
from ._settings import CompressSettings

__all__ = [
    "CompressResult", "CompressSettings", "ExportMismatch", "OnnxModel", "Variant", "compress",
    "load_artifact", "save_artifact",
]
