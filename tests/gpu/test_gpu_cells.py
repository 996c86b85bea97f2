"""%%lepton --gpus on a real GPU host (skipped without CUDA)."""

import pytest

pytestmark = [pytest.mark.gpu, pytest.mark.integration]


def test_gpu_cell_runs_on_the_gpu_and_tensors_come_back_on_cpu(ip):
    res = ip.run_cell("%%lepton --gpus 1\nimport torch\nname = torch.cuda.get_device_name(0)\n"
                      "x = torch.randn(256, 256, device='cuda')\ny = (x @ x).sum(dim=0)\n"
                      "m = torch.nn.Linear(4, 4).cuda()")
    assert res.success, res.error_in_exec
    assert ip.user_ns["name"]
    assert ip.user_ns["y"].device.type == "cpu"
    assert next(ip.user_ns["m"].parameters()).device.type == "cpu"


def test_group_with_a_gpu_has_nccl(ip):
    try:
        res = ip.run_cell("%%lepton --workers 1 --gpus 1\nimport torch, torch.distributed as dist\n"
                          "backend = dist.get_backend()\nt = torch.ones(1, device='cuda')\n"
                          "dist.all_reduce(t)\ntotal = t.item()")
        assert res.success, res.error_in_exec
        assert ip.user_ns["backend"] == "nccl" and ip.user_ns["total"] == 1.0
    finally:
        from lepton_lab.remote._group import stop_group

        stop_group()
