"""Rendering: a FineTuneJob → the whole manifests of its children. Pure functions, no API calls.

`kubetune render job.yaml` prints exactly what the operator creates (like
`helm template`), and the golden tests pin it. Each `build_*` function returns
one complete object; `render_children` is the list the operator ensures for an
attempt. Every path and variable the trainer reads comes from
`kubetune_api.contract`, so a test kubelet can remap them through env.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from typing import Any

import yaml

from kubetune_operator import names
from kubetune_operator.settings import Settings
from kubetune_api import contract
from kubetune_api.recipe import FineTuneJob, FineTuneJobSpec, ObjectMeta

TERMINATION_GRACE_SECONDS = 300
"""Long enough for the trainer to reach a step boundary and save a checkpoint after SIGTERM."""

RECIPE_VOLUME = "recipe"
WORKSPACE_VOLUME = "workspace"
SHM_VOLUME = "dshm"
DATASET_VOLUME = "dataset"
MODEL_CACHE_VOLUME = "model-cache"
SHM_PATH = "/dev/shm"
# The root file system is read-only: the stack's scratch (tempfiles, torch/triton caches under HOME)
# gets writable emptyDirs; everything kept goes to the workspace PVC.
SCRATCH_MOUNTS = {"tmp": "/tmp", "home": contract.TRAINER_HOME}
METRICS_PORT_NAME = "metrics"


def resolved_recipe(job: FineTuneJob, namespace: str) -> dict[str, Any]:
    """The FineTuneJob as the trainer reads it: every default filled in, no status, name and namespace only."""
    resolved = job.model_copy(
        update={"metadata": ObjectMeta(name=job.metadata.name, namespace=namespace), "status": None}
    )
    return resolved.to_api()


def owner_reference(owner: Mapping[str, Any]) -> dict[str, Any]:
    """An ownerReference to a FineTuneJob as the API returned it (needs its uid)."""
    meta = owner["metadata"]
    return {
        "apiVersion": owner.get("apiVersion", names.API_VERSION),
        "kind": owner.get("kind", "FineTuneJob"),
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _metadata(name: str, namespace: str, labels: dict[str, str]) -> dict[str, Any]:
    return {"name": name, "namespace": namespace, "labels": labels}


def build_recipe_configmap(job: FineTuneJob, namespace: str) -> dict[str, Any]:
    """ConfigMap `<name>-recipe`: the resolved recipe as JSON, mounted read-only into every trainer pod."""
    name = job.metadata.name
    text = json.dumps(resolved_recipe(job, namespace), indent=2, sort_keys=True)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(
            names.recipe_configmap_name(name), namespace, names.labels(name, names.COMPONENT_RECIPE)
        ),
        "data": {contract.RECIPE_FILE: text + "\n"},
    }


def build_pvc(job: FineTuneJob, namespace: str) -> dict[str, Any] | None:
    """PVC `<name>-data` for checkpoints, outputs and the model cache; None with `storage.existingClaim`."""
    storage = job.spec.storage
    if storage.existing_claim:
        return None
    name = job.metadata.name
    spec: dict[str, Any] = {
        "accessModes": list(storage.access_modes),
        "resources": {"requests": {"storage": storage.size}},
    }
    if storage.storage_class_name:
        spec["storageClassName"] = storage.storage_class_name
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": _metadata(names.pvc_name(name), namespace, names.labels(name, names.COMPONENT_STORAGE)),
        "spec": spec,
    }


def build_service(job: FineTuneJob, namespace: str) -> dict[str, Any] | None:
    """Headless Service `<name>` through which several workers find pod 0; None for one worker."""
    if job.spec.resources.workers <= 1:
        return None
    name = job.metadata.name
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(names.service_name(name), namespace, names.labels(name, names.COMPONENT_NETWORK)),
        "spec": {
            "clusterIP": "None",
            # Rendezvous happens before any pod is Ready: DNS must resolve unready pods.
            "publishNotReadyAddresses": True,
            "selector": {names.LABEL_FINETUNEJOB: name, names.LABEL_COMPONENT: names.COMPONENT_TRAINER},
            "ports": [{"name": "rendezvous", "port": contract.MASTER_PORT, "targetPort": contract.MASTER_PORT}],
        },
    }


def processes_per_worker(spec: FineTuneJobSpec) -> int:
    """Trainer processes per pod: one per GPU, or one on the CPU."""
    return max(spec.resources.gpus_per_worker, 1)


def build_env(job: FineTuneJob, attempt: int, namespace: str) -> list[dict[str, Any]]:
    """The trainer container's env: the contract's variables, HF_TOKEN, then the user's `env`.

    A user entry with the same name as one of ours replaces it in place (e.g. another master port);
    Kubernetes would otherwise keep both and let the last one win silently.
    """
    spec, name = job.spec, job.metadata.name
    ours: list[dict[str, Any]] = [
        {"name": contract.Env.RECIPE, "value": contract.RECIPE_PATH},
        {"name": contract.Env.WORKSPACE, "value": contract.WORKSPACE},
        {"name": contract.Env.TERMINATION_LOG, "value": contract.TERMINATION_LOG},
        # Rank 0 binds its metrics server to the pod IP, where the operator polls it.
        {"name": contract.Env.METRICS_HOST, "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": contract.Env.JOB_NAME, "value": name},
        {"name": contract.Env.NAMESPACE, "value": namespace},
        {"name": contract.Env.ATTEMPT, "value": str(attempt)},
        {"name": contract.Env.NNODES, "value": str(spec.resources.workers)},
        {"name": contract.Env.NPROC_PER_NODE, "value": str(processes_per_worker(spec))},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
    ]
    if spec.dataset.config_map is not None:
        ours.append({"name": contract.Env.DATASET_DIR, "value": contract.DATASET_CONFIGMAP_DIR})
    if spec.model.cache_claim:
        ours.append({"name": contract.Env.MODEL_CACHE, "value": contract.MODEL_CACHE})
    if spec.resources.workers > 1:
        # The node rank is JOB_COMPLETION_INDEX, which Kubernetes sets in Indexed Jobs.
        ours += [
            {"name": contract.Env.MASTER_ADDR, "value": names.master_address(name, attempt)},
            {"name": contract.Env.MASTER_PORT, "value": str(contract.MASTER_PORT)},
        ]
    token = spec.model.token_secret_ref
    if token is not None:
        ours.append({"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": token.name, "key": token.key}}})
    overrides = {entry.get("name"): entry for entry in spec.env}
    merged = [copy.deepcopy(overrides.get(entry["name"], entry)) for entry in ours]
    taken = {entry["name"] for entry in ours}
    return merged + [copy.deepcopy(entry) for entry in spec.env if entry.get("name") not in taken]


def build_resources(spec: FineTuneJobSpec, settings: Settings) -> dict[str, Any]:
    """The spec's cpu and memory as requests = limits; GPUs as a limit under `gpuResourceName`.

    Where the spec sets no cpu or memory, the operator's defaults (the chart's
    `trainer.resources.requests`) become requests only: the pod is Burstable,
    not BestEffort, so it is not the first one evicted under node pressure.
    """
    resources = spec.resources
    amounts: dict[str, str] = {}
    if resources.cpu:
        amounts["cpu"] = resources.cpu
    if resources.memory:
        amounts["memory"] = resources.memory
    limits = dict(amounts)
    if resources.gpus_per_worker > 0:
        limits[resources.gpu_resource_name] = str(resources.gpus_per_worker)
    requests = dict(amounts)
    for name, default in (("cpu", settings.trainer_cpu_request), ("memory", settings.trainer_memory_request)):
        if name not in requests and default:
            requests[name] = default
    result: dict[str, Any] = {}
    if requests:
        result["requests"] = requests
    if limits:
        result["limits"] = limits
    return result


def container_security_context() -> dict[str, Any]:
    """The restricted Pod Security Standard, container part."""
    return {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "runAsUser": contract.TRAINER_UID,
        "runAsGroup": contract.TRAINER_UID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def pod_security_context() -> dict[str, Any]:
    """Non-root as the image's fixed uid; fsGroup so that uid can write the PVC."""
    return {
        "runAsNonRoot": True,
        "runAsUser": contract.TRAINER_UID,
        "runAsGroup": contract.TRAINER_UID,
        "fsGroup": contract.TRAINER_UID,
        # Re-chowning a PVC full of checkpoints on every start is slow; only do it when the root differs.
        "fsGroupChangePolicy": "OnRootMismatch",
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def build_container(job: FineTuneJob, attempt: int, namespace: str, settings: Settings) -> dict[str, Any]:
    """The trainer container: the launcher as an explicit command, every path from env."""
    spec = job.spec
    container: dict[str, Any] = {
        "name": names.CONTAINER_NAME,
        "image": spec.image or settings.trainer_image,
        "imagePullPolicy": spec.image_pull_policy,
        "command": ["kubetune-trainer"],
        "env": build_env(job, attempt, namespace),
        "ports": [{"name": METRICS_PORT_NAME, "containerPort": spec.metrics_port, "protocol": "TCP"}],
        "volumeMounts": build_volume_mounts(spec),
        "terminationMessagePath": contract.TERMINATION_LOG,
        # Without a message file (a crash before the launcher wrote one) the log tail explains the failure.
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": container_security_context(),
    }
    if spec.env_from:
        container["envFrom"] = copy.deepcopy(spec.env_from)
    resources = build_resources(spec, settings)
    if resources:
        container["resources"] = resources
    return container


def build_volume_mounts(spec: FineTuneJobSpec) -> list[dict[str, Any]]:
    """Recipe (read-only), workspace, /dev/shm; the dataset ConfigMap and the shared model cache if set."""
    mounts: list[dict[str, Any]] = [
        {"name": RECIPE_VOLUME, "mountPath": contract.RECIPE_DIR, "readOnly": True},
        {"name": WORKSPACE_VOLUME, "mountPath": contract.WORKSPACE},
        {"name": SHM_VOLUME, "mountPath": SHM_PATH},
        *({"name": volume, "mountPath": path} for volume, path in SCRATCH_MOUNTS.items()),
    ]
    if spec.dataset.config_map is not None:
        mounts.append({"name": DATASET_VOLUME, "mountPath": contract.DATASET_CONFIGMAP_DIR, "readOnly": True})
    if spec.model.cache_claim:
        # Writable: the first FineTuneJob downloads a model into it (under a file lock), later ones reuse it.
        mounts.append({"name": MODEL_CACHE_VOLUME, "mountPath": contract.MODEL_CACHE})
    return mounts


def build_volumes(job: FineTuneJob) -> list[dict[str, Any]]:
    """The recipe ConfigMap, the workspace PVC and a memory-backed /dev/shm (NCCL and dataloaders need it),
    plus the dataset ConfigMap's key and the shared model-cache PVC when the spec names them."""
    name, spec = job.metadata.name, job.spec
    volumes: list[dict[str, Any]] = [
        {"name": RECIPE_VOLUME, "configMap": {"name": names.recipe_configmap_name(name), "defaultMode": 0o444}},
        {
            "name": WORKSPACE_VOLUME,
            "persistentVolumeClaim": {"claimName": spec.storage.existing_claim or names.pvc_name(name)},
        },
        {"name": SHM_VOLUME, "emptyDir": {"medium": "Memory"}},
        *({"name": volume, "emptyDir": {}} for volume in SCRATCH_MOUNTS),
    ]
    dataset = spec.dataset.config_map
    if dataset is not None:
        volumes.append({
            "name": DATASET_VOLUME,
            # Optional: a ConfigMap not created yet (or without the key) lets the pod start, and the trainer
            # reports the missing input (InputNotFound), which the operator waits for and shows in status;
            # a required one would leave the pod in ContainerCreating with the reason only in its events.
            "configMap": {"name": dataset.name, "items": [{"key": dataset.key, "path": dataset.key}],
                          "defaultMode": 0o444, "optional": True},
        })
    if spec.model.cache_claim:
        volumes.append({"name": MODEL_CACHE_VOLUME, "persistentVolumeClaim": {"claimName": spec.model.cache_claim}})
    return volumes


def build_pod_template(job: FineTuneJob, attempt: int, namespace: str, settings: Settings) -> dict[str, Any]:
    """The pod template of an attempt Job."""
    spec, name = job.spec, job.metadata.name
    resources = spec.resources
    pod: dict[str, Any] = {
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": TERMINATION_GRACE_SECONDS,
        # The trainer never talks to the API server, and service links only bloat its env.
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": pod_security_context(),
        "containers": [build_container(job, attempt, namespace, settings)],
        "volumes": build_volumes(job),
    }
    service_account = spec.service_account_name or settings.trainer_service_account
    if service_account:
        pod["serviceAccountName"] = service_account
    if resources.workers > 1:
        pod["subdomain"] = names.service_name(name)
    if spec.image_pull_secrets:
        pod["imagePullSecrets"] = [{"name": ref.name} for ref in spec.image_pull_secrets]
    if resources.node_selector:
        pod["nodeSelector"] = dict(resources.node_selector)
    if resources.tolerations:
        pod["tolerations"] = copy.deepcopy(resources.tolerations)
    if resources.affinity:
        pod["affinity"] = copy.deepcopy(resources.affinity)
    if resources.priority_class_name:
        pod["priorityClassName"] = resources.priority_class_name
    annotations = {**spec.pod_template.annotations, "kubectl.kubernetes.io/default-container": names.CONTAINER_NAME}
    return {
        "metadata": {
            # Ours last: a user label must not detach the pod from its FineTuneJob.
            "labels": {**spec.pod_template.labels, **names.attempt_labels(name, attempt)},
            "annotations": annotations,
        },
        "spec": pod,
    }


def build_pod_failure_policy(queued: bool = False) -> dict[str, Any]:
    """Any pod failure fails the whole attempt Job: the gang restarts as a whole, classified by the operator.

    Rule 0 catches disruptions (preemption, eviction, node loss), the last rule any non-zero exit; the
    Job's Failed condition then names the pod and the rule index, which the classification reads.

    `queued` (Kueue admits the attempt): Kueue preempts by suspending the Job, and the real Job
    controller then terminates the pods and applies this policy to them. A trainer stopped that way
    saved a checkpoint and exits STOPPED (75): that exit is ignored, so the suspended Job waits for
    re-admission and its new pods resume in the same attempt, never counted as a failure.
    """
    rules: list[dict[str, Any]] = [{"action": "FailJob", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}]
    if queued:
        rules.append({"action": "Ignore", "onExitCodes": {"containerName": names.CONTAINER_NAME, "operator": "In",
                                                          "values": [int(contract.ExitCode.STOPPED)]}})
    rules.append({"action": "FailJob",
                  "onExitCodes": {"containerName": names.CONTAINER_NAME, "operator": "NotIn", "values": [0]}})
    return {"rules": rules}


def build_job(job: FineTuneJob, attempt: int, namespace: str, settings: Settings) -> dict[str, Any]:
    """The attempt Job `<name>-<attempt>`: Indexed, one pod per worker, never retried by the Job controller."""
    spec, name = job.spec, job.metadata.name
    workers = spec.resources.workers
    labels = names.attempt_labels(name, attempt)
    job_spec: dict[str, Any] = {
        "completionMode": "Indexed",
        "completions": workers,
        "parallelism": workers,
        "backoffLimit": 0,
        "podFailurePolicy": build_pod_failure_policy(queued=spec.queue_name is not None),
        "template": build_pod_template(job, attempt, namespace, settings),
    }
    if spec.queue_name:
        labels[names.LABEL_KUEUE_QUEUE] = spec.queue_name
        # Kueue admits the Job by unsuspending it; the operator never touches spec.suspend again.
        job_spec["suspend"] = True
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": _metadata(names.job_name(name, attempt), namespace, labels),
        "spec": job_spec,
    }


def render_children(
    job: FineTuneJob,
    attempt: int,
    namespace: str,
    settings: Settings,
    owner: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Every child of one attempt, in creation order: ConfigMap, PVC, Service, Job (absent ones left out).

    With `owner` (the FineTuneJob as the API returned it, uid included) each child gets an ownerReference,
    except a PVC kept by `storage.retainOnDelete`.
    """
    children = [
        build_recipe_configmap(job, namespace),
        build_pvc(job, namespace),
        build_service(job, namespace),
        build_job(job, attempt, namespace, settings),
    ]
    rendered = [child for child in children if child is not None]
    if owner is not None:
        reference = owner_reference(owner)
        for child in rendered:
            if child["kind"] == "PersistentVolumeClaim" and job.spec.storage.retain_on_delete:
                continue
            child["metadata"]["ownerReferences"] = [dict(reference)]
    return rendered


def render_yaml(
    job: FineTuneJob, attempt: int = 0, namespace: str = "default", settings: Settings | None = None
) -> str:
    """The children of `attempt` as a multi-document YAML stream (what `kubetune render` prints)."""
    documents = render_children(job, attempt, namespace, settings or Settings())
    header = f"# Rendered by kubetune for FineTuneJob {namespace}/{job.metadata.name}, attempt {attempt}.\n"
    return header + yaml.safe_dump_all(documents, sort_keys=False, width=120, allow_unicode=True)
