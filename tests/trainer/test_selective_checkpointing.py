"""`training.selectiveCheckpointing`: the kept outputs are not recomputed, and the step computes what full checkpointing computes.

PyTorch's selective checkpointing runs on the CPU too, so the policy is exercised here on the
tiny test Llama (NF4 base, fused LoRA projections, LoRA dropout on: the recompute must redraw
the same masks). The recipe switch itself applies on CUDA only, like the other levers; here
`speed.enable_selective_checkpointing` is called directly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from test_fused_lora import lora_model, relative, step


class OpCounter:
    """A TorchDispatchMode that counts the down projection's base matmul and the attention kernels it sees."""

    def __init__(self, intermediate: int, hidden: int) -> None:
        from torch.utils._python_dispatch import TorchDispatchMode

        from kubetune_trainer import speed

        counter = self
        self.down_matmuls = 0
        self.attention = 0

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
                if func in speed._matmul_ops():
                    a, b = args[-2], args[-1]  # the forward multiplies by W^T, a transposed view; the backward by W
                    counter.down_matmuls += a.shape[-1] == intermediate and b.shape[-1] == hidden and b.stride(0) == 1
                counter.attention += func in speed._attention_ops()
                return func(*args, **(kwargs or {}))

        self.mode = Mode()


def backward_counts(model: Any, ids: Any) -> tuple[Any, dict[str, Any], OpCounter]:
    """Loss and adapter gradients of one step, and what the backward (with its recompute) ran."""
    import torch

    model.zero_grad(set_to_none=True)
    torch.manual_seed(7)
    loss = model(input_ids=ids, labels=ids).loss
    config = model.config
    counter = OpCounter(config.intermediate_size, config.hidden_size)
    with counter.mode:
        loss.backward()
    grads = {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    return loss.detach(), grads, counter


def test_kept_outputs_are_not_recomputed_and_gradients_match(tiny_llama: Path) -> None:
    """Full checkpointing recomputes each layer's down projection and attention; SAC does not, same numbers."""
    import torch

    from kubetune_trainer import fused_lora, speed

    ids = torch.randint(3, 900, (2, 24), generator=torch.Generator().manual_seed(11))
    model = lora_model(tiny_llama, 4, 0.1, torch.float32)
    assert fused_lora.apply(model) == 7 * model.config.num_hidden_layers
    model.enable_input_require_grads()
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    loss0, grads0, full = backward_counts(model, ids)

    assert speed.enable_selective_checkpointing(model) == model.config.num_hidden_layers, "one down projection per layer"
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    loss1, grads1, selective = backward_counts(model, ids)

    layers = model.config.num_hidden_layers
    assert full.down_matmuls == layers and selective.down_matmuls == 0
    assert selective.attention == 0 and full.attention in (0, layers)  # 0: this CPU build's sdpa took the math path
    assert float(loss1) == float(loss0)
    assert max(relative(grads1[name], grads0[name]) for name in grads0) < 1e-6


def test_without_checkpointing_the_mark_is_harmless(tiny_llama: Path) -> None:
    """Marked projections outside any checkpointed region (evaluation, checkpointing off) compute the same."""
    import torch

    from kubetune_trainer import fused_lora, speed

    ids = torch.randint(3, 900, (2, 24), generator=torch.Generator().manual_seed(11))
    model = lora_model(tiny_llama, 16, 0.0, torch.float32)
    fused_lora.apply(model)
    loss0, logits0, grads0 = step(model, ids)
    speed.enable_selective_checkpointing(model)
    loss1, logits1, grads1 = step(model, ids)
    assert not fused_lora.BASE_OUTPUT_MARK.pending
    assert abs(float(loss1 - loss0)) < 1e-6 and relative(logits1, logits0) < 1e-6
    assert max(relative(grads1[n], grads0[n]) for n in grads0) < 1e-6
