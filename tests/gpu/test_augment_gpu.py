"""lepton_lab.training.augment on CuPy (skipped without a CUDA GPU or without the gpu extra)."""

import numpy as np
import pytest
import torch

from lepton_lab.training.augment import Augment, to_torch

pytestmark = pytest.mark.gpu
cupy = pytest.importorskip("cupy", reason="the gpu extra (cupy-cuda12x) is not installed")

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@pytest.fixture
def images():
    return np.random.default_rng(0).integers(0, 256, (16, 3, 20, 24), dtype=np.uint8)


def test_auto_picks_cupy_on_a_gpu():
    aug = Augment()
    assert aug.xp is cupy and aug.backend == "cupy" and aug.device.type == "cuda"


def test_result_reaches_torch_through_dlpack_without_a_copy(images):
    aug = Augment(mean=MEAN, std=STD, crop=16, padding=2, flip=0.5, seed=0, device="cuda")
    arr = aug.transform(images)
    assert isinstance(arr, cupy.ndarray) and arr.dtype == np.float32
    t = to_torch(arr)
    assert t.is_cuda and t.device.index == arr.device.id
    assert t.data_ptr() == arr.data.ptr
    t.fill_(7.0)
    torch.cuda.synchronize()
    assert float(arr[0, 0, 0, 0]) == 7.0
    out = aug(images)
    assert out.is_cuda and out.shape == (16, 3, 16, 16) and out.dtype == torch.float32


@pytest.mark.parametrize("layout", ["nchw", "nhw", "float"])
def test_cpu_and_gpu_agree_without_random_draws(images, layout):
    x, kwargs = images, dict(mean=MEAN, std=STD)
    if layout == "nhw":
        x, kwargs = images[:, 0], dict(mean=0.5, std=0.25)
    elif layout == "float":
        x = images.astype(np.float32) / 255.0
    cpu = Augment(device="cpu", flip=0.0, **kwargs)(x)
    gpu = Augment(device="cuda", flip=0.0, **kwargs)(x)
    assert gpu.is_cuda and cpu.device.type == "cpu"
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-6, atol=1e-6)


def test_cpu_and_gpu_agree_on_deterministic_crop_and_flip(images):
    # crop == padded size and flip=1 draw nothing, so both backends must match exactly
    kwargs = dict(mean=MEAN, std=STD, crop=(24, 28), padding=2, flip=1.0)
    cpu = Augment(device="cpu", **kwargs)(images)
    gpu = Augment(device="cuda", **kwargs)(images)
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-6, atol=1e-6)


def test_gpu_random_crop_is_a_window_of_the_padded_image():
    n, pad, (h, w) = 32, 2, (5, 4)
    x = np.arange(1, n * 2 * 6 * 7 + 1, dtype=np.float32).reshape(n, 2, 6, 7)
    out = Augment(device="cuda", crop=(h, w), padding=pad, flip=0.5, seed=3)(x).cpu().numpy()
    padded = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    for i in range(n):
        hits = [1 for oy in range(6 + 2 * pad - h + 1) for ox in range(7 + 2 * pad - w + 1)
                for flip in (False, True)
                if np.array_equal(out[i], padded[i, :, oy:oy + h, ox:ox + w][..., ::-1] if flip
                                  else padded[i, :, oy:oy + h, ox:ox + w])]
        assert len(hits) == 1


def test_gpu_seed_is_reproducible(images):
    a, b = (Augment(device="cuda", crop=16, padding=2, flip=0.5, seed=5) for _ in range(2))
    assert torch.equal(a(images), b(images))


def test_bfloat16_output(images):
    aug = Augment(mean=MEAN, std=STD, device="cuda", dtype=torch.bfloat16)
    out = aug(images)
    assert out.dtype == torch.bfloat16 and out.is_cuda
    ref = Augment(mean=MEAN, std=STD, device="cpu")(images)
    torch.testing.assert_close(out.float().cpu(), ref, rtol=1e-2, atol=2e-2)


def test_float16_output_is_still_zero_copy(images):
    aug = Augment(mean=MEAN, std=STD, device="cuda", dtype=torch.float16)
    arr = aug.transform(images)
    assert arr.dtype == np.float16 and to_torch(arr).data_ptr() == arr.data.ptr


def test_gpu_inputs_stay_on_the_gpu(images):
    aug = Augment(mean=MEAN, std=STD, device="cuda")
    ref = aug(images)
    torch.testing.assert_close(aug(cupy.asarray(images)), ref, rtol=0, atol=0)
    torch.testing.assert_close(aug(torch.from_numpy(images).cuda()), ref, rtol=0, atol=0)
    # and a GPU input on the CPU backend comes back to the host
    cpu = Augment(mean=MEAN, std=STD, device="cpu")(cupy.asarray(images))
    torch.testing.assert_close(cpu, ref.cpu(), rtol=1e-6, atol=1e-6)
