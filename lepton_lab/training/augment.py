"""Batch preprocessing and augmentation on the GPU (CuPy) or the CPU (NumPy), handed to torch
without a copy.

:class:`Augment` normalises a batch of images, takes a random crop (optionally from a
zero-padded image) and flips some images horizontally. The array code is written once against
an array module ``xp``: CuPy where a CUDA device is present and the ``gpu`` extra is installed
(``pip install 'lepton-lab[gpu]'``), NumPy otherwise. The result becomes a torch tensor
without a copy: ``torch.from_dlpack`` for CuPy, ``torch.from_numpy`` for NumPy.

Example::

    from lepton_lab.training.augment import Augment
    aug = Augment(mean=(0.49, 0.48, 0.45), std=(0.25, 0.24, 0.26),
                  crop=32, padding=4, flip=0.5, seed=0)
    x = aug(images_uint8)        # N,3,32,32 uint8 (NumPy, CuPy or torch)
    x.dtype, x.device            # torch.float32, cuda:0 (cpu without CuPy or GPU)
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np

from ..errors import LeptonUsageError, MissingDependency

__all__ = ["Augment", "to_torch"]

_INSTALL = "pip install 'lepton-lab[gpu]'"


def _import_cupy() -> tuple[Any, str]:
    """``(cupy, "")``, or ``(None, why)`` when CuPy cannot be imported."""
    try:
        import cupy
    except Exception as exc:  # ImportError, or a CuPy build that cannot load its CUDA libraries
        return None, f"{type(exc).__name__}: {exc}".splitlines()[0]
    return cupy, ""


def _cuda_count(cupy: Any) -> int:
    try:
        return int(cupy.cuda.runtime.getDeviceCount())
    except Exception:  # no driver, or no device
        return 0


def _is_cupy(x: Any) -> bool:
    # Without importing CuPy: it may be absent, and the NumPy path must not pay for the import.
    return type(x).__module__.split(".")[0] == "cupy"


def to_torch(array: Any, dtype: Any = None):
    """``array`` (NumPy or CuPy) as a torch tensor sharing its memory.

    ``torch.from_numpy`` for NumPy, ``torch.from_dlpack`` for CuPy (same device, same
    pointer, ordered on the current stream). Only a ``dtype`` that differs from the array's
    costs a copy (e.g. ``torch.bfloat16``, which NumPy and CuPy lack).
    """
    import torch

    t = torch.from_numpy(array) if isinstance(array, np.ndarray) else torch.from_dlpack(array)
    return t if dtype is None or t.dtype == dtype else t.to(dtype)


def _crop_flip(xp: Any, x: Any, oy: Any, ox: Any, flips: Any, h: int, w: int, pad: int) -> Any:
    """Each sample's ``h x w`` window at ``(oy, ox)`` of ``x`` zero-padded by ``pad``, mirrored
    left-right where ``flips``; ``x`` is N,C,H,W, ``oy``/``ox``/``flips`` have length N.

    One flat ``take`` over broadcast per-sample row and column indices: no Python loop over
    samples, and the padded image is never built (out-of-image positions read a clipped pixel
    and are zeroed by a mask).
    """
    n, c, H, W = x.shape
    it = xp.int32 if x.size < 2**31 else xp.int64
    rows = oy.astype(it)[:, None] + xp.arange(-pad, h - pad, dtype=it)  # N,h rows of x
    cols = ox.astype(it)[:, None] + xp.arange(-pad, w - pad, dtype=it)  # N,w columns of x
    if flips is not None:
        cols = xp.where(flips[:, None], cols[:, ::-1], cols)
    start = (xp.arange(n, dtype=it) * (c * H * W))[:, None] + xp.arange(c, dtype=it) * (H * W)
    idx = ((start[:, :, None, None] + (xp.clip(rows, 0, H - 1) * W)[:, None, :, None])
           + xp.clip(cols, 0, W - 1)[:, None, None, :])  # N,c,h,w flat positions in x
    out = xp.ascontiguousarray(x).ravel().take(idx)
    if pad:
        out *= (((rows >= 0) & (rows < H))[:, None, :, None]
                & ((cols >= 0) & (cols < W))[:, None, None, :])
    return out


def _channel_values(name: str, value: Any) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim > 1 or arr.size == 0 or not np.all(np.isfinite(arr)):
        raise LeptonUsageError(f"{name} must be a number or one number per channel, not {value!r}")
    return arr.reshape(-1)


class Augment:
    """Normalise, randomly crop and flip a batch of images on the GPU (CuPy) or the CPU (NumPy).

    Per batch, in order: a random ``crop`` window of each image zero-padded by ``padding``
    (every image gets its own offset; the padding is pixel value 0, as in torchvision's
    ``RandomCrop``), a left-right flip of each image with probability ``flip``, then
    ``(x * scale - mean) / std`` per channel.

    Args:
        mean, std: a number, or one number per channel.
        crop: output ``(h, w)`` or one int for a square; ``None`` keeps the input size (with
            ``padding`` that is a random shift, the usual CIFAR augmentation).
        padding: zero pixels added on every side before cropping.
        flip: probability of a horizontal flip per image (0 never, 1 always).
        seed: seeds this instance's generator (``RandomState`` of NumPy or CuPy): the same seed
            gives the same crops and flips on the same backend; the CPU and GPU draws differ.
        device: ``"auto"`` (the GPU when CuPy imports and a CUDA device is present, else the
            CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        dtype: torch dtype of the output: ``torch.float32`` (default), ``float16``,
            ``float64``, or ``bfloat16`` (computed in float32, then one cast by torch).
        scale: multiplies the pixels before normalising; the default is ``1/255`` for uint8
            input (so ``mean``/``std`` are given in [0, 1], as with torchvision) and 1 otherwise.

    Call it on a batch N,C,H,W or N,H,W (grayscale, returned as N,1,h,w), uint8 or float, as a
    NumPy array, a CuPy array or a torch tensor; it returns a torch tensor N,C,h,w on
    :attr:`device`. The GPU path copies the input to the GPU once (nothing if it is already
    there) and hands its result to torch through DLPack with no copy; :meth:`transform` returns
    that NumPy/CuPy array itself.

    Example::

        >>> import numpy as np
        >>> aug = Augment(mean=0.5, std=0.25, crop=(24, 24), padding=2, flip=0.5, seed=0,
        ...               device="cpu")
        >>> images = np.random.default_rng(0).integers(0, 256, (8, 28, 28), dtype=np.uint8)
        >>> aug(images).shape
        torch.Size([8, 1, 24, 24])
    """

    def __init__(self, mean: Any = 0.0, std: Any = 1.0, *, crop: Any = None, padding: int = 0,
                 flip: float = 0.0, seed: int | None = None, device: Any = "auto",
                 dtype: Any = None, scale: float | None = None):
        import torch

        self.mean = _channel_values("mean", mean)
        self.std = _channel_values("std", std)
        if np.any(self.std == 0):
            raise LeptonUsageError(f"std must not be 0 (got {std!r})")
        if crop is not None:
            crop = (crop, crop) if isinstance(crop, (int, np.integer)) else tuple(crop)
            if len(crop) != 2 or not all(isinstance(v, (int, np.integer)) and v > 0 for v in crop):
                raise LeptonUsageError(f"crop must be a positive int or (h, w), not {crop!r}")
            crop = (int(crop[0]), int(crop[1]))
        self.crop: tuple[int, int] | None = crop
        if not isinstance(padding, (int, np.integer)) or padding < 0:
            raise LeptonUsageError(f"padding must be an int >= 0, not {padding!r}")
        self.padding = int(padding)
        if not 0.0 <= float(flip) <= 1.0:
            raise LeptonUsageError(f"flip is a probability in [0, 1], not {flip!r}")
        self.flip = float(flip)
        self.scale = None if scale is None else float(scale)

        if isinstance(dtype, str):
            dtype = getattr(torch, dtype, None) if dtype.isidentifier() else None
        self.dtype = torch.float32 if dtype is None else dtype
        if not isinstance(self.dtype, torch.dtype) or not self.dtype.is_floating_point:
            raise LeptonUsageError(f"dtype must be a torch floating dtype, not {dtype!r}")
        # The dtype the array maths produces; bfloat16 (unknown to NumPy/CuPy) comes from
        # float32 in one torch cast.
        self._out = {torch.float16: np.float16, torch.float64: np.float64}.get(self.dtype,
                                                                               np.float32)

        self.xp, self.device = self._backend(device)
        self.backend = self.xp.__name__
        with self._on_device():
            self._rng = self.xp.random.RandomState(seed)
        self._coeffs: dict[tuple[int, float, Any], tuple[Any, Any]] = {}

    def _backend(self, device: Any) -> tuple[Any, Any]:
        import torch

        spec = str(device)
        if spec == "cpu":
            return np, torch.device("cpu")
        if spec == "auto":
            cupy, _ = _import_cupy()
            if cupy is not None and _cuda_count(cupy) > 0:
                return cupy, torch.device("cuda", cupy.cuda.runtime.getDevice())
            return np, torch.device("cpu")
        try:
            dev = torch.device(spec)
        except (RuntimeError, ValueError):
            dev = None
        if dev is None or dev.type != "cuda":
            raise LeptonUsageError(
                f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', not {device!r}")
        cupy, why = _import_cupy()
        if cupy is None:
            raise MissingDependency(
                f"device={spec!r} needs CuPy ({why}); install it with: {_INSTALL}")
        count = _cuda_count(cupy)
        index = dev.index
        if index is None:
            index = cupy.cuda.runtime.getDevice() if count else 0
        if index >= count:
            hint = f"an index below {count}" if count else "device='auto' or 'cpu'"
            raise LeptonUsageError(
                f"device={spec!r} but {count} CUDA device(s) are visible; use {hint}")
        return cupy, torch.device("cuda", index)

    def _on_device(self):
        if self.xp is np:
            return contextlib.nullcontext()
        return self.xp.cuda.Device(self.device.index)

    def _to_backend(self, images: Any) -> Any:
        """``images`` as an array of this backend, copied only when it lives elsewhere."""
        xp = self.xp
        try:
            import torch
        except ImportError:  # pragma: no cover - torch is a dependency
            torch = None
        if torch is not None and isinstance(images, torch.Tensor):
            t = images.detach()
            if t.dtype == torch.bfloat16:
                t = t.float()  # NumPy and CuPy have no bfloat16
            if xp is np:
                return t.cpu().numpy()
            return xp.from_dlpack(t.to(self.device))  # no copy when already on this GPU
        if _is_cupy(images):
            if xp is np:
                return images.get()
            if images.device.id != self.device.index:
                return xp.from_dlpack(torch.from_dlpack(images).to(self.device))
            return images
        arr = np.asarray(images)
        return arr if xp is np else xp.asarray(arr)

    def _coefficients(self, channels: int, scale: float, dtype: Any) -> tuple[Any, Any]:
        """``(a, b)`` with ``x * a + b == (x * scale - mean) / std``, shaped 1,C,1,1; cached on
        the backend, so the GPU path uploads them once."""
        key = (channels, scale, np.dtype(dtype))
        if key not in self._coeffs:
            for name, values in (("mean", self.mean), ("std", self.std)):
                if values.size not in (1, channels):
                    raise LeptonUsageError(
                        f"{name} has {values.size} values but the images have {channels} "
                        f"channel(s); give one value per channel or a single number")
            a = np.broadcast_to(scale / self.std, (channels,)).reshape(1, channels, 1, 1)
            b = np.broadcast_to(-self.mean / self.std, (channels,)).reshape(1, channels, 1, 1)
            self._coeffs[key] = (self.xp.asarray(a.astype(dtype)),
                                 self.xp.asarray(b.astype(dtype)))
        return self._coeffs[key]

    def transform(self, images: Any) -> Any:
        """The augmented batch as a new N,C,h,w array of this backend (NumPy or CuPy).

        The dtype is float32 (float16/float64 when that ``dtype`` was asked for; float32 for
        bfloat16). ``__call__`` is this followed by :func:`to_torch`.
        """
        with self._on_device():
            return self._transform(images)

    def _transform(self, images: Any) -> Any:
        xp = self.xp
        x = self._to_backend(images)
        if x.ndim == 3:
            x = x[:, None]
        if x.ndim != 4:
            raise LeptonUsageError(
                f"expected a batch of images N,C,H,W or N,H,W (grayscale), got shape "
                f"{tuple(x.shape)}; add the batch axis with x[None] for a single image")
        kind = np.dtype(x.dtype).kind
        if kind not in "uif":
            raise LeptonUsageError(f"images must be integer or float, not {x.dtype}")
        n, c, H, W = x.shape
        pad = self.padding
        h, w = self.crop or (H, W)
        if h > H + 2 * pad or w > W + 2 * pad:
            raise LeptonUsageError(
                f"crop {h}x{w} is larger than the {H}x{W} images padded by {pad} "
                f"({H + 2 * pad}x{W + 2 * pad}); use a smaller crop or more padding")

        work = np.float64 if self._out == np.float64 else np.float32
        scale = self.scale
        if scale is None:
            scale = 1.0 / 255.0 if np.dtype(x.dtype) == np.uint8 else 1.0
        a, b = self._coefficients(c, scale, work)  # checks mean/std against the channels

        # Per-sample draws, all on the backend's generator (on the GPU for CuPy).
        rng = self._rng
        shifts = (h, w) != (H + 2 * pad, W + 2 * pad)
        oy = rng.randint(0, H + 2 * pad - h + 1, size=n) if shifts else xp.zeros(n, xp.int64)
        ox = rng.randint(0, W + 2 * pad - w + 1, size=n) if shifts else xp.zeros(n, xp.int64)
        flips = None
        if self.flip >= 1.0:
            flips = xp.ones(n, dtype=bool)
        elif self.flip > 0.0:
            flips = rng.random_sample(n) < self.flip
        if shifts or pad or flips is not None:
            x = _crop_flip(xp, x, oy, ox, flips, h, w, pad)

        # Normalise: one multiply into a new array (never into the caller's), one add.
        out = xp.empty(x.shape, dtype=work)
        xp.multiply(x, a, out=out)
        out += b
        return out if self._out == work else out.astype(self._out)

    def __call__(self, images: Any):
        """Augment ``images`` and return the batch as a torch tensor on :attr:`device`."""
        return to_torch(self.transform(images), self.dtype)

    def __repr__(self) -> str:
        return (f"Augment(mean={self.mean.tolist()}, std={self.std.tolist()}, crop={self.crop}, "
                f"padding={self.padding}, flip={self.flip}, device='{self.device}', "
                f"dtype={self.dtype}, backend={self.backend})")
