"""A missing input on the real control plane: on a cluster the data is often still on its way (a copy to
the volume in progress), so the operator says what is missing, retries with a growing wait without
counting restarts, and fails with InputNotFound only after pendingDeadlineSeconds.

The real trainer reports the missing `dataset.path` (exit 2, reason InputNotFound in its termination
message); the real operator decides; the test kubelet's pods see the host's files, so writing the file
here is the copy that finishes late.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.cluster.rest import path_of
from tests.e2e_cluster.scenarios import condition, phase


def waiting_for_input(obj: dict[str, Any]) -> bool:
    """Running=False with reason InputNotFound: the operator waits for the input."""
    return (condition(obj, "Running") or {}).get("reason") == "InputNotFound"


def test_an_input_that_arrives_late_is_waited_for_and_trained_on(cluster, make, inputs, tmp_path: Path):
    late = tmp_path / "arrives-late.jsonl"
    manifest = make("late", training={"maxSteps": 5, "saveSteps": 5}, pendingDeadlineSeconds=600)
    manifest["spec"]["dataset"]["path"] = str(late)
    cluster.apply(manifest)

    waiting = cluster.wait_for("late", waiting_for_input, 300, "Running=False InputNotFound")
    status = waiting["status"]
    assert f"dataset.path {late}: no such file or folder" in status["message"], status
    assert "waiting for it" in status["message"] and status["restarts"] == 0, status
    assert status["phase"] == "Pending" and status.get("inputMissingSince"), status

    late.write_text(inputs.data.read_text(encoding="utf-8"), encoding="utf-8")  # the copy completes
    done = cluster.wait_for("late", phase("Succeeded"), 300, "Succeeded once the data is there")
    assert done["status"]["restarts"] == 0 and done["status"]["attempt"] >= 1, done["status"]
    assert "inputMissingSince" not in done["status"], done["status"]


def test_an_input_that_never_comes_fails_input_not_found_after_the_deadline(cluster, make, tmp_path: Path):
    never = tmp_path / "never.jsonl"
    manifest = make("never", pendingDeadlineSeconds=30)
    manifest["spec"]["dataset"]["path"] = str(never)
    cluster.apply(manifest)

    failed = cluster.wait_for("never", phase("Failed"), 300, "Failed after pendingDeadlineSeconds")
    status = failed["status"]
    assert condition(failed, "Failed")["reason"] == "InputNotFound", status
    assert f"dataset.path {never}: no such file or folder" in status["message"], status
    assert "pendingDeadlineSeconds 30" in status["message"], status
    assert status["restarts"] == 0 and status["attempt"] >= 1, status  # retried, never counted as a failure


def test_a_configmap_created_after_the_job_is_waited_for(cluster, make, inputs):
    """The documented `kubectl create configmap` forgotten, then run: the pod starts (the volume is optional),
    the trainer says which ConfigMap is missing, and the attempt after it is created trains."""
    manifest = make("cmlate", training={"maxSteps": 5, "saveSteps": 5}, pendingDeadlineSeconds=600)
    manifest["spec"]["dataset"] = {"configMap": {"name": "late-data", "key": "train.jsonl"},
                                   "format": "prompt-completion", "validationSplit": 0.125}
    cluster.apply(manifest)

    waiting = cluster.wait_for("cmlate", waiting_for_input, 300, "Running=False InputNotFound")
    assert "dataset.configMap late-data/train.jsonl: no such ConfigMap or key" in waiting["status"]["message"]
    assert "kubectl create configmap late-data --from-file=train.jsonl=" in waiting["status"]["message"]

    cluster.rest.create(path_of("v1", "configmaps", cluster.namespace), {
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "late-data", "namespace": cluster.namespace},
        "data": {"train.jsonl": inputs.data.read_text(encoding="utf-8")}})
    done = cluster.wait_for("cmlate", phase("Succeeded"), 300, "Succeeded once the ConfigMap exists")
    assert done["status"]["restarts"] == 0 and done["status"]["attempt"] >= 1, done["status"]
