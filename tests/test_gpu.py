"""The GPU path: bf16 autocast training, CUDA SDPA, compiled blocks and FID on CUDA.

Marked `gpu` (run them with `pytest -m gpu`); skipped, with the reason, where CUDA is absent.
`bench/gpu_check.py` runs them on a GPU machine and records the counts.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from gat_core.config import TrialConfig

NO_CUDA = "needs a CUDA GPU (torch.cuda.is_available() is False)"
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_CUDA)]


def _tiny_trial(device: str) -> TrialConfig:
    return TrialConfig.model_validate({
        "dataset": {"name": "shapes", "resolution": 16, "size": 64},
        "model": {"width": 64, "depth": 4, "heads": 4, "patch_size": 2},
        "train": {"steps": 4, "batch_size": 16, "precision": "bf16", "device": device}})


def test_bf16_autocast_training_step_on_cuda(tmp_path):
    from gat_core.gan_trainer import GANTrainer

    trainer = GANTrainer(_tiny_trial("cuda"), tmp_path)
    assert trainer.device.type == "cuda"
    g0 = [p.detach().clone() for p in trainer.G.parameters()]
    d0 = [p.detach().clone() for p in trainer.D.parameters()]
    ema0 = [p.detach().clone() for p in trainer.G_ema.parameters()]
    logs = [trainer.iteration() for _ in range(2)]
    for step in logs:
        for key, value in step.items():
            assert torch.isfinite(value).all(), key
    # master weights stay fp32 on the GPU; every network moved
    assert all(p.is_cuda and p.dtype == torch.float32 for p in trainer.G.parameters())
    for before, net in ((g0, trainer.G), (d0, trainer.D), (ema0, trainer.G_ema)):
        assert any(not torch.equal(a, b) for a, b in zip(before, net.parameters()))
    # the matmuls really run in bf16 under the trainer's autocast
    block = trainer.G.blocks[0]
    with trainer.autocast():
        out = block.attn.qkv(torch.randn(2, 5, 64, device="cuda"))
    assert out.dtype == torch.bfloat16


def _attention_pair():
    """The project's attention layer (D's: cls token + 16x16 grid, 2-D RoPE) on CUDA and a float64 CPU twin."""
    from gat_core.models.layers import Attention, Rope2D

    torch.manual_seed(0)
    layer = Attention(128, 4, Rope2D(32, 16, prefix=1))
    return layer.cuda(), copy.deepcopy(layer).double()


@pytest.mark.parametrize("dtype,backends,tol", [
    (torch.float32, [SDPBackend.EFFICIENT_ATTENTION], 1e-4),
    (torch.bfloat16, [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION], 5e-2),
])
def test_cuda_sdpa_equals_math_attention(dtype, backends, tol):
    """A fused CUDA kernel only (no math fallback: sdpa_kernel raises if none applies) against the math
    formula in float64 on the CPU, forward and gradients."""
    cuda_layer, ref_layer = _attention_pair()
    x = torch.randn(4, 257, 128, dtype=torch.float64)
    x_ref, x_cuda = x.clone().requires_grad_(True), x.float().cuda().requires_grad_(True)
    with sdpa_kernel([SDPBackend.MATH]):
        ref = ref_layer(x_ref)
    with sdpa_kernel(backends), torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        out = cuda_layer(x_cuda)
    grad = torch.randn_like(ref)
    ref.backward(grad)
    out.float().backward(grad.float().cuda())

    def rel(a: torch.Tensor, b: torch.Tensor) -> float:
        return float((a.detach().double().cpu() - b).abs().max() / b.abs().max())

    assert rel(out, ref.detach()) < tol
    assert rel(x_cuda.grad, x_ref.grad) < tol
    assert rel(cuda_layer.qkv.weight.grad, ref_layer.qkv.weight.grad) < tol


def test_compiled_block_equals_eager_on_cuda():
    """`train.compile` compiles each block: the compiled generator block gives the eager one's outputs and
    gradients under bf16 autocast."""
    from gat_core.models.generator import GATBlock
    from gat_core.models.layers import Rope2D

    torch.manual_seed(0)
    eager = GATBlock(128, 4, Rope2D(32, 8)).cuda()
    compiled = copy.deepcopy(eager)
    compiled.compile()
    h, w = torch.randn(8, 64, 128, device="cuda"), torch.randn(8, 128, device="cuda")
    results = []
    for block in (eager, compiled):
        hh = h.clone().requires_grad_(True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = block(hh, w)
        out.float().square().mean().backward()
        results.append((out.float(), hh.grad, block.modulation.weight.grad))
    for a, b in zip(*results):
        assert float((a - b).abs().max() / b.abs().max()) < 5e-2


def test_fid_on_gpu_equals_cpu(tmp_path):
    """Inception features on CUDA give the CPU's FID within 1e-4 relative (random weights in the real
    file's format: the real ones cannot be downloaded here)."""
    from bench.gpu_check import FID_TOLERANCE, compare_fid, fixed_images, varied_inception

    weights, _ = varied_inception(tmp_path / "weights-inception-2015-12-05-6726825d.pth", fixed_images(4)[0])
    result = compare_fid(weights, 32, "cuda")
    assert result["fid_cpu"] > 0
    assert result["relative_difference"] <= FID_TOLERANCE, result
