"""Direct preference optimization (`method.type: dpo`) with TRL's DPOTrainer.

The data are `prompt`/`chosen`/`rejected` rows (`dataset.format: preference`, text or
chat-shaped pairs, rendered by `kubetune_trainer.formats`). The policy is a LoRA (or
QLoRA) adapter on the base model, and the reference model is that same base with the
adapter disabled: `ref_model=None` with a peft config, so no second copy of the model
is loaded. TRL logs `rewards/margins` and `rewards/accuracies`, which the metrics
callback exports as `kubetune_trainer_dpo_reward_margin` / `_accuracy`.

Every shared training setting (steps, optimizer, precision, checkpoints, the settings
exact resume needs) comes from the one translator, `config.build_sft_config`, and every
shared trainer argument (LoRA included) from the assembly step, `assembly.TrainerInputs`;
this module only carries the settings over into a `DPOConfig` and adds `beta` and `lossType`.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from kubetune_api.recipe import FineTuneJobSpec

if TYPE_CHECKING:
    from trl import DPOConfig, DPOTrainer, SFTConfig

    from kubetune_trainer.assembly import TrainerInputs

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


def build_dpo_trainer(inputs: TrainerInputs) -> DPOTrainer:
    """TRL's DPOTrainer on the preference pairs, the shared arguments, the bare base as reference."""
    from trl import DPOTrainer

    return DPOTrainer(**inputs.arguments(args=build_dpo_config(inputs.config, inputs.spec), ref_model=None))
