"""Fixtures of the end-to-end scenarios on the real control plane: the real operator, the real trainer.

Each test gets a fresh namespace on the session's control plane and the
project's operator as its own process with the chart's ServiceAccount
(`tests.cluster.fixtures.cluster`), so `restart_operator()` is a real SIGKILL.
Trainer pods run `kubetune-trainer` on a tiny random Llama built once per
session (tests.fixtures.models) and a toy "reverse three words" dataset.
"""

from __future__ import annotations

import functools
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.client import RealCluster
from tests.cluster.controlplane import free_port
from tests.e2e_cluster.scenarios import MakeJob

WORDS = ["red", "blue", "green", "black", "white", "one", "two", "three", "four", "five", "six", "seven"]


@dataclass(frozen=True)
class Inputs:
    """What a trainer pod reads besides its recipe: a tiny model folder and a JSONL dataset."""

    model: Path
    data: Path


SCENARIO_TIMEOUT_SECONDS = 900


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A hung scenario fails after 15 minutes instead of eating CI's budget."""
    for item in items:
        if "e2e_cluster" in item.nodeid:
            item.add_marker(pytest.mark.timeout(SCENARIO_TIMEOUT_SECONDS))


@pytest.fixture(scope="session")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Inputs:
    """A tiny random Llama with the test tokenizer, and 96 prompt/completion rows."""
    from tests.fixtures.models import save_tiny_model

    root = tmp_path_factory.mktemp("inputs")
    rng = random.Random(0)
    rows = []
    for _ in range(96):
        words = rng.sample(WORDS, 3)
        rows.append({"prompt": f"Reverse: {' '.join(words)}", "completion": " ".join(reversed(words))})
    data = root / "reverse.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return Inputs(model=save_tiny_model(root / "tiny-llama"), data=data)


def finetunejob(name: str, *, cluster: Any, inputs: Inputs, **spec: Any) -> dict[str, Any]:
    """A FineTuneJob of the tiny model on the CPU: LoRA on a 16-bit base, 60 steps, a checkpoint every 5.

    Keyword arguments replace top-level spec fields; `training=` entries update the training block.
    """
    training = {"maxSteps": 60, "batchSize": 4, "gradientAccumulation": 1, "learningRate": 2e-2,
                "optimizer": "adamw_torch", "precision": "fp32", "loggingSteps": 1, "saveSteps": 5,
                "saveTotalLimit": 2, "gradientCheckpointing": False, "maxSeqLength": 64, "reportTo": []}
    training.update(spec.pop("training", {}))
    body: dict[str, Any] = {
        "model": {"name": cluster.input_path(inputs.model)},
        "dataset": {"path": cluster.input_path(inputs.data), "format": "prompt-completion", "validationSplit": 0.125},
        "method": {"quantization": {"bits": 16}, "lora": {"r": 8, "alpha": 16, "dropout": 0.0}},
        "training": training,
        "resources": {"gpusPerWorker": 0},
        "storage": {"size": "1Gi"},
        "image": "kubetune/trainer:e2e",
        # A distinct metrics port per test: pods bind their own 127.0.0.N, but a stray listener on
        # 0.0.0.0 of a parallel job of the CI would still collide.
        "metricsPort": free_port(),
        # Our own rendezvous port for gangs: the contract's 29500 may be taken on a shared CI host.
        "env": [{"name": "HF_HUB_OFFLINE", "value": "1"}, {"name": "KUBETUNE_MASTER_PORT", "value": str(free_port())}],
        **spec,
    }
    return {"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": name}, "spec": body}


@pytest.fixture
def make(cluster: RealCluster, inputs: Inputs) -> MakeJob:
    """The scenarios' FineTuneJob factory for this cluster."""
    return functools.partial(finetunejob, cluster=cluster, inputs=inputs)
