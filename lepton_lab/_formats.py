"""The model formats that the registry stores and every layer loads: torch modules (pickled
with cloudpickle) and ONNX graphs, run here in an ONNX Runtime session (:class:`OnnxModel`).

Ground layer: the registry, compression and serving all use it. It imports nothing of
Lepton's, and only the standard library at module level (torch and onnxruntime when used).
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from typing import Any


@contextlib.contextmanager
def quiet_libraries():
    """Silence the chatter of torchao, torch's exporter and ONNX Runtime's quantizer (missing
    optional CUDA kernels or Triton, "consider pre-processing", deprecations) while they run.

    The libraries' own loggers get level ERROR for the duration (their child loggers inherit
    it); records logged on the root logger (ONNX Runtime's quantizer does that) are filtered
    at the root, so other loggers of the process are left alone."""
    names = ("torchao", "torch.utils._pytree", "torch.onnx", "onnxruntime", "onnxscript")
    loggers = [logging.getLogger(n) for n in names]
    saved = [lg.level for lg in loggers]
    root = logging.getLogger()

    class Drop(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return record.levelno >= logging.ERROR

    drop = Drop()
    root.addFilter(drop)
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        root.removeFilter(drop)
        for lg, level in zip(loggers, saved):
            lg.setLevel(level)


class OnnxModel:
    """An ONNX graph in an ONNX Runtime session, callable like a module.

    ``OnnxModel(onnx_bytes)(x)`` takes a NumPy array or a torch tensor (batch first) and
    returns the first output in the same kind. It pickles as its bytes (the session is
    rebuilt on load), so it can be shipped to another process."""

    def __init__(self, onnx_bytes: bytes, device: str = "cpu", threads: int | None = None):
        self.onnx_bytes, self.device, self.threads = onnx_bytes, device, threads
        self._open()

    def _open(self) -> None:
        import onnxruntime as ort
        import torch

        so = ort.SessionOptions()
        # the same thread count as torch: a like-for-like comparison with the torch variants
        so.intra_op_num_threads = self.threads or torch.get_num_threads()
        so.log_severity_level = 3
        providers = ["CPUExecutionProvider"]
        if self.device == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        with quiet_libraries():
            self.session = ort.InferenceSession(self.onnx_bytes, so, providers=providers)
        self.input_name = self.session.get_inputs()[0].name
        self.providers = self.session.get_providers()

    def run(self, x: Any) -> Any:
        """NumPy float32 in, NumPy out (the first output)."""
        return self.session.run(None, {self.input_name: x})[0]

    def __call__(self, x: Any) -> Any:
        import numpy as np
        import torch

        if isinstance(x, torch.Tensor):
            out = self.run(x.detach().float().cpu().numpy())
            return torch.from_numpy(out)
        return self.run(np.asarray(x, dtype=np.float32))

    def __getstate__(self) -> dict[str, Any]:
        return {"onnx_bytes": self.onnx_bytes, "device": self.device, "threads": self.threads}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._open()
