"""Factories for what Kubernetes reports: FineTuneJobs, attempt Jobs and trainer pods as plain dicts.

Shaped after real API objects (Job conditions of the pod failure policy, the
DisruptionTarget pod condition, container termination and waiting states), so
the reconcile tests read like observations of a cluster.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
from typing import Any

from kubetune_operator import names

NOW = dt.datetime(2026, 11, 23, 12, 0, 0, tzinfo=dt.timezone.utc)
NAME = "demo"
NAMESPACE = "ml"

BASE_SPEC: dict[str, Any] = {
    "model": {"name": "meta-llama/Llama-3.2-1B"},
    "dataset": {"path": "/workspace/data/train.jsonl", "format": "prompt-completion"},
}


FINETUNEJOB_UID = "0b6c1e9e-4a57-4d0c-9d7e-2f1f7a3c1d00"


def uid_of(kind: str, name: str) -> str:
    """The uid an object gets in these tests: stable, so pods can name their Job as controller."""
    return f"{kind.lower()}-{name}-uid"


def controller_reference(kind: str, name: str, uid: str) -> list[dict[str, Any]]:
    """ownerReferences naming a controller, as the API stores them."""
    return [{"apiVersion": "v1", "kind": kind, "name": name, "uid": uid, "controller": True}]


def ago(seconds: float) -> str:
    """A timestamp `seconds` before NOW."""
    return (NOW - dt.timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")


def later(seconds: float) -> str:
    """A timestamp `seconds` after NOW."""
    return ago(-seconds)


def finetunejob(spec: dict[str, Any] | None = None, status: dict[str, Any] | None = None) -> dict[str, Any]:
    """A FineTuneJob as the API returns it; `spec` is merged over a minimal valid spec."""
    body: dict[str, Any] = {
        "apiVersion": names.API_VERSION,
        "kind": "FineTuneJob",
        "metadata": {
            "name": NAME,
            "namespace": NAMESPACE,
            "uid": FINETUNEJOB_UID,
            "generation": 1,
            "creationTimestamp": ago(3600),
        },
        "spec": {**copy.deepcopy(BASE_SPEC), **(spec or {})},
    }
    if status is not None:
        body["status"] = status
    return body


def condition(kind: str, status: str = "True", reason: str = "", message: str = "") -> dict[str, Any]:
    """A condition as Kubernetes writes it."""
    return {"type": kind, "status": status, "reason": reason, "message": message, "lastTransitionTime": ago(60)}


def attempt_job(attempt: int, state: str = "active", message: str = "", queue: str | None = None,
                created_ago: float = 30) -> dict[str, Any]:
    """An attempt Job in `state`: active, suspended (by Kueue), complete, failed or deleting."""
    labels = names.attempt_labels(NAME, attempt)
    if queue:
        labels[names.LABEL_KUEUE_QUEUE] = queue
    job: dict[str, Any] = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": names.job_name(NAME, attempt), "namespace": NAMESPACE, "labels": labels,
                     "uid": uid_of("Job", names.job_name(NAME, attempt)), "creationTimestamp": ago(created_ago),
                     "ownerReferences": controller_reference("FineTuneJob", NAME, FINETUNEJOB_UID)},
        "spec": {"suspend": state == "suspended", "completions": 1, "parallelism": 1},
        "status": {"conditions": []},
    }
    if state == "complete":
        job["status"]["conditions"] = [condition("SuccessCriteriaMet"), condition("Complete")]
    elif state == "failed":
        job["status"]["conditions"] = [
            condition("FailureTarget", reason="PodFailurePolicy", message=message),
            condition("Failed", reason="PodFailurePolicy", message=message),
        ]
    elif state == "suspended":
        job["status"]["conditions"] = [condition("Suspended", reason="JobSuspended")]
    elif state == "deleting":
        job["metadata"]["deletionTimestamp"] = ago(5)
    return job


def pod(
    attempt: int,
    index: int = 0,
    phase: str = "Running",
    exit_code: int | None = None,
    reason: str | None = None,
    message: str | dict[str, Any] | None = None,
    disruption: str | None = None,
    waiting: str | None = None,
    unschedulable: bool = False,
    created: float = 120,
    pod_reason: str | None = None,
    terminating: bool = False,
) -> dict[str, Any]:
    """A trainer pod of `attempt`; `exit_code` makes its container terminated, `waiting` makes it wait."""
    name = f"{names.job_name(NAME, attempt)}-{index}-x{index}y{attempt}z"
    labels = names.attempt_labels(NAME, attempt)
    state: dict[str, Any] = {"running": {"startedAt": ago(60)}}
    if exit_code is not None:
        text = json.dumps(message) if isinstance(message, dict) else message
        state = {"terminated": {"exitCode": exit_code, "reason": reason or ("Completed" if exit_code == 0 else "Error")}}
        if text:
            state["terminated"]["message"] = text
    elif waiting is not None:
        state = {"waiting": {"reason": waiting, "message": f"{waiting}: back-off pulling image"}}
    conditions = []
    if disruption:
        conditions.append(condition("DisruptionTarget", reason=disruption, message=f"{disruption} by test"))
    if unschedulable:
        conditions.append(condition("PodScheduled", "False", "Unschedulable", "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."))
    result: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": NAMESPACE,
            "labels": labels,
            "ownerReferences": controller_reference("Job", names.job_name(NAME, attempt),
                                                    uid_of("Job", names.job_name(NAME, attempt))),
            "annotations": {names.COMPLETION_INDEX_ANNOTATION: str(index)},
            "creationTimestamp": ago(created),
        },
        "status": {
            "phase": phase,
            "conditions": conditions,
            "containerStatuses": [] if unschedulable else [{"name": names.CONTAINER_NAME, "state": state}],
        },
    }
    if pod_reason:
        result["status"]["reason"] = pod_reason
    if terminating:
        result["metadata"]["deletionTimestamp"] = ago(1)
    return result


def failed_by(pod_obj: dict[str, Any], exit_code: int | None = 1) -> str:
    """The Job controller's Failed message naming the pod that triggered the pod failure policy."""
    name = pod_obj["metadata"]["name"]
    if exit_code is None:
        return f"Pod {NAMESPACE}/{name} has condition DisruptionTarget matching FailJob rule at index 0"
    return f"Container trainer for pod {NAMESPACE}/{name} failed with exit code {exit_code} matching FailJob rule at index 1"
