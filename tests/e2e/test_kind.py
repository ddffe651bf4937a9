"""The kind suite: KubeTune installed by Helm on a real cluster, driven by the lifecycle scenarios.

    make e2e                      # or: .venv/bin/python -m pytest tests/e2e -v
    KUBETUNE_E2E_KEEP=1 make e2e  # keep the cluster afterwards (kubectl --context kind-kubetune-e2e ...)

Needs docker (with a daemon), kind, kubectl and helm; where one is missing the
module is skipped with one line naming it. The scenarios talk to the cluster
through `ClusterClient` (tests/cluster/client.py), here implemented with kubectl
(`KubectlCluster`), the same interface the emulated end-to-end tests use.
The FineTuneJobs are the CPU quickstart (examples/quickstart-cpu.yaml): its model
ships in the CPU trainer image, its data goes into a ConfigMap.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e import kind
from tests.e2e.kubectl_client import KubectlCluster
from tests.e2e.tools import missing_tools

MISSING = missing_tools()
if MISSING:
    pytest.skip(f"kind suite skipped: missing {', '.join(MISSING)} (it needs docker, kind, kubectl and helm)",
                allow_module_level=True)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(3600)]

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = REPO / "examples" / "quickstart-cpu.yaml"
DATA_CONFIGMAP = "quickstart-data"
RUNNING_TIMEOUT = 600  # image already loaded; the operator's children, scheduling, model load
TRAINING_TIMEOUT = 1500  # 40 steps of SmolLM2-135M on a CI runner's CPU, plus evaluation


def phase(obj: dict[str, Any]) -> str | None:
    """The FineTuneJob's phase."""
    return (obj.get("status") or {}).get("phase")


def quickstart(name: str, **training: Any) -> dict[str, Any]:
    """The CPU quickstart as a FineTuneJob for kind: its data from a ConfigMap, a small PVC."""
    manifest = copy.deepcopy(yaml.safe_load(QUICKSTART.read_text(encoding="utf-8")))
    manifest["metadata"] = {"name": name}
    spec = manifest["spec"]
    spec["dataset"].pop("path")
    spec["dataset"]["configMap"] = {"name": DATA_CONFIGMAP, "key": "quiz.jsonl"}
    spec["training"].update(training)
    spec.setdefault("storage", {})["size"] = "2Gi"
    return manifest


@pytest.fixture(scope="module", autouse=True)
def quickstart_data(cluster: KubectlCluster) -> None:
    """The quickstart's dataset as a ConfigMap in the FineTuneJob namespace."""
    data = REPO / "examples" / "data" / "quiz.jsonl"
    cluster.kubectl("create", "configmap", DATA_CONFIGMAP, f"--from-file=quiz.jsonl={data}", check=False)


def running_trainer_pod(cluster: KubectlCluster, name: str) -> dict[str, Any]:
    """Rank 0's pod once it runs."""
    def find() -> dict[str, Any] | None:
        pods = [p for p in cluster.children(name, "pods") if (p.get("status") or {}).get("phase") == "Running"]
        return pods[0] if pods else None

    return cluster.wait_until(find, RUNNING_TIMEOUT, f"{name}: a running trainer pod")


def proxy_get(cluster: KubectlCluster, path: str, namespace: str) -> str:
    """GET through the API server's proxy (reaches pods and Services without port-forwarding)."""
    return cluster.kubectl("get", "--raw", path, namespace=namespace, check=False)


def test_helm_test_reaches_the_operator(setup: kind.KindSetup) -> None:
    out = kind.helm(setup, "test", setup.release, "--logs", "--timeout", "3m")
    assert "Succeeded" in out and "serves the operator's metrics" in out, out


def test_quickstart_trains_to_succeeded_with_adapter_columns_and_metrics(cluster: KubectlCluster,
                                                                         setup: kind.KindSetup) -> None:
    name = "quickstart"
    cluster.apply(quickstart(name))
    cluster.wait_for(name, lambda o: phase(o) == "Running", RUNNING_TIMEOUT, "Running")
    pod = running_trainer_pod(cluster, name)["metadata"]["name"]
    trainer_metrics = cluster.wait_until(
        lambda: (text := proxy_get(cluster, f"/api/v1/namespaces/{setup.namespace}/pods/{pod}:9090/proxy/metrics",
                                   setup.namespace)) and "kubetune_trainer_step" in text and text,
        RUNNING_TIMEOUT, "rank 0 serves kubetune_trainer_step")
    assert f'finetunejob="{name}"' in trainer_metrics

    done = cluster.wait_for(name, lambda o: phase(o) in ("Succeeded", "Failed"), TRAINING_TIMEOUT, "finished")
    assert phase(done) == "Succeeded", done.get("status")
    header, row = cluster.kubectl("get", "ftj", name).splitlines()[:2]
    assert header.split() == ["NAME", "PHASE", "PROGRESS", "LOSS", "RESTARTS", "AGE"]
    assert row.split()[1:3] == ["Succeeded", "100%"]

    adapter = done["status"]["output"]["adapterPath"].removeprefix("/workspace/")
    assert cluster.read_pvc_file(f"{name}-data", f"{adapter}/adapter_config.json") is not None
    assert any(path.endswith(".safetensors") for path in cluster.pvc_files(f"{name}-data", adapter))

    service = f"{setup.fullname}-metrics"
    operator_metrics = proxy_get(
        cluster, f"/api/v1/namespaces/{setup.release_namespace}/services/{service}:metrics/proxy/metrics",
        setup.release_namespace)
    assert 'kubetune_finetunejobs{' in operator_metrics and 'phase="Succeeded"' in operator_metrics


def test_deleted_trainer_pod_resumes_from_its_checkpoint(cluster: KubectlCluster) -> None:
    name = "resume"
    cluster.apply(quickstart(name, maxSteps=80))  # time enough after the first checkpoint to interrupt it
    checkpointed = cluster.wait_for(name, lambda o: (o["status"].get("checkpoint") or {}).get("step", 0) >= 20,
                                    TRAINING_TIMEOUT, "a first checkpoint")
    pod = running_trainer_pod(cluster, name)["metadata"]["name"]
    cluster.kubectl("delete", "pod", pod, "--wait=false")
    done = cluster.wait_for(name, lambda o: phase(o) in ("Succeeded", "Failed"), TRAINING_TIMEOUT, "finished")
    status = done["status"]
    assert phase(done) == "Succeeded", status
    assert status["attempt"] >= 1 and status.get("restarts", 0) + status.get("preemptions", 0) >= 1
    assert status["checkpoint"]["step"] >= checkpointed["status"]["checkpoint"]["step"]


def test_suspend_stops_the_attempt_and_resume_finishes_it(cluster: KubectlCluster) -> None:
    name = "suspend"
    cluster.apply(quickstart(name))
    cluster.wait_for(name, lambda o: (o["status"].get("progress") or {}).get("step", 0) >= 5,
                     TRAINING_TIMEOUT, "training progress")
    cluster.patch_spec(name, {"suspend": True})
    cluster.wait_for(name, lambda o: phase(o) == "Suspended", RUNNING_TIMEOUT, "Suspended")
    cluster.wait_until(lambda: (not cluster.children(name, "jobs") and not cluster.children(name, "pods")) or None,
                       RUNNING_TIMEOUT, "the attempt Job and its pods gone")
    cluster.patch_spec(name, {"suspend": False})
    done = cluster.wait_for(name, lambda o: phase(o) in ("Succeeded", "Failed"), TRAINING_TIMEOUT, "finished")
    assert phase(done) == "Succeeded", done.get("status")


def test_deleting_a_finetunejob_removes_its_children_but_keeps_the_pvc(cluster: KubectlCluster) -> None:
    name = "delete"
    cluster.apply(quickstart(name))
    cluster.wait_for(name, lambda o: phase(o) == "Running", RUNNING_TIMEOUT, "Running")
    cluster.delete(name)
    cluster.wait_until(lambda: (cluster.get(name) is None and not any(
        cluster.children(name, resource) for resource in ("jobs", "pods", "configmaps"))) or None,
        RUNNING_TIMEOUT, "the FineTuneJob and its children gone")
    assert cluster.get_object("persistentvolumeclaims", f"{name}-data") is not None  # retainOnDelete


def test_uninstall_removes_the_operator_and_keeps_the_crd(cluster: KubectlCluster, setup: kind.KindSetup) -> None:
    kind.uninstall_chart(setup)
    deployments = cluster.kubectl("get", "deployments", "-o", "name", namespace=setup.release_namespace)
    assert "operator" not in deployments
    assert cluster.kubectl("get", "crd", "finetunejobs.kubetune.io", "-o", "name").strip()
    assert cluster.get("quickstart") is not None, "FineTuneJobs survive the uninstall (crds.keep)"
