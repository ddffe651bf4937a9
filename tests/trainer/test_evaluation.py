"""Evaluation at the end of training, exact-match scoring with `<think>` blocks, and `kubetune generate`."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from kubetune_trainer.evaluation import final_answer, is_exact_match, normalize_answer


@pytest.mark.parametrize(
    ("text", "prompt", "answer"),
    [
        ("Paris", "", "Paris"),
        ("<think>\nThe capital is Paris.\n</think>\n\nParis.", "", "\n\nParis."),
        ("I think... </think> 42", "<|Assistant|><think>\n", " 42"),  # R1: the prompt opened the block
        ("<think>first</think> draft <think>again</think>final", "", "final"),
        ("<think>\nstill reasoning when the tokens ran out", "", None),
        ("no closing tag either", "<|Assistant|><think>\n", None),
    ],
)
def test_final_answer_is_what_follows_the_reasoning(text: str, prompt: str, answer: str | None) -> None:
    assert final_answer(text, prompt) == answer


def test_exact_match_handles_think_blocks() -> None:
    reference = "<think>\nFrance's capital.\n</think>\n\nParis"
    assert is_exact_match("<think>Let me recall.</think>\n paris. ", reference)
    assert is_exact_match("Paris", reference)  # a model that skips reasoning still answers
    assert not is_exact_match("<think>Paris? Or is it", reference)  # unfinished reasoning has no answer
    assert not is_exact_match("<think>It is Paris.</think> Lyon", reference)  # reasoning text does not count
    r1_prompt = "<|User|>Capital of France?<|Assistant|><think>\n"
    assert is_exact_match("Capital... Paris.\n</think>\n\nParis", "\n</think>\n\nParis", r1_prompt)
    assert not is_exact_match("Paris", "Paris", r1_prompt)  # the prompt opened reasoning that never closed


def test_normalize_answer_ignores_case_spacing_and_a_final_stop() -> None:
    assert normalize_answer('  "Green   Blue red."  ') == "green blue red"


def test_exact_match_scores_base_and_tuned_on_a_real_model(tmp_path: Path) -> None:
    import datasets
    import torch
    from kubetune_trainer.evaluation import score_exact_match
    from kubetune_trainer.config import lora_config
    from kubetune_api.recipe import parse_spec
    from kubetune_trainer.samples import generate_completion
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tests.fixtures.models import save_tiny_model

    path = save_tiny_model(tmp_path / "model")
    tokenizer = AutoTokenizer.from_pretrained(path)
    spec = parse_spec({"model": {"name": str(path)}, "dataset": {"path": "x.jsonl"},
                       "evaluation": {"maxNewTokens": 6, "temperature": 0.7}})
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(path), lora_config(spec))
    greedy = spec.model_copy(update={"evaluation": spec.evaluation.model_copy(update={"temperature": 0.0})})
    prompts = ["Reverse: red blue green", "Question: how many legs", "Hello world"]
    # References: the model's own greedy answer (a hit), wrapped in eos as rendered data is, and one miss.
    references = [generate_completion(model, tokenizer, p, greedy) + tokenizer.eos_token for p in prompts[:2]] + ["zzz"]
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:  # a nonzero adapter: the tuned model answers differently from the base
                parameter.fill_(0.5)
    rows = datasets.Dataset.from_dict({"prompt": prompts, "completion": references})

    result = score_exact_match(model, tokenizer, rows, spec)

    assert result is not None and result.count == 3
    assert result.base == pytest.approx(2 / 3)
    assert result.tuned < result.base


# ---------------------------------------------------------------- a whole run with evaluation

from tests.trainer.method_runs import run_in_process, write_job  # noqa: E402

PROMPTS = ["Reverse these letters: a b c d.", "Reverse these letters: j i h g.", "Reverse these letters: e e f a."]


@pytest.fixture(scope="module")
def evaluated_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A short SFT run with evaluation prompts, greedy decoding and exact match."""
    root = tmp_path_factory.mktemp("evaluation")
    recipe = write_job(root, "sft", {
        "training": {"maxSteps": 6, "saveSteps": 6},
        "evaluation": {"prompts": PROMPTS, "maxNewTokens": 8, "temperature": 0, "exactMatch": True},
        "output": {"mergeAdapter": True},
    })
    outcome = run_in_process(recipe, root / "ws")
    return {"root": root, "output": root / "ws" / "output", "outcome": outcome}


def test_evaluation_writes_base_and_tuned_samples_for_every_prompt(evaluated_run: dict[str, Any]) -> None:
    assert evaluated_run["outcome"].status == "succeeded", evaluated_run["outcome"].message
    output = evaluated_run["output"]
    lines = [json.loads(line) for line in (output / "samples.jsonl").read_text().splitlines()]
    assert [line["prompt"] for line in lines] == PROMPTS
    assert all(isinstance(line["base"], str) and isinstance(line["tuned"], str) for line in lines)
    assert any(line["base"] != line["tuned"] for line in lines)  # six steps at lr 2e-2 change the answers
    markdown = (output / "samples.md").read_text()
    for number, line in enumerate(lines, 1):
        assert f"## {number}. {line['prompt']}" in markdown
        assert f"**Base model**\n\n~~~~text\n{line['base']}\n~~~~" in markdown
        assert f"**Fine-tuned**\n\n~~~~text\n{line['tuned']}\n~~~~" in markdown
    assert "greedy, at most 8 new tokens" in markdown


def test_evaluation_reports_loss_perplexity_and_exact_match(evaluated_run: dict[str, Any]) -> None:
    report = json.loads((evaluated_run["output"] / "evaluation.json").read_text())
    assert report["perplexity"] == pytest.approx(math.exp(report["evalLoss"]))
    assert report["exactMatch"]["count"] == 8  # validationSplit 0.125 of 64 rows
    assert 0 <= report["exactMatch"]["base"] <= 1 and 0 <= report["exactMatch"]["tuned"] <= 1
    assert report["files"] == {"recipe": "recipe.json", "samples": "samples.jsonl",
                               "samplesMarkdown": "samples.md", "evaluation": "evaluation.json"}
    # The termination message stays small: it points at the files, the samples are not in it.
    outputs = evaluated_run["outcome"].output
    assert outputs["samplesPath"].endswith("samples.md")
    assert len(json.dumps(evaluated_run["outcome"].__dict__, default=str)) < 2048


def test_generate_prints_the_tuned_answer_with_the_recipe_settings(
    evaluated_run: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    from kubetune_trainer.generate import generate_cli

    sample = json.loads((evaluated_run["output"] / "samples.jsonl").read_text().splitlines()[0])

    assert generate_cli(evaluated_run["root"] / "ws", sample["prompt"]) == 0  # the workspace: merged/ is used

    # Greedy decoding in the recipe: the CLI reproduces the end-of-training sample exactly.
    assert capsys.readouterr().out.strip() == sample["tuned"]


def test_generate_from_base_plus_adapter_gives_the_same_answer(evaluated_run: dict[str, Any]) -> None:
    from dataclasses import replace

    from kubetune_trainer.generate import find_result, generate_text

    result = find_result(evaluated_run["output"])
    assert result.merged is not None and result.adapter is not None
    sample = json.loads((evaluated_run["output"] / "samples.jsonl").read_text().splitlines()[1])

    assert generate_text(replace(result, merged=None), sample["prompt"]) == sample["tuned"]
    assert sample["tuned"].startswith(generate_text(replace(result, merged=None), sample["prompt"], max_new_tokens=2))


def test_generate_without_a_result_says_what_is_missing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from kubetune_trainer.generate import generate_cli

    assert generate_cli(tmp_path, "hello") == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith(f"kubetune generate: {tmp_path}: no trained result (adapter/ or merged/)")
    assert "\n" not in error
