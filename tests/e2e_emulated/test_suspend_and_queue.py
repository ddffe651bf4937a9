"""Suspend and resume, and Kueue-style admission of attempt Jobs created suspended."""

from __future__ import annotations

from tests.e2e_emulated.conftest import condition, finetunejob, phase

RESUMED = "resuming from /workspace/output/checkpoints/checkpoint-"


def test_suspend_stops_the_pods_after_a_checkpoint_and_unsuspend_resumes_from_it(cluster, inputs):
    cluster.apply(finetunejob("pause", cluster, inputs, training={"maxSteps": 60}))
    cluster.wait_for("pause", lambda o: (o.get("status") or {}).get("progress", {}).get("step", 0) >= 1,
                     120, "training has started")
    cluster.patch_spec("pause", {"suspend": True})
    suspended = cluster.wait_for("pause", phase("Suspended"), 120, "Suspended")
    cluster.wait_until(lambda: not cluster.children("pause", "pods"), 120, "the trainer pods are gone")
    assert condition(suspended, "Suspended")["status"] == "True"
    checkpoints = [f for f in cluster.pvc_files("pause-data", "output/checkpoints") if f.endswith("kubetune-complete")]
    assert checkpoints, "the trainer saved a checkpoint on SIGTERM"

    cluster.patch_spec("pause", {"suspend": False})
    done = cluster.wait_for("pause", phase("Succeeded"), 240, "Succeeded after resume")
    assert (done["status"]["restarts"], done["status"]["preemptions"]) == (0, 0), done["status"]
    pod = cluster.children("pause", "pods")[0]["metadata"]["name"]
    assert RESUMED in cluster.pod_log(pod), cluster.pod_log(pod)[-2000:]


def test_with_a_queue_name_the_attempt_waits_suspended_until_admitted(cluster, inputs):
    cluster.apply(finetunejob("queued", cluster, inputs, queueName="team-a", training={"maxSteps": 10}))
    queued = cluster.wait_for("queued", phase("Queued"), 60, "Queued")
    assert condition(queued, "Queued")["status"] == "True"
    job = cluster.wait_until(lambda: cluster.children("queued", "jobs"), 30, "the attempt Job")[0]
    assert job["spec"]["suspend"] is True and job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    assert not cluster.children("queued", "pods")
    cluster.admit(job["metadata"]["name"])  # as Kueue does when the workload is admitted
    done = cluster.wait_for("queued", phase("Succeeded"), 180, "Succeeded once admitted")
    assert done["status"]["attempt"] == 0 and done["status"]["restarts"] == 0
