"""The trainer assembly step: one place that turns what was loaded into the Trainer for `method.type`.

    trainer = build_trainer(TrainerInputs(spec, models, model, tokenizer, data, config, callbacks))

Every method's trainer gets the same keyword arguments from `TrainerInputs.arguments`
(the model, the data, the tokenizer, the callbacks, `args`, and the LoRA adapter from the
translator, `config.lora_config`); a method builder adds only what is its own:

- `sft`: TRL's SFTTrainer, nothing added;
- `distill`: `distill.build_distill_trainer` loads the teacher through the run's `ModelLoader`
  (the student's cache, dtype and quantization rules) and adds its KD + CE loss;
- `dpo`: `dpo.build_dpo_trainer` carries `args` over into a DPOConfig and adds the reference.

Then, for every method alike: the adapter's dtype (`training.adapterInComputeDtype`), its dtype
kept on reloads, the fused LoRA kernels (`training.fusedLora`), then selective checkpointing and
regional compilation (`speed.apply_model_levers`). A model the recipe names
that cannot be used (a teacher's other tokenizer, no such hub repository) raises InvalidInput.
Heavy imports stay inside functions: importing this module imports no torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kubetune_api.contract import InvalidInput
from kubetune_api.recipe import FineTuneJobSpec, MethodType

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase, Trainer, TrainerCallback
    from trl import SFTConfig

    from kubetune_trainer.data import TrainingData
    from kubetune_trainer.model import ModelLoader


@dataclass(frozen=True)
class TrainerInputs:
    """Everything a trainer is built from: the recipe, the run's model loader, what it loaded, the config."""

    spec: FineTuneJobSpec
    models: ModelLoader
    """The run's model loader: a distillation teacher loads through it, like the student did."""
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    data: TrainingData
    config: SFTConfig
    """The translator's SFTConfig (`config.build_sft_config`): the settings every method shares."""
    callbacks: list[TrainerCallback]

    def arguments(self, **own: Any) -> dict[str, Any]:
        """The Trainer keyword arguments every method passes alike, plus (or replacing) the method's `own`."""
        from kubetune_trainer.config import lora_config

        shared = {
            "model": self.model,
            "args": self.config,
            "train_dataset": self.data.train,
            "eval_dataset": self.data.validation,
            "processing_class": self.tokenizer,
            "peft_config": lora_config(self.spec),
            "callbacks": self.callbacks,
        }
        return shared | own


def build_trainer(inputs: TrainerInputs) -> Trainer:
    """The Trainer for `inputs.spec.method.type`, with the adapter settings every method shares applied.

    Raises InvalidInput when a model the method needs cannot be used (exit 2, never retried).
    """
    from kubetune_trainer import fused_lora, offload, speed
    from kubetune_trainer.model import ModelError

    spec = inputs.spec
    try:
        trainer = _build_for_method(inputs)
    except ModelError as error:
        raise InvalidInput(str(error)) from error
    speed.cast_adapter(trainer.model, spec, bf16=bool(inputs.config.bf16))  # training.adapterInComputeDtype
    keep_adapter_dtype_on_reload(trainer.model)  # a resume goes on in the dtype the adapter trained in
    fused_lora.apply_from_recipe(trainer.model, spec)  # training.fusedLora, after the cast it checks dtypes against
    speed.apply_model_levers(trainer.model, spec)  # selectiveCheckpointing, compileLayers: after the fusing they read
    if spec.training.offload_activations:
        offload.install(trainer)  # TRL's offload context (SFTTrainer built it on GPUs), without its host syncs
    return trainer


def _build_for_method(inputs: TrainerInputs) -> Trainer:
    """Dispatch on `method.type` to its builder; each module imports its library only when chosen."""
    method = inputs.spec.method.type
    if method is MethodType.distill:  # SFTTrainer with the KD + CE loss
        from kubetune_trainer.distill import build_distill_trainer

        return build_distill_trainer(inputs)
    if method is MethodType.dpo:  # DPOTrainer on preference pairs, the same shared settings
        from kubetune_trainer.dpo import build_dpo_trainer

        return build_dpo_trainer(inputs)
    from trl import SFTTrainer

    return SFTTrainer(**inputs.arguments())


def keep_adapter_dtype_on_reload(model: Any) -> None:
    """Make the Trainer's adapter reloads (resume, best model at end) keep the adapter's training dtype.

    transformers' Trainer reloads a checkpoint's adapter with peft's `load_adapter`, which copies
    the weights into the existing parameters and then, by its default `autocast_adapter_dtype=True`,
    upcasts bf16/fp16 adapter weights to fp32. An adapter that trains in bf16 (TRL casts it so on a
    4- or 8-bit base; `training.adapterInComputeDtype` on a 16-bit one) would go on in fp32 after a
    resume and end with other weights than an uninterrupted run. The Trainer passes no such option,
    so the model's own `load_adapter` gets it.
    """
    import functools

    from peft import PeftModel

    # Not a PeftModel (a full fine-tune): the Trainer reloads it with load_state_dict, which keeps dtypes.
    if isinstance(model, PeftModel):
        model.load_adapter = functools.partial(model.load_adapter, autocast_adapter_dtype=False)
