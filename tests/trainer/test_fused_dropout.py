"""`training.fusedDropout`: the Triton dropout kernels compute what PyTorch computes with the same mask.

The kernels run here on the CPU through Triton's interpreter (`TRITON_INTERPRET=1`, in a
process of its own), first one
by one against PyTorch ops with the mask the kernels draw, then inside a fused LoRA projection
(forward and backward) against the LoRA formula written out in PyTorch with that mask.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.trainer.triton_interpreter import run_interpreted


def interpreted(check: str, *args: Any) -> None:
    """Run `check(*args)` of this module under Triton's interpreter, in a process of its own."""
    run_interpreted(__name__, check, *args)


@pytest.mark.parametrize(("rows", "width", "rank"), [(130, 200, 8), (64, 256, 16)])
def test_kernels_equal_pytorch_with_their_mask(rows: int, width: int, rank: int) -> None:
    """down, grad_a and up_add against (x ⊙ m) A^T, gb^T (x ⊙ m), dx + (gb A) ⊙ m, all / (1 - p)."""
    interpreted("check_kernels", rows, width, rank)


def check_kernels(rows: int, width: int, rank: int) -> None:
    """The kernel-by-kernel comparison (in the interpreter's process)."""
    import torch

    from kubetune_trainer import fused_dropout as kernels

    generator = torch.Generator().manual_seed(0)
    x, dx = (torch.randn(rows, width, generator=generator) for _ in range(2))
    a, gb = torch.randn(rank, width, generator=generator), torch.randn(rows, rank, generator=generator)
    p, seed = 0.3, 1234
    mask = kernels.draw_keep_mask((rows, width), p, seed, "cpu")
    assert 0.65 < mask.float().mean() < 0.75, "keeps about 1 - p"
    assert not torch.equal(mask, kernels.draw_keep_mask((rows, width), p, seed + 1, "cpu")), "another seed, other mask"
    kept = x * mask / (1 - p)
    torch.testing.assert_close(kernels.dropout_down(x, a, p, seed), kept @ a.T, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(kernels.dropout_grad_a(gb, x, p, seed), gb.T @ kept, rtol=1e-5, atol=1e-4)
    expected = dx + (gb @ a) * mask / (1 - p)
    torch.testing.assert_close(kernels.dropout_up_add_(dx.clone(), gb, a, p, seed), expected, rtol=1e-5, atol=1e-4)


def test_fused_projection_with_kernel_dropout_matches_the_formula() -> None:
    """A 16-bit fused LoRA projection with fusedDropout: output and gradients of x W^T + s · dropout(x) A^T B^T.

    fp16, not bf16: Triton's interpreter computes in numpy, which has no bfloat16 (on GPUs the
    kernels run in bf16, tests/gpu/test_fused_dropout_gpu.py).
    """
    interpreted("check_projection_on_cpu")


def check_projection_on_cpu() -> None:
    """The fp16 projection check (in the interpreter's process)."""
    import torch

    from kubetune_trainer import fused_dropout

    assert_projection_matches_formula(fused_dropout, torch.float16, "cpu", rows=80, tolerance=5e-3)


def assert_projection_matches_formula(kernels: Any, dtype: Any, device: str, rows: int, tolerance: float) -> None:
    """One fused LoRA projection (96 -> 80, r 8, p 0.2) with kernel dropout against the float32 formula."""
    import torch
    from peft import LoraConfig, get_peft_model

    from kubetune_trainer import fused_lora

    class One(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = torch.nn.Linear(96, 80, bias=False)

        def forward(self, x: Any) -> Any:
            return self.proj(x)

    torch.manual_seed(0)
    p, scaling = 0.2, 2.0
    model = get_peft_model(One(), LoraConfig(r=8, lora_alpha=16, lora_dropout=p, target_modules=["proj"]))
    for param in model.parameters():
        param.data = torch.randn_like(param) * 0.1
    model = model.to(device=device, dtype=dtype).train()
    assert fused_lora.apply(model) == 1
    fused_lora.set_dropout_kernel(model, True)
    layer = model.base_model.model.proj
    x = torch.randn(2, rows // 2, 96, dtype=dtype, device=device, requires_grad=True)
    grad_out = torch.randn(2, rows // 2, 80, dtype=dtype, device=device)

    torch.manual_seed(5)
    seed = kernels.draw_seed()
    torch.manual_seed(5)  # the projection draws the same seed
    out = model(x)
    out.backward(grad_out)
    got = [out.detach(), x.grad, layer.lora_A["default"].weight.grad, layer.lora_B["default"].weight.grad]

    mask = kernels.draw_keep_mask((rows, 96), p, seed, device).view(2, rows // 2, 96)
    w, a, b = (t.detach().float().requires_grad_(True) for t in
               (layer.base_layer.weight, layer.lora_A["default"].weight, layer.lora_B["default"].weight))
    xf = x.detach().float().requires_grad_(True)
    ref = xf @ w.T + scaling * ((xf * mask / (1 - p)) @ a.T) @ b.T
    ref.backward(grad_out.float())
    for value, expected in zip(got, [ref.detach(), xf.grad, a.grad, b.grad], strict=True):
        error = float((value.float() - expected).norm() / expected.norm())
        assert error < tolerance, f"{dtype} result {error:.1e} away from the float32 formula"
