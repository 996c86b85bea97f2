"""The settings of a compression run and the checks on its inputs (one-line errors)."""

from __future__ import annotations

import dataclasses
import numbers
from typing import Any

from ..errors import LeptonUsageError

QUANTIZE = ("int8", "fp8", "bf16")
EXPORTS = ("onnx",)
TARGETS = ("cpu", "gpu")
INT8_BACKENDS = ("auto", "onnxruntime", "torchao")


@dataclasses.dataclass(frozen=True)
class CompressSettings:
    """What :func:`~lepton_lab.compress.compress` does; every field is checked on creation.

    prune
        Fraction of the channels/neurons removed from every prunable layer, in [0, 0.95]
        (0: no pruning). Structured and dependency-aware (torch-pruning): the layers really
        get smaller. The classifier's outputs are never pruned.
    quantize
        ``None``, ``"int8"``, ``"bf16"`` or ``"fp8"`` (fp8 needs ``target="gpu"`` on an
        H100-class GPU, compute capability >= 8.9).
    finetune_epochs
        Epochs of fine-tuning after pruning (Adam, ``lr``, ``batch_size``) on the calib data,
        when it has labels: cross-entropy for integer labels, MSE for float targets.
    export
        ``None`` or ``"onnx"``: also export to ONNX, checked against the torch module in
        ONNX Runtime.
    target
        ``"cpu"`` or ``"gpu"``: where the variants run and are timed.
    int8_backend
        ``"auto"`` (default): ONNX Runtime dynamic int8 on CPU (it is the fastest int8 path
        there), torchao int8 on GPU. ``"onnxruntime"`` or ``"torchao"`` force one.
    max_accuracy_drop
        Accuracy points a variant may lose against the original and still be picked as
        ``result.best``.
    measure_s
        Seconds spent timing all variants together (batch 1 and batch 64).
    """

    prune: float = 0.0
    quantize: str | None = None
    finetune_epochs: int = 2
    export: str | None = None
    target: str = "cpu"
    lr: float = 1e-3
    batch_size: int = 64
    int8_backend: str = "auto"
    max_accuracy_drop: float = 1.0
    measure_s: float = 4.0
    seed: int = 0

    def __post_init__(self) -> None:
        def fix(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)

        for name in ("quantize", "export"):
            v = getattr(self, name)
            if isinstance(v, str):
                v = v.strip().lower()
                fix(name, None if v in ("", "none", "no", "off") else v)
        fix("target", str(self.target).strip().lower())
        fix("int8_backend", str(self.int8_backend).strip().lower())
        if isinstance(self.prune, bool) or not isinstance(self.prune, numbers.Real) \
                or not 0.0 <= float(self.prune) <= 0.95:
            raise LeptonUsageError(f"prune must be a fraction in [0, 0.95] (0.5 removes half the "
                                   f"channels), got {self.prune!r}")
        fix("prune", float(self.prune))
        if self.quantize is not None and self.quantize not in QUANTIZE:
            raise LeptonUsageError(f"unknown quantize {self.quantize!r}: use one of "
                                   f"{', '.join(QUANTIZE)} (or none)")
        if self.export is not None and self.export not in EXPORTS:
            raise LeptonUsageError(f"unknown export {self.export!r}: use onnx (or none)")
        if self.target not in TARGETS:
            raise LeptonUsageError(f"unknown target {self.target!r}: use cpu or gpu")
        if self.int8_backend not in INT8_BACKENDS:
            raise LeptonUsageError(f"unknown int8_backend {self.int8_backend!r}: use one of "
                                   f"{', '.join(INT8_BACKENDS)}")
        fix("finetune_epochs", _int(self.finetune_epochs, "finetune_epochs", 0, 10_000))
        fix("batch_size", _int(self.batch_size, "batch_size", 1, 1 << 20))
        fix("seed", _int(self.seed, "seed", 0, 2**32 - 1))
        for name, lo in (("lr", 0.0), ("max_accuracy_drop", -1e-9), ("measure_s", 0.0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, numbers.Real) or not v > lo:
                raise LeptonUsageError(f"{name} must be a positive number, got {v!r}")
            fix(name, float(v))
        if self.quantize == "fp8" and self.target != "gpu":
            raise LeptonUsageError("quantize fp8 needs --target gpu on an H100-class GPU "
                                   "(compute capability >= 8.9); use --quantize int8 on CPU")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def int8_engine(self) -> str:
        """The int8 backend this run uses: ``onnxruntime`` or ``torchao``."""
        if self.int8_backend != "auto":
            return self.int8_backend
        return "torchao" if self.target == "gpu" else "onnxruntime"


def _int(v: Any, name: str, lo: int, hi: int) -> int:
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or not lo <= v <= hi:
        raise LeptonUsageError(f"{name} must be a whole number in [{lo}, {hi}], got {v!r}")
    return int(v)


# -- data ------------------------------------------------------------------------------------
@dataclasses.dataclass
class Data:
    """Inputs (float32 tensor, batch first) and optional labels (int64 or float tensor)."""

    X: Any
    Y: Any = None

    @property
    def classes(self) -> bool:
        """Integer labels: accuracy is measured, fine-tuning uses cross-entropy."""
        import torch

        return self.Y is not None and not torch.is_floating_point(self.Y)


def as_tensor(a: Any, what: str, labels: bool = False) -> Any:
    import numpy as np
    import torch

    if isinstance(a, torch.Tensor):
        t = a.detach().cpu()
    else:
        try:
            t = torch.from_numpy(np.asarray(a))
        except Exception as e:  # object arrays, ragged lists...
            msg = str(e).splitlines()[0] if str(e) else ""
            raise LeptonUsageError(f"{what} must be an array or tensor of numbers, batch first "
                                   f"({type(e).__name__}: {msg})") from None
    if t.ndim == 0 or len(t) == 0:
        raise LeptonUsageError(f"{what} must hold at least one sample (batch first), got "
                               f"shape {tuple(t.shape)}")
    if t.dtype == torch.bool or t.is_complex():
        raise LeptonUsageError(f"{what} must be real numbers, got {t.dtype}")
    if labels:
        return t.long() if not torch.is_floating_point(t) else t.float()
    return t.float()


def as_data(d: Any, what: str) -> Data | None:
    """``X``, ``(X,)`` or ``(X, Y)`` -> :class:`Data` (``None`` stays ``None``)."""
    if d is None:
        return None
    if isinstance(d, Data):
        return d
    if isinstance(d, (tuple, list)) and len(d) in (1, 2) and not _is_numbers(d):
        X = as_tensor(d[0], f"{what} inputs")
        Y = as_tensor(d[1], f"{what} labels", labels=True) if len(d) == 2 and d[1] is not None \
            else None
        if Y is not None and len(Y) != len(X):
            raise LeptonUsageError(f"{what} has {len(X)} inputs but {len(Y)} labels: pass "
                                   f"(X, Y) with one label per sample")
        return Data(X, Y)
    return Data(as_tensor(d, f"{what} inputs"))


def _is_numbers(d: Any) -> bool:
    """A plain list of numbers / rows (one array), as opposed to an (X, Y) pair."""
    import numbers

    return all(isinstance(x, numbers.Number) for x in d)
