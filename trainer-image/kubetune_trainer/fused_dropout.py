"""LoRA dropout inside the rank-r matmuls (`training.fusedDropout`): the mask is drawn from a seed, never stored.

With LoRA dropout p, the fused projection (`fused_lora`) computes `xa = dropout(x) @ A^T` in the
forward and, in the backward, `dA = gb^T @ dropout(x)` and `dx += dropout'(gb @ A)`. In PyTorch
ops each of these is a pass over an input-sized tensor on its own (`native_dropout` writes the
dropped copy and a byte mask, the backward re-creates the dropped copy and multiplies the mask
into `gb @ A` in another pass): on the Llama-3.2-1B shape at 32k tokens those passes measured
~100 ms of a 680 ms step (H200 profile, docs/benchmarks.md).

Here three Triton kernels read `x` (or update `dx`) exactly once each and regenerate the keep
mask where they need it from a 32-bit hash of (seed, row * K + col) (`lowbias32`; Philox through
`tl.rand` made the kernels compute-bound, slower than PyTorch's dropout):

    down     xa[M, r]   = ((x ⊙ m) @ A^T) / (1 - p)
    grad_a   dA[r, K]   = (gb^T @ (x ⊙ m)) / (1 - p)     (split over M, partial sums added in fp32)
    up_add   dx[M, K]  += ((gb @ A) ⊙ m) / (1 - p)        (in place)

The seed is drawn from PyTorch's CPU generator in the forward, so gradient checkpointing's
recompute (which restores the RNG state) draws the same seed, and the backward regenerates the
same mask. The masks are not the ones `nn.Dropout` would draw (same distribution, other
numbers), so losses match peft's statistically, not bit for bit; that is why it is a switch.

Only bf16/fp16 inputs on CUDA take the kernels (fp32 would lose precision in Triton's tf32 dot);
everything else keeps the PyTorch path in `fused_lora`. Under `TRITON_INTERPRET=1` the kernels
also run on the CPU, which is how the tests check them against PyTorch with the same mask.
"""

from __future__ import annotations

import functools
from typing import Any

OFFSET_LIMIT = 2**31 - 1  # element offsets are int32: M * K must stay below this


@functools.cache
def kernels() -> dict[str, Any]:
    """The Triton kernels (imported, and compiled, at first use: importing this module needs no Triton)."""
    from kubetune_trainer import fused_dropout_kernels as k

    return {"down": k.down, "grad_a": k.grad_a, "up_add": k.up_add, "mask": k.mask_only}


BLOCK_M, BLOCK_K = 64, 128  # 64 rows x 128 columns of a 16-bit input per tile (16 KiB)
SPLITS = 64  # grad_a: partial sums over this many slices of the rows (deterministic, unlike atomics)


def _rank_pad(r: int) -> int:
    """The rank padded to a power of two of at least 16 (tl.dot's smallest tile)."""
    return max(16, 1 << (r - 1).bit_length())


def applies(x: Any) -> bool:
    """Whether the kernels take this input: CUDA (or the Triton interpreter), 16-bit, Philox offsets in range."""
    import os

    import torch

    on_device = x.is_cuda or os.environ.get("TRITON_INTERPRET") == "1"
    sized = x.numel() <= OFFSET_LIMIT and x.is_contiguous()
    return on_device and x.dtype in (torch.bfloat16, torch.float16) and sized


def draw_seed() -> int:
    """A mask seed from PyTorch's CPU generator (gradient checkpointing restores it for the recompute)."""
    import torch

    return int(torch.randint(0, 2**31 - 1, (1,)).item())


def dropout_down(x: Any, a: Any, p: float, seed: int) -> Any:
    """`dropout(x) @ a.T` for x (M, K) and a (r, K), the mask drawn from `seed`."""
    import torch

    M, K = x.shape
    r = a.shape[0]
    out = torch.empty((M, r), dtype=x.dtype, device=x.device)
    kernels()["down"][(triton_cdiv(M, BLOCK_M),)](
        x, a.contiguous(), out, M, K, r, seed, p, 1.0 / (1.0 - p), RP=_rank_pad(r), BLOCK_M=BLOCK_M, BLOCK_K=BLOCK_K)
    return out


def dropout_grad_a(gb: Any, x: Any, p: float, seed: int) -> Any:
    """`gb.T @ dropout(x)` for gb (M, r) and x (M, K): the gradient of A, in x's dtype."""
    import torch

    M, K = x.shape
    r = gb.shape[1]
    rp = _rank_pad(r)
    rows_per_split = triton_cdiv(triton_cdiv(M, SPLITS), BLOCK_M) * BLOCK_M
    splits = triton_cdiv(M, rows_per_split)
    partial = torch.empty((splits, rp, K), dtype=torch.float32, device=x.device)
    kernels()["grad_a"][(triton_cdiv(K, BLOCK_K), splits)](
        gb.contiguous(), x, partial, M, K, r, rows_per_split, seed, p, RP=rp, BLOCK_M=BLOCK_M, BLOCK_K=BLOCK_K)
    return (partial.sum(dim=0)[:r] * (1.0 / (1.0 - p))).to(x.dtype)


def dropout_up_add_(dx: Any, gb: Any, a: Any, p: float, seed: int) -> Any:
    """`dx += dropout'(gb @ a)` in place, for dx (M, K), gb (M, r), a (r, K); returns dx."""
    M, K = dx.shape
    r = a.shape[0]
    grid = (triton_cdiv(M, BLOCK_M), triton_cdiv(K, BLOCK_K))
    kernels()["up_add"][grid](gb.contiguous(), a.contiguous(), dx, M, K, r, seed, p, 1.0 / (1.0 - p),
                              RP=_rank_pad(r), BLOCK_M=BLOCK_M, BLOCK_K=BLOCK_K)
    return dx


def draw_keep_mask(shape: tuple[int, int], p: float, seed: int, device: Any) -> Any:
    """The boolean keep mask the kernels draw for `seed` (for tests and debugging)."""
    import torch

    M, K = shape
    out = torch.empty((M, K), dtype=torch.int8, device=device)
    kernels()["mask"][(triton_cdiv(M, BLOCK_M), triton_cdiv(K, BLOCK_K))](
        out, M, K, seed, p, BLOCK_M=BLOCK_M, BLOCK_K=BLOCK_K)
    return out.bool()


def triton_cdiv(a: int, b: int) -> int:
    """Ceiling division."""
    return -(-a // b)
