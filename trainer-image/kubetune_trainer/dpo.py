"""Direct preference optimization (`method.type: dpo`) with TRL's DPOTrainer.

The data are `prompt`/`chosen`/`rejected` rows (`dataset.format: preference`, text or
chat-shaped pairs, rendered by `kubetune_trainer.formats`). The policy is a LoRA (or
QLoRA) adapter on the base model, and the reference model is that same base with the
adapter disabled: `ref_model=None` with a peft config, so no second copy of the model
is loaded. TRL logs `rewards/margins` and `rewards/accuracies`, which the metrics
callback exports as `kubetune_trainer_dpo_reward_margin` / `_accuracy`.

Every shared training setting (steps, optimizer, precision, checkpoints, the settings
exact resume needs) comes from the one translator, `config.build_sft_config`; this
module only carries them over into a `DPOConfig` and adds `beta` and `lossType`.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from kubetune_trainer.recipe import FineTuneJobSpec

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase, TrainerCallback
    from trl import DPOConfig, DPOTrainer, SFTConfig

REWARD_MARGIN_KEY = "rewards/margins"
REWARD_ACCURACY_KEY = "rewards/accuracies"


def build_dpo_config(sft_config: SFTConfig, spec: FineTuneJobSpec) -> DPOConfig:
    """A DPOConfig with every TrainingArguments value of `sft_config`, plus the recipe's DPO settings."""
    from transformers import TrainingArguments
    from trl import DPOConfig

    names = [field.name for field in dataclasses.fields(TrainingArguments) if field.init]
    shared = {name: getattr(sft_config, name) for name in names}
    dpo = spec.method.dpo
    return DPOConfig(
        **shared,
        # Prompt + answer, truncated like SFT examples (the prompt is kept, the answer cut).
        max_length=sft_config.max_length,
        beta=dpo.beta,
        loss_type=[dpo.loss_type],
    )


def build_dpo_trainer(
    spec: FineTuneJobSpec,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    data: Any,
    sft_config: SFTConfig,
    callbacks: list[TrainerCallback],
) -> DPOTrainer:
    """TRL's DPOTrainer on `data`'s preference pairs, a LoRA adapter on `model`, the bare base as reference."""
    from trl import DPOTrainer

    from kubetune_trainer.model import lora_config

    return DPOTrainer(
        model=model,
        ref_model=None,
        args=build_dpo_config(sft_config, spec),
        train_dataset=data.train,
        eval_dataset=data.validation,
        processing_class=tokenizer,
        peft_config=lora_config(spec),
        callbacks=callbacks,
    )
