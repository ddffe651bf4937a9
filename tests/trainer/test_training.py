"""Real LoRA training on the CPU: `kubetune run` end to end, live metrics, export, and QLoRA in 4 bits.

One `kubetune run` of a tiny Llama on the toy task (module fixture) feeds most tests: it
goes through the manifest (relative paths), the launcher, the trainer, the metrics server
(scraped over HTTP while it trains), the merge and the archive.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import tarfile
import threading
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.trainer.sft_runs import free_port, kubetune_run, sft_spec, write_manifest

pytestmark = pytest.mark.slow

STEPS = 20
SAMPLE_LINE = re.compile(r'^(kubetune_trainer_\w+)\{([^}]*)\} (\S+)$')


@dataclass
class FinishedRun:
    """What the module's `kubetune run` left behind."""

    result: subprocess.CompletedProcess[str]
    workspace: Path
    scrapes: list[str]

    @property
    def output(self) -> Path:
        return self.workspace / "output"


def _scrape_while(process: subprocess.Popen[str], port: int, scrapes: list[str]) -> None:
    """Keep the last scrapes that show training under way, until the process ends."""
    while process.poll() is None:
        try:
            text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1).read().decode()
        except OSError:
            text = ""
        if re.search(r"^kubetune_trainer_step\{[^}]*\} [1-9]", text, re.MULTILINE):
            scrapes.append(text)
        threading.Event().wait(0.05)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path, toy_data: Path) -> FinishedRun:
    folder = tmp_path_factory.mktemp("run")
    (folder / "data").mkdir()
    (folder / "data" / "toy.jsonl").write_bytes(toy_data.read_bytes())
    port = free_port()
    spec = sft_spec(
        tiny_llama,
        "data/toy.jsonl",  # relative to the manifest, as in the quickstart
        training={"maxSteps": STEPS, "evalSteps": 10},
        evaluation={"prompts": ["Reverse these letters: a b c d."], "maxNewTokens": 8, "temperature": 0},
        output={"mergeAdapter": True, "archive": True},
        metricsPort=port,
    )
    workspace = folder / "ws"
    process = subprocess.Popen(kubetune_run(write_manifest(folder, spec), workspace),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    scrapes: list[str] = []
    scraper = threading.Thread(target=_scrape_while, args=(process, port, scrapes), daemon=True)
    scraper.start()
    stdout, stderr = process.communicate(timeout=600)
    scraper.join()
    result = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
    assert result.returncode == 0, stdout[-3000:] + stderr[-3000:]
    return FinishedRun(result, workspace, scrapes)


def test_training_lowers_the_loss(finished_run: FinishedRun) -> None:
    summary = json.loads((finished_run.output / "summary.json").read_text())
    losses = [entry["loss"] for entry in summary["logHistory"] if "loss" in entry]
    assert len(losses) >= 3
    assert losses[-1] < 0.7 * losses[0], losses
    assert summary["step"] == STEPS


def test_outputs_are_written(finished_run: FinishedRun) -> None:
    output = finished_run.output
    assert (output / "adapter" / "adapter_model.safetensors").is_file()
    assert (output / "adapter" / "adapter_config.json").is_file()
    assert (output / "adapter" / "tokenizer.json").is_file()
    assert list((output / "tensorboard").rglob("events.out.tfevents.*"))
    assert not list(output.glob("*.partial"))
    samples = [json.loads(line) for line in (output / "samples.jsonl").read_text().splitlines()]
    assert samples[0]["prompt"] == "Reverse these letters: a b c d." and {"base", "tuned"} <= samples[0].keys()


def test_the_recipe_is_written_with_absolute_paths(finished_run: FinishedRun) -> None:
    recipe = json.loads((finished_run.workspace / "recipe.json").read_text())
    assert Path(recipe["spec"]["dataset"]["path"]).is_absolute()


def test_kubetune_run_shows_progress_and_before_after_answers(finished_run: FinishedRun) -> None:
    err, out = finished_run.result.stderr, finished_run.result.stdout
    assert "training" in err and "loss=" in err and "tok/s=" in err
    assert "--- base model:" in out and "--- fine-tuned:" in out
    assert f"adapter: {finished_run.output / 'adapter'}" in out


def test_termination_message_reports_success(finished_run: FinishedRun) -> None:
    line = (finished_run.workspace / "termination-log").read_text().strip()
    body = json.loads(line)
    assert body["exitCode"] == 0 and body["reason"] == "Completed"
    assert body["step"] == body["totalSteps"] == STEPS
    assert body["loss"] > 0 and body["evalLoss"] > 0 and body["tokensPerSecond"] > 0
    assert body["checkpoint"]["step"] == STEPS
    # samplesPath/evaluationPath: the end-of-training evaluation's files (evaluation.py), pointed at, not inlined.
    assert set(body["output"]) == {"adapterPath", "mergedPath", "archivePath", "samplesPath", "evaluationPath"}
    # Locally it stays in the file: stdout gets a plain summary of it (the pod's log gets the JSON line).
    assert line not in finished_run.result.stdout
    assert f"kubetune run: Completed: training completed (step {STEPS}/{STEPS}, loss " in finished_run.result.stdout


def _samples(text: str) -> dict[str, tuple[str, float]]:
    found = {}
    for line in text.splitlines():
        match = SAMPLE_LINE.match(line)
        if match:
            name, labels, value = match.groups()
            found[name + ("{" + labels + "}" if "kubetune_trainer_phase=" in labels else "")] = (labels, float(value))
    return found


def test_metrics_were_served_during_training(finished_run: FinishedRun) -> None:
    assert finished_run.scrapes, "no scrape saw a training step"
    samples = _samples(finished_run.scrapes[-1])
    labels, step = samples["kubetune_trainer_step"]
    assert 'finetunejob="toy"' in labels and "namespace=" in labels and "job=" not in labels.replace("finetunejob", "")
    assert 1 <= step <= STEPS
    assert samples["kubetune_trainer_total_steps"][1] == STEPS
    loss = samples["kubetune_trainer_train_loss"][1]
    assert 0 < loss < 20 and math.isfinite(loss)
    assert 0 < samples["kubetune_trainer_learning_rate"][1] <= 5e-3
    assert samples["kubetune_trainer_grad_norm"][1] > 0
    assert samples["kubetune_trainer_tokens_total"][1] > 0
    phases = [value for key, (_, value) in samples.items() if key.startswith("kubetune_trainer_phase{")]
    assert max(phases) == 1.0 and sum(phases) == 1.0


def test_merged_model_equals_base_plus_adapter(finished_run: FinishedRun, tiny_llama: Path) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    inputs = torch.tensor([[1, 50, 60, 70, 80, 90]])
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama),
                                        str(finished_run.output / "adapter")).eval()
    merged = AutoModelForCausalLM.from_pretrained(finished_run.output / "merged").eval()
    plain = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    with torch.no_grad():
        expected, got, base = adapted(inputs).logits, merged(inputs).logits, plain(inputs).logits
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(base, expected, atol=1e-3), "the adapter changed nothing"


def test_archive_holds_the_results(finished_run: FinishedRun) -> None:
    with tarfile.open(finished_run.output / "toy.tar.gz") as tar:
        names = set(tar.getnames())
    assert {"adapter/adapter_model.safetensors", "merged/config.json", "summary.json", "samples.jsonl"} <= names


def test_qlora_nf4_with_8bit_adam_trains_only_the_adapter(tiny_qwen2: Path, toy_data: Path, tmp_path: Path) -> None:
    import bitsandbytes as bnb
    import torch
    from kubetune_trainer.config import RunContext, build_sft_config
    from kubetune_trainer.data import load_training_data
    from kubetune_trainer.assembly import TrainerInputs, build_trainer
    from kubetune_trainer.model import ModelLoader, resolve_model_source
    from kubetune_api.recipe import parse_spec

    spec = parse_spec(sft_spec(
        tiny_qwen2, toy_data,
        method={"quantization": {"bits": 4, "quantType": "nf4", "doubleQuant": True, "computeDtype": "float32"},
                # bitsandbytes keeps 32-bit state for tensors under 4096 elements: r 64 makes lora_A 64 x 64.
                "lora": {"r": 64, "alpha": 64}},
        training={"optimizer": "adamw_8bit", "maxSteps": 12, "saveSteps": 1000, "learningRate": 1e-2},
        dataset={"validationSplit": 0},
    ))
    models = ModelLoader(cache_dir=None, dtype=torch.float32)
    source = resolve_model_source(spec.model)
    tokenizer = models.tokenizer(source, spec)
    data = load_training_data(spec.dataset, tokenizer)
    model = models.model(source, spec)
    assert isinstance(model.model.layers[0].self_attn.q_proj, bnb.nn.Linear4bit)
    assert isinstance(model.model.layers[1].mlp.down_proj, bnb.nn.Linear4bit)
    context = RunContext(checkpoints_dir=str(tmp_path / "ckpt"), dtype=torch.float32, has_validation=False, on_cpu=True)
    trainer = build_trainer(TrainerInputs(spec, models, model, tokenizer, data, build_sft_config(spec, context), []))
    before = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
    trainer.train()
    after = dict(trainer.model.named_parameters())
    lora = [name for name in before if "lora_" in name]
    base = [name for name in before if "lora_" not in name]
    assert lora and base
    assert all(not torch.equal(before[name], after[name].detach()) for name in lora if "lora_B" in name)
    assert all(torch.equal(before[name], after[name].detach()) for name in base)
    optimizer = trainer.optimizer.optimizer
    assert optimizer.args.optim_bits == 8
    assert any(state.get("state1") is not None and state["state1"].dtype == torch.uint8
               for state in optimizer.state.values()), "no optimizer state is 8-bit"
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert losses[-1] < losses[0], losses
