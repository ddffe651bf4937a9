"""The real Kueue (sigs.k8s.io/kueue's manager, tests/cluster/kueue.py) admits and preempts a FineTuneJob.

test_suspend_and_queue.py plays Kueue's part by hand; here Kueue's own controllers and webhooks do: a
ClusterQueue with one GPU of quota on the test kubelet's gpu-node, a LocalQueue the FineTuneJob names,
and a higher-priority Job (a WorkloadPriorityClass) that needs that GPU.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any, Self

import pytest
from kubetune_operator import names, render

from tests.cluster.client import RealCluster
from tests.cluster.kubelet import GPU_NODE, GPU_RESOURCE
from tests.cluster.kueue import API, Kueue
from tests.cluster.rest import ApiError, RestClient, path_of
from tests.e2e_cluster import scenarios
from tests.e2e_cluster.scenarios import (
    LONG_RUN,
    MakeJob,
    attempt_pods,
    phase,
    resumed_from,
)

QUEUE = "team-a"
PRIORITY_LABEL = "kueue.x-k8s.io/priority-class"
GPU_LABELS = {"kubetune.test/accelerator": "gpu"}  # the gpu-node's label, as the flavor's nodeLabels
# Long enough that the operator sees the FineTuneJob Queued while the preemptor holds the GPU.
URGENT_SECONDS = 20
STOPPED = 75  # kubetune_api.contract.ExitCode.STOPPED: a checkpoint was saved on SIGTERM


def condition_of(obj: dict[str, Any] | None, kind: str) -> dict[str, Any] | None:
    """A condition of any object's status, if present."""
    return next((c for c in ((obj or {}).get("status") or {}).get("conditions", []) if c["type"] == kind), None)


def is_true(obj: dict[str, Any] | None, kind: str) -> bool:
    """Whether the object's condition `kind` is True."""
    found = condition_of(obj, kind)
    return found is not None and found["status"] == "True"


def workload_of(kube: RestClient, namespace: str, job: str) -> dict[str, Any] | None:
    """The Kueue Workload that Kueue's Job controller made for a Job (owned by it)."""
    return next((w for w in kube.list(path_of(API, "workloads", namespace))
                 if any(o["kind"] == "Job" and o["name"] == job for o in w["metadata"].get("ownerReferences", []))),
                None)


class PodHistory:
    """The last state the API showed of each pod of a namespace, deleted ones included (a watch in a thread).

    A preempted trainer's pod is deleted by the Job controller once it has stopped, so polling may never see
    its exit code; the watch's events carry every status the kubelet wrote, and the final object on DELETED.
    """

    def __init__(self, kube: RestClient, namespace: str) -> None:
        self.kube, self.path = kube, path_of("v1", "pods", namespace)
        self.pods: dict[str, dict[str, Any]] = {}
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name="pod-history", daemon=True)

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        self.thread.join(30)

    def terminated(self, uid: str) -> dict[str, Any] | None:
        """The container's terminated state of the pod with this uid, once the API showed one."""
        statuses = ((self.pods.get(uid) or {}).get("status") or {}).get("containerStatuses") or [{}]
        return (statuses[0].get("state") or {}).get("terminated")

    def _run(self) -> None:
        version = None
        while not self.stopped.is_set():
            query = {"resourceVersion": version} if version else {}
            try:
                for event in self.kube.watch(self.path, timeout_seconds=5, **query):
                    obj = event["object"]
                    version = obj["metadata"]["resourceVersion"]
                    if event["type"] in ("ADDED", "MODIFIED", "DELETED"):
                        self.pods[obj["metadata"]["uid"]] = obj
            except (ApiError, OSError):  # 410 Gone or a dropped connection: list again from now
                version = None


@pytest.fixture
def queues(kueue: Kueue, kube: RestClient, cluster: RealCluster) -> Iterator[str]:
    """A ResourceFlavor for the gpu-node, a ClusterQueue with one GPU of quota (lower priority is preempted
    within it), the LocalQueue `team-a` in the test's namespace and the WorkloadPriorityClass `<ns>-urgent`."""
    namespace = cluster.namespace
    kueue.manage(namespace)
    flavor, queue, urgent = f"{namespace}-gpu", f"{namespace}-cq", f"{namespace}-urgent"
    objects = [
        ("resourceflavors", None, {"metadata": {"name": flavor}, "spec": {"nodeLabels": GPU_LABELS}}),
        ("clusterqueues", None, {"metadata": {"name": queue}, "spec": {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
            "preemption": {"withinClusterQueue": "LowerPriority"},
            "resourceGroups": [{"coveredResources": ["cpu", "memory", GPU_RESOURCE], "flavors": [{
                "name": flavor, "resources": [{"name": "cpu", "nominalQuota": "16"},
                                              {"name": "memory", "nominalQuota": "64Gi"},
                                              {"name": GPU_RESOURCE, "nominalQuota": "1"}]}]}]}}),
        ("localqueues", namespace, {"metadata": {"name": QUEUE}, "spec": {"clusterQueue": queue}}),
        ("workloadpriorityclasses", None, {"metadata": {"name": urgent}, "value": 1000}),
    ]
    kinds = {"resourceflavors": "ResourceFlavor", "clusterqueues": "ClusterQueue", "localqueues": "LocalQueue",
             "workloadpriorityclasses": "WorkloadPriorityClass"}
    for plural, ns, body in objects:
        kube.create(path_of(API, plural, ns), {"apiVersion": API, "kind": kinds[plural], **body})
    cluster.wait_until(lambda: is_true(kube.get(path_of(API, "clusterqueues", name=queue)), "Active"), 60,
                       f"ClusterQueue {queue} Active")
    try:
        yield urgent
    finally:
        # Cluster-scoped: the namespace's deletion does not take them along.
        for plural, ns, body in reversed(objects):
            if ns is None:
                kube.delete(path_of(API, plural, name=body["metadata"]["name"]))


def gpu_job(name: str, priority_class: str, seconds: int) -> dict[str, Any]:
    """A plain batch Job for the LocalQueue that holds one GPU for `seconds` (restricted Pod Security)."""
    container = {"name": "work", "image": "busybox", "command": ["sleep", str(seconds)],
                 "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {GPU_RESOURCE: "1"}},
                 "securityContext": render.container_security_context()}
    return {"apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": name, "labels": {names.LABEL_KUEUE_QUEUE: QUEUE, PRIORITY_LABEL: priority_class}},
            "spec": {"backoffLimit": 0, "template": {"spec": {
                "restartPolicy": "Never", "securityContext": render.pod_security_context(),
                "automountServiceAccountToken": False, "containers": [container]}}}}


def test_real_kueue_admits_then_a_higher_priority_job_preempts_and_the_attempt_resumes(
        cluster: RealCluster, make: MakeJob, kube: RestClient, queues: str) -> None:
    namespace = cluster.namespace
    with PodHistory(kube, namespace) as history:
        admitted_preempted_resumed(cluster, make, kube, history, queues)


def admitted_preempted_resumed(cluster: RealCluster, make: MakeJob, kube: RestClient, history: PodHistory,
                               urgent: str) -> None:
    """The scenario; `urgent` is the WorkloadPriorityClass of the preempting Job."""
    namespace = cluster.namespace
    cluster.apply(make("queued", queueName=QUEUE, resources={"gpusPerWorker": 1}, training=LONG_RUN))
    job = names.job_name("queued", 0)

    # Admitted by Kueue: its Workload has the quota, the Job is unsuspended with the flavor's node labels.
    workload = cluster.wait_until(lambda: (w := workload_of(kube, namespace, job)) and is_true(w, "Admitted") and w,
                                  120, "Kueue admits the attempt's Workload")
    assert workload["spec"]["podSets"][0]["template"]["spec"]["containers"][0]["resources"]["limits"][GPU_RESOURCE] == "1"
    step = scenarios.checkpoint_on_disk(cluster, "queued")
    first = attempt_pods(cluster, "queued", 0)[0]
    assert first["spec"]["nodeName"] == GPU_NODE
    assert first["spec"]["nodeSelector"] == GPU_LABELS, first["spec"].get("nodeSelector")  # injected by Kueue

    # A higher-priority Job for the same GPU: Kueue's mutating webhook suspends it on create, and Kueue
    # preempts ours to admit it.
    created = kube.create(path_of("batch/v1", "jobs", namespace), gpu_job("urgent", urgent, seconds=URGENT_SECONDS))
    assert created["spec"]["suspend"] is True, "Kueue's Job webhook (on loopback) suspends a queued Job"
    cluster.wait_until(lambda: is_true(workload_of(kube, namespace, job), "Evicted"), 120,
                       "Kueue evicts our Workload")
    evicted = condition_of(workload_of(kube, namespace, job), "Evicted")
    assert evicted["reason"] == "Preempted", evicted
    queued = cluster.wait_for("queued", phase("Queued"), 300, "Queued again after Kueue's preemption")
    assert (queued["status"]["restarts"], queued["status"]["attempt"]) == (0, 0), queued["status"]
    assert scenarios.condition(queued, "Queued")["reason"] == "QueuedByKueue", queued["status"]
    stopped = cluster.wait_until(lambda: history.terminated(first["metadata"]["uid"]), 300,
                                 "the preempted trainer stopped")
    assert stopped["exitCode"] == STOPPED, stopped  # it saved a checkpoint on SIGTERM

    # The preemptor runs and finishes; Kueue re-admits ours, whose new pod resumes in the same attempt.
    cluster.wait_until(lambda: is_true(kube.get(path_of("batch/v1", "jobs", namespace, "urgent")), "Complete"), 300,
                       "the higher-priority Job ran to completion")
    done = cluster.wait_for("queued", phase("Succeeded"), 600, "Succeeded once re-admitted")
    status = done["status"]
    assert (status["restarts"], status["attempt"]) == (0, 0), status
    jobs = cluster.children("queued", "jobs")
    assert [j["metadata"]["name"] for j in jobs] == [job]  # no new attempt
    assert not jobs[0]["status"].get("failed"), jobs[0]["status"]  # the Job controller ignored the exit 75
    second = [p for p in attempt_pods(cluster, "queued", 0) if p["metadata"]["uid"] != first["metadata"]["uid"]]
    assert second, "the re-admitted Job made a new pod"
    # Kueue hands the quota on once the Job has no *active* pods, while ours may still be writing its
    # checkpoint; the Job controller starts the resumed pod only after the stopped one ended (its
    # podReplacementPolicy, Failed with a podFailurePolicy), so two trainers never share the volume.
    assert jobs[0]["spec"]["podReplacementPolicy"] == "Failed", jobs[0]["spec"]
    assert second[-1]["metadata"]["creationTimestamp"] >= stopped["finishedAt"], (second[-1]["metadata"], stopped)
    assert resumed_from(cluster, second[-1]["metadata"]["name"]) >= step
    assert is_true(workload_of(kube, namespace, job), "Finished")
