"""kopf against the emulated cluster end to end: a toy operator, the test kubelet running its pod, a restart."""

from __future__ import annotations

import kubernetes.config.kube_config
import pytest

from tests.harness.operator_runner import ThreadOperator
from tests.harness_selftest.conftest import NAMESPACE
from tests.harness_selftest.toy_operator import toy_main


@pytest.fixture
def toy(cluster, monkeypatch):
    """The toy operator in its own thread; the kubernetes client reads the emulator's kubeconfig."""
    # The kubernetes client read $KUBECONFIG at import time: patch the module's constant instead.
    monkeypatch.setattr(kubernetes.config.kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(cluster.kubeconfig))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    cluster.run_operator(ThreadOperator(toy_main(NAMESPACE)))
    yield cluster
    cluster.operator.stop()


def _ftj(name: str) -> dict:
    return {"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": name},
            "spec": {"model": {"name": "org/model"}, "dataset": {"path": "/data/train.jsonl"}}}


def test_kopf_creates_children_the_kubelet_runs_them_and_the_status_follows(toy):
    toy.apply(_ftj("toy"))
    done = toy.wait_for("toy", lambda o: o.get("status", {}).get("phase") == "Succeeded", 30, "Succeeded")
    assert "kopf.zalando.org/last-handled-configuration" in done["metadata"]["annotations"]
    job = toy.children("toy", "jobs")[0]
    assert job["metadata"]["ownerReferences"][0]["uid"] == done["metadata"]["uid"]
    assert toy.read_pvc_file("toy-data", "seen-0.json")
    calls = {(c.verb, c.resource) for c in toy.emulator.calls if c.user_agent.startswith("kopf")}
    assert {("watch", "finetunejobs"), ("watch", "jobs"), ("patch", "finetunejobs")} <= calls
    toy.delete("toy")
    toy.wait_until(lambda: not toy.children("toy", "jobs") and not toy.children("toy", "pods")
                   and toy.get("toy") is None, 15, "the FineTuneJob and its children are gone")


def test_a_restarted_operator_does_not_handle_the_creation_twice(toy):
    toy.apply(_ftj("once"))
    toy.wait_for("once", lambda o: o.get("status", {}).get("phase") == "Succeeded", 30, "Succeeded")
    toy.restart_operator()
    toy.apply(_ftj("twice"))
    toy.wait_for("twice", lambda o: o.get("status", {}).get("phase") == "Succeeded", 30, "Succeeded")
    creates = [c for c in toy.emulator.calls if c.verb == "create" and c.resource == "jobs"]
    assert [c.name for c in creates] == [None, None]  # one Job per FineTuneJob, no 409 retry storm
    assert len(toy.children("once", "jobs")) == 1
