"""GPU tests: skipped cleanly where CUDA is missing (CI); on the GPU machine they run the real trainer.

Models are built from a config with random weights (no hub): the 2-layer test Llama, a
"mid" Llama (8 layers, width 1024) and a Llama-3.2-1B-shaped one (16 layers, width 2048, 32/8
heads, MLP 8192; the test tokenizer's vocabulary instead of 128k tokens). Data is a toy task
whose loss visibly falls within a few steps.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

try:
    import torch

    GPUS = torch.cuda.device_count() if torch.cuda.is_available() else 0
except ImportError:  # the operator-only environment
    GPUS = 0

SHAPES: dict[str, dict[str, Any]] = {
    "mid": {
        "hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 8, "num_attention_heads": 16,
        "num_key_value_heads": 4, "max_position_embeddings": 4096,
    },
    "1b": {
        "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16, "num_attention_heads": 32,
        "num_key_value_heads": 8, "head_dim": 64, "tie_word_embeddings": True, "rope_theta": 500000.0,
        "max_position_embeddings": 8192,
    },
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test here `gpu`, and skip the ones needing more GPUs than this machine has."""
    for item in items:
        if "tests/gpu/" not in str(item.fspath).replace("\\", "/"):
            continue
        item.add_marker(pytest.mark.gpu)
        needed = item.get_closest_marker("gpus")
        count = needed.args[0] if needed else 1
        if GPUS < count:
            item.add_marker(pytest.mark.skip(reason=f"needs {count} CUDA GPU(s), found {GPUS}"))


def pytest_configure(config: pytest.Config) -> None:
    """Register the `gpus(n)` marker."""
    config.addinivalue_line("markers", "gpus(n): needs n CUDA GPUs")


@pytest.fixture(autouse=True)
def _kill_leftover_pods() -> Any:
    """A failed or timed-out test must not leave trainers holding the GPUs for the next one."""
    yield
    from tests.gpu.pod import STARTED

    while STARTED:
        pod = STARTED.pop()
        if pod.running():
            pod.kill()
            pod.process.wait(timeout=30)  # type: ignore[union-attr]


PATCHED_FAMILIES = ("transformers.models.llama.modeling_llama", "transformers.models.qwen2.modeling_qwen2")
"""The modeling modules of the test models, into which Liger patches its Triton modules."""


@pytest.fixture(autouse=True)
def _transformers_unpatched() -> Any:
    """Each test starts from transformers' own modeling code.

    A trainer test with `ligerKernels` (TRL's `use_liger_kernel`) patches Liger's RMSNorm, SwiGLU
    and RoPE into transformers' modeling modules for the whole process: a later test's model on
    the CPU then ran Triton kernels on CPU tensors ("Pointer argument cannot be accessed from Triton").
    """
    import importlib

    modules = [importlib.import_module(name) for name in PATCHED_FAMILIES]
    saved = [dict(vars(module)) for module in modules]
    yield
    for module, attributes in zip(modules, saved):
        for key, value in attributes.items():
            if vars(module).get(key) is not value:
                setattr(module, key, value)


def save_llama(path: Path, shape: str) -> Path:
    """A random-weight Llama of `shape` (bf16) with the test tokenizer, saved like a downloaded checkpoint."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    from tests.fixtures.tokenizers import build_tokenizer

    tokenizer = build_tokenizer()
    config = LlamaConfig(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         initializer_range=0.02, **SHAPES[shape])
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    del model
    torch.cuda.empty_cache()
    return path


def toy_rows(count: int, seed: int = 0) -> list[dict[str, str]]:
    """Prompt/completion rows of a letter-reversal task (learnable in a few steps)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        letters = [rng.choice("abcdefghij") for _ in range(rng.randint(3, 12))]
        rows.append({"prompt": f"Reverse these letters: {' '.join(letters)}.",
                     "completion": f"Answer: {' '.join(reversed(letters))}."})
    return rows


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Lazily built model folders by shape name: tiny, mid, 1b."""
    root = tmp_path_factory.mktemp("models")

    class Folders(dict):  # type: ignore[type-arg]
        def __missing__(self, shape: str) -> Path:
            if shape == "tiny":
                from tests.fixtures.models import save_tiny_model

                self[shape] = save_tiny_model(root / shape, "llama")
            else:
                self[shape] = save_llama(root / shape, shape)
            return self[shape]

    return Folders()


@pytest.fixture(scope="session")
def toy_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2000 toy rows as JSONL."""
    path = tmp_path_factory.mktemp("data") / "toy.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in toy_rows(2000)), encoding="utf-8")
    return path


def finetunejob(name: str, model: Path, data: Path, **spec: Any) -> dict[str, Any]:
    """A FineTuneJob for `model` on `data`; `spec` sections merge over GPU-sized defaults."""
    base: dict[str, Any] = {
        "model": {"name": str(model)},
        "dataset": {"path": str(data), "format": "prompt-completion", "validationSplit": 0.0},
        "method": {"lora": {"r": 16, "alpha": 32, "dropout": 0.05}, "quantization": {"bits": 4}},
        "training": {"maxSteps": 20, "batchSize": 8, "gradientAccumulation": 1, "learningRate": 1e-3,
                     "maxSeqLength": 256, "loggingSteps": 1, "saveSteps": 10, "reportTo": [],
                     "lrScheduler": "constant"},
        "resources": {"gpusPerWorker": 1},
    }
    for section, values in spec.items():
        base[section] = {**base.get(section, {}), **values} if isinstance(values, dict) else values
    return {"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob",
            "metadata": {"name": name, "namespace": "default"}, "spec": base}


def adapter_tensors(workspace: Path) -> dict[str, Any]:
    """The saved adapter's tensors (output/adapter/adapter_model.safetensors), on the CPU in fp32."""
    from safetensors.torch import load_file

    path = workspace / "output" / "adapter" / "adapter_model.safetensors"
    assert path.is_file(), f"no adapter at {path}"
    return {name: tensor.float() for name, tensor in load_file(str(path)).items()}


def lora_b_gap(left: dict[str, Any], right: dict[str, Any]) -> float:
    """The largest relative difference between two adapters' lora_B tensors (|left - right| / |right|)."""
    return max(float((left[name] - right[name]).norm() / right[name].norm().clamp(min=1e-12))
               for name in right if "lora_B" in name)


def assert_trained_adapter(workspace: Path) -> dict[str, Any]:
    """The adapter has LoRA tensors, none empty, and the B matrices moved away from their zero start."""
    tensors = adapter_tensors(workspace)
    assert tensors, "the adapter file holds no tensors"
    empty = [name for name, tensor in tensors.items() if tensor.numel() == 0]
    assert not empty, f"empty tensors in the adapter (a ZeRO-3 save without gathering?): {empty[:3]}"
    b_norm = sum(float(t.norm()) for name, t in tensors.items() if "lora_B" in name)
    assert b_norm > 0, "every lora_B is still zero: nothing was trained"
    return tensors


def logged(workspace: Path, key: str) -> list[float]:
    """Values of `key` in the trainer's log history (output/summary.json)."""
    summary = json.loads((workspace / "output" / "summary.json").read_text())
    return [entry[key] for entry in summary["logHistory"] if key in entry]


def train_in_process(job: dict[str, Any], folder: Path, monkeypatch: pytest.MonkeyPatch,
                     counts: Callable[[Any], bool] = lambda module: False) -> tuple[int, list[float]]:
    """Run `kubetune_trainer.train.train` on `job` in `folder`; how many modules of the built model
    `counts` accepts (seen through the `build_trainer` seam), and the logged losses."""
    from kubetune_trainer import train as kt_train
    from kubetune_trainer.signals import StopRequest

    seen: list[int] = []
    build = kt_train.build_trainer

    def spy(*args: Any, **kwargs: Any) -> Any:
        trainer = build(*args, **kwargs)
        seen.append(sum(bool(counts(module)) for module in trainer.model.modules()))
        return trainer

    monkeypatch.setattr(kt_train, "build_trainer", spy)
    folder.mkdir(parents=True, exist_ok=True)
    recipe = folder / "recipe.json"
    recipe.write_text(json.dumps(job), encoding="utf-8")
    outcome = kt_train.train(kt_train.load_job(recipe), kt_train.Workspace(folder / "ws"), StopRequest())
    assert outcome.status == "succeeded", outcome.message
    return seen[0], logged(folder / "ws", "loss")
