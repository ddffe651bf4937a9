"""Tiny SFT jobs for the trainer tests: a learnable toy task, recipes, and runs through the launcher.

    spec = sft_spec(model_dir, data_path, maxSteps=20)
    result = run_launcher(write_recipe(tmp_path, spec), tmp_path / "ws")
    assert result.returncode == 0

The toy task reverses four letters ("Reverse these letters: a b c d." → "Answer: d c b a."),
which a 2-layer model learns visibly within 20 steps. Runs go through the real
`kubetune-trainer` launcher (or the bare trainer process) in a subprocess, because
what they test is about processes, signals and exit codes.
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

import yaml
from kubetune_api.contract import CHECKPOINT_COMPLETE_MARKER, Env

from tests.merge_patch import apply_merge_patch

LETTERS = "abcdefghij"


def toy_rows(count: int = 240, seed: int = 0) -> list[dict[str, str]]:
    """Prompt/completion rows of the letter-reversal task."""
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        letters = [rng.choice(LETTERS) for _ in range(4)]
        rows.append(
            {
                "prompt": f"Reverse these letters: {' '.join(letters)}.",
                "completion": f"Answer: {' '.join(reversed(letters))}.",
            }
        )
    return rows


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    """Write rows as JSON lines."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def sft_spec(model_dir: Path | str, data_path: Path | str, **overrides: Any) -> dict[str, Any]:
    """A FineTuneJob spec (camelCase dict) for a fast LoRA run on the toy task; `overrides` merge in deeply
    (a JSON merge patch: a None removes the field)."""
    spec = {
        "model": {"name": str(model_dir)},
        "dataset": {"path": str(data_path), "format": "prompt-completion", "validationSplit": 0.1},
        "method": {"quantization": {"bits": 16}, "lora": {"r": 8, "alpha": 16, "dropout": 0.1}},
        "training": {
            "maxSteps": 20,
            "batchSize": 4,
            "gradientAccumulation": 1,
            "learningRate": 5e-3,
            "optimizer": "adamw_torch",
            "precision": "fp32",
            "gradientCheckpointing": False,
            "loggingSteps": 5,
            "saveSteps": 10,
            "maxSeqLength": 64,
            "reportTo": ["tensorboard"],
        },
        "metricsPort": free_port(),
    }
    return apply_merge_patch(spec, overrides)


def finetunejob(spec: dict[str, Any], name: str = "toy") -> dict[str, Any]:
    """A whole FineTuneJob around a spec."""
    return {"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": name}, "spec": spec}


def write_recipe(folder: Path, spec: dict[str, Any], name: str = "toy") -> Path:
    """recipe.json as the operator's ConfigMap holds it (a whole FineTuneJob)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "recipe.json"
    path.write_text(json.dumps(finetunejob(spec, name)), encoding="utf-8")
    return path


def write_manifest(folder: Path, spec: dict[str, Any], name: str = "toy") -> Path:
    """job.yaml as a user writes it for `kubetune run`."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "job.yaml"
    path.write_text(yaml.safe_dump(finetunejob(spec, name)), encoding="utf-8")
    return path


def kubetune_run(manifest: Path, output: Path) -> list[str]:
    """The command line of `kubetune run MANIFEST --output OUTPUT`, as a user types it."""
    return [sys.executable, "-m", "kubetune_operator.cli", "run", str(manifest), "--output", str(output)]


def launcher_env(recipe: Path, workspace: Path, **extra: str) -> dict[str, str]:
    """The environment a trainer pod gets, pointing at test paths."""
    env = dict(os.environ)
    env.update(
        {
            Env.RECIPE: str(recipe),
            Env.WORKSPACE: str(workspace),
            Env.TERMINATION_LOG: str(workspace / "termination-log"),
            Env.METRICS_HOST: "127.0.0.1",
            "HF_HUB_OFFLINE": "1",
            # Two trainer processes on two shared cores: one thread each keeps them from thrashing.
            "OMP_NUM_THREADS": "1",
        }
    )
    env.update(extra)
    return env


def start_launcher(recipe: Path, workspace: Path, log: Path, **extra: str) -> subprocess.Popen[str]:
    """Start `kubetune-trainer` (the pod's main process), its output going to `log`."""
    with open(log, "w", encoding="utf-8") as handle:
        return subprocess.Popen(
            [sys.executable, "-m", "kubetune_trainer.launcher"],
            env=launcher_env(recipe, workspace, **extra),
            stdout=handle,
            stderr=subprocess.STDOUT,
            text=True,
        )


def run_launcher(recipe: Path, workspace: Path, timeout: float = 300, **extra: str) -> subprocess.CompletedProcess[str]:
    """Run `kubetune-trainer` to the end."""
    return subprocess.run(
        [sys.executable, "-m", "kubetune_trainer.launcher"],
        env=launcher_env(recipe, workspace, **extra),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,  # the exit code is what the tests look at
    )


def start_trainer(recipe: Path, workspace: Path) -> subprocess.Popen[str]:
    """Start a bare trainer process (no launcher), for SIGKILL tests."""
    return subprocess.Popen(
        [sys.executable, "-m", "kubetune_trainer.train", "--recipe", str(recipe), "--workspace", str(workspace)],
        env=launcher_env(recipe, workspace),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
    )


def termination_message(workspace: Path) -> dict[str, Any]:
    """The launcher's termination message."""
    return json.loads((workspace / "termination-log").read_text(encoding="utf-8"))


def checkpoint_dir(workspace: Path, step: int) -> Path:
    """Where checkpoint-<step> lives."""
    return workspace / "output" / "checkpoints" / f"checkpoint-{step}"


def wait_for(condition: Any, process: subprocess.Popen[str], timeout: float = 240, interval: float = 0.02) -> None:
    """Poll `condition()` until true; fail if `process` ends first or time runs out."""
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f"process ended (rc {process.returncode}) before the condition held")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError("timed out waiting")
        time.sleep(interval)


def wait_for_checkpoint(workspace: Path, step: int, process: subprocess.Popen[str]) -> None:
    """Wait until checkpoint-<step> is complete (its marker exists)."""
    wait_for(lambda: (checkpoint_dir(workspace, step) / CHECKPOINT_COMPLETE_MARKER).exists(), process)


def adapter_tensors(folder: Path) -> dict[str, Any]:
    """The LoRA tensors of an adapter folder (or a checkpoint)."""
    from safetensors.torch import load_file

    return load_file(str(folder / "adapter_model.safetensors"))


def assert_identical(left: dict[str, Any], right: dict[str, Any]) -> None:
    """Bit-identical tensors under the same names."""
    import torch

    assert left.keys() == right.keys()
    different = [name for name in left if not torch.equal(left[name], right[name])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def sigterm(process: subprocess.Popen[str]) -> None:
    """Send SIGTERM as the kubelet does."""
    process.send_signal(signal.SIGTERM)
