"""Fixtures of the emulated end-to-end scenarios: a cluster per test, the real operator, the real trainer.

Each test gets a fresh `EmulatedCluster` (API server, Job controller,
kubelet) and the project's operator as its own process (`kubetune-operator`,
configured through its KUBETUNE_* variables like the Helm chart does), so
`restart_operator()` is a real SIGKILL. Trainer pods run `kubetune-trainer`
on a tiny random Llama built once per session (tests.fixtures.models) and a
toy "reverse three words" dataset.
"""

from __future__ import annotations

import functools
import json
import random
import socket
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.e2e_emulated.scenarios import MakeJob
from tests.harness.client import EmulatedCluster, kubeconfig_env
from tests.harness.operator_runner import ProcessOperator

NAMESPACE = "e2e"
OPERATOR_RESYNC_SECONDS = 1.0  # the operator's resync (progress polls, backoffs, deadlines, TTLs)
WORDS = ["red", "blue", "green", "black", "white", "one", "two", "three", "four", "five", "six", "seven"]
# The node's env for every pod: one BLAS thread each, so two workers share the CI's 2 cores politely.
NODE_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


@dataclass(frozen=True)
class Inputs:
    """What a trainer pod reads besides its recipe: a tiny model folder and a JSONL dataset."""

    model: Path
    data: Path


SCENARIO_TIMEOUT_SECONDS = 900


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A hung scenario fails after 15 minutes instead of eating CI's budget."""
    for item in items:
        if "e2e_emulated" in item.nodeid:
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


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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
        "metricsPort": _free_port(),
        # Our own rendezvous port for gangs: the contract's 29500 may be taken on a shared CI host.
        "env": [{"name": "HF_HUB_OFFLINE", "value": "1"}, {"name": "KUBETUNE_MASTER_PORT", "value": str(_free_port())}],
        **spec,
    }
    return {"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": name}, "spec": body}


def operator_ready(cluster: EmulatedCluster) -> Callable[[], bool]:
    """A readiness probe: the operator (started after now) watches FineTuneJobs and Jobs."""
    start = len(cluster.emulator.calls)

    def ready() -> bool:
        seen = {c.resource for c in cluster.emulator.calls[start:] if c.verb == "watch"}
        return {"finetunejobs", "jobs", "pods"} <= seen

    return ready


def operator_process(cluster: EmulatedCluster, log_file: Path) -> ProcessOperator:
    """The `kubetune-operator` console script against the emulated cluster, with short timers."""
    env = {**kubeconfig_env(cluster), "KUBETUNE_WATCH_NAMESPACES": NAMESPACE, "KUBETUNE_METRICS_PORT": "0",
           "KUBETUNE_HEALTH_PORT": "0", "KUBETUNE_RESYNC_SECONDS": str(OPERATOR_RESYNC_SECONDS),
           "KUBETUNE_PROGRESS_TIMEOUT_SECONDS": "0.5", "KUBETUNE_TRAINER_IMAGE": "kubetune/trainer:e2e"}
    return ProcessOperator([str(Path(sys.executable).parent / "kubetune-operator")], env, log_file,
                           make_probe=lambda: operator_ready(cluster))


@pytest.fixture
def make(cluster: EmulatedCluster, inputs: Inputs) -> MakeJob:
    """The scenarios' FineTuneJob factory for this cluster."""
    return functools.partial(finetunejob, cluster=cluster, inputs=inputs)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[EmulatedCluster]:
    """An emulated cluster in namespace `e2e` with the operator running."""
    with EmulatedCluster(tmp_path / "cluster", NAMESPACE, node_env=NODE_ENV) as running:
        running.run_operator(operator_process(running, tmp_path / "operator.log"))
        yield running
