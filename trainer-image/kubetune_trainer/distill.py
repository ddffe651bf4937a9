"""Token-level knowledge distillation (`method.type: distill`): an SFT trainer whose loss also learns a teacher.

    loss = alpha · T² · KL(softmax(teacher / T) ‖ softmax(student / T)) + (1 - alpha) · CE

averaged over the completion tokens (labels != -100), the quiz recipe's formula.
TRL's GKD/distillation trainers compute something else (a beta-weighted JSD, no CE
term, a temperature for sampling), so `DistillationTrainer` subclasses `SFTTrainer`
and overrides only `compute_loss` (and `log`, through SFTTrainer's metric buffer):
data handling, LoRA, checkpoints, resume and metrics stay SFT's.

Memory: a 128k vocabulary makes `(batch, seq, vocab)` fp32 logits of several GiB,
twice (student and teacher). So neither model's forward builds logits: the student
runs with `logits_to_keep=1` while a hook keeps its backbone's last hidden state, the
teacher runs its backbone only, and both LM heads are applied to the completion
positions in chunks of `chunk_size` tokens inside activation checkpointing, so at
most one chunk of logits exists at a time, in the forward and in the backward.

The teacher must share the student's tokenizer: `check_same_vocabulary` refuses a
mismatch at start with one line (exit code 2 through `ModelError`).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kubetune_trainer.model import ModelError, resolve_model_source
from kubetune_api.recipe import DistillSpec, FineTuneJobSpec

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase
    from trl import SFTTrainer

    from kubetune_trainer.assembly import TrainerInputs
    from kubetune_trainer.model import ModelLoader

log = logging.getLogger(__name__)

DEFAULT_CHUNK_TOKENS = 1024
"""Completion tokens whose logits are materialised at once: 1024 x 128k x 4 B ≈ 0.5 GiB per model."""

IGNORE_INDEX = -100

KD_LOSS_KEY = "kd_loss"
CE_LOSS_KEY = "ce_loss"


# ---------------------------------------------------------------- the loss, on hidden states or logits


@dataclass(frozen=True)
class LogitHead:
    """Hidden states → logits: a model's LM head plus the scaling some families apply after it."""

    project: Callable[[torch.Tensor], torch.Tensor]
    scale: float = 1.0
    softcap: float | None = None

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        """fp32 logits of `hidden` (tokens x hidden size)."""
        import torch

        logits = self.project(hidden).float() * self.scale
        if self.softcap:
            logits = self.softcap * torch.tanh(logits / self.softcap)
        return logits

    @classmethod
    def of(cls, model: PreTrainedModel) -> LogitHead:
        """The head of a causal LM, with its config's logit scale and final soft-capping (Gemma, Cohere)."""
        config = model.config.get_text_config()
        return cls(
            project=model.get_output_embeddings(),
            scale=float(getattr(config, "logit_scale", None) or 1.0),
            softcap=getattr(config, "final_logit_softcapping", None),
        )


def kd_ce_sums(
    student_hidden: torch.Tensor,
    teacher_hidden: torch.Tensor,
    targets: torch.Tensor,
    student_head: Callable[[torch.Tensor], torch.Tensor],
    teacher_head: Callable[[torch.Tensor], torch.Tensor],
    *,
    temperature: float,
    vocab_size: int,
    chunk_size: int = DEFAULT_CHUNK_TOKENS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed KL(teacher_T ‖ student_T) and summed CE over N scored tokens.

    `student_hidden` (N x Hs) and `teacher_hidden` (N x Ht) are the states that predict
    `targets` (N); the heads map them to logits. KL compares the first `vocab_size`
    logits (the shared tokenizer's; padded LM heads of one family differ beyond it);
    CE uses the student's whole head, as plain SFT does. Each chunk runs under
    activation checkpointing: its logits are rebuilt in the backward instead of kept.
    """
    import torch
    import torch.nn.functional as F
    from torch.utils.checkpoint import checkpoint

    def chunk_sums(s_hidden: torch.Tensor, t_hidden: torch.Tensor, chunk_targets: torch.Tensor) -> torch.Tensor:
        student_logits = student_head(s_hidden)
        with torch.no_grad():
            teacher_log_probs = F.log_softmax(teacher_head(t_hidden)[:, :vocab_size] / temperature, dim=-1)
        student_log_probs = F.log_softmax(student_logits[:, :vocab_size] / temperature, dim=-1)
        # kl_div(input=log q, target=log p, log_target) = Σ p · (log p - log q): KL(teacher ‖ student).
        kd = F.kl_div(student_log_probs, teacher_log_probs, reduction="sum", log_target=True)
        ce = F.cross_entropy(student_logits, chunk_targets, reduction="sum")
        return torch.stack((kd, ce))

    # Connected to the student even without scored tokens (a fully truncated batch): backward and DDP's
    # gradient all-reduce must still run, with zero gradients.
    total = student_hidden.new_zeros(2, dtype=torch.float32) + 0.0 * student_hidden.sum()
    for start in range(0, targets.shape[0], chunk_size):
        end = start + chunk_size
        parts = (student_hidden[start:end], teacher_hidden[start:end], targets[start:end])
        if torch.is_grad_enabled() and student_hidden.requires_grad:
            total = total + checkpoint(chunk_sums, *parts, use_reentrant=False)
        else:
            total = total + chunk_sums(*parts)
    return total[0], total[1]


def distillation_loss(
    kd_sum: torch.Tensor, ce_sum: torch.Tensor, tokens: torch.Tensor | float, *, alpha: float, temperature: float
) -> torch.Tensor:
    """alpha · T² · KL + (1 - alpha) · CE, both averaged over `tokens`."""
    return (alpha * temperature**2 * kd_sum + (1 - alpha) * ce_sum) / tokens


def scored_positions(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask over the hidden states' positions, targets) for next-token prediction of completion tokens.

    Position t predicts label t + 1, so the last position predicts nothing and the first label is never a target.
    """
    import torch

    shifted = torch.nn.functional.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)
    mask = shifted != IGNORE_INDEX
    return mask, shifted[mask]


# ---------------------------------------------------------------- teacher


def teacher_spec(spec: FineTuneJobSpec) -> FineTuneJobSpec:
    """`spec` with the teacher as `model` and its quantizationBits as `method.quantization`, for the model loader."""
    distill = _distill(spec)
    teacher = distill.teacher
    model = spec.model.model_copy(update={"name": teacher.name, "revision": teacher.revision, "gguf_file": None})
    quantization = spec.method.quantization.model_copy(update={"bits": teacher.quantization_bits})
    method = spec.method.model_copy(update={"quantization": quantization})
    return spec.model_copy(update={"model": model, "method": method})


def _distill(spec: FineTuneJobSpec) -> DistillSpec:
    if spec.method.distill is None:  # the recipe model refuses this; a guard for direct callers
        raise ModelError("method.type distill needs method.distill.teacher")
    return spec.method.distill


TEACHER_FIELD = "method.distill.teacher"
"""The teacher's place in the recipe, for the model loader's messages."""


def load_teacher(spec: FineTuneJobSpec, models: ModelLoader) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The teacher model (frozen, eval mode) and its tokenizer, through the student's loader.

    So it comes from the same cache (the shared `model.cacheClaim` mount when there is one), in
    the same dtype, onto the same GPU, quantized per its own `quantizationBits` by the same rules.
    """
    tspec = teacher_spec(spec)
    source = resolve_model_source(tspec.model, field=TEACHER_FIELD)
    tokenizer = models.tokenizer(source, tspec, TEACHER_FIELD)
    teacher = models.model(source, tspec, TEACHER_FIELD)
    teacher.eval()
    teacher.requires_grad_(False)
    log.info("teacher %s loaded (%s bits)", tspec.model.name, tspec.method.quantization.bits)
    return teacher, tokenizer


def check_same_vocabulary(
    student_tokenizer: PreTrainedTokenizerBase,
    teacher_tokenizer: PreTrainedTokenizerBase,
    student: PreTrainedModel,
    teacher: PreTrainedModel,
    teacher_name: str,
) -> int:
    """The shared vocabulary size; ModelError when the teacher's tokens differ from the student's.

    Token-level KD compares distributions index by index, so index i must be the same token in
    both; LM heads may be padded beyond the tokenizer (one family, different sizes), which is fine.
    """
    student_vocab, teacher_vocab = student_tokenizer.get_vocab(), teacher_tokenizer.get_vocab()
    if student_vocab != teacher_vocab:
        differing = sorted(set(student_vocab.items()) ^ set(teacher_vocab.items()), key=lambda item: item[1])
        example = f"; e.g. token {differing[0][0]!r} ↔ id {differing[0][1]}" if differing else ""
        raise ModelError(
            f"method.distill.teacher.name {teacher_name}: its tokenizer differs from the student's "
            f"({len(teacher_vocab)} vs {len(student_vocab)} tokens{example}); token-level distillation needs "
            "the same tokenizer: pick a teacher of the student's model family"
        )
    vocab_size = len(student_tokenizer)
    for who, model in (("student model.name", student), (f"teacher {teacher_name}", teacher)):
        head_size = model.get_output_embeddings().weight.shape[0]
        if head_size < vocab_size:
            raise ModelError(
                f"method.distill: the {who} predicts {head_size} tokens, fewer than its tokenizer's {vocab_size}"
            )
    return vocab_size


# ---------------------------------------------------------------- the trainer


@contextlib.contextmanager
def _captured_output(module: torch.nn.Module) -> Iterator[dict[str, Any]]:
    """Keep what `module` returns during the block (the backbone's last hidden state)."""
    box: dict[str, Any] = {}

    def hook(_module: Any, _args: Any, output: Any) -> None:
        box["hidden"] = output[0] if isinstance(output, tuple) else output.last_hidden_state

    handle = module.register_forward_hook(hook)
    try:
        yield box
    finally:
        handle.remove()


def _causal_lm(model: Any) -> PreTrainedModel:
    """The transformers causal LM inside a PeftModel (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


@functools.cache
def make_distillation_trainer_class() -> type[SFTTrainer]:
    """`DistillationTrainer`, built on first use so that importing this module does not import TRL."""
    import torch
    from trl import SFTTrainer

    class DistillationTrainer(SFTTrainer):
        """SFTTrainer with the KD + CE loss of the module docstring; logs `kd_loss` and `ce_loss`."""

        # compute_loss divides by the tokens of the whole accumulated batch itself.
        loss_is_scaled_for_ga = True

        def __init__(
            self,
            *args: Any,
            teacher: PreTrainedModel,
            distill: DistillSpec,
            vocab_size: int,
            chunk_size: int = DEFAULT_CHUNK_TOKENS,
            **kwargs: Any,
        ) -> None:
            super().__init__(*args, **kwargs)
            self.teacher = teacher
            self.distill = distill
            self.vocab_size = vocab_size
            self.chunk_size = chunk_size
            if not getattr(teacher, "is_loaded_in_4bit", False) and not getattr(teacher, "is_loaded_in_8bit", False):
                # A quantized teacher was placed while loading; a 16-bit one follows the student's device.
                self.teacher.to(self.accelerator.device)

        def compute_loss(
            self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None
        ) -> Any:
            """The distillation loss of this micro-batch, normalised by the accumulated batch's tokens."""
            mode = "train" if self.model.training else "eval"
            labels = inputs["labels"]
            model_inputs = {key: value for key, value in inputs.items() if key != "labels"}
            model_inputs["use_cache"] = False
            student_lm = _causal_lm(self.accelerator.unwrap_model(model))
            with _captured_output(student_lm.base_model) as student_box:
                # Through the (DDP-wrapped) model so gradient sync works; logits only for the last position.
                outputs = model(**model_inputs, **_few_logits(student_lm))
            with torch.no_grad():
                teacher_hidden = self.teacher.base_model(**model_inputs).last_hidden_state
            mask, targets = scored_positions(labels)
            kd_sum, ce_sum = kd_ce_sums(
                student_box["hidden"][mask],
                teacher_hidden[mask].to(student_box["hidden"].device),
                targets,
                LogitHead.of(student_lm),
                LogitHead.of(self.teacher),
                temperature=self.distill.temperature,
                vocab_size=self.vocab_size,
                chunk_size=self.chunk_size,
            )
            local_tokens = targets.numel()
            loss = distillation_loss(
                kd_sum,
                ce_sum,
                self._denominator(num_items_in_batch, local_tokens, mode),
                alpha=self.distill.alpha,
                temperature=self.distill.temperature,
            )
            if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                # num_items_in_batch counts every rank's tokens and DDP averages gradients across ranks.
                loss = loss * self.accelerator.num_processes
            self._record(mode, kd_sum, ce_sum, local_tokens)
            return (loss, outputs) if return_outputs else loss

        def _denominator(self, num_items_in_batch: Any, local_tokens: int, mode: str) -> Any:
            if num_items_in_batch is not None:
                return num_items_in_batch
            steps = self.current_gradient_accumulation_steps if mode == "train" else 1
            return max(local_tokens, 1) * steps

        def _record(self, mode: str, kd_sum: torch.Tensor, ce_sum: torch.Tensor, tokens: int) -> None:
            # Per-token means of this micro-batch, all ranks; SFTTrainer.log averages them into the logs.
            sums = self.accelerator.gather(
                torch.stack((kd_sum.detach(), ce_sum.detach(), kd_sum.new_tensor(float(tokens))))[None]
            ).sum(0)
            count = max(float(sums[2]), 1.0)
            self._metrics[mode][KD_LOSS_KEY].append(float(sums[0]) / count)
            self._metrics[mode][CE_LOSS_KEY].append(float(sums[1]) / count)

    return DistillationTrainer


def _few_logits(model: PreTrainedModel) -> dict[str, int]:
    """`logits_to_keep=1` where the model takes it: the loss needs hidden states, not full logits."""
    return {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}


def build_distill_trainer(inputs: TrainerInputs) -> SFTTrainer:
    """The distillation trainer: loads the teacher, checks its vocabulary, then builds like SFT.

    A teacher that cannot be used (wrong tokenizer, missing folder) raises ModelError, which
    the assembly step turns into the trainer's invalid-input error: exit code 2, never retried.
    """
    distill = _distill(inputs.spec)
    teacher, teacher_tokenizer = load_teacher(inputs.spec, inputs.models)
    vocab_size = check_same_vocabulary(inputs.tokenizer, teacher_tokenizer, inputs.model, teacher, distill.teacher.name)
    return make_distillation_trainer_class()(
        **inputs.arguments(teacher=teacher, distill=distill, vocab_size=vocab_size)
    )
