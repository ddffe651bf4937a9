"""DPO: a 20-step LoRA run on toy preference pairs, its metrics, and resume after SIGKILL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("trl")

from tests.trainer.method_runs import (
    log_history,
    metrics_port,
    run_in_process,
    scrape,
    uninterrupted_and_resumed,
    write_job,
)
from tests.trainer.sft_runs import assert_identical


@pytest.fixture(scope="module")
def dpo_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One uninterrupted 20-step DPO run in this process, shared by the tests of its metrics and margins."""
    root = tmp_path_factory.mktemp("dpo")
    recipe = write_job(root, "dpo")
    outcome = run_in_process(recipe, root / "ws")
    return {"root": root, "recipe": recipe, "outcome": outcome, "metrics": scrape(metrics_port(recipe))}


def test_dpo_run_increases_the_chosen_over_rejected_margin(dpo_run: dict[str, Any]) -> None:
    assert dpo_run["outcome"].status == "succeeded", dpo_run["outcome"].message
    train_logs = [entry for entry in log_history(dpo_run["root"] / "ws") if "rewards/margins" in entry]
    margins = [entry["rewards/margins"] for entry in train_logs]
    # Step 1 compares the policy with itself (the adapter starts at zero): margin 0.
    assert margins[0] == pytest.approx(0.0, abs=1e-6)
    assert sum(margins[-2:]) / 2 > 1.0, margins
    assert train_logs[-1]["rewards/accuracies"] >= 0.75
    assert (dpo_run["root"] / "ws" / "output" / "adapter" / "adapter_model.safetensors").exists()


def test_dpo_metrics_are_served(dpo_run: dict[str, Any]) -> None:
    metrics = dpo_run["metrics"]
    last = [entry for entry in log_history(dpo_run["root"] / "ws") if "rewards/margins" in entry][-1]
    assert metrics["kubetune_trainer_dpo_reward_margin"] == pytest.approx(last["rewards/margins"])
    assert metrics["kubetune_trainer_dpo_reward_accuracy"] == pytest.approx(last["rewards/accuracies"])
    assert metrics["kubetune_trainer_step"] == 20
    assert "kubetune_trainer_kd_loss" not in metrics  # set only by distillation: never exported here


def test_dpo_uses_the_recipe_beta_and_loss_type(tmp_path: Path) -> None:
    from kubetune_trainer.config import RunContext, build_sft_config
    from kubetune_trainer.dpo import build_dpo_config
    from kubetune_trainer.train import load_job

    recipe = write_job(tmp_path, "dpo", {"method": {"dpo": {"beta": 0.3, "lossType": "ipo"}}})
    spec = load_job(recipe).spec
    import torch

    sft = build_sft_config(spec, RunContext(str(tmp_path / "ck"), torch.float32, True, True))
    dpo = build_dpo_config(sft, spec)
    assert (dpo.beta, dpo.loss_type) == (0.3, ["ipo"])
    # Everything else is the shared translator's, exact-resume settings included.
    for name in ("learning_rate", "max_steps", "save_steps", "seed", "ignore_data_skip", "optim", "max_length"):
        assert getattr(dpo, name) == getattr(sft, name), name


@pytest.mark.slow
def test_dpo_resumes_after_sigkill_to_the_same_weights(tmp_path: Path) -> None:
    # The reference is a launcher run too (not dpo_run, trained in this process with other threads).
    message, reference, resumed = uninterrupted_and_resumed(tmp_path, "dpo", step=10)

    assert message["step"] == 20
    assert_identical(resumed, reference)
