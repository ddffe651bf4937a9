"""A lost node on the real control plane (issue 14, item 5): a trainer pod left Terminating on a node that
died is force-deleted after the operator's lostNodeTimeoutSeconds, the status and an event say so, and the
attempt starts again on a live node, resuming from the checkpoint on the volume.

The test kubelet's `lose(node)` is a machine that died: its processes are killed, its lease is no longer
renewed, so the real node lifecycle controller marks the Node NotReady (Unknown) and taints it; nothing
confirms the end of its pods any more. The attempt's Job is then deleted (as by `kubectl delete job`):
the garbage collector deletes the pod gracefully, and without a kubelet it would stay Terminating forever
and the next attempt would wait for it forever.
"""

from __future__ import annotations

from typing import Any

from tests.cluster.client import RealCluster
from tests.cluster.fixtures import LOST_NODE_TIMEOUT_SECONDS
from tests.cluster.rest import path_of
from tests.e2e_cluster.faults import assert_one_set_of_children, assert_said, story
from tests.e2e_cluster.scenarios import LONG_RUN, MakeJob, attempt_pods, checkpoint_on_disk, phase, resumed_from

UNREACHABLE_TAINTS = {"node.kubernetes.io/unreachable", "node.kubernetes.io/not-ready"}


def node(client: RealCluster, name: str) -> dict[str, Any]:
    """The Node object."""
    return client.rest.get(path_of("v1", "nodes", name=name)) or {}


def ready(body: dict[str, Any]) -> str:
    """The Node's Ready condition status (True, False, Unknown; '' when absent)."""
    return next((c["status"] for c in (body.get("status") or {}).get("conditions") or [] if c["type"] == "Ready"), "")


def healed(client: RealCluster, name: str) -> bool:
    """The node is Ready again and the node controller took its unreachable/not-ready taints off."""
    body = node(client, name)
    taints = {t["key"] for t in (body.get("spec") or {}).get("taints") or []}
    return ready(body) == "True" and not taints & UNREACHABLE_TAINTS


def test_a_pod_stuck_terminating_on_a_lost_node_is_force_deleted_and_the_attempt_resumes_elsewhere(
        cluster: RealCluster, make: MakeJob) -> None:
    client = cluster
    client.apply(make("lost", training=LONG_RUN))
    before = checkpoint_on_disk(client, "lost")
    stuck = attempt_pods(client, "lost", 0)[0]
    name, lost = stuck["metadata"]["name"], stuck["spec"]["nodeName"]
    job = client.children("lost", "jobs")[0]["metadata"]
    client.kubelet.lose(lost)
    try:
        client.rest.delete(path_of("batch/v1", "jobs", client.namespace, job["name"]), propagationPolicy="Background")
        client.wait_until(lambda: ready(node(client, lost)) not in ("True", ""), 180,
                          f"the node lifecycle controller marks {lost} NotReady (its lease expired)")
        terminating = client.get_object("pods", name)
        assert terminating is not None and terminating["metadata"].get("deletionTimestamp"), terminating
        client.wait_until(lambda: client.get_object("pods", name) is None, 120,
                          f"pod {name} force-deleted {LOST_NODE_TIMEOUT_SECONDS:.0f}s after its grace period")
        done = client.wait_for("lost", phase("Succeeded"), 600, "Succeeded after the node was lost")
    finally:
        client.kubelet.recover(lost)
        client.wait_until(lambda: healed(client, lost), 120, f"{lost} Ready and untainted again")
    status = done["status"]
    assert (status["restarts"], status["attempt"]) == (0, 0), status  # the same attempt, not a failure
    jobs = assert_one_set_of_children(client, "lost")
    assert job["uid"] not in [j["metadata"]["uid"] for j in jobs]
    resumed = attempt_pods(client, "lost", 0)[-1]
    assert resumed["spec"]["nodeName"] != lost, resumed["spec"]
    assert resumed_from(client, resumed["metadata"]["name"]) >= before
    assert_said(client, "lost", "NodeLost", name, lost)
    assert_said(client, "lost", "PodsForceDeleted", name, "force-deleted")
    # Each said once: the force delete's echo (the pod held a moment by the Job controller's finalizer,
    # its deletionTimestamp moved to the force delete) once re-armed the wait and posted NodeLost again.
    told = [text.split(":")[0] for text in story(client, "lost") if text.startswith("event ")]
    assert (told.count("event NodeLost"), told.count("event PodsForceDeleted")) == (1, 1), told
