"""`training.fusedCrossEntropy`: Liger's fused linear cross-entropy in place of TRL's chunked LM head (SFT).

TRL 1.16's SFTTrainer patches the model's forward with its fused LM head
(`trl.trainer.utils.add_fused_lm_head`): called with `fused_lm_head=True`, it projects the
positions that have a label through the LM head in tiles and returns per-token log-probabilities,
entropy and top-1 hits. Its backward projects them a second time, so a step runs three
vocabulary-sized matmuls (forward, recompute, input gradient). Liger's fused linear
cross-entropy computes the input gradient during the forward (the loss is the last thing the
graph does): two matmuls, no logits kept. TRL refuses Liger's own switch for it
(`liger_kernel_config={"fused_linear_cross_entropy": True}` replaces the forward it patches), so
this module wraps TRL's patched forward instead:

- training calls (`fused_lm_head=True` with gradients on) run the backbone, keep the positions
  whose next-token label is not -100 (the completion tokens under completionOnlyLoss) and score
  them with Liger (`reduction="sum"`, the predicted token of each for the accuracy metric);
- everything else (evaluation, generation, a forward without the fused head) is TRL's forward.

It returns TRL's `FusedCausalLMOutput`, so SFTTrainer's `compute_loss` is unchanged. Liger gives
the summed loss, not each token's, so `log_probs` carries the micro-batch's mean on every scored
position: their sum, and its gradient, are the summed log-likelihood TRL's head gives. `is_top1`
is exact per token; `entropy` is not computed (NaN: the logged `entropy` metric reads nan). A
model whose head scales or caps its logits (softcapping, `logit_scale`, ...) keeps TRL's head.

Liger's kernels need Triton on a GPU. The recipe switch applies on CUDA only, like the other
levers; `install` takes the scoring function as an argument so the CPU tests run the same
wiring with `reference_cross_entropy`, PyTorch's loss on the full logits.
"""

from __future__ import annotations

import functools
import logging
import types
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from kubetune_api.recipe import FineTuneJobSpec, MethodType

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

Scorer = Callable[["torch.Tensor", "torch.Tensor", "torch.Tensor"], tuple["torch.Tensor", "torch.Tensor"]]
"""(hidden states (n, d), LM head weight (V, d), labels (n,)) -> (summed cross-entropy, predicted tokens (n,))."""

INSTALLED = "_kubetune_fused_ce"
"""Attribute set on a model whose forward this module wrapped (installing twice wraps once)."""

# Config attributes with which the LM head scales or caps its logits (TRL's head applies them, Liger's does not).
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "output_multiplier", "lm_head_multiplier",
                     "logits_scaling")


def liger_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor) -> tuple[Any, Any]:
    """Liger's fused linear cross-entropy: summed loss over `labels`, gradient computed in the forward."""
    from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

    out = liger_fused_linear_cross_entropy(hidden, weight, labels, reduction="sum", return_predicted_tokens=True)
    return out.loss, out.predicted_tokens


def reference_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor) -> tuple[Any, Any]:
    """The same contract in plain PyTorch on the full logits (float32 softmax): the CPU tests' scorer."""
    import torch.nn.functional as F

    logits = hidden @ weight.T
    return F.cross_entropy(logits.float(), labels, reduction="sum"), logits.argmax(dim=-1)


def refusal(spec: FineTuneJobSpec, model: Any) -> str | None:
    """Why the LM head of `model` (the causal LM under the adapter) cannot be replaced for `spec`; None when it can.

    Only SFT scores through the fused head's summed log-likelihood alone: DPO reads each
    sequence's per-token log-probabilities and distillation scores the full logits.
    """
    if spec.method.type is not MethodType.sft:
        return f"method.type {spec.method.type.value} is not sft"
    text_config = model.config.get_text_config()
    for name in _LOGIT_TRANSFORMS:
        value = getattr(text_config, name, None)
        if value is not None and value != 1.0:
            return f"the model's {name} = {value} transforms the logits"
    head = model.get_output_embeddings()
    if head is None or getattr(head, "bias", None) is not None:
        return "the LM head is missing or has a bias"
    if "forward" not in vars(model):
        return "the forward has no fused LM head (TRL's SFTTrainer adds it)"
    return None


def install(model: Any, scorer: Scorer) -> None:
    """Wrap `model`'s TRL-patched forward (the causal LM under the adapter) so training scores with `scorer`."""
    if getattr(model, INSTALLED, False):
        return
    trl_forward = model.forward

    @functools.wraps(type(model).forward)  # keeps the signature `generate` validates its kwargs against
    def forward(self: Any, *args: Any, fused_lm_head: bool = False, labels: Any = None, shift_labels: Any = None,
                num_items_in_batch: Any = None, **kwargs: Any) -> Any:
        import torch

        if not fused_lm_head or not torch.is_grad_enabled():
            return trl_forward(*args, fused_lm_head=fused_lm_head, labels=labels, shift_labels=shift_labels,
                               num_items_in_batch=num_items_in_batch, **kwargs)
        return _score(self, scorer, args, kwargs, labels, shift_labels, num_items_in_batch)

    model.forward = types.MethodType(forward, model)
    setattr(model, INSTALLED, True)


def _score(model: Any, scorer: Scorer, args: tuple[Any, ...], kwargs: dict[str, Any], labels: Any,
           shift_labels: Any, num_items_in_batch: Any) -> Any:
    """The backbone, then the scored positions through `scorer`, as TRL's `FusedCausalLMOutput`."""
    import torch
    from trl.trainer.utils import FusedCausalLMOutput

    kwargs["use_cache"] = False
    hidden = model.base_model(*args, **kwargs).last_hidden_state
    if shift_labels is None:
        hidden, labels = hidden[:, :-1], labels[:, 1:]
    else:
        labels = shift_labels
    weight = model.get_output_embeddings().weight
    hidden, labels = hidden.to(weight.device), labels.to(weight.device)
    mask = labels != -100
    count = mask.sum()
    if bool(count == 0):  # nothing to score (a micro-batch of prompts only): a zero still connected to the model
        loss_sum, predicted = hidden.sum() * 0.0, labels[mask]
    else:
        loss_sum, predicted = scorer(hidden[mask], weight, labels[mask])
    # Every scored position carries the mean: the sum (what compute_loss reduces) and its gradient are exact.
    mean = loss_sum / count.clamp(min=1)
    log_probs = torch.where(mask, -mean, torch.zeros((), dtype=mean.dtype, device=mean.device))
    is_top1 = torch.zeros_like(mask).masked_scatter(mask, predicted == labels[mask])
    entropy = torch.full(mask.shape, float("nan"), device=mask.device)
    denominator = count.clamp(min=1) if num_items_in_batch is None else num_items_in_batch
    return FusedCausalLMOutput(loss=loss_sum / denominator, log_probs=log_probs, entropy=entropy, is_top1=is_top1,
                               label_mask=mask)


def apply_from_recipe(model: Any, spec: FineTuneJobSpec) -> bool:
    """`training.fusedCrossEntropy` on the Trainer's model when `refusal` has none; True if applied.

    The caller (`speed.apply_model_levers`) checks for CUDA and an importable Liger first.
    """
    if not spec.training.fused_cross_entropy:
        return False
    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    reason = refusal(spec, causal_lm)
    if reason is not None:
        log.warning("training.fusedCrossEntropy: %s; keeping TRL's LM head", reason)
        return False
    install(causal_lm, liger_cross_entropy)
    log.info("training.fusedCrossEntropy: the LM head and its loss run through Liger's fused linear cross-entropy")
    return True
