"""The one translator from the recipe to the libraries' configs: `training` to TRL's `SFTConfig`,
`method.lora` to peft's `LoraConfig`.

Every value is set here on purpose: SFTConfig's own defaults differ from
TrainingArguments' (bf16 on, gradient checkpointing on, learning rate 2e-5), and a
few defaults matter for exact resume (`ignore_data_skip`, the seedable sampler,
`save_only_model`, `dataloader_num_workers`), as `shared/reference/resume-on-cpu.md`
found. Anything not in the recipe is fixed here with a comment saying why.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kubetune_api import contract
from kubetune_trainer.distributed import world_size
from kubetune_api.recipe import DeepSpeedSpec, FineTuneJobSpec

if TYPE_CHECKING:
    import torch
    from peft import LoraConfig
    from trl import SFTConfig


@dataclass(frozen=True)
class RunContext:
    """Facts about this run that the recipe does not hold."""

    checkpoints_dir: str
    dtype: torch.dtype
    has_validation: bool
    on_cpu: bool
    show_progress: bool = False


def deepspeed_config(spec: DeepSpeedSpec | None) -> dict[str, Any] | None:
    """A DeepSpeed ZeRO config for `spec` with "auto" values the Trainer fills in, or None for DDP."""
    if spec is None:
        return None
    zero: dict[str, Any] = {"stage": spec.zero_stage, "overlap_comm": True, "contiguous_gradients": True}
    if spec.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if spec.offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    if spec.zero_stage == 3:
        # The final save must gather the sharded weights, or the adapter files come out empty.
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    return {
        "zero_optimization": zero,
        "bf16": {"enabled": "auto"},
        "fp16": {"enabled": "auto"},
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
    }


def _warmup(spec: FineTuneJobSpec) -> float:
    """transformers 5 takes a ratio as a float below 1 in warmup_steps."""
    training = spec.training
    if training.warmup_ratio is not None:
        return training.warmup_ratio
    return training.warmup_steps or 0


def collective_timeout_seconds() -> int:
    """Seconds a rank waits in a collective for its peers (`KUBETUNE_COLLECTIVE_TIMEOUT_SECONDS`)."""
    return int(os.environ.get(contract.Env.COLLECTIVE_TIMEOUT, contract.COLLECTIVE_TIMEOUT_SECONDS))


def lora_config(spec: FineTuneJobSpec) -> LoraConfig:
    """peft's LoraConfig for `method.lora`: the adapter every method's trainer gets (see `assembly`)."""
    from peft import LoraConfig

    lora = spec.method.lora
    targets = lora.target_modules
    return LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        bias=lora.bias.value,
        # peft takes "all-linear" as a plain string, not inside a list.
        target_modules="all-linear" if targets == ["all-linear"] else list(targets),
        task_type="CAUSAL_LM",
    )


def build_sft_config(spec: FineTuneJobSpec, context: RunContext) -> SFTConfig:
    """SFTConfig for `spec`; checkpoints go to `context.checkpoints_dir`."""
    import torch
    from trl import SFTConfig

    from kubetune_trainer import speed

    training = spec.training
    eval_on = context.has_validation
    return SFTConfig(
        output_dir=context.checkpoints_dir,
        # Loop length and optimizer
        num_train_epochs=training.epochs,
        max_steps=training.max_steps or -1,
        learning_rate=training.learning_rate,
        lr_scheduler_type=training.lr_scheduler,
        warmup_steps=_warmup(spec),
        weight_decay=training.weight_decay,
        optim=training.optimizer.value,
        max_grad_norm=training.max_grad_norm,
        per_device_train_batch_size=training.batch_size,
        per_device_eval_batch_size=training.batch_size,
        gradient_accumulation_steps=training.gradient_accumulation,
        seed=training.seed,
        data_seed=training.seed,
        # Precision and memory
        bf16=context.dtype == torch.bfloat16,
        fp16=context.dtype == torch.float16,
        use_cpu=context.on_cpu,
        # transformers 5 renamed gradient_checkpointing; the old name mirrors this one for TRL.
        activation_checkpointing=training.gradient_checkpointing,
        # Non-reentrant checkpointing works with frozen inputs (LoRA) and with DDP.
        activation_checkpointing_kwargs={"use_reentrant": False},
        deepspeed=deepspeed_config(spec.deepspeed),
        # Naming a backend makes accelerate set up a process group, so only under torchrun.
        ddp_backend="gloo" if context.on_cpu and world_size() > 1 else None,
        ddp_find_unused_parameters=False,
        # A peer pod that dies leaves the others inside a collective; NCCL only gives up after
        # this timeout, and the gang restart should not wait transformers' default 30 minutes.
        ddp_timeout=collective_timeout_seconds(),
        # Data
        max_length=training.max_seq_length,
        packing=training.packing,
        completion_only_loss=training.completion_only_loss,
        dataset_text_field="text",
        dataset_num_proc=None,
        dataloader_num_workers=0,
        remove_unused_columns=True,
        # Logging and evaluation
        logging_strategy="steps",
        logging_steps=training.logging_steps,
        logging_first_step=True,
        # A NaN or infinite loss is logged as such, not replaced by the average of the steps before
        # it; transformers' filter also reads the loss on the host every step (a synchronization
        # that keeps the host from queuing the optimizer's step behind the backward).
        logging_nan_inf_filter=False,
        report_to=list(training.report_to) or "none",
        include_num_input_tokens_seen="non_padding",
        disable_tqdm=not context.show_progress,
        eval_strategy="steps" if eval_on else "no",
        eval_steps=training.resolved_eval_steps if eval_on else None,
        # Checkpoints: kubetune's callback marks complete ones and rotates them after the mark,
        # so the Trainer's own rotation (which runs before any mark exists) is off.
        save_strategy="steps",
        save_steps=training.save_steps,
        save_total_limit=None,
        save_only_model=False,
        load_best_model_at_end=training.load_best_model_at_end and eval_on,
        metric_for_best_model="eval_loss",
        greater_is_better=False,
        # Exact resume: replay the data order and skip the batches already seen.
        ignore_data_skip=False,
        accelerator_config={"use_seedable_sampler": True},
        restore_callback_states_from_checkpoint=False,
        # transformers' own SIGTERM checkpoint can save a step whose RNG state is already past it
        # (see the resume reference); kubetune's callback stops at a step boundary instead.
        enable_jit_checkpoint=False,
        push_to_hub=False,
        **speed.sft_options(spec, context.on_cpu),  # GPU kernels per training.ligerKernels
    )
