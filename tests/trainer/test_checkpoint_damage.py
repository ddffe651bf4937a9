"""A complete-marked checkpoint that was damaged afterwards is found, set aside, and never crashes a rerun.

One run of 10 steps keeps checkpoints 5 and 10 and its adapter is the reference. Each test
copies those checkpoints into a fresh workspace, damages checkpoint-10 (or both) the way disks
and people do, and reruns through the launcher: the run must fall back to checkpoint-5 (or
start fresh), say so in the log and the termination message, and still end bit-identical to
the reference (a resume that silently lost the optimizer state or the RNG would not).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kubetune_trainer.checkpoints import list_checkpoints
from kubetune_api.contract import Env

from tests.trainer.sft_runs import (
    adapter_tensors,
    assert_identical,
    run_launcher,
    sft_spec,
    termination_message,
    write_recipe,
)

pytestmark = pytest.mark.slow

STEPS = 10


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path, toy_data: Path) -> tuple[Path, Path, Any]:
    """(recipe, workspace, adapter tensors) of an uninterrupted run that kept checkpoints 5 and 10."""
    folder = tmp_path_factory.mktemp("damage-reference")
    spec = sft_spec(
        tiny_llama,
        toy_data,
        dataset={"validationSplit": 0},
        method={"lora": {"dropout": 0.1}},
        training={"maxSteps": STEPS, "saveSteps": 5, "saveTotalLimit": 2, "loggingSteps": 5},
    )
    recipe, workspace = write_recipe(folder, spec), folder / "ws"
    result = run_launcher(recipe, workspace)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert [c.step for c in list_checkpoints(workspace / "output" / "checkpoints")] == [5, 10]
    return recipe, workspace, adapter_tensors(workspace / "output" / "adapter")


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _flip_a_bit(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01  # in the tensor data, past the header: the file still parses
    path.write_bytes(bytes(data))


def _rerun_with_damage(
    trained: tuple[Path, Path, Any], tmp_path: Path, damage: Callable[[Path], None], steps: tuple[int, ...] = (10,)
) -> tuple[Any, dict[str, Any], str]:
    """Copy the reference checkpoints, damage those of `steps`, rerun; (result, termination message, log)."""
    recipe, reference, _ = trained
    workspace = tmp_path / "ws"
    shutil.copytree(reference / "output" / "checkpoints", workspace / "output" / "checkpoints")
    for step in steps:
        damage(workspace / "output" / "checkpoints" / f"checkpoint-{step}")
    result = run_launcher(recipe, workspace)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-3000:]
    assert "Traceback" not in log
    return result, termination_message(workspace), log


@pytest.mark.parametrize(
    ("damage", "named"),
    [
        (lambda ckpt: _truncate(ckpt / "adapter_model.safetensors"), "adapter_model.safetensors has"),
        (lambda ckpt: _truncate(ckpt / "trainer_state.json"), "trainer_state.json has"),
        (lambda ckpt: (ckpt / "optimizer.pt").unlink(), "optimizer.pt is missing"),
        (lambda ckpt: (ckpt / "rng_state.pth").unlink(), "rng_state.pth is missing"),
        (lambda ckpt: _flip_a_bit(ckpt / "adapter_model.safetensors"), "adapter_model.safetensors does not match"),
    ],
    ids=["truncated adapter", "truncated trainer state", "missing optimizer", "missing rank shard", "bit flip"],
)
def test_damaged_newest_checkpoint_falls_back_to_the_previous_one(
    trained: tuple[Path, Path, Any], tmp_path: Path, damage: Callable[[Path], None], named: str
) -> None:
    _, message, log = _rerun_with_damage(trained, tmp_path, damage)

    said = "damaged checkpoint removed: checkpoint-10"
    assert said in message["message"] and named in message["message"], message
    assert "resumed from checkpoint-5" in message["message"]
    assert said in log and "resuming from" in log and "checkpoint-5" in log
    assert message["reason"] == "Completed" and message["step"] == STEPS
    assert_identical(adapter_tensors(tmp_path / "ws" / "output" / "adapter"), trained[2])


def test_every_checkpoint_damaged_starts_fresh_and_says_so(trained: tuple[Path, Path, Any], tmp_path: Path) -> None:
    _, message, log = _rerun_with_damage(
        trained, tmp_path, lambda ckpt: (ckpt / "optimizer.pt").unlink(), steps=(5, 10)
    )

    assert "checkpoint-10 (optimizer.pt is missing)" in message["message"]
    assert "checkpoint-5 (optimizer.pt is missing)" in message["message"]
    assert "started fresh" in message["message"] and "resuming from" not in log
    assert_identical(adapter_tensors(tmp_path / "ws" / "output" / "adapter"), trained[2])


def test_missing_shard_of_one_rank_in_a_two_process_run(tiny_llama: Path, toy_data: Path, tmp_path: Path) -> None:
    """torchrun with gloo, two ranks: rank 1's RNG file is gone from the newest checkpoint (transformers would
    only warn and resume non-reproducibly); the run falls back to the previous one and ends as the reference."""
    spec = sft_spec(
        tiny_llama, toy_data, dataset={"validationSplit": 0}, method={"lora": {"dropout": 0.1}},
        training={"maxSteps": STEPS, "saveSteps": 5, "saveTotalLimit": 2, "loggingSteps": 5},
    )
    recipe, reference = write_recipe(tmp_path, spec), tmp_path / "reference"
    two = {Env.NPROC_PER_NODE: "2"}
    first = run_launcher(recipe, reference, **two)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    workspace = tmp_path / "ws"
    shutil.copytree(reference / "output" / "checkpoints", workspace / "output" / "checkpoints")
    (workspace / "output" / "checkpoints" / "checkpoint-10" / "rng_state_1.pth").unlink()

    result = run_launcher(recipe, workspace, **two)

    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    message = termination_message(workspace)["message"]
    assert "checkpoint-10 (rng_state_1.pth is missing)" in message and "resumed from checkpoint-5" in message
    assert_identical(
        adapter_tensors(workspace / "output" / "adapter"), adapter_tensors(reference / "output" / "adapter")
    )
