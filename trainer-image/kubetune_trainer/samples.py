"""Answers of the base and the fine-tuned model to `evaluation.prompts`, side by side.

Both come from the same PeftModel: the base answer with the adapter disabled, so no
second copy of the base is loaded. Prompts are formatted exactly as training prompts
(`formats.render_inference_prompt`), so what the model was taught is what it is asked.
Written to `output/samples.jsonl`; a temperature of 0 means greedy decoding.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kubetune_trainer.formats import render_inference_prompt
from kubetune_api.recipe import FineTuneJobSpec

if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import PreTrainedTokenizerBase

SAMPLES_FILE = "samples.jsonl"


@dataclass(frozen=True)
class Sample:
    """One prompt and the two answers."""

    prompt: str
    base: str
    tuned: str


def generate_completion(model: Any, tokenizer: PreTrainedTokenizerBase, text: str, spec: FineTuneJobSpec) -> str:
    """The completion of an already formatted prompt, with the recipe's generation settings."""
    import torch

    settings = spec.evaluation
    # Special tokens as TRL tokenized the training prompts (`tokenizer(text)`): formats.render_inference_prompt
    # leaves out the bos that this adds, as the training prompts do.
    inputs = tokenizer(text, return_tensors="pt").to(model.device)
    sampling: dict[str, Any] = {"do_sample": False}
    if settings.temperature > 0:
        sampling = {"do_sample": True, "temperature": settings.temperature, "top_p": settings.top_p}
    with torch.no_grad():
        output = model.generate(
            **inputs,
            max_new_tokens=settings.max_new_tokens,
            pad_token_id=tokenizer.pad_token_id,
            **sampling,
        )
    return tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip()


def generate_samples(model: PeftModel, tokenizer: PreTrainedTokenizerBase, spec: FineTuneJobSpec) -> list[Sample]:
    """Base and fine-tuned answers to every evaluation prompt."""
    import torch

    was_training = model.training
    model.eval()
    torch.manual_seed(spec.training.seed)
    samples = []
    for prompt in spec.evaluation.prompts:
        text = render_inference_prompt(spec.dataset, tokenizer, prompt)
        with model.disable_adapter():
            base = generate_completion(model, tokenizer, text, spec)
        samples.append(Sample(prompt=prompt, base=base, tuned=generate_completion(model, tokenizer, text, spec)))
    model.train(was_training)
    return samples


def write_samples(samples: list[Sample], output: Path) -> Path:
    """Save samples as JSON lines to output/samples.jsonl."""
    path = output / SAMPLES_FILE
    path.write_text("".join(json.dumps(asdict(sample), ensure_ascii=False) + "\n" for sample in samples), "utf-8")
    return path


def format_samples(samples: list[Sample]) -> str:
    """A readable before/after listing for the terminal."""
    blocks = []
    for sample in samples:
        blocks.append(
            f"### {sample.prompt}\n--- base model:\n{sample.base}\n--- fine-tuned:\n{sample.tuned}\n"
        )
    return "\n".join(blocks)
