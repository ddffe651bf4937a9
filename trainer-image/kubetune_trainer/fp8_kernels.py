"""Triton kernel of `fp8_matmul` (a module of its own: imported only when it runs, so the trainer imports without Triton)."""

import triton
import triton.language as tl


@triton.jit
def quantize_rows(src, dst, scales, cols, src_stride, dst_stride, FP8_MAX: tl.constexpr, BLOCK: tl.constexpr):
    """dst[row] = src[row] / scale[row] in e4m3 with scale[row] = max|src[row]| / FP8_MAX; one program per row.

    The row is read once (it fits the block): the maximum and the scaled cast come from the same
    registers, where PyTorch's ops take five passes over memory (abs, amax, divide, clamp, cast).
    """
    row = tl.program_id(0).to(tl.int64)
    offsets = tl.arange(0, BLOCK)
    inside = offsets < cols
    values = tl.load(src + row * src_stride + offsets, mask=inside, other=0.0).to(tl.float32)
    scale = tl.maximum(tl.max(tl.abs(values), axis=0), 1e-12) / FP8_MAX
    quantized = tl.clamp(values / scale, -FP8_MAX, FP8_MAX)
    tl.store(dst + row * dst_stride + offsets, quantized.to(dst.dtype.element_ty), mask=inside)
    tl.store(scales + row, scale)
