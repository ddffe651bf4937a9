"""The recipe → SFTConfig translator sets every value itself, including the ones exact resume needs."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from kubetune_trainer.config import RunContext, build_sft_config, deepspeed_config, lora_config
from kubetune_trainer.model import ModelError, quantization_config
from kubetune_api.recipe import DeepSpeedSpec, parse_spec


def _spec(**sections: Any) -> Any:
    return parse_spec({"model": {"name": "org/model"}, "dataset": {"path": "/data/x.jsonl"}, **sections})


def _config(spec: Any, *, validation: bool = True, dtype: torch.dtype = torch.float32) -> Any:
    context = RunContext(checkpoints_dir="/tmp/ckpt", dtype=dtype, has_validation=validation, on_cpu=True)
    return build_sft_config(spec, context)


def test_recipe_values_override_sftconfig_defaults() -> None:
    config = _config(_spec(training={"learningRate": 3e-4, "gradientCheckpointing": False, "batchSize": 3}))
    assert config.learning_rate == 3e-4  # SFTConfig's own default is 2e-5
    assert config.bf16 is False and config.fp16 is False  # SFTConfig defaults bf16 on
    assert config.gradient_checkpointing is False  # SFTConfig defaults it on
    assert config.per_device_train_batch_size == 3
    assert config.output_dir == "/tmp/ckpt"


def test_exact_resume_settings() -> None:
    config = _config(_spec())
    assert config.ignore_data_skip is False
    assert config.accelerator_config.use_seedable_sampler is True
    assert config.save_only_model is False
    assert config.dataloader_num_workers == 0
    assert config.enable_jit_checkpoint is False
    # kubetune rotates after marking a checkpoint complete; the Trainer must not rotate before.
    assert config.save_total_limit is None


def test_precision_follows_the_training_dtype() -> None:
    assert _config(_spec(), dtype=torch.bfloat16).bf16 is True
    assert _config(_spec(), dtype=torch.float16).fp16 is True


def test_warmup_ratio_becomes_a_fraction_of_steps() -> None:
    assert _config(_spec(training={"warmupRatio": 0.1})).warmup_steps == 0.1
    assert _config(_spec(training={"warmupSteps": 7})).warmup_steps == 7


def test_no_validation_turns_evaluation_and_best_model_off() -> None:
    config = _config(_spec(training={"loadBestModelAtEnd": True}, dataset={"path": "/d.jsonl", "validationSplit": 0.1}),
                     validation=False)
    assert config.eval_strategy == "no"
    assert config.load_best_model_at_end is False


def test_eval_steps_default_to_save_steps() -> None:
    config = _config(_spec(training={"saveSteps": 50}))
    assert config.eval_strategy == "steps" and config.eval_steps == 50


def test_max_steps_overrides_epochs() -> None:
    assert _config(_spec(training={"maxSteps": 9})).max_steps == 9
    assert _config(_spec()).max_steps == -1


def test_deepspeed_config_only_when_asked() -> None:
    assert deepspeed_config(None) is None
    zero3 = deepspeed_config(DeepSpeedSpec(zero_stage=3, offload_params=True))
    assert zero3 is not None
    assert zero3["zero_optimization"]["stage"] == 3
    assert zero3["zero_optimization"]["offload_param"] == {"device": "cpu", "pin_memory": True}
    assert zero3["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True


def test_lora_config_from_the_recipe() -> None:
    lora = lora_config(_spec(method={"lora": {"r": 4, "alpha": 8, "dropout": 0.2, "targetModules": ["q_proj"]}}))
    assert (lora.r, lora.lora_alpha, lora.lora_dropout) == (4, 8, 0.2)
    assert lora.target_modules == {"q_proj"}
    assert lora_config(_spec()).target_modules == "all-linear"


def test_quantization_config_per_bits() -> None:
    assert quantization_config(_spec(method={"quantization": {"bits": 16}})) is None
    assert quantization_config(_spec(method={"quantization": {"bits": 8}})).load_in_8bit
    nf4 = quantization_config(_spec(method={"quantization": {"computeDtype": "float32"}}))
    assert nf4.load_in_4bit and nf4.bnb_4bit_quant_type == "nf4" and nf4.bnb_4bit_use_double_quant
    assert nf4.bnb_4bit_compute_dtype == torch.float32


def test_gguf_with_bitsandbytes_is_refused() -> None:
    spec = _spec(model={"name": "/models/x", "ggufFile": "x.gguf"})
    with pytest.raises(ModelError, match="method.quantization.bits to 16"):
        quantization_config(spec)


@pytest.mark.skipif(torch.cuda.is_available(), reason="auto picks bf16/fp16 on a GPU")
def test_precision_auto_is_fp32_on_the_cpu() -> None:
    from kubetune_trainer.model import training_dtype

    assert training_dtype("auto") == torch.float32
    assert training_dtype("bf16") == torch.bfloat16 and training_dtype("fp16") == torch.float16
