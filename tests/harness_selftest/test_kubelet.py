"""The test Job controller and kubelet: real local processes for Indexed Jobs, and the faked node events."""

from __future__ import annotations

import json
import signal
import time

from tests.harness.emulator import JOBS
from tests.harness.kubelet import PodPlan
from tests.harness_selftest.conftest import NAMESPACE, create, job_condition, job_status, pods_of, toy_job, with_inputs


def _terminated(pod: dict) -> dict:
    return pod["status"]["containerStatuses"][0]["state"]["terminated"]


def test_an_indexed_gang_runs_with_the_pod_env_mounts_and_addresses(cluster):
    with_inputs(cluster, "gang", '{"recipe": 1}')
    create(cluster, JOBS, toy_job("gang", workers=2, env={"TOY_SERVE": "1", "TOY_SLEEP": "0.5"}))
    cluster.wait_until(lambda: job_condition(cluster, "gang", "Complete"), 30, "gang completes")

    status = job_status(cluster, "gang")
    assert status["succeeded"] == 2 and status["completedIndexes"] == "0-1" and "active" not in status
    pods = pods_of(cluster, "gang")
    assert [p["spec"]["hostname"] for p in pods] == ["gang-0", "gang-1"]
    seen = [json.loads(cluster.read_pvc_file("gang-data", f"seen-{i}.json")) for i in (0, 1)]
    assert [s["JOB_COMPLETION_INDEX"] for s in seen] == ["0", "1"]
    assert [s["HOSTNAME"] for s in seen] == ["gang-0", "gang-1"]
    ips = [s["KUBETUNE_METRICS_HOST"] for s in seen]
    assert ips[0] != ips[1] and all(ip.startswith("127.0.0.") for ip in ips)
    assert ips == [p["status"]["podIP"] for p in pods]
    assert all(s["KUBETUNE_MASTER_ADDR"] == ips[0] for s in seen)  # the headless Service's DNS name of pod 0
    assert all(s["recipe"] == '{"recipe": 1}' for s in seen)
    assert all(s["KUBETUNE_WORKSPACE"] != "/workspace" for s in seen)  # remapped to the PVC's folder
    message = json.loads(_terminated(pods[0])["message"])
    assert message == {"reason": "done", "adapter": "/workspace/output/adapter"}  # mapped back into the pod
    assert _terminated(pods[0])["exitCode"] == 0 and _terminated(pods[0])["reason"] == "Completed"
    pvc = cluster.get_object("persistentvolumeclaims", "gang-data")
    assert pvc["status"]["phase"] == "Bound"


def test_a_later_job_sees_the_files_an_earlier_one_left_on_the_pvc(cluster):
    with_inputs(cluster, "again")
    for attempt in ("again", "again-1"):
        job = toy_job(attempt)
        job["spec"]["template"]["spec"]["volumes"] = toy_job("again")["spec"]["template"]["spec"]["volumes"]
        create(cluster, JOBS, job)
        cluster.wait_until(lambda a=attempt: job_condition(cluster, a, "Complete"), 30, f"{attempt} completes")
    assert json.loads(cluster.read_pvc_file("again-data", "seen-0.json"))["previous_runs"] == 1


def test_a_failing_pod_fails_the_job_through_the_pod_failure_policy(cluster):
    with_inputs(cluster, "fails")
    create(cluster, JOBS, toy_job("fails", env={"TOY_EXIT": "3"}))
    failed = cluster.wait_until(lambda: job_condition(cluster, "fails", "Failed"), 30, "the Job fails")
    pod = pods_of(cluster, "fails")[0]
    assert failed["reason"] == "PodFailurePolicy"
    assert failed["message"] == (f"Container trainer for pod {NAMESPACE}/{pod['metadata']['name']} failed with "
                                 "exit code 3 matching FailJob rule at index 1")
    assert _terminated(pod)["exitCode"] == 3 and _terminated(pod)["reason"] == "Error"
    assert job_status(cluster, "fails")["failed"] == 1


def test_without_a_policy_the_backoff_limit_counts_failures(cluster):
    with_inputs(cluster, "count")
    job = toy_job("count", env={"TOY_EXIT": "1"}, policy=False)
    job["spec"]["backoffLimit"] = 1
    create(cluster, JOBS, job)
    failed = cluster.wait_until(lambda: job_condition(cluster, "count", "Failed"), 30, "the Job fails")
    assert failed["reason"] == "BackoffLimitExceeded" and job_status(cluster, "count")["failed"] == 2


def test_suspend_stops_the_pods_with_sigterm_and_resume_starts_new_ones(cluster):
    with_inputs(cluster, "pause")
    create(cluster, JOBS, toy_job("pause", env={"TOY_SLEEP": "60"}))
    cluster.wait_until(lambda: cluster.read_pvc_file("pause-data", "seen-0.json"), 30, "the pod runs")
    cluster.server.call(cluster.emulator.api_patch(JOBS, NAMESPACE, "pause", {"spec": {"suspend": True}}))
    cluster.wait_until(lambda: job_condition(cluster, "pause", "Suspended") and not pods_of(cluster, "pause"),
                       30, "suspended, pods gone")
    assert "failed" not in job_status(cluster, "pause")  # deleted by the controller: not a failure
    cluster.admit("pause")
    cluster.wait_until(lambda: json.loads(cluster.read_pvc_file("pause-data", "seen-0.json"))["previous_runs"] == 1,
                       30, "a new pod runs after resume")
    assert not job_condition(cluster, "pause", "Suspended")


def test_eviction_marks_disruption_and_the_trainer_gets_sigterm(cluster):
    with_inputs(cluster, "evict")
    create(cluster, JOBS, toy_job("evict", env={"TOY_SLEEP": "60"}))
    cluster.wait_until(lambda: cluster.read_pvc_file("evict-data", "seen-0.json"), 30, "the pod runs")
    pod = pods_of(cluster, "evict")[0]["metadata"]["name"]
    cluster.evict(pod)
    failed = cluster.wait_until(lambda: job_condition(cluster, "evict", "Failed"), 30, "the Job fails")
    assert failed["message"] == (f"Pod {NAMESPACE}/{pod} has condition DisruptionTarget matching FailJob rule at index 0")
    cluster.wait_until(lambda: not pods_of(cluster, "evict"), 10, "the evicted pod is gone")
    created = [key for key in cluster.emulator.objects if key[0] == "v1/pods" and key[2].startswith("evict-0-")]
    assert len(created) == 1  # no replacement while the evicted pod was terminating
    final = cluster.emulator.objects["v1/pods", NAMESPACE, pod].last
    assert final["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 75  # it checkpointed


def test_oom_kill_is_reported_as_oomkilled_137(cluster):
    with_inputs(cluster, "oom")
    create(cluster, JOBS, toy_job("oom", env={"TOY_SLEEP": "60"}))
    cluster.wait_until(lambda: cluster.read_pvc_file("oom-data", "seen-0.json"), 30, "the pod runs")
    cluster.oom_kill(pods_of(cluster, "oom")[0]["metadata"]["name"])
    cluster.wait_until(lambda: job_condition(cluster, "oom", "Failed"), 30, "the Job fails")
    terminated = _terminated(pods_of(cluster, "oom")[0])
    assert (terminated["exitCode"], terminated["reason"]) == (137, "OOMKilled")


def test_deleting_a_job_kills_a_pod_that_ignores_sigterm_after_the_grace_period(cluster):
    with_inputs(cluster, "stubborn")
    create(cluster, JOBS, toy_job("stubborn", env={"TOY_SLEEP": "60", "TOY_IGNORE_TERM": "1"}, grace=1))
    cluster.wait_until(lambda: cluster.read_pvc_file("stubborn-data", "seen-0.json"), 30, "the pod runs")
    pod = pods_of(cluster, "stubborn")[0]["metadata"]["name"]
    started = time.monotonic()
    cluster.server.call(cluster.emulator.api_delete(JOBS, NAMESPACE, "stubborn", propagation="Background"))
    cluster.wait_until(lambda: not pods_of(cluster, "stubborn"), 15, "the pod is gone")
    assert 0.9 < time.monotonic() - started < 5
    final = cluster.emulator.objects["v1/pods", NAMESPACE, pod].last
    assert final["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 128 + signal.SIGKILL


def test_sigkill_of_the_process_fails_the_pod_with_137(cluster):
    with_inputs(cluster, "killed")
    create(cluster, JOBS, toy_job("killed", env={"TOY_SLEEP": "60"}))
    cluster.wait_until(lambda: cluster.read_pvc_file("killed-data", "seen-0.json"), 30, "the pod runs")
    cluster.kill_pod(pods_of(cluster, "killed")[0]["metadata"]["name"])
    cluster.wait_until(lambda: job_condition(cluster, "killed", "Failed"), 30, "the Job fails")
    terminated = _terminated(pods_of(cluster, "killed")[0])
    assert (terminated["exitCode"], terminated["reason"]) == (137, "Error")


def test_faked_pods_pending_and_exiting(cluster):
    cluster.add_pod_rule(PodPlan(mode="unschedulable"), "kubetune.io/finetunejob=stuck")
    cluster.add_pod_rule(PodPlan(mode="image-pull"), "kubetune.io/finetunejob=nopull")
    cluster.add_pod_rule(PodPlan(mode="exit", exit_code=0, after=0.1, message='{"reason": "done"}'),
                         "kubetune.io/finetunejob=fast")
    for name in ("stuck", "nopull", "fast"):
        create(cluster, JOBS, toy_job(name))  # no ConfigMap or PVC needed: nothing runs
    cluster.wait_until(lambda: job_condition(cluster, "fast", "Complete"), 10, "the faked pod completes")
    assert _terminated(pods_of(cluster, "fast")[0])["message"] == '{"reason": "done"}'
    stuck = cluster.wait_until(lambda: pods_of(cluster, "stuck")[0]["status"]["conditions"][0], 10, "pending")
    assert (stuck["type"], stuck["status"], stuck["reason"]) == ("PodScheduled", "False", "Unschedulable")
    waiting = cluster.wait_until(
        lambda: pods_of(cluster, "nopull")[0]["status"]["containerStatuses"][0]["state"]["waiting"], 10, "waiting")
    assert waiting["reason"] == "ErrImagePull"
    assert pods_of(cluster, "stuck")[0]["status"]["phase"] == "Pending"
    assert job_status(cluster, "stuck")["active"] == 1


def test_a_missing_configmap_keeps_the_pod_pending_until_it_exists(cluster):
    create(cluster, JOBS, toy_job("late"))
    waiting = cluster.wait_until(
        lambda: pods_of(cluster, "late")[0]["status"]["containerStatuses"][0]["state"]["waiting"], 10, "waiting")
    assert waiting["reason"] == "ContainerCreating" and "late-recipe" in waiting["message"]
    with_inputs(cluster, "late")
    cluster.wait_until(lambda: job_condition(cluster, "late", "Complete"), 30, "it runs once the ConfigMap exists")


def test_the_node_refuses_gpus_and_foreign_node_selectors_and_invalid_registries(cluster):
    gpu = toy_job("gpu")
    gpu["spec"]["template"]["spec"]["containers"][0]["resources"] = {"limits": {"nvidia.com/gpu": "1"}}
    picky = toy_job("picky")
    picky["spec"]["template"]["spec"]["nodeSelector"] = {"pool": "a100"}
    missing = toy_job("missing")
    missing["spec"]["template"]["spec"]["containers"][0]["image"] = "registry.invalid/kubetune/trainer:0"
    for job in (gpu, picky, missing):
        create(cluster, JOBS, job)
    gpu_pod = cluster.wait_until(lambda: pods_of(cluster, "gpu")[0]["status"]["conditions"][0], 10, "pending")
    assert gpu_pod["reason"] == "Unschedulable" and "Insufficient nvidia.com/gpu" in gpu_pod["message"]
    picky_pod = cluster.wait_until(lambda: pods_of(cluster, "picky")[0]["status"]["conditions"][0], 10, "pending")
    assert "didn't match Pod's node affinity/selector" in picky_pod["message"]
    waiting = cluster.wait_until(
        lambda: pods_of(cluster, "missing")[0]["status"]["containerStatuses"][0]["state"]["waiting"], 10, "waiting")
    assert waiting["reason"] == "ErrImagePull" and "no such host" in waiting["message"]
