"""lepton_lab.training.augment on the CPU (NumPy backend); the CuPy path is in tests/gpu."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import torch

from lepton_lab.errors import LeptonUsageError, MissingDependency
from lepton_lab.training.augment import Augment, to_torch


def cpu_aug(**kwargs) -> Augment:
    return Augment(device="cpu", **kwargs)


def distinct(n: int, c: int, h: int, w: int) -> np.ndarray:
    """Float images whose pixels all differ and are non-zero (0 is the padding value)."""
    return np.arange(1, n * c * h * w + 1, dtype=np.float32).reshape(n, c, h, w)


def window_of(padded: np.ndarray, out: np.ndarray) -> tuple[int, int, bool]:
    """``(oy, ox, flipped)`` where ``out`` (C,h,w) is a window of ``padded`` (C,H,W)."""
    _, h, w = out.shape
    hits = [(oy, ox, flipped)
            for oy in range(padded.shape[1] - h + 1) for ox in range(padded.shape[2] - w + 1)
            for flipped in (False, True)
            if np.array_equal(padded[:, oy:oy + h, ox:ox + w][..., ::-1] if flipped
                              else padded[:, oy:oy + h, ox:ox + w], out)]
    assert len(hits) == 1, f"output is not exactly one window of the padded image: {hits}"
    return hits[0]


# -- shapes and dtypes ----------------------------------------------------------------------


@pytest.mark.parametrize("shape, channels", [((4, 10, 12), 1), ((4, 3, 10, 12), 3)])
@pytest.mark.parametrize("dtype", [np.uint8, np.float32, np.float64])
def test_shapes_and_dtype(shape, channels, dtype):
    x = np.random.default_rng(0).integers(0, 256, shape).astype(dtype)
    out = cpu_aug(crop=(8, 9), padding=1, flip=0.5, seed=0)(x)
    assert isinstance(out, torch.Tensor)
    assert out.shape == (4, channels, 8, 9) and out.dtype == torch.float32
    assert out.device.type == "cpu"


def test_without_crop_the_size_is_kept():
    out = cpu_aug()(np.zeros((2, 3, 7, 5), np.uint8))
    assert out.shape == (2, 3, 7, 5)


@pytest.mark.parametrize("dtype, np_dtype", [(torch.float16, np.float16),
                                             (torch.float64, np.float64),
                                             (torch.bfloat16, np.float32), ("bfloat16", None)])
def test_output_dtype(dtype, np_dtype):
    x = np.random.default_rng(1).integers(0, 256, (3, 2, 6, 6), dtype=np.uint8)
    aug = cpu_aug(mean=0.5, std=0.25, dtype=dtype)
    out = aug(x)
    assert out.dtype == (getattr(torch, dtype) if isinstance(dtype, str) else dtype)
    ref = cpu_aug(mean=0.5, std=0.25, dtype=torch.float64)(x)
    torch.testing.assert_close(out.double(), ref, rtol=1e-2, atol=1e-2)
    if np_dtype is not None:
        assert aug.transform(x).dtype == np_dtype


def test_torch_and_list_inputs():
    x = np.random.default_rng(2).integers(0, 256, (2, 3, 4, 4), dtype=np.uint8)
    aug = cpu_aug(mean=0.3, std=0.2)
    ref = aug(x)
    torch.testing.assert_close(aug(torch.from_numpy(x)), ref)
    torch.testing.assert_close(aug(x.tolist()), aug(x.astype(np.int64)))
    bf = torch.from_numpy(x).to(torch.bfloat16)  # NumPy has no bfloat16: read as float32
    torch.testing.assert_close(cpu_aug(scale=1 / 255, mean=0.3, std=0.2)(bf), ref)


# -- normalisation --------------------------------------------------------------------------


def test_uint8_is_scaled_to_unit_range_then_normalised_per_channel():
    x = np.random.default_rng(3).integers(0, 256, (5, 3, 4, 6), dtype=np.uint8)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    out = cpu_aug(mean=mean, std=std)(x).numpy()
    for c in range(3):
        want = (x[:, c].astype(np.float64) / 255.0 - mean[c]) / std[c]
        np.testing.assert_allclose(out[:, c], want, rtol=1e-5, atol=1e-5)


def test_float_input_is_not_rescaled_and_scalar_mean_std():
    x = np.random.default_rng(4).normal(10.0, 3.0, (2, 2, 3, 3)).astype(np.float32)
    out = cpu_aug(mean=10.0, std=3.0)(x).numpy()
    np.testing.assert_allclose(out, (x - 10.0) / 3.0, rtol=1e-5, atol=1e-5)


def test_explicit_scale():
    x = np.arange(16, dtype=np.uint8).reshape(1, 1, 4, 4)
    out = cpu_aug(scale=2.0, mean=1.0, std=0.5)(x).numpy()
    np.testing.assert_allclose(out[0, 0], (x[0, 0] * 2.0 - 1.0) / 0.5)


def test_grayscale_gets_a_channel_axis():
    x = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    out = cpu_aug(scale=1.0)(x).numpy()
    assert out.shape == (2, 1, 3, 4)
    np.testing.assert_array_equal(out[:, 0], x)


def test_the_input_is_never_modified():
    x = distinct(2, 1, 3, 3)
    before = x.copy()
    arr = cpu_aug(mean=5.0, std=2.0).transform(x)
    np.testing.assert_array_equal(x, before)
    assert not np.shares_memory(arr, x)


# -- crop and flip --------------------------------------------------------------------------


def test_random_crop_is_a_window_of_the_zero_padded_image():
    n, pad, (h, w) = 64, 2, (5, 4)
    x = distinct(n, 2, 6, 7)
    out = cpu_aug(crop=(h, w), padding=pad, seed=7, scale=1.0)(x).numpy()
    padded = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    offsets = set()
    for i in range(n):
        oy, ox, flipped = window_of(padded[i], out[i])
        assert not flipped
        offsets.add((oy, ox))
    # every sample draws its own offset: many distinct ones, reaching into the padding
    assert len(offsets) > 20
    assert min(o[0] for o in offsets) < pad and max(o[0] for o in offsets) > 6 + 2 * pad - h - pad
    assert (out == 0).any()


def test_crop_offsets_follow_the_seeded_generator():
    n, pad, (h, w), H, W = 16, 3, (4, 5), 6, 7
    x = distinct(n, 1, H, W)
    out = cpu_aug(crop=(h, w), padding=pad, flip=0.5, seed=11, scale=1.0)(x).numpy()
    rng = np.random.RandomState(11)  # the same draws, in the same order
    oy = rng.randint(0, H + 2 * pad - h + 1, size=n)
    ox = rng.randint(0, W + 2 * pad - w + 1, size=n)
    flips = rng.random_sample(n) < 0.5
    padded = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    for i in range(n):
        want = padded[i, :, oy[i]:oy[i] + h, ox[i]:ox[i] + w]
        np.testing.assert_array_equal(out[i], want[..., ::-1] if flips[i] else want)


def test_padding_alone_is_a_random_shift_of_the_same_size():
    x = distinct(8, 3, 5, 5)
    out = cpu_aug(padding=2, seed=0, scale=1.0)(x).numpy()
    assert out.shape == x.shape
    padded = np.pad(x, ((0, 0), (0, 0), (2, 2), (2, 2)))
    for i in range(8):
        window_of(padded[i], out[i])


def test_crop_of_the_whole_padded_image_is_the_padded_image():
    x = distinct(2, 1, 3, 4)
    out = cpu_aug(crop=(5, 6), padding=1, scale=1.0)(x).numpy()
    np.testing.assert_array_equal(out, np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1))))


def test_flip_one_flips_every_image_exactly():
    x = distinct(3, 2, 4, 5)
    out = cpu_aug(flip=1.0, scale=1.0)(x).numpy()
    np.testing.assert_array_equal(out, x[..., ::-1])


def test_flip_zero_never_flips():
    x = distinct(3, 2, 4, 5)
    np.testing.assert_array_equal(cpu_aug(flip=0.0, scale=1.0)(x).numpy(), x)


def test_flip_half_flips_about_half():
    n = 4000
    x = np.broadcast_to(np.arange(1, 5, dtype=np.float32), (n, 1, 2, 4)).copy()
    out = cpu_aug(flip=0.5, seed=3, scale=1.0)(x).numpy()
    flipped = (out[:, 0, 0, 0] == 4)
    assert np.all(flipped | (out[:, 0, 0, 0] == 1))
    np.testing.assert_array_equal(out[flipped], x[flipped][..., ::-1])
    assert 0.45 < flipped.mean() < 0.55


# -- reproducibility ------------------------------------------------------------------------


def test_same_seed_same_batches_and_draws_continue():
    x = distinct(16, 3, 8, 8)
    a, b = (cpu_aug(crop=6, padding=2, flip=0.5, seed=42) for _ in range(2))
    first_a, first_b = a(x), b(x)
    torch.testing.assert_close(first_a, first_b, rtol=0, atol=0)
    torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)
    assert not torch.equal(a(x), first_a)  # the next batch gets new draws
    assert not torch.equal(cpu_aug(crop=6, padding=2, flip=0.5, seed=43)(x), first_a)


# -- zero-copy hand-off ---------------------------------------------------------------------


def test_cpu_result_reaches_torch_without_a_copy():
    aug = cpu_aug(mean=0.5, std=0.5, crop=4, padding=1, flip=0.5, seed=0)
    arr = aug.transform(np.zeros((2, 3, 5, 5), np.uint8))
    assert isinstance(arr, np.ndarray) and arr.dtype == np.float32
    t = to_torch(arr)
    assert t.data_ptr() == arr.ctypes.data
    assert np.shares_memory(t.numpy(), arr)
    t[0, 0, 0, 0] = 123.0
    assert arr[0, 0, 0, 0] == 123.0


def test_to_torch_casts_only_when_asked():
    arr = np.ones((2, 2), np.float32)
    assert to_torch(arr, torch.float32).data_ptr() == arr.ctypes.data
    assert to_torch(arr, torch.bfloat16).dtype == torch.bfloat16


# -- backend choice -------------------------------------------------------------------------


def fake_cupy(devices: int) -> types.ModuleType:
    """A stand-in ``cupy`` module that imports but reports ``devices`` CUDA devices."""
    mod = types.ModuleType("cupy")
    mod.cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(
        getDeviceCount=lambda: devices, getDevice=lambda: 0))
    return mod


def test_explicit_cuda_without_cupy_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)  # import cupy -> ImportError
    with pytest.raises(MissingDependency) as err:
        Augment(device="cuda")
    msg = str(err.value)
    assert "pip install 'lepton-lab[gpu]'" in msg and "CuPy" in msg and "\n" not in msg
    with pytest.raises(MissingDependency):
        Augment(device="cuda:1")


@pytest.mark.parametrize("cupy", [None, fake_cupy(0)])
def test_auto_falls_back_to_numpy(monkeypatch, cupy):
    monkeypatch.setitem(sys.modules, "cupy", cupy)
    aug = Augment(device="auto")
    assert aug.xp is np and aug.backend == "numpy" and aug.device == torch.device("cpu")
    assert aug(np.zeros((1, 2, 2), np.uint8)).device.type == "cpu"


def test_explicit_cuda_with_cupy_but_no_gpu_is_a_usage_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy(0))
    with pytest.raises(LeptonUsageError, match="0 CUDA device"):
        Augment(device="cuda")


def test_cpu_never_imports_cupy(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)
    assert Augment(device=torch.device("cpu")).backend == "numpy"


# -- bad input: one line that says what to do -----------------------------------------------


def one_line(exc_info) -> str:
    msg = str(exc_info.value)
    assert msg and "\n" not in msg
    return msg


@pytest.mark.parametrize("shape", [(4, 4), (1, 1, 3, 4, 4), (5,)])
def test_wrong_ndim(shape):
    with pytest.raises(LeptonUsageError) as err:
        cpu_aug()(np.zeros(shape, np.uint8))
    assert "N,C,H,W or N,H,W" in one_line(err)
    assert isinstance(err.value, ValueError)


def test_crop_larger_than_padded_image():
    with pytest.raises(LeptonUsageError) as err:
        cpu_aug(crop=(9, 8), padding=1)(np.zeros((2, 3, 6, 6), np.uint8))
    msg = one_line(err)
    assert "9x8" in msg and "8x8" in msg and "smaller crop or more padding" in msg
    cpu_aug(crop=(8, 8), padding=1)(np.zeros((2, 3, 6, 6), np.uint8))  # exactly fits


@pytest.mark.parametrize("kwargs, images, words", [
    (dict(mean=(0.5, 0.5, 0.5)), np.zeros((2, 4, 4), np.uint8), "mean has 3 values"),
    (dict(std=(1.0, 1.0)), np.zeros((2, 3, 4, 4), np.uint8), "std has 2 values"),
])
def test_mean_std_must_match_the_channels(kwargs, images, words):
    with pytest.raises(LeptonUsageError) as err:
        cpu_aug(**kwargs)(images)
    msg = one_line(err)
    assert words in msg and "one value per channel" in msg


@pytest.mark.parametrize("kwargs, words", [
    (dict(std=0.0), "std must not be 0"),
    (dict(mean=[[0.1]]), "one number per channel"),
    (dict(flip=1.5), "probability"),
    (dict(crop=(3, 0)), "crop must be"),
    (dict(crop=(1, 2, 3)), "crop must be"),
    (dict(padding=-1), "padding must be"),
    (dict(dtype=torch.int64), "floating dtype"),
    (dict(device="mps"), "'auto', 'cpu', 'cuda'"),
])
def test_bad_settings(kwargs, words):
    kwargs.setdefault("device", "cpu")
    with pytest.raises(LeptonUsageError) as err:
        Augment(**kwargs)
    assert words in one_line(err)


def test_non_numeric_images():
    with pytest.raises(LeptonUsageError) as err:
        cpu_aug()(np.zeros((1, 2, 2), bool))
    assert "integer or float" in one_line(err)
