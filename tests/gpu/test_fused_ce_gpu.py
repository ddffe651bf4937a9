"""`training.fusedCrossEntropy` on CUDA: Liger's fused linear cross-entropy against TRL's chunked head, in bf16.

The CPU suite (tests/trainer/test_fused_ce.py) checks the wiring with PyTorch's loss; here the
scorer is Liger's Triton kernel (the recipe switch's), on the 8-layer width-1024 Llama in bf16,
and the trainer is seen applying it. Speed is measured by bench/gpu_throughput.py, never asserted here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.trainer.test_fused_ce import assert_fused_head_matches_trl, head_model

pytestmark = pytest.mark.gpus(1)


def test_liger_head_matches_trl_head_in_bf16(models: dict[str, Path]) -> None:
    """Same loss within bf16 rounding, same gradients within bf16 noise, on 4 x 512 tokens."""
    import torch
    from kubetune_trainer import fused_ce

    ids = torch.randint(3, 900, (4, 512), generator=torch.Generator().manual_seed(5)).cuda()
    model = head_model(models["mid"], torch.bfloat16, "cuda")
    assert_fused_head_matches_trl(model, ids, fused_ce.liger_cross_entropy, loss_tol=5e-3, grad_tol=3e-2)


def test_recipe_switch_installs_liger_head_on_cuda(models: dict[str, Path]) -> None:
    """On CUDA with Liger importable, the recipe switch wraps the head TRL added (SFT only)."""
    import torch
    from kubetune_api.recipe import parse_finetunejob
    from kubetune_trainer import fused_ce

    from tests.trainer.test_fused_ce import manifest

    model: Any = head_model(models["tiny"], torch.bfloat16, "cuda")
    assert fused_ce.apply_from_recipe(model, parse_finetunejob(manifest(True)).spec)
    assert getattr(model.get_base_model(), fused_ce.INSTALLED)
