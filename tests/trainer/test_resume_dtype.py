"""A resumed adapter keeps the dtype it trained in: a QLoRA run stopped and resumed ends bit-identical.

On a quantized base TRL casts the LoRA weights to bf16; transformers' Trainer reloads them on a
resume with peft's `load_adapter`, which upcast them to fp32 by default, so the resumed run
trained in another dtype and ended with other weights. Here a run on a 4-bit NF4 (and an 8-bit)
base is stopped by SIGTERM at a checkpoint, resumed through the launcher, and compared with an
uninterrupted run: the same bf16 tensors, bit for bit, in the final adapter and in a checkpoint
saved after the resume.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.trainer.sft_runs import (
    adapter_tensors,
    assert_identical,
    checkpoint_dir,
    run_launcher,
    sft_spec,
    sigterm,
    start_launcher,
    termination_message,
    wait_for_checkpoint,
    write_recipe,
)

pytestmark = pytest.mark.slow

STEPS = 20
AFTER_RESUME = 15
"""A checkpoint step past the stop: it is saved by the resumed run."""


QUANTIZED_BASES = {
    "4-bit NF4 base": {"bits": 4, "quantType": "nf4", "computeDtype": "float32"},
    "8-bit base": {"bits": 8},
}


def _spec(tiny_llama: Path, toy_data: Path, quantization: dict[str, Any]) -> dict[str, Any]:
    return sft_spec(
        tiny_llama,
        toy_data,
        dataset={"validationSplit": 0},
        method={"quantization": quantization, "lora": {"dropout": 0.1}},
        training={"maxSteps": STEPS, "saveSteps": 5, "saveTotalLimit": 5, "loggingSteps": 10},
    )


def _dtypes(tensors: dict[str, Any]) -> set[Any]:
    return {tensor.dtype for tensor in tensors.values()}


@pytest.mark.parametrize("quantization", QUANTIZED_BASES.values(), ids=QUANTIZED_BASES.keys())
def test_qlora_stopped_and_resumed_keeps_bf16_and_ends_bit_identical(
    tiny_llama: Path, toy_data: Path, tmp_path: Path, quantization: dict[str, Any]
) -> None:
    import torch

    spec = _spec(tiny_llama, toy_data, quantization)
    reference = tmp_path / "reference"
    result = run_launcher(write_recipe(reference, spec), reference / "ws")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    recipe, workspace = write_recipe(tmp_path / "resumed", spec), tmp_path / "resumed" / "ws"
    launcher = start_launcher(recipe, workspace, tmp_path / "first.log")
    wait_for_checkpoint(workspace, 5, launcher)
    sigterm(launcher)
    assert launcher.wait(timeout=300) == 75, (tmp_path / "first.log").read_text()[-3000:]
    stopped = termination_message(workspace)["step"]
    assert stopped < AFTER_RESUME, f"stopped at step {stopped}, past the checkpoint meant to follow the resume"
    assert _dtypes(adapter_tensors(checkpoint_dir(workspace, stopped))) == {torch.bfloat16}

    result = run_launcher(recipe, workspace)

    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"resuming from {checkpoint_dir(workspace, stopped)}" in result.stdout + result.stderr
    for folder in (Path("output") / "checkpoints" / f"checkpoint-{AFTER_RESUME}", Path("output") / "adapter"):
        expected, got = adapter_tensors(reference / "ws" / folder), adapter_tensors(workspace / folder)
        assert _dtypes(expected) == {torch.bfloat16}, folder
        assert _dtypes(got) == {torch.bfloat16}, f"{folder}: the resumed run trained in {_dtypes(got)}"
        assert_identical(got, expected)
