"""The launcher's pure parts: processes to start, outcomes to exit codes, the termination message."""

from __future__ import annotations

import json
from pathlib import Path

from kubetune_trainer.contract import TERMINATION_MESSAGE_LIMIT, Env, ExitCode
from kubetune_trainer.launcher import LaunchSettings, exit_code, read_outcomes, termination_message, trainer_command
from kubetune_trainer.train import Outcome


def _settings(**kwargs: object) -> LaunchSettings:
    return LaunchSettings(recipe=Path("/r.json"), workspace=Path("/ws"), termination_log=Path("/t"), **kwargs)


def test_settings_come_from_the_contract_env() -> None:
    settings = LaunchSettings.from_env(
        {Env.RECIPE: "/x/recipe.json", Env.WORKSPACE: "/pvc", Env.NPROC_PER_NODE: "4", Env.NNODES: "2",
         Env.NODE_RANK: "1", Env.MASTER_ADDR: "job-0.job", Env.MASTER_PORT: "29501"}
    )
    assert settings.recipe == Path("/x/recipe.json") and settings.workspace == Path("/pvc")
    assert (settings.nproc_per_node, settings.nnodes, settings.node_rank) == (4, 2, 1)
    assert settings.distributed
    defaults = LaunchSettings.from_env({})
    assert defaults.recipe == Path("/etc/kubetune/recipe.json") and defaults.workspace == Path("/workspace")
    assert not defaults.distributed


def test_one_process_runs_the_trainer_directly(tmp_path: Path) -> None:
    command = trainer_command(_settings(), tmp_path)
    assert command[1:3] == ["-m", "kubetune_trainer.train"]
    assert "--outcome-dir" in command


def test_several_processes_go_through_torchrun(tmp_path: Path) -> None:
    command = trainer_command(
        _settings(nproc_per_node=2, nnodes=2, node_rank=1, master_addr="job-0.job", master_port=29500), tmp_path
    )
    assert command[1:3] == ["-m", "torch.distributed.run"]
    for flag in ("--nproc-per-node=2", "--nnodes=2", "--node-rank=1", "--master-addr=job-0.job",
                 "--master-port=29500", "--max-restarts=0"):
        assert flag in command
    assert command[command.index("-m", 3) + 1] == "kubetune_trainer.train"


def test_outcomes_map_to_exit_codes() -> None:
    ok, stopped = {"status": "succeeded"}, {"status": "stopped"}
    assert exit_code([ok, ok], 2, 0) is ExitCode.SUCCESS
    assert exit_code([stopped, stopped], 2, 1) is ExitCode.STOPPED
    assert exit_code([{"status": "invalid"}, {"status": "failed"}], 2, 1) is ExitCode.INVALID
    assert exit_code([ok, {"status": "failed"}], 2, 1) is ExitCode.FAILED
    # A rank killed before reporting (OOM, SIGKILL) is a failure, whatever the others said.
    assert exit_code([stopped], 2, 1) is ExitCode.FAILED
    assert exit_code([ok], 1, -9) is ExitCode.FAILED


def test_outcomes_round_trip_through_files(tmp_path: Path) -> None:
    Outcome("stopped", "stopped at step 7", {"step": 7}, {"step": 5, "path": "/c"}).write(tmp_path, 1)
    Outcome("stopped", "stopped at step 7", {"step": 7}).write(tmp_path, 0)
    outcomes = read_outcomes(tmp_path)
    assert [o["rank"] for o in outcomes] == [0, 1]
    assert outcomes[1]["checkpoint"] == {"step": 5, "path": "/c"}


def test_termination_message_is_one_json_line_with_the_details() -> None:
    outcome = {"status": "succeeded", "message": "training completed",
               "progress": {"step": 40, "totalSteps": 40, "loss": 1.234567, "evalLoss": 1.5, "tokensPerSecond": 812.25,
                            "learningRate": 1e-5},
               "checkpoint": {"step": 40, "path": "/ws/output/checkpoints/checkpoint-40"},
               "output": {"adapterPath": "/ws/output/adapter"}}
    line = termination_message(ExitCode.SUCCESS, [outcome], 0)
    assert "\n" not in line
    body = json.loads(line)
    assert body["exitCode"] == 0 and body["reason"] == "Completed"
    assert body["step"] == 40 and body["loss"] == 1.2346 and body["tokensPerSecond"] == 812.25
    assert body["output"]["adapterPath"] == "/ws/output/adapter"
    assert "learningRate" not in body


def test_a_long_reason_is_cut_to_stay_under_the_limit() -> None:
    outcome = {"status": "invalid", "message": "dataset.path /d.jsonl line 3: " + "é" * 5000}
    line = termination_message(ExitCode.INVALID, [outcome], 2)
    assert len(line.encode()) < TERMINATION_MESSAGE_LIMIT
    body = json.loads(line)
    assert body["reason"] == "InvalidRecipe" and body["message"].startswith("dataset.path /d.jsonl line 3")


def test_no_outcome_at_all_still_explains() -> None:
    body = json.loads(termination_message(ExitCode.FAILED, [], -9))
    assert body["reason"] == "Failed" and "exit status -9" in body["message"]
