"""Tiny distillation / DPO / SFT jobs for the method tests: models, toy data, recipes and runs.

    recipe = write_job(tmp_path, "dpo", maxSteps=20)
    outcome = run_in_process(recipe, tmp_path / "ws")
    tensors = adapter_tensors(tmp_path / "ws")

The toy task reverses three words ("Reverse: red blue green" → "green blue red"). DPO
pairs prefer the reversal over a refusal. The teacher of distillation is a second
tiny model (another seed) with the student's tokenizer.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.fixtures.models import save_tiny_model

WORDS = "red blue green black white one two three four five".split()
REFUSAL = "I do not know."


def toy_rows(method: str, count: int = 64, seed: int = 0) -> list[dict[str, str]]:
    """Prompt/completion rows, or prompt/chosen/rejected pairs for DPO."""
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        words = rng.sample(WORDS, 3)
        prompt, answer = f"Reverse: {' '.join(words)}", " ".join(reversed(words))
        if method == "dpo":
            rows.append({"prompt": prompt, "chosen": answer, "rejected": REFUSAL})
        else:
            rows.append({"prompt": prompt, "completion": answer})
    return rows


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _deep_update(target: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _deep_update(target[key], value)
        else:
            target[key] = value
    return target


def write_job(root: Path, method: str, changes: dict[str, Any] | None = None) -> Path:
    """A tiny model (and teacher), toy data and a recipe.json (a bare spec) under `root`; returns the recipe."""
    root.mkdir(parents=True, exist_ok=True)
    student = root / "student"
    if not student.exists():
        save_tiny_model(student, seed=0)
    data = root / "data.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in toy_rows(method)), encoding="utf-8")
    spec: dict[str, Any] = {
        "model": {"name": str(student)},
        "dataset": {
            "path": str(data),
            "format": "preference" if method == "dpo" else "prompt-completion",
            "validationSplit": 0.125,
        },
        "method": {"type": method, "quantization": {"bits": 16}, "lora": {"r": 8, "alpha": 16, "dropout": 0.0}},
        "training": {
            "maxSteps": 20, "batchSize": 4, "gradientAccumulation": 1, "learningRate": 2e-2,
            "optimizer": "adamw_torch", "precision": "fp32", "loggingSteps": 2, "saveSteps": 10,
            "gradientCheckpointing": False, "reportTo": [],
        },
        "resources": {"gpusPerWorker": 0},
        "metricsPort": free_port(),
    }
    if method == "distill":
        teacher = root / "teacher"
        if not teacher.exists():
            save_tiny_model(teacher, seed=1)
        spec["method"]["distill"] = {"teacher": {"name": str(teacher)}, "temperature": 2.0, "alpha": 0.9}
    _deep_update(spec, changes or {})
    recipe = root / "recipe.json"
    recipe.write_text(json.dumps(spec, indent=2), encoding="utf-8")
    return recipe


def run_in_process(recipe: Path, workspace: Path) -> Any:
    """Train in this process, as one trainer rank does; returns its Outcome."""
    from kubetune_trainer.signals import StopRequest
    from kubetune_trainer.train import run

    return run(recipe, workspace, StopRequest())


def _env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def kill_after_checkpoint(recipe: Path, workspace: Path, step: int, timeout: float = 240) -> None:
    """Start a trainer process and SIGKILL it once checkpoint-`step` is complete (a node dying mid-run)."""
    from kubetune_trainer.contract import CHECKPOINT_COMPLETE_MARKER, CHECKPOINT_PREFIX, checkpoints_dir

    marker = Path(checkpoints_dir(str(workspace))) / f"{CHECKPOINT_PREFIX}{step}" / CHECKPOINT_COMPLETE_MARKER
    process = subprocess.Popen(
        [sys.executable, "-m", "kubetune_trainer.train", "--recipe", str(recipe), "--workspace", str(workspace)],
        env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + timeout
    try:
        while not marker.exists():
            if process.poll() is not None:
                raise AssertionError(f"the trainer ended (rc {process.returncode}) before checkpoint-{step}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no checkpoint-{step} within {timeout} s")
            time.sleep(0.05)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
        process.wait()


def launch(recipe: Path, workspace: Path) -> tuple[int, dict[str, Any]]:
    """Run the pod's launcher (`kubetune-trainer`) to the end; its exit code and termination message."""
    termination = workspace / "termination-log"
    env = {**_env(), "KUBETUNE_RECIPE": str(recipe), "KUBETUNE_WORKSPACE": str(workspace),
           "KUBETUNE_TERMINATION_LOG": str(termination)}
    completed = subprocess.run(
        [sys.executable, "-m", "kubetune_trainer.launcher"], env=env, capture_output=True, text=True, timeout=300
    )
    assert termination.exists(), completed.stderr[-2000:]
    return completed.returncode, json.loads(termination.read_text(encoding="utf-8"))


def adapter_tensors(workspace: Path) -> dict[str, Any]:
    """The exported LoRA weights of a finished run."""
    from safetensors.torch import load_file

    return load_file(str(workspace / "output" / "adapter" / "adapter_model.safetensors"))


def log_history(workspace: Path) -> list[dict[str, Any]]:
    """The Trainer's log history from the run's summary.json."""
    return json.loads((workspace / "output" / "summary.json").read_text(encoding="utf-8"))["logHistory"]


def scrape(port: int) -> dict[str, float]:
    """The metrics served on `port`: series name → value (labels dropped; one series per name here)."""
    from urllib.request import urlopen

    text = urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            series, value = line.rsplit(" ", 1)
            values[series.split("{", 1)[0]] = float(value)
    return values
