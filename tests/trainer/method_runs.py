"""Tiny distillation / DPO / SFT jobs for the method tests, built on `tests.trainer.sft_runs`.

    recipe = write_job(tmp_path, "dpo")
    outcome = run_in_process(recipe, tmp_path / "ws")
    message, reference, resumed = uninterrupted_and_resumed(tmp_path / "resume", "dpo", step=10)

The task is sft_runs' letter reversal (64 rows). DPO pairs prefer its answer over a
refusal. The teacher of distillation is a second tiny model (another seed) with the
student's tokenizer. The runs whose metrics and losses the tests read happen in this
process (no interpreter start, no imports again). Runs compared bit for bit all go
through real processes with the launcher's environment (sft_runs.launcher_env: one
BLAS thread), as test_resume.py's do: a reference trained in this process uses every
core's threads, may sum in another order, and then differs from a one-thread resumed run.
"""

from __future__ import annotations

import json
import signal
import urllib.request
from pathlib import Path
from typing import Any

from tests.fixtures.models import save_tiny_model
from tests.merge_patch import apply_merge_patch
from tests.trainer.sft_runs import (
    adapter_tensors,
    run_launcher,
    sft_spec,
    start_trainer,
    termination_message,
    toy_rows,
    wait_for_checkpoint,
    write_jsonl,
    write_recipe,
)

REFUSAL = "I do not know."
ROWS = 64


def method_rows(method: str) -> list[dict[str, str]]:
    """sft_runs' toy rows; for DPO, pairs with the right answer chosen and a refusal rejected."""
    rows = toy_rows(ROWS)
    if method != "dpo":
        return rows
    return [{"prompt": row["prompt"], "chosen": row["completion"], "rejected": REFUSAL} for row in rows]


def write_job(root: Path, method: str, overrides: dict[str, Any] | None = None) -> Path:
    """A tiny student (and teacher), the toy data and recipe.json under `root`; returns the recipe."""
    student = root / "student"
    if not student.exists():
        save_tiny_model(student, seed=0)
    data = write_jsonl(root / "data.jsonl", method_rows(method))
    method_spec: dict[str, Any] = {"type": method, "lora": {"dropout": 0.0}}
    if method == "distill":
        teacher = root / "teacher"
        if not teacher.exists():
            save_tiny_model(teacher, seed=1)
        method_spec["distill"] = {"teacher": {"name": str(teacher)}, "temperature": 2.0, "alpha": 0.9}
    spec = sft_spec(
        student,
        data,
        dataset={"format": "preference" if method == "dpo" else "prompt-completion", "validationSplit": 0.125},
        method=method_spec,
        training={"learningRate": 2e-2, "loggingSteps": 2, "reportTo": []},
    )
    return write_recipe(root, apply_merge_patch(spec, overrides or {}))


def run_in_process(recipe: Path, workspace: Path) -> Any:
    """Train in this process, as one trainer rank does; returns its Outcome."""
    from kubetune_trainer.signals import StopRequest
    from kubetune_trainer.train import run

    return run(recipe, workspace, StopRequest())


def _finish(recipe: Path, workspace: Path) -> dict[str, Any]:
    """Run the launcher to the end; the adapter it wrote."""
    result = run_launcher(recipe, workspace)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return adapter_tensors(workspace / "output" / "adapter")


def kill_and_resume(recipe: Path, workspace: Path, step: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """SIGKILL a trainer once checkpoint-`step` is complete, rerun the launcher; (termination message, adapter)."""
    trainer = start_trainer(recipe, workspace)
    try:
        wait_for_checkpoint(workspace, step, trainer)
    finally:
        trainer.send_signal(signal.SIGKILL)
        trainer.wait()
    adapter = _finish(recipe, workspace)
    return termination_message(workspace), adapter


def uninterrupted_and_resumed(
    root: Path, method: str, step: int
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """One job run twice with the same process settings: uninterrupted through the launcher, and SIGKILLed
    once checkpoint-`step` is complete, then rerun; (the rerun's termination message, the uninterrupted
    run's adapter, the resumed run's adapter)."""
    recipe = write_job(root, method)
    reference = _finish(recipe, root / "uninterrupted")
    message, resumed = kill_and_resume(recipe, root / "resumed", step)
    return message, reference, resumed


def metrics_port(recipe: Path) -> int:
    """The metrics port written into the recipe."""
    return json.loads(recipe.read_text(encoding="utf-8"))["spec"]["metricsPort"]


def log_history(workspace: Path) -> list[dict[str, Any]]:
    """The Trainer's log history from the run's summary.json."""
    return json.loads((workspace / "output" / "summary.json").read_text(encoding="utf-8"))["logHistory"]


def scrape(port: int) -> dict[str, float]:
    """The metrics served on `port`: series name → value (labels dropped; one series per name here)."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            series, value = line.rsplit(" ", 1)
            values[series.split("{", 1)[0]] = float(value)
    return values
