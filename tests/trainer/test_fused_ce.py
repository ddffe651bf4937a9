"""`training.fusedCrossEntropy`: the wrapped LM head gives TRL's loss, gradients and accuracy.

Liger's kernels need a GPU, so on the CPU the same wiring (`fused_ce.install`: backbone, the
positions with a label, the summed loss spread over them, TRL's output type) runs with
`reference_cross_entropy`, PyTorch's loss on the full logits; tests/gpu/test_fused_ce_gpu.py
runs it with Liger's kernel. The reference is TRL 1.16's own chunked head, added to the model as
SFTTrainer adds it, and the loss is reduced as SFTTrainer's `compute_loss` reduces it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from kubetune_api.recipe import parse_finetunejob

from tests.trainer.test_fused_lora import lora_model, relative

PROMPT = 9
"""Leading positions of each row labelled -100, as completionOnlyLoss labels a prompt."""


def head_model(model_dir: Path, dtype: Any, device: str = "cpu") -> Any:
    """The tiny Llama with LoRA adapters and TRL's fused LM head, as SFTTrainer prepares it."""
    from trl.trainer.utils import add_fused_lm_head

    model = lora_model(model_dir, 16, 0.0, dtype, device)
    add_fused_lm_head(model.get_base_model(), outputs=("log_probs", "entropy", "is_top1"))
    return model


def sft_step(model: Any, ids: Any, labels: Any) -> tuple[Any, Any, dict[str, Any]]:
    """SFTTrainer's loss for one micro-batch (its `compute_loss` arithmetic), its output and the adapter gradients."""
    model.zero_grad(set_to_none=True)
    out = model(input_ids=ids, labels=labels, fused_lm_head=True)
    loss = -out.log_probs.sum() / out.label_mask.sum().clamp(min=1)
    loss.backward()
    grads = {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    return loss.detach(), out, grads


def completion_labels(ids: Any) -> Any:
    """`ids` with the prompt positions masked."""
    labels = ids.clone()
    labels[:, :PROMPT] = -100
    return labels


def assert_fused_head_matches_trl(model: Any, ids: Any, scorer: Any, loss_tol: float, grad_tol: float) -> None:
    """One step through TRL's head, then through `scorer`'s: same loss, model loss, top-1 hits and gradients."""
    from kubetune_trainer import fused_ce

    labels = completion_labels(ids)
    loss0, out0, grads0 = sft_step(model, ids, labels)
    fused_ce.install(model.get_base_model(), scorer)
    loss1, out1, grads1 = sft_step(model, ids, labels)
    assert abs(float(loss1 - loss0)) <= loss_tol * abs(float(loss0))
    assert abs(float(out1.loss.detach() - out0.loss.detach())) <= loss_tol * abs(float(out0.loss.detach()))
    assert out1.label_mask.equal(out0.label_mask) and int(out1.label_mask.sum()) == ids.numel() - ids.shape[0] * PROMPT
    # Top-1 hits agree except where two logits tie within rounding (none in float32; under 1 % in bf16).
    assert int((out1.is_top1 != out0.is_top1).sum()) <= (0 if loss_tol < 1e-4 else ids.numel() // 100)
    layers = model.config.num_hidden_layers
    assert grads0.keys() == grads1.keys() and len(grads0) == 2 * 7 * layers, "7 projections x (A, B) per layer"
    worst = max(relative(grads1[name], grads0[name]) for name in grads0)
    assert worst < grad_tol, worst
    assert all(float(g.abs().sum()) > 0 for g in grads1.values())


@pytest.fixture
def ids() -> Any:
    """Two random 24-token rows of the tiny vocabulary."""
    import torch

    return torch.randint(3, 900, (2, 24), generator=torch.Generator().manual_seed(11))


def test_loss_and_gradients_match_trl_head_in_float32(tiny_llama: Path, ids: Any) -> None:
    """The wiring with PyTorch's loss: TRL's loss, accuracy and adapter gradients, completion tokens only."""
    import torch
    from kubetune_trainer import fused_ce

    model = head_model(tiny_llama, torch.float32)
    assert_fused_head_matches_trl(model, ids, fused_ce.reference_cross_entropy, loss_tol=1e-6, grad_tol=1e-5)


def test_evaluation_and_plain_forward_keep_trl_head(tiny_llama: Path, ids: Any) -> None:
    """Without gradients (evaluation) TRL's head answers, entropy included; without fused_lm_head the model's own."""
    import torch
    from kubetune_trainer import fused_ce

    model = head_model(tiny_llama, torch.float32)
    labels = completion_labels(ids)
    with torch.no_grad():
        before = model(input_ids=ids, labels=labels, fused_lm_head=True)
        logits_before = model(input_ids=ids).logits
    fused_ce.install(model.get_base_model(), fused_ce.reference_cross_entropy)
    fused_ce.install(model.get_base_model(), fused_ce.reference_cross_entropy)  # a second install wraps nothing
    with torch.no_grad():
        after = model(input_ids=ids, labels=labels, fused_lm_head=True)
        assert model(input_ids=ids).logits.equal(logits_before)
    assert after.log_probs.equal(before.log_probs) and after.entropy.equal(before.entropy)
    trained = model(input_ids=ids, labels=labels, fused_lm_head=True)
    assert math.isnan(float(trained.entropy.sum())), "training calls do not compute the entropy"


def test_a_micro_batch_without_completion_tokens_trains_to_zero(tiny_llama: Path, ids: Any) -> None:
    """All labels -100: loss 0 and zero gradients, as TRL's head gives (no division by zero, backward runs)."""
    import torch
    from kubetune_trainer import fused_ce

    model = head_model(tiny_llama, torch.float32)
    fused_ce.install(model.get_base_model(), fused_ce.reference_cross_entropy)
    loss, out, grads = sft_step(model, ids, torch.full_like(ids, -100))
    assert float(loss) == 0.0 and float(out.loss) == 0.0
    assert all(float(g.abs().sum()) == 0 for g in grads.values())


def manifest(fused: bool, method: str = "sft") -> dict[str, Any]:
    """A minimal FineTuneJob with training.fusedCrossEntropy and method.type (no foundation import: the GPU tests use it)."""
    data = {"path": "/workspace/data/train.jsonl", "format": "preference" if method == "dpo" else "prompt-completion"}
    return {"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": "tiny"},
            "spec": {"model": {"name": "/workspace/models/tiny"}, "dataset": data, "method": {"type": method},
                     "training": {"fusedCrossEntropy": fused}}}


def test_recipe_field_defaults_off_and_the_crd_accepts_it() -> None:
    """Off unless asked for; the generated CRD accepts it on every method (it is a speed switch, not a rule)."""
    from tests.crd_validation import (
        crd_errors,  # CEL and OpenAPI validators: dev extras, absent on GPU machines
    )
    from tests.foundation.test_recipe_and_crd import MINIMAL

    assert parse_finetunejob(MINIMAL).spec.training.fused_cross_entropy is False
    for method in ("sft", "dpo"):
        job = manifest(True, method)
        assert parse_finetunejob(job).spec.training.fused_cross_entropy is True
        assert crd_errors(job) == []


def test_refused_for_other_methods_and_applied_on_cuda_only(tiny_llama: Path) -> None:
    """DPO keeps TRL's head (it needs per-token log-probabilities); on the CPU the switch changes nothing."""
    import torch
    from kubetune_trainer import fused_ce, speed

    model = head_model(tiny_llama, torch.float32)
    causal_lm = model.get_base_model()
    assert fused_ce.refusal(parse_finetunejob(manifest(True)).spec, causal_lm) is None
    assert "dpo" in fused_ce.refusal(parse_finetunejob(manifest(True, "dpo")).spec, causal_lm)
    plain = lora_model(tiny_llama, 16, 0.0, torch.float32).get_base_model()
    assert "fused LM head" in fused_ce.refusal(parse_finetunejob(manifest(True)).spec, plain)
    speed.apply_model_levers(model, parse_finetunejob(manifest(True)).spec)  # the trainer's one entry point
    assert getattr(causal_lm, fused_ce.INSTALLED, False) is (torch.cuda.is_available() and speed.liger_available())
