"""`kubetune generate OUTPUT_DIR "prompt"`: try a trained result.

    kubetune generate out/quiz "Generate a quiz question about science with easy difficulty."
    kubetune generate out/quiz/output "..." --max-new-tokens 64

OUTPUT_DIR is the trainer's output folder (`/workspace/output` on the PVC) or the
`kubetune run` workspace around it. The merged model (`output/merged`) is loaded when
it exists, else the base model with the adapter (`output/adapter`). The recipe the
trainer saved there (`output/recipe.json`, or the workspace's `recipe.json`) gives the
base model, the prompt format (chat template, system prompt) and the generation
settings (`evaluation.temperature`, `topP`, `maxNewTokens`), so the answer is produced
the way the end-of-training samples were.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kubetune_trainer.evaluation import RECIPE_FILE
from kubetune_trainer.export import ADAPTER_DIR, MERGED_DIR
from kubetune_trainer.recipe import FineTuneJobSpec, RecipeError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


class ResultError(ValueError):
    """OUTPUT_DIR holds no usable result; the message says what is missing."""


@dataclass(frozen=True)
class TrainedResult:
    """Where a finished run's pieces are."""

    output: Path
    recipe: Path
    merged: Path | None
    adapter: Path | None

    @property
    def cache(self) -> str | None:
        """The run's model cache (`kubetune run` keeps it next to the output), if there is one."""
        cache = self.output.parent / "cache"
        return str(cache) if cache.is_dir() else None


def find_result(directory: Path) -> TrainedResult:
    """The result in `directory` (an output folder or a `kubetune run` workspace); ResultError if none."""
    for output in (directory, directory / "output"):
        merged, adapter = output / MERGED_DIR, output / ADAPTER_DIR
        if merged.is_dir() or adapter.is_dir():
            recipe = next((p for p in (output / RECIPE_FILE, output.parent / RECIPE_FILE) if p.is_file()), None)
            if recipe is None:
                raise ResultError(f"{output}: no {RECIPE_FILE} here or in {output.parent}; it names the base model")
            return TrainedResult(
                output=output,
                recipe=recipe,
                merged=merged if merged.is_dir() else None,
                adapter=adapter if adapter.is_dir() else None,
            )
    raise ResultError(
        f"{directory}: no trained result ({ADAPTER_DIR}/ or {MERGED_DIR}/) here or in {directory / 'output'}"
    )


def load_result(result: TrainedResult, spec: FineTuneJobSpec) -> tuple[Any, PreTrainedTokenizerBase]:
    """The fine-tuned model (merged, or base + adapter) in eval mode, and its tokenizer."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kubetune_trainer.model import load_model, resolve_model_source, training_dtype

    dtype = training_dtype(spec.training.precision)
    if result.merged is not None:
        model = AutoModelForCausalLM.from_pretrained(result.merged, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(result.merged)
    else:
        assert result.adapter is not None
        source = resolve_model_source(spec.model)
        # Quantize as in training on a GPU; bitsandbytes' CPU kernels are slow, so the CPU gets the plain base.
        base = load_model(source, spec, result.cache, dtype=dtype, quantize=torch.cuda.is_available(),
                          device_index=0 if torch.cuda.is_available() else None)
        model = PeftModel.from_pretrained(base, str(result.adapter))
        tokenizer = AutoTokenizer.from_pretrained(result.adapter)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if torch.cuda.is_available() and model.device.type != "cuda":
        model.to("cuda")
    return model.eval(), tokenizer


def generate_text(result: TrainedResult, prompt: str, max_new_tokens: int | None = None) -> str:
    """The fine-tuned model's answer to `prompt`, formatted and sampled as the recipe says."""
    from kubetune_trainer.formats import render_inference_prompt
    from kubetune_trainer.samples import generate_completion as generate
    from kubetune_trainer.train import load_job

    spec = load_job(result.recipe).spec
    if max_new_tokens is not None:
        spec = spec.model_copy(
            update={"evaluation": spec.evaluation.model_copy(update={"max_new_tokens": max_new_tokens})}
        )
    model, tokenizer = load_result(result, spec)
    return generate(model, tokenizer, render_inference_prompt(spec.dataset, tokenizer, prompt), spec)


def generate_cli(output_dir: str | Path, prompt: str, max_new_tokens: int | None = None) -> int:
    """`kubetune generate`: print the completion; 2 with a one-line reason when OUTPUT_DIR has no result."""
    from kubetune_trainer.model import ModelError

    if max_new_tokens is not None and max_new_tokens < 1:
        print("kubetune generate: --max-new-tokens must be at least 1", file=sys.stderr)
        return 2
    try:
        print(generate_text(find_result(Path(output_dir)), prompt, max_new_tokens), flush=True)
    except (ResultError, RecipeError, ModelError) as error:
        print(f"kubetune generate: {error}", file=sys.stderr)
        return 2
    return 0
