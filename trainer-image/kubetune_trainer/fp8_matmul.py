"""fp8 matmuls for the frozen base of the fused LoRA projections (`training.fp8BaseMatmuls`).

Hopper's and Ada's tensor cores multiply e4m3 at twice bf16's rate. A LoRA projection multiplies
by its frozen base weight three times a step (the forward, its recomputation under gradient
checkpointing, and the input gradient); on a 1B model those are the largest share of the step.
Here each of them goes through `torch._scaled_mm` with row-wise scales: every activation row
(token), gradient row, and weight row (output channel for the forward, input channel for the
input gradient) gets its own fp32 scale, so an outlier costs precision only to its own row.
That is the granularity torchao's "rowwise" float8 training recipe uses, in e4m3 throughout.

Only the base matmuls change. The 4-bit weight is dequantized to bf16 as before and quantized
per pass, never kept (no memory beyond one transient e4m3 copy of an activation). In the forward
the adapter's product joins the same matmul, `[x | xa] @ [W | s·B]^T`, which saves a pass that
reads and writes the whole output; the LoRA matrices and their gradients, attention and the loss
stay in bf16.

Why not torchao's `Float8Linear`: it converts trainable high-precision `nn.Linear` weights and
keeps their gradients; this weight is NF4, frozen, and multiplied inside `fused_lora`'s own
autograd node, so only the primitives below are needed (they are written here, with Triton
kernels in `fp8_kernels`, because no library quantizes a transposed weight or appends an
adapter's columns under shared row scales).
"""

from __future__ import annotations

import functools
import os
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    import torch

E4M3_MAX = 448.0
"""The largest finite value of float8_e4m3fn."""

QUANTIZED_DTYPE = "float8_e4m3fn"
"""The torch dtype of the quantized copies. The CPU tests set "float32" to read the kernels' scaled
values before the cast: Triton's interpreter casts to e4m3 wrongly (124.4 became 64 where the
hardware gives 128); the cast itself is checked on GPUs (tests/gpu/test_fp8_gpu.py)."""

MIN_CAPABILITY = (8, 9)
"""CUDA compute capability with e4m3 tensor cores (Ada 8.9, Hopper 9.0 and newer)."""

ADAPTER_ALIGN = 128
"""xa's columns are zero-padded to a multiple of this: the e4m3 GEMM's K tile. Padded to 16 (all
`_scaled_mm` asks), the partial tile made the forward's matmuls 27 % slower on an H200; padded to
128 they cost 6 % more FLOPs on a 2048-wide input, less than the accumulate pass they replace."""

ADAPTER_ROWS = 128
"""Tokens per program of the kernels that write x·A^T beside the quantized input."""

TILE = 64
"""Rows and columns per program of the transposing kernel (`quantize_columns`)."""

KERNEL_MAX_COLS = 32768
"""Rows up to this wide are quantized by the Triton kernel in one block; wider ones by PyTorch ops."""


@functools.cache
def available(device_index: int = 0) -> bool:
    """Whether this CUDA device has e4m3 tensor cores and torch has `_scaled_mm`."""
    import torch

    if not torch.cuda.is_available() or not hasattr(torch, "_scaled_mm"):
        return False
    return torch.cuda.get_device_capability(device_index) >= MIN_CAPABILITY


def _quantized_dtype() -> torch.dtype:
    import torch

    return getattr(torch, QUANTIZED_DTYPE)


def _kernels_run(t: torch.Tensor) -> bool:
    """Whether the Triton kernels take `t`: on CUDA, or anywhere under Triton's interpreter (the CPU tests)."""
    return t.is_cuda or os.environ.get("TRITON_INTERPRET") == "1"


def fits(rows: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether `_scaled_mm` takes this matmul: bf16 in and out, both weight dimensions multiples of 16."""
    import torch

    return rows.dtype == torch.bfloat16 and weight.shape[0] % 16 == 0 and weight.shape[1] % 16 == 0


def padded(n: int) -> int:
    """`n` rounded up to a multiple of `ADAPTER_ALIGN`: the columns the LoRA rank takes in the e4m3 matmul."""
    return -(-n // ADAPTER_ALIGN) * ADAPTER_ALIGN


@dataclass(frozen=True)
class ExtraColumns:
    """Columns appended to every row of a matrix before it is quantized: `values[:, k] · factors[offset + k] · multiplier`.

    They share the row's scale. `factors` covers the whole appended block (one per column that an
    input writes there, `write_adapter_input`); `values` fill its columns from `offset` on, the rest
    is zero, up to a multiple of `ADAPTER_ALIGN`. This is how LoRA's B joins the weight it is added
    to (`mm_weight_t`), and how projections reading one input each pick their own adapter's columns.
    """

    values: torch.Tensor
    factors: torch.Tensor
    multiplier: float
    offset: int = 0

    @property
    def width(self) -> int:
        """The columns appended, padding included."""
        return padded(self.factors.shape[0])

    def dense(self) -> torch.Tensor:
        """The appended columns in fp32, padding included (the PyTorch path)."""
        import torch

        cols = self.values.shape[1]
        wide = self.values.float() * self.factors[self.offset:self.offset + cols] * self.multiplier
        return torch.nn.functional.pad(wide, (self.offset, self.width - self.offset - cols))


def quantize_rows(t: torch.Tensor, extra: ExtraColumns | None = None,
                  reserve: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """`t` (rows, cols) as e4m3 and fp32 scales (rows, 1) with t ≈ e4m3 · scale, row by row.

    `extra` appends columns under the same scales; `reserve` leaves that many columns after `t`'s
    unwritten, for `write_adapter_input`.
    """
    if _kernels_run(t) and t.shape[1] <= KERNEL_MAX_COLS and t.stride(1) == 1:
        return _quantize_rows_kernel(t, extra, reserve)
    return quantize_rows_reference(t, extra, reserve)


def quantize_rows_reference(t: torch.Tensor, extra: ExtraColumns | None = None,
                            reserve: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """`quantize_rows` in PyTorch ops: the CPU's path, wide rows' path, and the kernel's reference in tests."""
    import torch

    wide = t.float() if extra is None else torch.cat([t.float(), extra.dense()], dim=1)
    scale = wide.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / E4M3_MAX
    quantized = torch.nn.functional.pad((wide / scale).clamp(-E4M3_MAX, E4M3_MAX), (0, reserve))
    return quantized.to(_quantized_dtype()), scale


def _quantize_rows_kernel(t: torch.Tensor, extra: ExtraColumns | None,
                          reserve: int) -> tuple[torch.Tensor, torch.Tensor]:
    import torch
    import triton

    from kubetune_trainer import fp8_kernels

    rows, cols = t.shape
    width = extra.width if extra is not None else reserve
    quantized = torch.empty((rows, cols + width), dtype=_quantized_dtype(), device=t.device)
    scales = torch.empty((rows, 1), dtype=torch.float32, device=t.device)
    block = triton.next_power_of_2(cols)
    warps = 4 if block <= 2048 else 8 if block <= 8192 else 16
    if extra is None:  # the extra pointers are not read (EXTRA=0): any tensor will do
        values, factors, multiplier, offset, extra_block = t, scales, 1.0, 0, 0
    else:
        values, factors, multiplier, offset = extra.values, extra.factors, extra.multiplier, extra.offset
        extra_block = triton.next_power_of_2(width)
    fp8_kernels.quantize_rows[(rows,)](
        t, quantized, scales, cols, t.stride(0), quantized.stride(0), values, values.stride(0), factors, multiplier,
        offset, values.shape[1], width if extra is not None else 0, FP8_MAX=E4M3_MAX, BLOCK=block, EXTRA=extra_block,
        num_warps=warps,
    )
    return quantized, scales


def write_adapter_input(quantized: torch.Tensor, scales: torch.Tensor, xa: torch.Tensor, offset: int) -> torch.Tensor:
    """Write `xa` (tokens, r) into `quantized`'s columns from `offset` under the rows' `scales`; returns the factors.

    Column k goes in divided by factors[k] (r fp32 values, the least that keeps it in e4m3's range):
    B's column k must be multiplied by the same factor for the product to be unchanged. The
    columns after r, up to the end of the row, are zeroed.
    """
    if not _kernels_run(quantized):
        return write_adapter_input_reference(quantized, scales, xa, offset)
    import torch
    import triton

    from kubetune_trainer import fp8_kernels

    width = quantized.shape[1] - offset
    rows, rank = xa.shape
    factors = torch.zeros(rank, dtype=torch.float32, device=xa.device)
    grid = (triton.cdiv(rows, ADAPTER_ROWS),)
    block = triton.next_power_of_2(width)
    fp8_kernels.adapter_factors[grid](xa, scales, factors, rows, rank, xa.stride(0), FP8_MAX=E4M3_MAX,
                                      BLOCK_R=ADAPTER_ROWS, BLOCK_K=block)
    fp8_kernels.quantize_adapter_input[grid](
        xa, scales, quantized, factors, rows, rank, width, xa.stride(0), quantized.stride(0), offset,
        FP8_MAX=E4M3_MAX, BLOCK_R=ADAPTER_ROWS, BLOCK_K=block,
    )
    return factors


def write_adapter_input_reference(quantized: torch.Tensor, scales: torch.Tensor, xa: torch.Tensor,
                                  offset: int) -> torch.Tensor:
    """`write_adapter_input` in PyTorch ops: the CPU's path and the kernels' reference in tests."""
    import torch

    width = quantized.shape[1] - offset
    ratio = xa.float() / scales
    factors = ratio.abs().amax(dim=0).clamp(min=1e-30) / E4M3_MAX
    part = (ratio / factors).clamp(-E4M3_MAX, E4M3_MAX)
    quantized[:, offset:] = torch.nn.functional.pad(part, (0, width - part.shape[1])).to(quantized.dtype)
    return factors


def quantize_columns(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`quantize_rows(t.t())` without a transposed copy of `t`: e4m3 (cols, rows) and one fp32 scale per column."""
    if not (_kernels_run(t) and t.stride(1) == 1):
        return quantize_rows_reference(t.t().contiguous())
    import torch
    import triton

    from kubetune_trainer import fp8_kernels

    rows, cols = t.shape
    # max |t| per column in one reduction (no |t| copy); the kernel then writes each tile transposed.
    scales = torch.linalg.vector_norm(t, ord=float("inf"), dim=0, dtype=torch.float32).clamp_(min=1e-12).div_(E4M3_MAX)
    quantized = torch.empty((cols, rows), dtype=_quantized_dtype(), device=t.device)
    grid = (triton.cdiv(rows, TILE), triton.cdiv(cols, TILE))
    fp8_kernels.quantize_columns[grid](
        t, scales, quantized, rows, cols, t.stride(0), quantized.stride(0), FP8_MAX=E4M3_MAX, BLOCK_R=TILE,
        BLOCK_C=TILE
    )
    return quantized, scales.unsqueeze(1)


class Adapter(NamedTuple):
    """The LoRA term `mm_weight_t` adds: scaling · products[:, offset:offset + r] @ lora_b^T (r = lora_b's columns).

    `products` holds x·A^T of every projection that reads the same input, side by side (one
    projection: just its own, offset 0); each projection's B picks its own columns.
    """

    products: torch.Tensor
    lora_b: torch.Tensor
    scaling: float
    offset: int = 0


@dataclass
class _QuantizedInput:
    """The last forward input quantized: q, k and v (and gate and up) share one input tensor.

    `written` is the adapter products last written into its reserved columns (a weak reference,
    their version, and the factors `write_adapter_input` returned): projections sharing them write once.
    """

    source: weakref.ref[Any]
    version: int
    reserve: int
    quantized: tuple[Any, Any]
    written: tuple[weakref.ref[Any], int, Any] | None = None


# One entry for the process, not per thread: the forward runs on the training thread and the
# recomputed forward on autograd's device thread, never at the same time.
_LAST_INPUT: list[_QuantizedInput] = []


def _forget_dead(source: weakref.ref[Any]) -> None:
    """Free the cached copy the moment its input is freed (under checkpointing, right after its layer)."""
    if _LAST_INPUT and _LAST_INPUT[0].source is source:
        _LAST_INPUT.clear()


def _quantized_input(x: torch.Tensor, rows: torch.Tensor, reserve: int) -> _QuantizedInput:
    """`rows` (the (tokens, features) view of `x`) quantized, reusing the last result for the same `x`.

    Matched by identity through a weak reference, so the cache neither keeps an activation alive
    nor outlives it (the last layer's e4m3 copy would otherwise sit beside the loss's peak), and
    by the version counter, which an in-place change of `x` bumps. `reserve` columns after the
    input's are for adapter products (x·A^T, written by `write_adapter_input` just before a matmul).
    """
    last = _LAST_INPUT[0] if _LAST_INPUT else None
    if last and last.source() is x and last.version == x._version and last.reserve == reserve:
        return last
    entry = _QuantizedInput(weakref.ref(x, _forget_dead), x._version, reserve, quantize_rows(rows, reserve=reserve))
    _LAST_INPUT[:] = [entry]
    return entry


def _adapter_factors(entry: _QuantizedInput, products: torch.Tensor, offset: int) -> torch.Tensor:
    """`products` written into `entry`'s reserved columns from `offset` (unless they are already there); their factors."""
    written = entry.written
    if written is not None and written[0]() is products and written[1] == products._version:
        return written[2]
    q_rows, s_rows = entry.quantized
    factors = write_adapter_input(q_rows, s_rows, products, offset)
    entry.written = (weakref.ref(products), products._version, factors)
    return factors


def forget_input() -> None:
    """Drop the cached quantized input (the backward calls it: a cached e4m3 activation is dead weight there)."""
    _LAST_INPUT.clear()


def mm_weight_t(x: torch.Tensor, rows: torch.Tensor, weight: torch.Tensor,
                adapter: Adapter | tuple[Any, ...] | None = None) -> torch.Tensor:
    """rows @ weight^T in bf16 through e4m3 (the forward; `weight` is (out, in), `rows` a view of `x`).

    `adapter` (an `Adapter`) adds the LoRA term inside the same matmul: [rows | xa] @ [weight | s·B]^T,
    where the separate accumulate into the output would read and write the whole output again.
    xa's columns share the input rows' scales (rescaled by per-column factors that B's columns
    take back), B's columns the weight rows' scales; the rest of the block multiplies zeros.
    """
    import torch

    if adapter is None:
        q_rows, s_rows = _quantized_input(x, rows, 0).quantized
        q_weight, s_weight = quantize_rows(weight)
    else:
        products, lora_b, scaling, offset = Adapter(*adapter)
        entry = _quantized_input(x, rows, padded(products.shape[1]))
        q_rows, s_rows = entry.quantized
        factors = _adapter_factors(entry, products, rows.shape[1])
        q_weight, s_weight = quantize_rows(weight, ExtraColumns(lora_b, factors, scaling, offset))
    return torch._scaled_mm(q_rows, q_weight.t(), scale_a=s_rows, scale_b=s_weight.t(), out_dtype=rows.dtype)


def mm_weight(grad: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """grad @ weight in bf16 through e4m3 (the input gradient; scales per gradient row and per input channel)."""
    import torch

    q_grad, s_grad = quantize_rows(grad)
    q_weight_t, s_weight_t = quantize_columns(weight)
    return torch._scaled_mm(q_grad, q_weight_t.t(), scale_a=s_grad, scale_b=s_weight_t.t(), out_dtype=grad.dtype)
