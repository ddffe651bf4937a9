"""Two CPU workers (torchrun, gloo) as one gang: a killed worker restarts the whole attempt, which resumes."""

from __future__ import annotations

import signal

from tests.e2e_emulated.conftest import _free_port, finetunejob, phase

RESUMED = "resuming from /workspace/output/checkpoints/checkpoint-"


def _pods(cluster, attempt: int) -> list[dict]:
    pods = [p for p in cluster.children("gang", "pods") if p["metadata"]["labels"]["kubetune.io/attempt"] == str(attempt)]
    return sorted(pods, key=lambda p: p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"])


def test_two_workers_train_as_one_gang_and_a_killed_worker_restarts_the_whole_attempt(cluster, inputs):
    manifest = finetunejob("gang", cluster, inputs, training={"maxSteps": 60},
                           resources={"workers": 2, "gpusPerWorker": 0},
                           storage={"size": "1Gi", "accessModes": ["ReadWriteMany"]})
    # Our own rendezvous port: the contract's 29500 may be taken by another job on a shared CI host.
    manifest["spec"]["env"].append({"name": "KUBETUNE_MASTER_PORT", "value": str(_free_port())})
    cluster.apply(manifest)
    cluster.wait_for("gang", lambda o: (o.get("status") or {}).get("phase") == "Running"
                     and (o["status"].get("checkpoint") or {}).get("step", 0) >= 5, 180, "a gang checkpoint")
    service = cluster.get_object("services", "gang")
    assert service["spec"]["clusterIP"] == "None"
    first = _pods(cluster, 0)
    assert [p["spec"]["hostname"] for p in first] == ["gang-0-0", "gang-0-1"]
    assert all(p["spec"]["subdomain"] == "gang" for p in first)

    cluster.kill_pod(first[1]["metadata"]["name"], signal.SIGKILL)  # worker 1 dies; rank 0 must go too
    done = cluster.wait_for("gang", phase("Succeeded"), 300, "Succeeded after the gang restarted")
    assert (done["status"]["restarts"], done["status"]["attempt"]) == (1, 1), done["status"]
    second = _pods(cluster, 1)
    assert len(second) == 2 and all(p["status"]["phase"] == "Succeeded" for p in second)
    assert all(p["status"]["phase"] != "Running" for p in _pods(cluster, 0))  # no stray worker of attempt 0
    logs = [cluster.pod_log(p["metadata"]["name"]) for p in second]
    assert all(RESUMED in log for log in logs), logs[0][-2000:]
