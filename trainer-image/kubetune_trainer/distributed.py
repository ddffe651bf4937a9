"""Rank facts and the two collectives the trainer needs, safe to call without torch.distributed.

torchrun sets RANK/LOCAL_RANK/WORLD_SIZE; a single process has none of them. The Trainer
(accelerate) initializes the process group itself; these helpers work before and after.
"""

from __future__ import annotations

import os


def global_rank() -> int:
    """This process's global rank (0 when not distributed)."""
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    """This process's rank within its node (0 when not distributed)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def world_size() -> int:
    """Number of trainer processes across all nodes."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_global_zero() -> bool:
    """Whether this process is global rank 0 (the one that writes shared files and serves metrics)."""
    return global_rank() == 0


def _initialized() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def barrier() -> None:
    """Wait for every rank; a no-op in a single process."""
    if _initialized():
        import torch.distributed as dist

        dist.barrier()


def any_rank(flag: bool, device: object = "cpu") -> bool:
    """True on every rank if `flag` is true on any rank (a MAX all-reduce; NCCL needs the GPU `device`)."""
    if not _initialized():
        return flag
    import torch
    import torch.distributed as dist

    tensor = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return bool(tensor.item())
