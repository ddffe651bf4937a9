"""The lifecycle scenarios, written against `ClusterClient` only: they run on the real control plane here
(tests/e2e_cluster/test_*.py) and on a real cluster through a kubectl client (the kind suite).

Each scenario takes the client and `make(name, **spec) -> manifest`, a factory of small, fast
FineTuneJobs for that cluster (`training=` entries update the training block; the factory decides
the model, data and image the cluster can run). A scenario returns the final FineTuneJob, so a
suite can add checks only it can make.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from typing import Any

from kubetune_api.contract import CHECKPOINT_COMPLETE_MARKER, CHECKPOINT_PREFIX

from tests.cluster.client import ClusterClient

MakeJob = Callable[..., dict[str, Any]]
RESUMED = "resuming from /workspace/output/checkpoints/checkpoint-"
# Interrupted runs: long enough that the trainer is still at work when the test acts on its first
# checkpoint (step 5), however fast it runs.
LONG_RUN = {"maxSteps": 200}
MISSING_IMAGE = "registry.invalid/kubetune/trainer:missing"  # RFC 2606: never resolves on any cluster
NO_SUCH_NODE = {"kubetune.io/e2e-node": "absent"}  # no node carries this label


def condition(obj: dict[str, Any], kind: str) -> dict[str, Any] | None:
    """The FineTuneJob's condition of a type, if present."""
    return next((c for c in (obj.get("status") or {}).get("conditions", []) if c["type"] == kind), None)


def phase(expected: str) -> Callable[[dict[str, Any]], bool]:
    """A wait check: status.phase is `expected`."""
    return lambda obj: (obj.get("status") or {}).get("phase") == expected


def progressed(obj: dict[str, Any]) -> bool:
    """Training runs and progress (polled from rank 0's metrics) is in status."""
    status = obj.get("status") or {}
    return status.get("phase") == "Running" and bool((status.get("progress") or {}).get("step"))


def checkpointed(obj: dict[str, Any]) -> bool:
    """Training runs and the operator reports a complete checkpoint."""
    status = obj.get("status") or {}
    return status.get("phase") == "Running" and (status.get("checkpoint") or {}).get("step", 0) >= 1


def checkpoint_on_disk(client: ClusterClient, name: str, timeout: float = 300) -> int:
    """The step of the newest complete checkpoint on the FineTuneJob's volume, waiting for the first one.

    Read from the volume, not the status: the status follows a progress poll, and on a fast run the
    trainer can finish between the checkpoint and the poll, leaving nothing to interrupt.
    """
    def newest() -> int | None:
        steps = [int(path.split(CHECKPOINT_PREFIX, 1)[1].split("/", 1)[0])
                 for path in client.pvc_files(f"{name}-data", "output/checkpoints")
                 if path.endswith(CHECKPOINT_COMPLETE_MARKER)]
        return max(steps, default=None)

    return client.wait_until(newest, timeout, f"{name}: a complete checkpoint on its volume")


def termination(pod: dict[str, Any]) -> dict[str, Any]:
    """The trainer container's terminated state."""
    return pod["status"]["containerStatuses"][0]["state"]["terminated"]


def attempt_pods(client: ClusterClient, name: str, attempt: int) -> list[dict[str, Any]]:
    """The pods of one attempt, by completion index."""
    pods = [p for p in client.children(name, "pods") if p["metadata"]["labels"]["kubetune.io/attempt"] == str(attempt)]
    return sorted(pods, key=lambda p: p["metadata"]["annotations"].get("batch.kubernetes.io/job-completion-index", ""))


def resumed_from(client: ClusterClient, pod: str) -> int:
    """The checkpoint step a trainer pod says it resumed from (AssertionError if it did not resume)."""
    log = client.pod_log(pod)
    assert RESUMED in log, f"{pod} did not resume; log tail: {log[-2000:]}"
    return int(log.split(RESUMED)[1].split()[0])


def succeeds_with_progress_and_delete_keeps_the_pvc(client: ClusterClient, make: MakeJob) -> dict[str, Any]:
    """apply → Running with progress → Succeeded, adapter on the PVC; delete → owned children gone, PVC kept."""
    client.apply(make("happy"))
    running = client.wait_for("happy", progressed, 300, "progress appears in status")
    assert condition(running, "Running")["status"] == "True"
    done = client.wait_for("happy", phase("Succeeded"), 600, "Succeeded")
    status = done["status"]
    assert (status["restarts"], status["preemptions"], status["attempt"]) == (0, 0, 0), status
    assert status["progress"]["percent"] == "100%"
    assert "output" in status, status
    adapter = status["output"]["adapterPath"]
    assert adapter.startswith("/workspace/")  # the path as the pod sees it
    files = client.pvc_files("happy-data", adapter.removeprefix("/workspace/"))
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {f.rsplit("/", 1)[-1] for f in files}, files
    message = json.loads(termination(client.children("happy", "pods")[0])["message"])
    assert message["reason"] == "Completed" and message["output"]["adapterPath"] == adapter
    client.wait_until(lambda: "Completed" in [e["reason"] for e in client.events("happy")], 30,
                      "a Completed event (posted after the status)")
    client.delete("happy")
    client.wait_until(lambda: client.get("happy") is None and not client.children("happy", "jobs")
                      and not client.children("happy", "pods") and not client.children("happy", "configmaps"),
                      120, "the FineTuneJob and its owned children are gone")
    assert client.get_object("persistentvolumeclaims", "happy-data") is not None  # retainOnDelete
    assert client.read_pvc_file("happy-data", adapter.removeprefix("/workspace/") + "/adapter_config.json")
    return done


def invalid_data_fails_fast_and_ttl_deletes(client: ClusterClient, make: MakeJob, bad_data_path: str) -> dict[str, Any]:
    """Data the trainer refuses → Failed InvalidRecipe with its reason, no retry; the TTL then deletes it."""
    manifest = make("invalid", ttlSecondsAfterFinished=3)
    manifest["spec"]["dataset"]["path"] = bad_data_path
    client.apply(manifest)
    failed = client.wait_for("invalid", phase("Failed"), 300, "Failed")
    status = failed["status"]
    assert condition(failed, "Failed")["reason"] == "InvalidRecipe", status
    assert "column" in status["message"] or "prompt" in status["message"], status["message"]
    assert (status["restarts"], status["attempt"]) == (0, 0)
    assert [j["metadata"]["name"] for j in client.children("invalid", "jobs")] == ["invalid-0"]  # no retry
    assert termination(client.children("invalid", "pods")[0])["exitCode"] == 2
    client.wait_until(lambda: client.get("invalid") is None, 60, "ttlSecondsAfterFinished deletes it")
    assert client.get_object("persistentvolumeclaims", "invalid-data") is not None
    return failed


def unschedulable_fails_after_the_deadline(client: ClusterClient, make: MakeJob) -> dict[str, Any]:
    """A pod no node can take stays Pending; past pendingDeadlineSeconds the FineTuneJob fails Unschedulable."""
    manifest = make("stuck", pendingDeadlineSeconds=3)
    manifest["spec"]["resources"]["nodeSelector"] = NO_SUCH_NODE
    client.apply(manifest)
    client.wait_until(lambda: client.children("stuck", "pods"), 60, "a pending pod")
    failed = client.wait_for("stuck", phase("Failed"), 60, "Failed")
    assert condition(failed, "Failed")["reason"] == "Unschedulable", failed["status"]
    assert failed["status"]["restarts"] == 0
    return failed


def unpullable_image_fails_after_the_deadline(client: ClusterClient, make: MakeJob) -> dict[str, Any]:
    """An image that cannot be pulled: Failed ImagePullFailed after pendingDeadlineSeconds."""
    client.apply(make("nopull", pendingDeadlineSeconds=3, image=MISSING_IMAGE))
    failed = client.wait_for("nopull", phase("Failed"), 120, "Failed")
    assert condition(failed, "Failed")["reason"] == "ImagePullFailed", failed["status"]
    return failed


def killed_trainer_restarts_and_resumes(client: ClusterClient, make: MakeJob) -> dict[str, Any]:
    """SIGKILL of the trainer mid-run → the next attempt resumes from the checkpoint; restarts 1."""
    client.apply(make("killed", training=LONG_RUN))
    before = checkpoint_on_disk(client, "killed")
    client.kill_pod(attempt_pods(client, "killed", 0)[0]["metadata"]["name"], signal.SIGKILL)
    done = client.wait_for("killed", phase("Succeeded"), 600, "Succeeded after a restart")
    status = done["status"]
    assert (status["restarts"], status["preemptions"], status["attempt"]) == (1, 0, 1), status
    step = resumed_from(client, attempt_pods(client, "killed", 1)[0]["metadata"]["name"])
    assert step >= before
    return done


def eviction_resumes_as_a_preemption(client: ClusterClient, make: MakeJob) -> dict[str, Any]:
    """An eviction (DisruptionTarget) → resumes in a new attempt, counted as a preemption only."""
    client.apply(make("evicted", training=LONG_RUN))
    checkpoint_on_disk(client, "evicted")
    client.evict(attempt_pods(client, "evicted", 0)[0]["metadata"]["name"])
    done = client.wait_for("evicted", phase("Succeeded"), 600, "Succeeded after the eviction")
    status = done["status"]
    assert (status["restarts"], status["preemptions"], status["attempt"]) == (0, 1, 1), status
    resumed_from(client, attempt_pods(client, "evicted", 1)[0]["metadata"]["name"])
    return done


def restarted_operator_keeps_one_set_of_children(client: ClusterClient, make: MakeJob) -> dict[str, Any]:
    """The operator killed and restarted mid-run → no duplicate or lost children, the status keeps moving."""
    client.apply(make("steady"))
    before = client.wait_for("steady", progressed, 300, "progress while running")
    job_uid = client.children("steady", "jobs")[0]["metadata"]["uid"]
    client.restart_operator()
    client.wait_for("steady", lambda o: o["status"]["progress"]["step"] > before["status"]["progress"]["step"]
                    or o["status"]["phase"] == "Succeeded", 300, "the new operator keeps the status moving")
    done = client.wait_for("steady", phase("Succeeded"), 600, "Succeeded")
    assert (done["status"]["attempt"], done["status"]["restarts"]) == (0, 0), done["status"]
    jobs = client.children("steady", "jobs")
    assert [(j["metadata"]["name"], j["metadata"]["uid"]) for j in jobs] == [("steady-0", job_uid)]  # kept, not re-made
    assert len(client.children("steady", "configmaps")) == 1 and len(client.children("steady", "pods")) == 1
    assert client.get_object("persistentvolumeclaims", "steady-data") is not None
    return done


def suspend_checkpoints_and_unsuspend_resumes(client: ClusterClient, make: MakeJob) -> dict[str, Any]:
    """suspend → pods gone after a checkpoint, Suspended; unsuspend → the next attempt resumes from it."""
    client.apply(make("pause", training=LONG_RUN))
    client.wait_for("pause", progressed, 300, "training has started")
    client.patch_spec("pause", {"suspend": True})
    suspended = client.wait_for("pause", phase("Suspended"), 300, "Suspended")
    client.wait_until(lambda: not client.children("pause", "pods"), 300, "the trainer pods are gone")
    assert condition(suspended, "Suspended")["status"] == "True"
    markers = [f for f in client.pvc_files("pause-data", "output/checkpoints") if f.endswith("kubetune-complete")]
    assert markers, "the trainer saved a checkpoint on SIGTERM"
    client.patch_spec("pause", {"suspend": False})
    done = client.wait_for("pause", phase("Succeeded"), 600, "Succeeded after resume")
    assert (done["status"]["restarts"], done["status"]["preemptions"]) == (0, 0), done["status"]
    resumed_from(client, client.children("pause", "pods")[0]["metadata"]["name"])
    return done


def queued_until_admitted(client: ClusterClient, make: MakeJob) -> dict[str, Any]:
    """queueName → the attempt Job is created suspended with the Kueue label; once admitted, it runs."""
    client.apply(make("queued", queueName="team-a"))
    queued = client.wait_for("queued", phase("Queued"), 120, "Queued")
    assert condition(queued, "Queued")["status"] == "True"
    job = client.wait_until(lambda: client.children("queued", "jobs"), 60, "the attempt Job")[0]
    assert job["spec"]["suspend"] is True and job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    assert not client.children("queued", "pods")
    client.admit(job["metadata"]["name"])  # as Kueue does when it admits the workload
    done = client.wait_for("queued", phase("Succeeded"), 600, "Succeeded once admitted")
    assert (done["status"]["attempt"], done["status"]["restarts"]) == (0, 0), done["status"]
    return done


def recreated_with_the_same_name_runs_afresh(client: ClusterClient, make: MakeJob) -> dict[str, Any]:
    """Delete a finished FineTuneJob and re-create it at once: the new one runs its own attempt and
    adopts nothing of the old one's (the garbage collector removes those asynchronously)."""
    manifest = make("again", training={"maxSteps": 6, "saveSteps": 3})
    client.apply(manifest)
    client.wait_for("again", phase("Succeeded"), 300, "the first incarnation Succeeded")
    old_job = client.children("again", "jobs")[0]["metadata"]["uid"]
    client.delete("again")
    client.wait_until(lambda: client.get("again") is None, 30, "the first incarnation is gone")
    created = client.apply(manifest)
    done = client.wait_for("again", phase("Succeeded"), 300, "the second incarnation Succeeded")
    status = done["status"]
    assert (status["restarts"], status["attempt"]) == (0, 0), status
    jobs = client.children("again", "jobs")
    assert [j["metadata"]["ownerReferences"][0]["uid"] for j in jobs] == [created["metadata"]["uid"]], jobs
    assert jobs[0]["metadata"]["uid"] != old_job  # its own Job, not the old one's
    pods = [p for p in client.children("again", "pods")
            if p["metadata"]["ownerReferences"][0]["uid"] == jobs[0]["metadata"]["uid"]]
    assert pods and termination(pods[0])["exitCode"] == 0  # it ran, not merely inherited a Complete Job
    return done


def kueue_preemption_requeues_and_resumes_in_the_same_attempt(client: ClusterClient, make: MakeJob) -> dict[str, Any]:
    """Admitted → training; Kueue preempts (suspends the Job) → checkpoint, Queued, no failure counted;
    re-admitted → the same attempt's new pod resumes from the checkpoint."""
    client.apply(make("preempted", queueName="team-a", training=LONG_RUN))
    job = client.wait_until(lambda: client.children("preempted", "jobs"), 60, "the attempt Job")[0]["metadata"]["name"]
    client.admit(job)
    checkpoint_on_disk(client, "preempted")
    first = attempt_pods(client, "preempted", 0)[0]["metadata"]["name"]
    client.preempt(job)  # as Kueue does when a higher-priority workload needs the quota
    queued = client.wait_for("preempted", phase("Queued"), 300, "Queued again after the preemption")
    client.wait_until(lambda: not any(p["status"].get("phase") in ("Pending", "Running")
                                      for p in client.children("preempted", "pods")), 300, "the preempted pod stopped")
    assert (queued["status"]["restarts"], queued["status"]["attempt"]) == (0, 0), queued["status"]
    client.admit(job)
    done = client.wait_for("preempted", phase("Succeeded"), 600, "Succeeded once re-admitted")
    assert (done["status"]["restarts"], done["status"]["attempt"]) == (0, 0), done["status"]
    second = [p for p in attempt_pods(client, "preempted", 0) if p["metadata"]["name"] != first]
    assert second, "the re-admitted Job made a new pod"
    resumed_from(client, second[-1]["metadata"]["name"])
    return done


def gang_restarts_as_a_whole_and_resumes(client: ClusterClient, make: MakeJob) -> dict[str, Any]:
    """Two workers are one gang (torchrun, gloo on the CPU); a killed worker restarts the whole attempt."""
    client.apply(make("gang", resources={"workers": 2, "gpusPerWorker": 0},
                      storage={"size": "1Gi", "accessModes": ["ReadWriteMany"]}))
    client.wait_for("gang", checkpointed, 600, "a gang checkpoint")
    assert client.get_object("services", "gang")["spec"]["clusterIP"] == "None"
    first = attempt_pods(client, "gang", 0)
    assert [p["spec"]["hostname"] for p in first] == ["gang-0-0", "gang-0-1"]
    assert all(p["spec"]["subdomain"] == "gang" for p in first)
    client.kill_pod(first[1]["metadata"]["name"], signal.SIGKILL)  # worker 1 dies; rank 0 must stop too
    done = client.wait_for("gang", phase("Succeeded"), 900, "Succeeded after the gang restarted")
    assert (done["status"]["restarts"], done["status"]["attempt"]) == (1, 1), done["status"]
    second = attempt_pods(client, "gang", 1)
    assert len(second) == 2 and all(p["status"]["phase"] == "Succeeded" for p in second)
    assert all(p["status"]["phase"] != "Running" for p in attempt_pods(client, "gang", 0))
    for pod in second:
        resumed_from(client, pod["metadata"]["name"])
    return done
