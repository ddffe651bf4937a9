"""fp8 matmuls for the frozen base of the fused LoRA projections (`training.fp8BaseMatmuls`).

Hopper's and Ada's tensor cores multiply e4m3 at twice bf16's rate. A LoRA projection multiplies
by its frozen base weight three times a step (the forward, its recomputation under gradient
checkpointing, and the input gradient); on a 1B model those are the largest share of the step.
Here each of them goes through `torch._scaled_mm` with row-wise scales: every activation row
(token), gradient row, and weight row (output channel for the forward, input channel for the
input gradient) gets its own fp32 scale, so an outlier costs precision only to its own row.
That is the granularity torchao's "rowwise" float8 training recipe uses, in e4m3 throughout.

Only the base matmuls change. The 4-bit weight is dequantized to bf16 as before and quantized
per pass, never kept (no memory beyond one transient e4m3 copy of an activation); the LoRA
matrices, their products, attention and the loss stay in bf16.

Why not torchao's `Float8Linear`: it converts trainable high-precision `nn.Linear` weights and
keeps their gradients; this weight is NF4, frozen, and multiplied inside `fused_lora`'s own
autograd node, so only the two primitives below are needed.
"""

from __future__ import annotations

import functools
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

E4M3_MAX = 448.0
"""The largest finite value of float8_e4m3fn."""

MIN_CAPABILITY = (8, 9)
"""CUDA compute capability with e4m3 tensor cores (Ada 8.9, Hopper 9.0 and newer)."""

KERNEL_MAX_COLS = 32768
"""Rows up to this wide are quantized by the Triton kernel in one block; wider ones by PyTorch ops."""


@functools.cache
def available(device_index: int = 0) -> bool:
    """Whether this CUDA device has e4m3 tensor cores and torch has `_scaled_mm`."""
    import torch

    if not torch.cuda.is_available() or not hasattr(torch, "_scaled_mm"):
        return False
    return torch.cuda.get_device_capability(device_index) >= MIN_CAPABILITY


def fits(rows: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether `_scaled_mm` takes this matmul: bf16 in and out, both weight dimensions multiples of 16."""
    import torch

    return rows.dtype == torch.bfloat16 and weight.shape[0] % 16 == 0 and weight.shape[1] % 16 == 0


def quantize_rows(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`t` (rows, cols) as e4m3 and fp32 scales (rows, 1) with t ≈ e4m3 · scale, row by row."""
    if t.is_cuda and t.shape[1] <= KERNEL_MAX_COLS and t.stride(1) == 1:
        return _quantize_rows_kernel(t)
    return quantize_rows_reference(t)


def quantize_rows_reference(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`quantize_rows` in PyTorch ops: the CPU's path, wide rows' path, and the kernel's reference in tests."""
    import torch

    wide = t.float()
    scale = wide.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / E4M3_MAX
    return (wide / scale).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn), scale


def _quantize_rows_kernel(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    import torch
    import triton

    from kubetune_trainer import fp8_kernels

    rows, cols = t.shape
    quantized = torch.empty((rows, cols), dtype=torch.float8_e4m3fn, device=t.device)
    scales = torch.empty((rows, 1), dtype=torch.float32, device=t.device)
    block = triton.next_power_of_2(cols)
    warps = 4 if block <= 2048 else 8 if block <= 8192 else 16
    fp8_kernels.quantize_rows[(rows,)](
        t, quantized, scales, cols, t.stride(0), quantized.stride(0), FP8_MAX=E4M3_MAX, BLOCK=block, num_warps=warps
    )
    return quantized, scales


@dataclass
class _QuantizedInput:
    """The last forward input quantized: q, k and v (and gate and up) share one input tensor."""

    source: weakref.ref[Any]
    version: int
    quantized: tuple[Any, Any]


# One entry for the process, not per thread: the forward runs on the training thread and the
# recomputed forward on autograd's device thread, never at the same time.
_LAST_INPUT: list[_QuantizedInput] = []


def _forget_dead(source: weakref.ref[Any]) -> None:
    """Free the cached copy the moment its input is freed (under checkpointing, right after its layer)."""
    if _LAST_INPUT and _LAST_INPUT[0].source is source:
        _LAST_INPUT.clear()


def _quantized_input(x: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`rows` (the (tokens, features) view of `x`) quantized, reusing the last result for the same `x`.

    Matched by identity through a weak reference, so the cache neither keeps an activation alive
    nor outlives it (the last layer's e4m3 copy would otherwise sit beside the loss's peak), and
    by the version counter, which an in-place change of `x` bumps.
    """
    if _LAST_INPUT and _LAST_INPUT[0].source() is x and _LAST_INPUT[0].version == x._version:
        return _LAST_INPUT[0].quantized
    quantized = quantize_rows(rows)
    _LAST_INPUT[:] = [_QuantizedInput(weakref.ref(x, _forget_dead), x._version, quantized)]
    return quantized


def forget_input() -> None:
    """Drop the cached quantized input (the backward calls it: a cached e4m3 activation is dead weight there)."""
    _LAST_INPUT.clear()


def mm_weight_t(x: torch.Tensor, rows: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """rows @ weight^T in bf16 through e4m3 (the forward; `weight` is (out, in), `rows` a view of `x`)."""
    import torch

    q_rows, s_rows = _quantized_input(x, rows)
    q_weight, s_weight = quantize_rows(weight)
    return torch._scaled_mm(q_rows, q_weight.t(), scale_a=s_rows, scale_b=s_weight.t(), out_dtype=rows.dtype)


def mm_weight(grad: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """grad @ weight in bf16 through e4m3 (the input gradient; scales per gradient row and per input channel)."""
    import torch

    q_grad, s_grad = quantize_rows(grad)
    q_weight_t, s_weight_t = quantize_rows(weight.t().contiguous())
    return torch._scaled_mm(q_grad, q_weight_t.t(), scale_a=s_grad, scale_b=s_weight_t.t(), out_dtype=grad.dtype)
