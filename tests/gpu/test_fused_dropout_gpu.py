"""`training.fusedDropout` on CUDA: the compiled Triton kernels in bf16 against PyTorch with the same mask.

The CPU suite (tests/trainer/test_fused_dropout.py) runs the same kernels in Triton's
interpreter; here they are compiled for the GPU, at the 1B shape's widths and with a rank that
needs padding. Speed is measured by bench/gpu_throughput.py, never asserted here.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.trainer.test_fused_dropout import assert_projection_matches_formula

pytestmark = pytest.mark.gpus(1)


def relative(a: Any, b: Any) -> float:
    """‖a − b‖ / ‖b‖ in float32."""
    return float((a.float() - b.float()).norm() / b.float().norm())


@pytest.mark.parametrize(("rows", "width", "rank"), [(4096, 2048, 16), (2000, 8192, 8)])
def test_kernels_in_bf16_equal_pytorch_with_their_mask(rows: int, width: int, rank: int) -> None:
    """down, grad_a, up_add at the 1B projection widths, bf16, within bf16 rounding of the float32 ops."""
    import torch

    from kubetune_trainer import fused_dropout as fd

    generator = torch.Generator(device="cuda").manual_seed(0)
    x, dx = (torch.randn(rows, width, generator=generator, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    a = torch.randn(rank, width, generator=generator, device="cuda", dtype=torch.bfloat16)
    gb = torch.randn(rows, rank, generator=generator, device="cuda", dtype=torch.bfloat16)
    p, seed = 0.05, 4321
    mask = fd.draw_keep_mask((rows, width), p, seed, "cuda")
    assert abs(float(mask.float().mean()) - (1 - p)) < 0.01
    kept = x.float() * mask / (1 - p)
    assert relative(fd.dropout_down(x, a, p, seed), kept @ a.float().T) < 1e-2
    assert relative(fd.dropout_grad_a(gb, x, p, seed), gb.float().T @ kept) < 1e-2
    expected = dx.float() + (gb.float() @ a.float()) * mask / (1 - p)
    assert relative(fd.dropout_up_add_(dx.clone(), gb, a, p, seed), expected) < 1e-2


def test_fused_projection_with_kernel_dropout_on_cuda() -> None:
    """The projection's forward and backward through the compiled kernels, bf16, against the float32 formula."""
    import torch

    from kubetune_trainer import fused_dropout

    assert_projection_matches_formula(fused_dropout, torch.bfloat16, "cuda", rows=4096, tolerance=2e-2)
