"""The FineTuneJob lifecycle end to end: the real operator process, the real trainer in emulated pods.

Written against `ClusterClient` only (plus the kubelet's fakes through
`add_pod_rule`), so the kind suite can run the same checks on a cluster.
"""

from __future__ import annotations

import json

from tests.e2e_emulated.conftest import condition, finetunejob, phase, termination
from tests.harness.kubelet import PodPlan


def test_apply_runs_reports_progress_succeeds_and_delete_keeps_the_retained_pvc(cluster, inputs):
    cluster.apply(finetunejob("happy", cluster, inputs, training={"maxSteps": 60}))
    running = cluster.wait_for("happy", lambda o: (o.get("status") or {}).get("progress", {}).get("step"),
                               120, "progress appears in status")
    assert running["status"]["phase"] == "Running" and condition(running, "Running")["status"] == "True"
    done = cluster.wait_for("happy", phase("Succeeded"), 180, "Succeeded")
    status = done["status"]
    assert status["restarts"] == 0 and status["preemptions"] == 0 and status["attempt"] == 0
    assert status["progress"]["percent"] == "100%" and status["progress"]["step"] == 60
    assert "output" in status, cluster.diagnose("happy")
    adapter = status["output"]["adapterPath"]
    assert adapter.startswith("/workspace/")  # the path as the pod sees it
    files = cluster.pvc_files("happy-data", adapter.removeprefix("/workspace/"))
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {f.rsplit("/", 1)[-1] for f in files}
    pod = cluster.children("happy", "pods")[0]
    message = json.loads(termination(pod)["message"])
    assert message["reason"] == "Completed" and message["output"]["adapterPath"] == adapter
    cluster.wait_until(lambda: "Completed" in [e["reason"] for e in cluster.events("happy")], 10,
                       "a Completed event (posted after the status)")

    cluster.delete("happy")
    cluster.wait_until(lambda: cluster.get("happy") is None and not cluster.children("happy", "jobs")
                       and not cluster.children("happy", "pods") and not cluster.children("happy", "configmaps"),
                       30, "the FineTuneJob and its owned children are gone")
    assert cluster.get_object("persistentvolumeclaims", "happy-data") is not None  # retainOnDelete
    assert cluster.read_pvc_file("happy-data", adapter.removeprefix("/workspace/") + "/adapter_config.json")


def test_invalid_data_fails_fast_with_the_trainers_reason_without_retry_and_ttl_deletes_it(cluster, inputs, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "no prompt or completion column here"}\n' * 8, encoding="utf-8")
    manifest = finetunejob("invalid", cluster, inputs, ttlSecondsAfterFinished=3)
    manifest["spec"]["dataset"]["path"] = cluster.input_path(bad)
    cluster.apply(manifest)
    failed = cluster.wait_for("invalid", phase("Failed"), 120, "Failed")
    status = failed["status"]
    assert condition(failed, "Failed")["reason"] == "InvalidRecipe", cluster.diagnose("invalid")
    assert "prompt" in status["message"] or "column" in status["message"], status["message"]
    assert status["restarts"] == 0 and status["attempt"] == 0
    assert [j["metadata"]["name"] for j in cluster.children("invalid", "jobs")] == ["invalid-0"]  # no retry
    pod = cluster.children("invalid", "pods")[0]
    assert termination(pod)["exitCode"] == 2
    cluster.wait_until(lambda: cluster.get("invalid") is None, 30, "ttlSecondsAfterFinished deletes it")
    assert cluster.get_object("persistentvolumeclaims", "invalid-data") is not None


def test_a_pod_pending_past_the_deadline_fails_unschedulable(cluster, inputs):
    cluster.add_pod_rule(PodPlan(mode="unschedulable"), "kubetune.io/finetunejob=stuck")
    cluster.apply(finetunejob("stuck", cluster, inputs, pendingDeadlineSeconds=3))
    pending = cluster.wait_for("stuck", lambda o: (o.get("status") or {}).get("phase") == "Pending"
                               and cluster.children("stuck", "pods"), 30, "Pending with a pod")
    assert pending["status"]["phase"] == "Pending"
    failed = cluster.wait_for("stuck", phase("Failed"), 30, "Failed")
    assert condition(failed, "Failed")["reason"] == "Unschedulable", failed["status"]
    assert "Insufficient nvidia.com/gpu" in failed["status"]["message"]
    assert failed["status"]["restarts"] == 0


def test_an_image_that_cannot_be_pulled_fails_after_the_deadline(cluster, inputs):
    cluster.add_pod_rule(PodPlan(mode="image-pull"), "kubetune.io/finetunejob=nopull")
    cluster.apply(finetunejob("nopull", cluster, inputs, pendingDeadlineSeconds=2))
    failed = cluster.wait_for("nopull", phase("Failed"), 30, "Failed")
    assert condition(failed, "Failed")["reason"] == "ImagePullFailed", failed["status"]
