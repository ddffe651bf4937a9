"""Two operator replicas elect one leader through a Lease; the standby takes over when the leader dies."""

from __future__ import annotations

import functools
from pathlib import Path

from tests.cluster.client import RealCluster
from tests.cluster.fixtures import Release, operator_process
from tests.cluster.rest import RestClient, path_of
from tests.e2e_cluster.conftest import Inputs, finetunejob
from tests.e2e_cluster.scenarios import (
    LONG_RUN,
    attempt_pods,
    checkpoint_on_disk,
    phase,
)

LEASE_SECONDS = "4"


def holder(kube: RestClient, release: Release) -> str | None:
    """Who holds the operator's Lease now."""
    lease = kube.get(path_of("coordination.k8s.io/v1", "leases", release.namespace, "kubetune-operator"))
    return ((lease or {}).get("spec") or {}).get("holderIdentity")


def test_the_standby_replica_takes_over_when_the_leader_is_killed(
        control_plane, kube: RestClient, kubelet, operator_kubeconfig: Path, kubetune_release: Release,
        namespace: str, tmp_path: Path, inputs: Inputs) -> None:
    # Not the `cluster` fixture: it would run a third, non-electing operator in the namespace.

    election = {"KUBETUNE_LEADER_ELECTION_NAMESPACE": kubetune_release.namespace,
                "KUBETUNE_LEADER_ELECTION_LEASE_SECONDS": LEASE_SECONDS}
    replicas = {name: operator_process(control_plane, operator_kubeconfig, namespace, tmp_path / f"{name}.log",
                                       KUBETUNE_POD_NAME=name, **election) for name in ("replica-a", "replica-b")}
    cluster = RealCluster(control_plane, kube, kubelet, namespace, replicas["replica-a"])
    make = functools.partial(finetunejob, cluster=cluster, inputs=inputs)
    try:
        replicas["replica-a"].start()
        cluster.wait_until(lambda: holder(kube, kubetune_release) == "replica-a", 30, "replica-a leads")
        replicas["replica-b"].start()  # ready as soon as it answers its liveness probe, standing by
        # A long run, waited on through its volume: on a 30-step run the trainer could finish before
        # the status showed a checkpoint (CI saw it), and the take-over would never happen mid-run.
        cluster.apply(make("elected", training={**LONG_RUN, "saveSteps": 5}))
        checkpoint_on_disk(cluster, "elected")
        assert "standing by" in replicas["replica-b"].log_tail()
        assert "created Job" not in replicas["replica-b"].log_tail()

        replicas["replica-a"].kill()
        cluster.operator = replicas["replica-b"]
        cluster.wait_until(lambda: holder(kube, kubetune_release) == "replica-b", 30, "replica-b takes the Lease")
        done = cluster.wait_for("elected", phase("Succeeded"), 300, "Succeeded under replica-b")
        assert (done["status"]["attempt"], done["status"]["restarts"]) == (0, 0), done["status"]
        assert [j["metadata"]["name"] for j in cluster.children("elected", "jobs")] == ["elected-0"]
        assert len(attempt_pods(cluster, "elected", 0)) == 1
    finally:
        for replica in replicas.values():
            replica.stop()
