"""Fixtures of the harness self-test: an emulated cluster per test, and a toy pod command."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness.client import EmulatedCluster

NAMESPACE = "selftest"

# A toy trainer: writes what it saw to the workspace and the termination log, exits as told.
# On SIGTERM it exits 75 (checkpointed), unless TOY_IGNORE_TERM is set.
TOY_POD = r"""
import json, os, pathlib, signal, socket, sys, time
def stop(*_):
    pathlib.Path(os.environ['KUBETUNE_TERMINATION_LOG']).write_text(json.dumps({'reason': 'stopped'}))
    sys.exit(75)
signal.signal(signal.SIGTERM, signal.SIG_IGN if os.environ.get('TOY_IGNORE_TERM') else stop)
workspace = pathlib.Path(os.environ['KUBETUNE_WORKSPACE'])
index = os.environ.get('JOB_COMPLETION_INDEX', '0')
seen = {k: os.environ.get(k) for k in ('JOB_COMPLETION_INDEX', 'KUBETUNE_METRICS_HOST', 'HOSTNAME',
        'KUBETUNE_RECIPE', 'KUBETUNE_MASTER_ADDR', 'KUBETUNE_WORKSPACE')}
seen['recipe'] = pathlib.Path(os.environ['KUBETUNE_RECIPE']).read_text()
runs = workspace / f'runs-{index}.txt'
seen['previous_runs'] = runs.read_text().count('\n') if runs.exists() else 0
with runs.open('a') as f: f.write('run\n')
if os.environ.get('TOY_SERVE'):  # bind the metrics port on the pod IP, as rank 0 does
    s = socket.socket(); s.bind((os.environ['KUBETUNE_METRICS_HOST'], 9090)); s.listen()
(workspace / f'seen-{index}.json').write_text(json.dumps(seen))
time.sleep(float(os.environ.get('TOY_SLEEP', '0')))
pathlib.Path(os.environ['KUBETUNE_TERMINATION_LOG']).write_text(
    json.dumps({'reason': 'done', 'adapter': os.environ['KUBETUNE_WORKSPACE'] + '/output/adapter'}))
sys.exit(int(os.environ.get('TOY_EXIT', '0')))
"""


def toy_job(name: str, *, workers: int = 1, env: dict[str, str] | None = None, suspend: bool = False,
            grace: int = 5, policy: bool = True) -> dict[str, Any]:
    """An attempt-like Indexed Job whose pods run TOY_POD with the contract's mounts and env."""
    variables = [{"name": "KUBETUNE_RECIPE", "value": "/etc/kubetune/recipe.json"},
                 {"name": "KUBETUNE_WORKSPACE", "value": "/workspace"},
                 {"name": "KUBETUNE_TERMINATION_LOG", "value": "/dev/termination-log"},
                 {"name": "KUBETUNE_MASTER_ADDR", "value": f"{name}-0.{name}"},
                 {"name": "KUBETUNE_METRICS_HOST", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                 *({"name": k, "value": v} for k, v in (env or {}).items())]
    spec: dict[str, Any] = {
        "completionMode": "Indexed", "completions": workers, "parallelism": workers, "backoffLimit": 0,
        "suspend": suspend,
        "template": {"metadata": {"labels": {"kubetune.io/finetunejob": name}}, "spec": {
            "restartPolicy": "Never", "terminationGracePeriodSeconds": grace, "subdomain": name,
            "containers": [{"name": "trainer", "image": "toy", "command": [sys.executable, "-c", TOY_POD],
                            "env": variables, "terminationMessagePolicy": "FallbackToLogsOnError",
                            "volumeMounts": [{"name": "recipe", "mountPath": "/etc/kubetune", "readOnly": True},
                                             {"name": "workspace", "mountPath": "/workspace"}]}],
            "volumes": [{"name": "recipe", "configMap": {"name": f"{name}-recipe"}},
                        {"name": "workspace", "persistentVolumeClaim": {"claimName": f"{name}-data"}}]}}}
    if policy:
        spec["podFailurePolicy"] = {"rules": [
            {"action": "FailJob", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
            {"action": "FailJob", "onExitCodes": {"containerName": "trainer", "operator": "NotIn", "values": [0]}}]}
    return {"apiVersion": "batch/v1", "kind": "Job", "spec": spec,
            "metadata": {"name": name, "namespace": NAMESPACE, "labels": {"kubetune.io/finetunejob": name}}}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Self-tests are quick: one that hangs fails after 2 minutes."""
    for item in items:
        if "harness_selftest" in item.nodeid:
            item.add_marker(pytest.mark.timeout(120))


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[EmulatedCluster]:
    """A started emulated cluster in namespace `selftest`."""
    with EmulatedCluster(tmp_path / "cluster", NAMESPACE) as running:
        yield running


def create(cluster: EmulatedCluster, res: Any, body: dict[str, Any]) -> dict[str, Any]:
    """Create an object in the emulator, in its loop."""
    return cluster.server.call(cluster.emulator.api_create(res, NAMESPACE, body))


def job_status(cluster: EmulatedCluster, name: str) -> dict[str, Any]:
    """A Job's status ({} before the controller wrote one)."""
    job = cluster.get_object("jobs", name)
    return (job or {}).get("status") or {}


def job_condition(cluster: EmulatedCluster, name: str, kind: str) -> dict[str, Any] | None:
    """The Job's condition of a type when True."""
    return next((c for c in job_status(cluster, name).get("conditions", [])
                 if c["type"] == kind and c["status"] == "True"), None)


def pods_of(cluster: EmulatedCluster, job: str) -> list[dict[str, Any]]:
    """Live pods of a Job, by index."""
    pods = cluster.server.call(_pods(cluster, job))
    return sorted(pods, key=lambda p: p["metadata"]["annotations"].get("batch.kubernetes.io/job-completion-index", ""))


async def _pods(cluster: EmulatedCluster, job: str) -> list[dict[str, Any]]:
    import copy

    from tests.harness.emulator import PODS
    return copy.deepcopy(cluster.emulator.list_objects(PODS, NAMESPACE, f"job-name={job}"))


def with_inputs(cluster: EmulatedCluster, name: str, recipe: str = '{"toy": true}') -> None:
    """The recipe ConfigMap and the PVC a toy Job mounts."""
    from tests.harness.kubelet import CONFIGMAPS, PVCS
    create(cluster, CONFIGMAPS, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"{name}-recipe"},
                                 "data": {"recipe.json": recipe}})
    create(cluster, PVCS, {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": f"{name}-data"},
                           "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}})
