"""The commands on a finished run: `kubetune generate`, `kubetune merge`, `kubetune export --gguf`.

    kubetune generate out/quiz "Generate a quiz question about science with easy difficulty."
    kubetune generate out/quiz/output "..." --max-new-tokens 64
    kubetune merge out/quiz                      # adapter merged into its base: out/quiz/output/merged
    kubetune export out/quiz --gguf              # the merged model as one GGUF file (llama.cpp's converter)

OUTPUT_DIR is the trainer's output folder (`/workspace/output` on the PVC) or the
`kubetune run` workspace around it. The merged model (`output/merged`) is loaded when
it exists, else the base model with the adapter (`output/adapter`). The recipe the
trainer saved there (`output/recipe.json`, or the workspace's `recipe.json`) gives the
base model, the prompt format (chat template, system prompt) and the generation
settings (`evaluation.temperature`, `topP`, `maxNewTokens`), so the answer is produced
the way the end-of-training samples were. The base is `output/base` when the run wrote
one (a GGUF base), else the recipe's model.

GGUF export needs llama.cpp's `convert_hf_to_gguf.py`, which no PyPI package installs (the
`gguf` package reads and writes the file format, it does not map a transformers checkpoint
onto it; llama-cpp-python's source distribution carries the script in vendor/llama.cpp, to
unpack by hand), so it is looked for and, when missing, the command says where to get it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kubetune_trainer.evaluation import RECIPE_FILE
from kubetune_trainer.export import ADAPTER_DIR, BASE_DIR, MERGED_DIR
from kubetune_api.recipe import FineTuneJobSpec, RecipeError

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

GGUF_CONVERTER = "convert_hf_to_gguf.py"
LLAMA_CPP_ENV = "LLAMA_CPP_DIR"


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
    def base(self) -> Path | None:
        """The base the run exported (output/base, written for a GGUF base), if any."""
        base = self.output / BASE_DIR
        return base if base.is_dir() else None

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

    from kubetune_trainer.model import training_dtype

    dtype = training_dtype(spec.training.precision)
    if result.merged is not None:
        model = AutoModelForCausalLM.from_pretrained(result.merged, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(result.merged)
    else:
        assert result.adapter is not None
        # Quantize as in training on a GPU; bitsandbytes' CPU kernels are slow, so the CPU gets the plain base.
        on_gpu = torch.cuda.is_available()
        model = PeftModel.from_pretrained(load_base(result, spec, quantize=on_gpu), str(result.adapter))
        tokenizer = AutoTokenizer.from_pretrained(result.adapter)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if torch.cuda.is_available() and model.device.type != "cuda":
        model.to("cuda")
    return model.eval(), tokenizer


def load_base(result: TrainedResult, spec: FineTuneJobSpec, *, quantize: bool = False) -> PreTrainedModel:
    """The base the adapter was trained on: output/base when the run exported it, else the recipe's model."""
    import torch
    from transformers import AutoModelForCausalLM

    from kubetune_trainer.model import ModelLoader, resolve_model_source, training_dtype

    dtype = training_dtype(spec.training.precision)
    if result.base is not None:  # the dequantized GGUF: the same weights, without converting them again
        return AutoModelForCausalLM.from_pretrained(result.base, dtype=dtype)
    # The training run's loader rules (its cache, dtype, quantization; hub errors naming model.*).
    device = 0 if quantize and torch.cuda.is_available() else None
    loader = ModelLoader(cache_dir=result.cache, dtype=dtype, device_index=device)
    return loader.model(resolve_model_source(spec.model), spec, quantize=quantize)


def merge_result(result: TrainedResult) -> Path:
    """Merge the adapter into its unquantized base, saved to output/merged (with the adapter's tokenizer)."""
    from transformers import AutoTokenizer

    from kubetune_trainer.export import merge_adapter
    from kubetune_trainer.train import load_job

    if result.adapter is None:
        raise ResultError(f"{result.output}: no {ADAPTER_DIR}/ to merge (only {MERGED_DIR}/, already merged)")
    spec = load_job(result.recipe).spec
    # The adapter's tokenizer already carries the chat template training used; save it as it is.
    tokenizer = AutoTokenizer.from_pretrained(result.adapter)
    return merge_adapter(lambda: load_base(result, spec), result.adapter, tokenizer, result.output)


def find_gguf_converter(explicit: str | None = None) -> Path:
    """llama.cpp's convert_hf_to_gguf.py: `explicit`, in $LLAMA_CPP_DIR, or on PATH; ResultError if none."""
    folder = os.environ.get(LLAMA_CPP_ENV)
    candidates = [explicit] if explicit else [
        str(Path(folder) / GGUF_CONVERTER) if folder else None,
        shutil.which(GGUF_CONVERTER),
    ]
    for candidate in filter(None, candidates):
        if Path(candidate).is_file():
            return Path(candidate)
    tried = f"--converter {explicit} is no file" if explicit else f"no {GGUF_CONVERTER} in ${LLAMA_CPP_ENV} or on PATH"
    raise ResultError(
        f"GGUF export needs llama.cpp's {GGUF_CONVERTER} ({tried}); no PyPI package installs it (the gguf "
        f"package only reads and writes the format): clone llama.cpp, or unpack it from the llama-cpp-python "
        f"source (`pip download llama-cpp-python --no-deps --no-binary :all:`, vendor/llama.cpp/), and pass "
        f"--converter .../{GGUF_CONVERTER} (or set {LLAMA_CPP_ENV} to its folder)"
    )


def export_gguf(result: TrainedResult, converter: Path, outtype: str = "f16") -> Path:
    """The merged model (merged first if needed) as output/<model>.gguf through llama.cpp's converter."""
    merged = result.merged or merge_result(result)
    target = result.output / f"model-{outtype}.gguf"
    command = [sys.executable, str(converter), str(merged), "--outfile", str(target), "--outtype", outtype]
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        last = (completed.stderr or completed.stdout).strip().splitlines()[-1:] or ["(no output)"]
        raise ResultError(f"{converter} failed (exit {completed.returncode}): {last[0]}")
    return target


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


def _one_line_errors(verb: str, action: Callable[[], str]) -> int:
    """Print what `action` returns; a result, recipe or model problem is one line on stderr and exit 2."""
    from kubetune_trainer.model import ModelError

    try:
        print(action(), flush=True)
    except (ResultError, RecipeError, ModelError) as error:
        print(f"kubetune {verb}: {error}", file=sys.stderr)
        return 2
    return 0


def generate_cli(output_dir: str | Path, prompt: str, max_new_tokens: int | None = None) -> int:
    """`kubetune generate`: print the completion; 2 with a one-line reason when OUTPUT_DIR has no result."""
    if max_new_tokens is not None and max_new_tokens < 1:
        print("kubetune generate: --max-new-tokens must be at least 1", file=sys.stderr)
        return 2
    return _one_line_errors("generate", lambda: generate_text(find_result(Path(output_dir)), prompt, max_new_tokens))


def merge_cli(output_dir: str | Path) -> int:
    """`kubetune merge`: write output/merged and print its path."""
    return _one_line_errors("merge", lambda: f"merged: {merge_result(find_result(Path(output_dir)))}")


def export_cli(output_dir: str | Path, *, converter: str | None = None, outtype: str = "f16") -> int:
    """`kubetune export --gguf`: the converter is looked for first, before anything is merged."""

    def export() -> str:
        found = find_gguf_converter(converter)
        return f"gguf: {export_gguf(find_result(Path(output_dir)), found, outtype)}"

    return _one_line_errors("export", export)
