"""`training.offloadActivations` with `offload.StreamOrderedOffload`: the same gradients as TRL's context, no growth.

TRL's context synchronizes the host at every step's end and empties the allocator's cache at the
next one's start; ours orders both on the streams. What must not change: the gradients (a tensor
freed too early would be overwritten while a copy or a kernel still reads it) and the memory a
step holds (the cache is kept, so the reserved memory must stay flat over steps).
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from tests.trainer.test_fused_lora import lora_model, relative

pytestmark = pytest.mark.gpus(1)


def _steps(model: Any, context: Any, batches: list[Any]) -> tuple[list[dict[str, Any]], list[int]]:
    """Each batch's adapter gradients under `context`, and the memory reserved after each step."""
    import torch

    grads, reserved = [], []
    for ids in batches:
        model.zero_grad(set_to_none=True)
        with context:
            model(input_ids=ids, labels=ids).loss.backward()
        # On the host (a synchronization, as the Trainer's per-step reads of the loss are): kept on the
        # GPU, the gradients of every step would themselves grow the reserved memory.
        grads.append({name: p.grad.detach().cpu() for name, p in model.named_parameters() if p.requires_grad})
        reserved.append(torch.cuda.memory_reserved())
    return grads, reserved


def test_stream_ordered_offload_gives_trls_gradients_and_keeps_memory_flat(models: dict[str, Path]) -> None:
    """Eight checkpointed steps on the mid-sized Llama: TRL's gradients (up to the attention backward's
    nondeterminism; an overwritten activation would be off by far more), the reserved memory flat."""
    import torch
    from kubetune_trainer import offload
    from trl.models.activation_offloading import get_act_offloading_ctx_manager

    model = lora_model(models["mid"], 4, 0.0, torch.bfloat16, "cuda")
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.enable_input_require_grads()
    generator = torch.Generator().manual_seed(8)
    batches = [torch.randint(3, 900, (4, 512), generator=generator).cuda() for _ in range(8)]
    trl_grads, _ = _steps(model, get_act_offloading_ctx_manager(model), batches)
    trainer = SimpleNamespace(maybe_activation_offload_context=get_act_offloading_ctx_manager(model))
    assert offload.install(trainer)
    assert not offload.install(trainer), "installing twice swaps once"
    ours, reserved = _steps(model, trainer.maybe_activation_offload_context, batches)
    for step, (want, got) in enumerate(zip(trl_grads, ours, strict=True)):
        worst = max(relative(got[name], want[name]) for name in want)
        assert worst < 1e-2, (step, worst)
    assert reserved[-1] == reserved[1], reserved
