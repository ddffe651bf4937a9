"""After training: the adapter loads with the standard calls and is prompted the way it was taught.

- The chat template the adapter ships renders, for a raw-format recipe (template,
  prompt-completion), exactly the prompt string and tokens the trainer saw; `kubetune
  generate` and the end-of-training samples render through the same template.
- `AutoPeftModelForCausalLM.from_pretrained(adapter)` loads a finished run's adapter, also
  when the base came from a GGUF file (the quickstart's case), through output/base.
- `kubetune merge` writes a merged model with the adapter's outputs; `kubetune export --gguf`
  refuses in one line where llama.cpp's converter is not installed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubetune_trainer import export
from kubetune_trainer.formats import make_renderer, render_inference_prompt
from kubetune_trainer.recipe import DatasetSpec
from tests.fixtures.tokenizers import BOS, build_tokenizer
from tests.trainer.sft_runs import free_port, sft_spec, write_jsonl

QUIZ_ROW = {"category": "Science", "difficulty": "easy", "question": "What is H2O?", "answer": "Water"}
QUIZ_TEMPLATE = {
    "prompt": "Generate a quiz question about {{ category }} with {{ difficulty }} difficulty.",
    "completion": "Question: {{ question }}\nCorrect answer: {{ answer }}",
}
QUIZ_PROMPT = "Generate a quiz question about Science with easy difficulty."


def _bos_adding(tokenizer: Any) -> Any:
    """`tokenizer` made to put bos in front when it tokenizes text, as Llama's tokenizers do."""
    from tokenizers.processors import TemplateProcessing

    tokenizer._tokenizer.post_processor = TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, tokenizer.bos_token_id)]
    )
    return tokenizer


def _dataset(fmt: str, system: str | None) -> DatasetSpec:
    fields: dict[str, Any] = {"path": "data.jsonl", "format": fmt, "systemPrompt": system}
    if fmt == "template":
        fields["template"] = QUIZ_TEMPLATE
    return DatasetSpec.model_validate(fields)


@pytest.mark.parametrize("adds_bos", [False, True], ids=["no-bos", "bos"])
@pytest.mark.parametrize("system", [None, 'You write "quiz" questions.\nBe brief.'], ids=["plain", "system"])
@pytest.mark.parametrize(
    ("fmt", "row", "prompt"),
    [
        ("template", QUIZ_ROW, QUIZ_PROMPT),
        ("prompt-completion", {"prompt": "Reverse: a b", "completion": "b a"}, "Reverse: a b"),
        ("prompt-completion", {"prompt": "Reverse:\n", "completion": "b a"}, "Reverse:\n"),  # no newline added
    ],
    ids=["template", "prompt-completion", "prompt-ends-in-newline"],
)
def test_the_shipped_chat_template_renders_what_training_saw(
    tmp_path: Path, fmt: str, row: dict[str, str], prompt: str, system: str | None, adds_bos: bool
) -> None:
    from transformers import AutoTokenizer

    tokenizer = _bos_adding(build_tokenizer()) if adds_bos else build_tokenizer()
    dataset = _dataset(fmt, system)
    trained = make_renderer(dataset, tokenizer, list(row))([row])  # what the trainer got

    export.save_tokenizer(tokenizer, tmp_path, dataset)
    shipped = AutoTokenizer.from_pretrained(tmp_path)
    messages = [{"role": "user", "content": prompt}]
    bos = BOS if adds_bos else ""
    # A server (vLLM, transformers' pipelines) renders with the shipped template and tokenizes without specials.
    assert shipped.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == bos + trained["prompt"]
    served_ids = shipped.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)["input_ids"]
    assert served_ids == tokenizer(trained["prompt"])["input_ids"]  # TRL tokenizes prompts this way
    # `kubetune generate` and the samples render through the same template.
    assert render_inference_prompt(dataset, shipped, prompt) == trained["prompt"]
    assert render_inference_prompt(dataset, tokenizer, prompt) == trained["prompt"]
    # A whole exchange is the training sequence, eos included.
    answer = trained["completion"].removesuffix(tokenizer.eos_token)
    full = [*messages, {"role": "assistant", "content": answer}]
    assert shipped.apply_chat_template(full, tokenize=False) == bos + trained["prompt"] + trained["completion"]
    # The live tokenizer keeps the base's template (the chat format and the DPO reference still use it).
    assert tokenizer.chat_template == build_tokenizer().chat_template


def test_a_chat_recipe_ships_the_base_template(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = build_tokenizer()
    export.save_tokenizer(tokenizer, tmp_path, DatasetSpec.model_validate({"path": "d.jsonl", "format": "chat"}))
    assert AutoTokenizer.from_pretrained(tmp_path).chat_template == tokenizer.chat_template
