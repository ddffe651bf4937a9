"""A toy kopf operator for the harness self-test: FineTuneJob -> toy Job; the Job's conditions -> status.phase.

Not project code: it only proves that kopf, the emulated API server and the
test kubelet work together before the real operator exists.
"""

from __future__ import annotations

import threading
from typing import Any

import kopf
import kubernetes

from tests.harness_selftest.conftest import toy_job

registry = kopf.OperatorRegistry()


@kopf.on.login(registry=registry)
def toy_login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """Log in as the kubernetes client does (from the kubeconfig the test points it at)."""
    return kopf.login_via_client(**kwargs)


@kopf.on.create("kubetune.io", "v1alpha1", "finetunejobs", registry=registry)
def toy_create(name: str, namespace: str, body: kopf.Body, **_: Any) -> None:
    """Create the toy Job, ConfigMap and PVC as children."""
    api = kubernetes.client.ApiClient()
    children = [
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"{name}-recipe"}, "data": {"recipe.json": "{}"}},
        {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": f"{name}-data"},
         "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}},
        toy_job(name),
    ]
    kopf.adopt(children, owner=body)
    core, batch = kubernetes.client.CoreV1Api(api), kubernetes.client.BatchV1Api(api)
    core.create_namespaced_config_map(namespace, children[0])
    core.create_namespaced_persistent_volume_claim(namespace, children[1])
    batch.create_namespaced_job(namespace, children[2])


@kopf.on.event("batch", "v1", "jobs", labels={"kubetune.io/finetunejob": kopf.PRESENT}, registry=registry)
def toy_job_event(body: kopf.Body, namespace: str, type: str, **_: Any) -> None:
    """Mirror the Job's Complete/Failed condition into the FineTuneJob's status.phase."""
    if type == "DELETED":
        return
    conditions = {c["type"] for c in (body.get("status") or {}).get("conditions", []) if c["status"] == "True"}
    phase = "Succeeded" if "Complete" in conditions else "Failed" if "Failed" in conditions else "Running"
    kubernetes.client.CustomObjectsApi().patch_namespaced_custom_object_status(
        "kubetune.io", "v1alpha1", namespace, "finetunejobs", body["metadata"]["labels"]["kubetune.io/finetunejob"],
        {"status": {"phase": phase}})


def toy_main(namespace: str) -> Any:
    """An OperatorMain for ThreadOperator: kopf standalone on one namespace."""
    def main(stop: threading.Event, ready: threading.Event) -> Any:
        settings = kopf.OperatorSettings()
        settings.posting.enabled = True
        return kopf.operator(registry=registry, settings=settings, standalone=True, namespaces=[namespace],
                             stop_flag=stop, ready_flag=ready)
    return main
