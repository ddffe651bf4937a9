"""Triton kernel of `fp8_matmul` (a module of its own: imported only when it runs, so the trainer imports without Triton)."""

import triton
import triton.language as tl


@triton.jit
def quantize_rows(src, dst, scales, cols, src_stride, dst_stride, extra, extra_stride, factors, multiplier, extra_offset,
                  extra_cols, extra_width, FP8_MAX: tl.constexpr, BLOCK: tl.constexpr, EXTRA: tl.constexpr):
    """dst[row] = src[row] / scale[row] in e4m3 with scale[row] = max|src[row]| / FP8_MAX; one program per row.

    The row is read once (it fits the block): the maximum and the scaled cast come from the same
    registers, where PyTorch's ops take five passes over memory (abs, amax, divide, clamp, cast).
    With EXTRA > 0 the row goes on with `extra_width` more columns under the same scale, column k
    holding `extra[row, k - extra_offset] · factors[k] · multiplier` for the `extra_cols` columns
    from `extra_offset` on, zero elsewhere: the LoRA B columns of a weight.
    """
    row = tl.program_id(0).to(tl.int64)
    offsets = tl.arange(0, BLOCK)
    inside = offsets < cols
    values = tl.load(src + row * src_stride + offsets, mask=inside, other=0.0).to(tl.float32)
    amax = tl.max(tl.abs(values), axis=0)
    if EXTRA > 0:
        k = tl.arange(0, EXTRA)
        used = (k >= extra_offset) & (k < extra_offset + extra_cols)
        more = tl.load(extra + row * extra_stride + k - extra_offset, mask=used, other=0.0).to(tl.float32)
        more = more * tl.load(factors + k, mask=used, other=0.0) * multiplier
        amax = tl.maximum(amax, tl.max(tl.abs(more), axis=0))
    scale = tl.maximum(amax, 1e-12) / FP8_MAX
    quantized = tl.clamp(values / scale, -FP8_MAX, FP8_MAX)
    tl.store(dst + row * dst_stride + offsets, quantized.to(dst.dtype.element_ty), mask=inside)
    if EXTRA > 0:
        more = tl.clamp(more / scale, -FP8_MAX, FP8_MAX)
        tl.store(dst + row * dst_stride + cols + k, more.to(dst.dtype.element_ty), mask=k < extra_width)
    tl.store(scales + row, scale)


@triton.jit
def adapter_factors(xa, scales, factors, rows, rank, xa_stride, FP8_MAX: tl.constexpr, BLOCK_R: tl.constexpr,
                    BLOCK_K: tl.constexpr):
    """factors[k] = max over tokens of |xa[i, k]| / (FP8_MAX · scales[i]); a block of tokens per program.

    The smallest factor per column that keeps xa[i, k] / (factors[k] · scales[i]) within e4m3's
    range for every token. Each program folds its block into `factors` (zeroed first) with an
    atomic maximum: exact, since the values are non-negative.
    """
    i = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    k = tl.arange(0, BLOCK_K)
    inside = (i < rows)[:, None] & (k < rank)[None, :]
    values = tl.load(xa + i[:, None].to(tl.int64) * xa_stride + k[None, :], mask=inside, other=0.0).to(tl.float32)
    scale = tl.load(scales + i, mask=i < rows, other=1.0)
    top = tl.max(tl.abs(values) / (scale[:, None] * FP8_MAX), axis=0)
    tl.atomic_max(factors + k, top, mask=k < rank)


@triton.jit
def quantize_adapter_input(xa, scales, dst, factors, rows, rank, width, xa_stride, dst_stride, offset,
                           FP8_MAX: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr):
    """dst[i, offset + k] = xa[i, k] / (factors[k] · scales[i]) in e4m3, zero-padded to `width` columns.

    x·A^T written beside the quantized input under each token's scale; B's column k is multiplied
    by factors[k] on the weight side, so the product is unchanged.
    """
    i = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    k = tl.arange(0, BLOCK_K)
    inside = (i < rows)[:, None] & (k < rank)[None, :]
    values = tl.load(xa + i[:, None].to(tl.int64) * xa_stride + k[None, :], mask=inside, other=0.0).to(tl.float32)
    scale = tl.load(scales + i, mask=i < rows, other=1.0)
    factor = tl.maximum(tl.load(factors + k, mask=k < rank, other=1.0), 1e-30)
    quantized = tl.clamp(values / (scale[:, None] * factor[None, :]), -FP8_MAX, FP8_MAX)
    written = (i < rows)[:, None] & (k < width)[None, :]
    tl.store(dst + i[:, None].to(tl.int64) * dst_stride + offset + k[None, :], quantized.to(dst.dtype.element_ty),
             mask=written)


@triton.jit
def quantize_columns(src, scales, dst, rows, cols, src_stride, dst_stride, FP8_MAX: tl.constexpr,
                     BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """dst[c, r] = src[r, c] / scales[c] in e4m3: a (BLOCK_R, BLOCK_C) tile per program, written transposed.

    The input gradient multiplies by the weight's transpose, scaled per input channel (a column of
    the weight). Writing the transposed e4m3 copy tile by tile reads the weight once here (and once
    for the column maxima), where `weight.t().contiguous()` then a row kernel wrote and re-read a
    transposed bf16 copy, through PyTorch's strided copy (the slowest elementwise kernel of the step).
    """
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    inside = (r < rows)[:, None] & (c < cols)[None, :]
    values = tl.load(src + r[:, None].to(tl.int64) * src_stride + c[None, :], mask=inside, other=0.0).to(tl.float32)
    scale = tl.load(scales + c, mask=c < cols, other=1.0)
    quantized = tl.clamp(values / scale[None, :], -FP8_MAX, FP8_MAX).to(dst.dtype.element_ty)
    tl.store(dst + c[None, :].to(tl.int64) * dst_stride + r[:, None], quantized, mask=inside)
