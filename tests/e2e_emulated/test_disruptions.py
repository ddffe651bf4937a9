"""Disruptions mid-run: a killed trainer, an eviction, a killed operator. Each must resume, counted right."""

from __future__ import annotations

import signal

from tests.e2e_emulated.conftest import finetunejob, phase

RESUMED = "resuming from /workspace/output/checkpoints/checkpoint-"


def checkpointed(obj: dict) -> bool:
    """Training runs and the operator reports a complete checkpoint (polled from rank 0's metrics)."""
    status = obj.get("status") or {}
    return status.get("phase") == "Running" and (status.get("checkpoint") or {}).get("step", 0) >= 5


def attempt_pods(cluster, name: str, attempt: int) -> list[dict]:
    """The pods of one attempt."""
    return [p for p in cluster.children(name, "pods") if p["metadata"]["labels"]["kubetune.io/attempt"] == str(attempt)]


def test_a_killed_trainer_restarts_and_resumes_from_its_checkpoint(cluster, inputs):
    cluster.apply(finetunejob("killed", cluster, inputs, training={"maxSteps": 60}))
    before = cluster.wait_for("killed", checkpointed, 120, "a checkpoint while running")
    cluster.kill_pod(attempt_pods(cluster, "killed", 0)[0]["metadata"]["name"], signal.SIGKILL)
    done = cluster.wait_for("killed", phase("Succeeded"), 240, "Succeeded after a restart")
    status = done["status"]
    assert (status["restarts"], status["preemptions"], status["attempt"]) == (1, 0, 1), status
    resumed = attempt_pods(cluster, "killed", 1)[0]["metadata"]["name"]
    assert RESUMED in cluster.pod_log(resumed), cluster.pod_log(resumed)[-2000:]
    step = int(cluster.pod_log(resumed).split(RESUMED)[1].split()[0])
    assert step >= before["status"]["checkpoint"]["step"]


def test_an_eviction_resumes_and_counts_as_a_preemption_only(cluster, inputs):
    cluster.apply(finetunejob("evicted", cluster, inputs, training={"maxSteps": 60}))
    cluster.wait_for("evicted", checkpointed, 120, "a checkpoint while running")
    cluster.evict(attempt_pods(cluster, "evicted", 0)[0]["metadata"]["name"])
    done = cluster.wait_for("evicted", phase("Succeeded"), 240, "Succeeded after the eviction")
    status = done["status"]
    assert (status["restarts"], status["preemptions"], status["attempt"]) == (0, 1, 1), status
    assert RESUMED in cluster.pod_log(attempt_pods(cluster, "evicted", 1)[0]["metadata"]["name"])


def test_a_killed_and_restarted_operator_neither_duplicates_nor_loses_children(cluster, inputs):
    cluster.apply(finetunejob("steady", cluster, inputs, training={"maxSteps": 60}))
    before = cluster.wait_for("steady", lambda o: (o.get("status") or {}).get("progress", {}).get("step"),
                              120, "progress while running")
    cluster.restart_operator()  # SIGKILL, then a new process
    cluster.wait_for("steady", lambda o: o["status"]["progress"]["step"] > before["status"]["progress"]["step"],
                     60, "the new operator keeps the status moving")
    done = cluster.wait_for("steady", phase("Succeeded"), 240, "Succeeded")
    assert (done["status"]["attempt"], done["status"]["restarts"]) == (0, 0)
    assert [j["metadata"]["name"] for j in cluster.children("steady", "jobs")] == ["steady-0"]
    assert len(cluster.children("steady", "configmaps")) == 1 and len(cluster.children("steady", "pods")) == 1
    assert cluster.get_object("persistentvolumeclaims", "steady-data") is not None
    creates = [c for c in cluster.emulator.calls if c.verb == "create" and c.resource == "jobs"]
    assert len(creates) == 1, creates
