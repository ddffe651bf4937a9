"""Triton kernels of `fused_dropout` (a module of its own: Triton resolves a kernel's helpers as module globals).

Imported only when a kernel runs, so the trainer imports without Triton.
"""



import triton
import triton.language as tl


@triton.jit
def hash_keep(seed, rows, cols, K, p):
    """Keep (True) with probability 1 - p: a 32-bit integer hash of (seed, row * K + col), not Philox.

    `tl.rand` runs ten Philox rounds per element, which made these kernels compute-bound (about
    60 integer operations per element, measured slower than PyTorch's dropout on an H200); the
    `lowbias32` hash (two multiplies, three shifts) is enough for a dropout mask.
    """
    x = (rows[:, None] * K + cols[None, :]).to(tl.uint32) * tl.cast(0x9E3779B1, tl.uint32)
    x = x ^ tl.cast(seed, tl.uint32)
    x = x ^ (x >> 16)
    x = x * tl.cast(0x7FEB352D, tl.uint32)
    x = x ^ (x >> 15)
    x = x * tl.cast(0x846CA68B, tl.uint32)
    x = x ^ (x >> 16)
    return (x >> 8).to(tl.float32) * (1.0 / 16777216.0) >= p


@triton.jit
def down(
    x_ptr,
    a_ptr,
    out_ptr,
    M,
    K,
    r,
    seed,
    p,
    scale,
    RP: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """xa[M, r] = ((x ⊙ keep) @ A^T) · scale; one program per BLOCK_M rows, looping over K."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    ranks = tl.arange(0, RP)
    acc = tl.zeros((BLOCK_M, RP), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        cols = k0 + tl.arange(0, BLOCK_K)
        inside = (rows[:, None] < M) & (cols[None, :] < K)
        x = tl.load(x_ptr + rows[:, None] * K + cols[None, :], mask=inside, other=0.0)
        x = tl.where(hash_keep(seed, rows, cols, K, p), x, tl.zeros_like(x))
        a = tl.load(
            a_ptr + ranks[None, :] * K + cols[:, None],
            mask=(ranks[None, :] < r) & (cols[:, None] < K),
            other=0.0,
        )
        acc += tl.dot(x, a)
    acc = acc * scale
    tl.store(
        out_ptr + rows[:, None] * r + ranks[None, :],
        acc.to(out_ptr.dtype.element_ty),
        mask=(rows[:, None] < M) & (ranks[None, :] < r),
    )


@triton.jit
def grad_a(
    gb_ptr,
    x_ptr,
    out_ptr,
    M,
    K,
    r,
    rows_per_split,
    seed,
    p,
    RP: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """Partial dA sums: out[split, r, K] = gb^T @ (x ⊙ keep) over this split's rows (summed by the caller)."""
    cols = tl.program_id(0) * BLOCK_K + tl.arange(0, BLOCK_K)
    split = tl.program_id(1)
    ranks = tl.arange(0, RP)
    acc = tl.zeros((RP, BLOCK_K), dtype=tl.float32)
    start = split * rows_per_split
    for m0 in range(start, start + rows_per_split, BLOCK_M):
        rows = m0 + tl.arange(0, BLOCK_M)
        inside = (rows[:, None] < M) & (cols[None, :] < K)
        x = tl.load(x_ptr + rows[:, None] * K + cols[None, :], mask=inside, other=0.0)
        x = tl.where(hash_keep(seed, rows, cols, K, p), x, tl.zeros_like(x))
        gb = tl.load(
            gb_ptr + rows[:, None] * r + ranks[None, :],
            mask=(rows[:, None] < M) & (ranks[None, :] < r),
            other=0.0,
        )
        acc += tl.dot(tl.trans(gb), x)
    tl.store(
        out_ptr + split * RP * K + ranks[:, None] * K + cols[None, :],
        acc,
        mask=(ranks[:, None] < RP) & (cols[None, :] < K),
    )


@triton.jit
def up_add(
    gb_ptr,
    a_ptr,
    dx_ptr,
    M,
    K,
    r,
    seed,
    p,
    scale,
    RP: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """dx[M, K] += ((gb @ A) ⊙ keep) · scale, in place; one program per (BLOCK_M, BLOCK_K) tile."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    ranks = tl.arange(0, RP)
    gb = tl.load(
        gb_ptr + rows[:, None] * r + ranks[None, :],
        mask=(rows[:, None] < M) & (ranks[None, :] < r),
        other=0.0,
    )
    a = tl.load(
        a_ptr + ranks[:, None] * K + cols[None, :],
        mask=(ranks[:, None] < r) & (cols[None, :] < K),
        other=0.0,
    )
    t = tl.dot(gb, a) * scale
    t = tl.where(hash_keep(seed, rows, cols, K, p), t, 0.0)
    inside = (rows[:, None] < M) & (cols[None, :] < K)
    ptrs = dx_ptr + rows[:, None] * K + cols[None, :]
    dx = tl.load(ptrs, mask=inside, other=0.0)
    tl.store(ptrs, (dx.to(tl.float32) + t).to(dx_ptr.dtype.element_ty), mask=inside)


@triton.jit
def mask_only(out_ptr, M, K, seed, p, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    """The keep mask as int8 (tests and debugging)."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    inside = (rows[:, None] < M) & (cols[None, :] < K)
    tl.store(
        out_ptr + rows[:, None] * K + cols[None, :],
        hash_keep(seed, rows, cols, K, p).to(tl.int8),
        mask=inside,
    )
