"""Two trainer processes on the CPU (torchrun, gloo) through the launcher: one DDP job.

They split each batch (so an optimizer step sees twice the samples), agree on the stop
step when SIGTERM reaches the launcher, write one complete checkpoint holding both
ranks' RNG states, resume from it, and only rank 0 serves metrics.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from kubetune_trainer.contract import CHECKPOINT_COMPLETE_MARKER, Env

from tests.trainer.sft_runs import (
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
BATCH = 4


def test_two_processes_train_stop_together_and_resume(tiny_llama: Path, toy_data: Path, tmp_path: Path) -> None:
    spec = sft_spec(tiny_llama, toy_data, dataset={"validationSplit": 0},
                    training={"maxSteps": STEPS, "saveSteps": 4, "batchSize": BATCH})
    recipe, workspace, log = write_recipe(tmp_path, spec), tmp_path / "ws", tmp_path / "first.log"
    launcher = start_launcher(recipe, workspace, log, **{Env.NPROC_PER_NODE: "2"})
    wait_for_checkpoint(workspace, 4, launcher)
    sigterm(launcher)
    assert launcher.wait(timeout=300) == 75, log.read_text()[-3000:]

    output = log.read_text()
    serving = [line for line in output.splitlines() if "serving metrics" in line]
    assert len(serving) == 1 and " rank0 " in serving[0], serving
    stopping = [line for line in output.splitlines() if "stopped at step" in line and " INFO " in line]
    assert {line.split(" rank")[1][0] for line in stopping} == {"0", "1"}, "both ranks report the stop"
    step = termination_message(workspace)["step"]
    assert len({line.rsplit("stopped at step ", 1)[1].split()[0] for line in stopping}) == 1, stopping
    checkpoint = checkpoint_dir(workspace, step)
    assert (checkpoint / CHECKPOINT_COMPLETE_MARKER).exists()
    assert (checkpoint / "rng_state_0.pth").exists() and (checkpoint / "rng_state_1.pth").exists()
    # One DDP job: every optimizer step consumed a batch on each of the two ranks.
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    train_rows = 240  # validationSplit 0
    assert state["epoch"] == pytest.approx(step * BATCH * 2 / train_rows, rel=0.05)

    result = run_launcher(recipe, workspace, **{Env.NPROC_PER_NODE: "2"})

    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"resuming from {checkpoint}" in result.stdout + result.stderr
    done = termination_message(workspace)
    assert done["reason"] == "Completed" and done["step"] == STEPS
    assert (workspace / "output" / "adapter" / "adapter_model.safetensors").is_file()
