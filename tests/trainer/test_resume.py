"""Resume is exact: killed or stopped runs, restarted, end with the same adapter bit for bit.

The reference is one uninterrupted run; the others are cut short (SIGKILL after a
checkpoint and in the middle of the next save, plus a left-over partial folder; SIGTERM
through the launcher) and restarted through the launcher. LoRA dropout is on, so a
resume that restored the wrong RNG state would show.

And the resume point's rules: a finished run rerun changes nothing; a recipe edited into
another checkpoint shape (lora.r 8 -> 4) is refused with one line, before anything loads.
"""

from __future__ import annotations

import shutil
import signal
from pathlib import Path
from typing import Any

import pytest
from kubetune_trainer.checkpoints import list_checkpoints
from kubetune_operator import cli
from kubetune_api.contract import CHECKPOINT_COMPLETE_MARKER

from tests.trainer.sft_runs import (
    adapter_tensors,
    assert_identical,
    checkpoint_dir,
    launcher_env,
    run_launcher,
    sft_spec,
    sigterm,
    start_launcher,
    start_trainer,
    termination_message,
    wait_for,
    wait_for_checkpoint,
    write_manifest,
    write_recipe,
)

pytestmark = pytest.mark.slow

STEPS = 30


def _spec(tiny_llama: Path, toy_data: Path) -> dict[str, Any]:
    return sft_spec(
        tiny_llama,
        toy_data,
        dataset={"validationSplit": 0},
        method={"lora": {"dropout": 0.1}},
        training={"maxSteps": STEPS, "saveSteps": 5, "saveTotalLimit": 2, "loggingSteps": 10},
    )


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path, toy_data: Path) -> tuple[Path, Any]:
    """The recipe and workspace of an uninterrupted run."""
    folder = tmp_path_factory.mktemp("reference")
    workspace = folder / "ws"
    result = run_launcher(write_recipe(folder, _spec(tiny_llama, toy_data)), workspace)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    # saveTotalLimit 2: older checkpoints were rotated away, only after the newer ones were complete.
    kept = list_checkpoints(workspace / "output" / "checkpoints")
    assert [checkpoint.step for checkpoint in kept] == [25, 30]
    assert all(checkpoint.complete for checkpoint in kept)
    return folder / "recipe.json", workspace


@pytest.fixture(scope="module")
def reference(reference_run: tuple[Path, Path]) -> dict[str, Any]:
    """The adapter of an uninterrupted run."""
    return adapter_tensors(reference_run[1] / "output" / "adapter")


def test_sigkill_mid_save_then_restart_is_bit_identical(
    reference: dict[str, Any], tiny_llama: Path, toy_data: Path, tmp_path: Path
) -> None:
    recipe, workspace = write_recipe(tmp_path, _spec(tiny_llama, toy_data)), tmp_path / "ws"
    trainer = start_trainer(recipe, workspace)
    wait_for_checkpoint(workspace, 10, trainer)
    # The next checkpoint's folder appears when its save begins: kill at once, most likely mid-save.
    wait_for(lambda: checkpoint_dir(workspace, 15).exists(), trainer, interval=0.002)
    trainer.send_signal(signal.SIGKILL)
    trainer.wait()
    # A folder left by a kill before any marker, at a later step, as a crashed save leaves it.
    partial = checkpoint_dir(workspace, 25)
    shutil.copytree(checkpoint_dir(workspace, 10), partial)
    (partial / CHECKPOINT_COMPLETE_MARKER).unlink()
    (partial / "trainer_state.json").unlink()

    result = run_launcher(recipe, workspace)

    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "removed incomplete checkpoint" in result.stderr + result.stdout
    assert_identical(adapter_tensors(workspace / "output" / "adapter"), reference)


def test_sigterm_checkpoints_exits_75_and_resumes_bit_identical(
    reference: dict[str, Any], tiny_llama: Path, toy_data: Path, tmp_path: Path
) -> None:
    recipe, workspace = write_recipe(tmp_path, _spec(tiny_llama, toy_data)), tmp_path / "ws"
    launcher = start_launcher(recipe, workspace, tmp_path / "first.log")
    wait_for_checkpoint(workspace, 5, launcher)
    sigterm(launcher)
    assert launcher.wait(timeout=300) == 75, (tmp_path / "first.log").read_text()[-3000:]

    stopped = termination_message(workspace)
    assert stopped["reason"] == "Stopped" and stopped["exitCode"] == 75
    step = stopped["step"]
    assert 5 <= step < STEPS
    # The checkpoint is of the very step training stopped at, and complete.
    assert stopped["checkpoint"]["step"] == step
    assert (checkpoint_dir(workspace, step) / CHECKPOINT_COMPLETE_MARKER).exists()
    assert "output" not in stopped and not (workspace / "output" / "adapter").exists()

    result = run_launcher(recipe, workspace)

    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert termination_message(workspace)["step"] == STEPS
    assert_identical(adapter_tensors(workspace / "output" / "adapter"), reference)


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(path.relative_to(folder)): (path.stat().st_size, path.stat().st_mtime_ns)
            for path in folder.rglob("*") if path.is_file()}


def test_rerunning_a_finished_run_changes_nothing(reference_run: tuple[Path, Path]) -> None:
    recipe, workspace = reference_run
    output = workspace / "output"
    before = _snapshot(output)

    result = run_launcher(recipe, workspace)

    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-3000:]
    message = termination_message(workspace)
    assert message["message"] == f"already finished at step {STEPS}: nothing changed (kubetune run --fresh starts over)"
    assert message["step"] == STEPS and message["output"]["adapterPath"] == str(output / "adapter")
    assert "resuming from" not in log
    assert _snapshot(output) == before  # not a byte written: no step 31, no re-export


@pytest.mark.parametrize("finished", [True, False], ids=["finished run", "stopped run"])
def test_another_checkpoint_shape_is_refused_before_anything_loads(
    reference_run: tuple[Path, Path], tiny_llama: Path, toy_data: Path, tmp_path: Path, finished: bool
) -> None:
    workspace = tmp_path / "ws"
    source = reference_run[1] / "output"
    shutil.copytree(source if finished else source / "checkpoints",
                    workspace / "output" if finished else workspace / "output" / "checkpoints")
    spec = _spec(tiny_llama, toy_data)
    spec["method"]["lora"]["r"] = 4
    before = _snapshot(workspace / "output")

    result = run_launcher(write_recipe(tmp_path, spec), workspace)

    assert result.returncode == 2
    message = termination_message(workspace)
    assert message["reason"] == "InvalidRecipe"
    assert "method.lora.r was 8, now 4" in message["message"] and "--fresh" in message["message"]
    assert "--output" in message["message"] and "\n" not in message["message"]
    log = result.stdout + result.stderr
    assert "Traceback" not in log and "size mismatch" not in log and "resuming from" not in log
    assert _snapshot(workspace / "output") == before


def test_kubetune_run_fresh_starts_over_in_the_same_output(
    reference_run: tuple[Path, Path], tiny_llama: Path, toy_data: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str],
) -> None:
    workspace = tmp_path / "ws"
    shutil.copytree(reference_run[1] / "output", workspace / "output")
    spec = _spec(tiny_llama, toy_data)
    spec["method"]["lora"]["r"] = 4
    spec["training"]["maxSteps"] = 5
    manifest = write_manifest(tmp_path, spec)
    for name, value in launcher_env(manifest, workspace).items():
        monkeypatch.setenv(name, value)

    assert cli.main(["run", str(manifest), "--output", str(workspace)]) == 2
    refused = capfd.readouterr()
    assert "method.lora.r was 8, now 4" in refused.out + refused.err and "Traceback" not in refused.err

    assert cli.main(["run", str(manifest), "--output", str(workspace), "--fresh"]) == 0
    assert termination_message(workspace)["step"] == 5
    lora_a = next(t for name, t in adapter_tensors(workspace / "output" / "adapter").items() if "lora_A" in name)
    assert lora_a.shape[0] == 4
    assert [c.step for c in list_checkpoints(workspace / "output" / "checkpoints")] == [5]
