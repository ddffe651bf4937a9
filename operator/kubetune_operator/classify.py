"""Reading what Kubernetes reports about attempt Jobs and trainer pods. Pure functions over plain dicts.

The reconcile function asks these questions: is the Job finished, why did an
attempt fail (invalid recipe, preemption, or another failure), is a pod stuck
pending for a reason that will not heal, what did the trainer say in its
termination message. Kubernetes' own vocabulary is used as is: Job conditions
(Complete, Failed, FailureTarget), the pod condition DisruptionTarget, container
termination reasons (OOMKilled) and waiting reasons (ImagePullBackOff).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

from kubetune_operator import names
from kubetune_api.conditions import RETRYABLE_TRAINER_REASONS, Reason, TerminationReason
from kubetune_api.contract import ExitCode, says_volume_full

JobState = Literal["active", "suspended", "complete", "failed", "deleting"]
# invalid: the recipe is wrong, never retried; missing: an input is not there (yet), waited for; full: the
# volume is full, a retry would fill it again; preempted: resumed without counting; failed: retried with backoff.
FailureKind = Literal["invalid", "missing", "full", "preempted", "failed"]

# Pod-level reasons of a lost or shut-down node, set without a DisruptionTarget condition by older kubelets.
NODE_LOSS_REASONS = frozenset({"NodeLost", "Evicted", "Shutdown", "NodeShutdown", "Terminated", "Preempting"})
IMAGE_PULL_REASONS = frozenset({"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"})
CONFIG_ERROR_REASONS = frozenset({"CreateContainerConfigError", "CreateContainerError"})
MESSAGE_LIMIT = 1024
"""Longest trainer or Kubernetes message copied into status (status messages are read in `kubectl get -o`)."""


def parse_time(value: str | None) -> dt.datetime | None:
    """A Kubernetes timestamp (RFC 3339) as an aware datetime, or None."""
    if not value:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.timezone.utc)


def format_time(value: dt.datetime) -> str:
    """An aware datetime as a Kubernetes timestamp."""
    return value.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def shorten(text: str, limit: int = MESSAGE_LIMIT) -> str:
    """One line of at most `limit` characters."""
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def find_condition(obj: Mapping[str, Any], kind: str) -> Mapping[str, Any] | None:
    """The status condition of type `kind`, or None."""
    for condition in (obj.get("status") or {}).get("conditions") or []:
        if condition.get("type") == kind:
            return condition
    return None


def condition_true(obj: Mapping[str, Any], kind: str) -> bool:
    """Whether the condition `kind` is present with status True."""
    condition = find_condition(obj, kind)
    return condition is not None and condition.get("status") == "True"


def job_state(job: Mapping[str, Any]) -> JobState:
    """Where an attempt Job stands. `suspended` is Kueue's (or anyone's) spec.suspend, never ours after creation."""
    if (job.get("metadata") or {}).get("deletionTimestamp"):
        return "deleting"
    if condition_true(job, "Complete"):
        return "complete"
    if condition_true(job, "Failed"):
        return "failed"
    if (job.get("spec") or {}).get("suspend"):
        return "suspended"
    return "active"


def pod_alive(pod: Mapping[str, Any]) -> bool:
    """Whether a pod may still run a trainer (not yet Succeeded or Failed, terminating included).

    A force-deleted pod (deleted with grace 0) is not: the API server was told its processes are gone, and
    only a finalizer (the Job controller's job-tracking one) keeps the object a moment longer. Waiting for
    it as for a pod that is saving a checkpoint would re-arm the lost-node wait with the new deletion time.
    """
    return not force_deleted(pod) and (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed")


def force_deleted(pod: Mapping[str, Any]) -> bool:
    """Whether the pod was deleted with grace 0 (`kubectl delete --force`, or the lost-node deadline)."""
    meta = pod.get("metadata") or {}
    return bool(meta.get("deletionTimestamp")) and meta.get("deletionGracePeriodSeconds") == 0


def pod_running(pod: Mapping[str, Any]) -> bool:
    """Whether a pod is in phase Running."""
    return (pod.get("status") or {}).get("phase") == "Running"


def completion_index(pod: Mapping[str, Any]) -> int | None:
    """The pod's index in its Indexed Job (its node rank)."""
    meta = pod.get("metadata") or {}
    value = (meta.get("annotations") or {}).get(names.COMPLETION_INDEX_ANNOTATION) or (
        meta.get("labels") or {}
    ).get(names.COMPLETION_INDEX_ANNOTATION)
    return int(value) if value is not None and str(value).isdigit() else None


def rank0_pod(pods: Iterable[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The pod of completion index 0 (rank 0 serves metrics and writes the final message)."""
    candidates = [pod for pod in pods if completion_index(pod) == 0]
    return candidates[0] if candidates else None


def trainer_container_status(pod: Mapping[str, Any]) -> Mapping[str, Any]:
    """The status of the trainer container (empty before the kubelet reports one)."""
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        if status.get("name") == names.CONTAINER_NAME:
            return status
    return {}


def terminated_state(pod: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The trainer container's terminated state (current, else last), or None."""
    status = trainer_container_status(pod)
    return (status.get("state") or {}).get("terminated") or (status.get("lastState") or {}).get("terminated")


def termination_message(pod: Mapping[str, Any] | None) -> dict[str, Any]:
    """The trainer's termination message as a dict; a non-JSON text (a log tail) comes back as `message`."""
    if pod is None:
        return {}
    text = ((terminated_state(pod) or {}).get("message") or "").strip()
    if not text:
        return {}
    for line in reversed(text.splitlines()):
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return {"message": text}


def message_field(message: Mapping[str, Any], *keys: str) -> Any:
    """The first present key of a termination message, in camelCase or snake_case spelling."""
    for key in keys:
        for spelling in (key, re.sub(r"(?<!^)(?=[A-Z])", "_", key).lower()):
            if message.get(spelling) is not None:
                return message[spelling]
    return None


@dataclasses.dataclass(frozen=True)
class Failure:
    """Why an attempt failed, as the reconcile acts on it."""

    kind: FailureKind
    detail: str  # a CamelCase cause: InvalidRecipe, DisruptionTarget, OOMKilled, ExitCode1, …
    message: str


def classify_pod(pod: Mapping[str, Any]) -> Failure | None:
    """Why one pod failed, or None when it did not (yet)."""
    name = (pod.get("metadata") or {}).get("name", "?")
    disruption = find_condition(pod, "DisruptionTarget")
    if disruption is not None and disruption.get("status") == "True":
        why = disruption.get("reason") or "DisruptionTarget"
        return Failure("preempted", why, shorten(f"pod {name}: {why}: {disruption.get('message', '')}".strip()))
    terminated = terminated_state(pod)
    if terminated is None:
        reason = (pod.get("status") or {}).get("reason")
        if reason in NODE_LOSS_REASONS:
            message = (pod.get("status") or {}).get("message", "")
            return Failure("preempted", reason, shorten(f"pod {name}: {reason}: {message}"))
        if (pod.get("status") or {}).get("phase") == "Failed":
            return Failure("failed", reason or "PodFailed", shorten(f"pod {name} failed: {reason or 'unknown'}"))
        return None
    code = terminated.get("exitCode")
    if code == 0:
        return None
    trainer_says = message_field(termination_message(pod), "message", "reason", "error") or ""
    said = message_field(termination_message(pod), "reason")  # the trainer's own: UploadFailed, InputNotFound
    if code == ExitCode.INVALID:
        if said == TerminationReason.INPUT_NOT_FOUND:
            return Failure("missing", Reason.INPUT_NOT_FOUND,
                           shorten(str(trainer_says) or f"pod {name}: an input is missing"))
        return Failure("invalid", Reason.INVALID_RECIPE, shorten(str(trainer_says) or f"pod {name} exited 2"))
    if code == ExitCode.STOPPED:
        return Failure("preempted", "Stopped", shorten(f"pod {name} stopped after a checkpoint (exit 75)"))
    reason = terminated.get("reason") or ""
    text = f"pod {name}: {reason or 'Error'} (exit {code})"
    if trainer_says:
        text += f": {trainer_says}"
    if reason != "OOMKilled" and (said == TerminationReason.VOLUME_FULL or says_volume_full(str(trainer_says))):
        return Failure("full", Reason.VOLUME_FULL, shorten(text))
    detail = "OOMKilled" if reason == "OOMKilled" else said if said in RETRYABLE_TRAINER_REASONS else f"ExitCode{code}"
    return Failure("failed", detail, shorten(text))


# The Job controller names the pod that triggered a podFailurePolicy rule:
# "Container trainer for pod ns/x-0-0-abcde failed with exit code 1 matching FailJob rule at index 1"
# "Pod ns/x-0-0-abcde has condition DisruptionTarget matching FailJob rule at index 0"
_TRIGGER = re.compile(r"[Pp]od (?P<namespace>[a-z0-9.-]+)/(?P<name>[a-z0-9.-]+)")
_EXIT_CODE = re.compile(r"failed with exit code (?P<code>[0-9]+)")
_SEVERITY: dict[FailureKind, int] = {"invalid": 0, "full": 1, "missing": 1, "failed": 2, "preempted": 3}


def _gone_pod_failure(name: str, job_message: str) -> Failure | None:
    """The triggering pod is gone (deleted by hand, collected): its exit code as the Job controller quoted it."""
    match = _EXIT_CODE.search(job_message)
    if match is None:
        return None
    code = int(match.group("code"))
    if code == ExitCode.STOPPED:  # it saved a checkpoint on SIGTERM: someone stopped it, not a failure
        return Failure("preempted", "Stopped", shorten(f"pod {name} was stopped and saved a checkpoint (exit 75)"))
    if code == ExitCode.INVALID:
        return Failure("invalid", Reason.INVALID_RECIPE, shorten(f"pod {name} exited 2 (its message is gone with it)"))
    return Failure("failed", f"ExitCode{code}", shorten(f"pod {name}: Error (exit {code})"))


def classify_failure(job: Mapping[str, Any], pods: Iterable[Mapping[str, Any]]) -> Failure:
    """Why a failed attempt Job failed.

    The pod that triggered the Job's pod failure policy decides. Without one (the message lost, the pod
    gone), the most severe pod failure decides: an invalid recipe, then a full volume or a missing input,
    then another failure, then a preemption, because the pods the Job controller stops after a real failure
    exit 75 and look preempted.
    """
    pods = list(pods)
    condition = find_condition(job, "Failed") or find_condition(job, "FailureTarget") or {}
    job_message = condition.get("message") or ""
    trigger = _TRIGGER.search(job_message)
    if trigger:
        for pod in pods:
            if (pod.get("metadata") or {}).get("name") == trigger.group("name"):
                failure = classify_pod(pod)
                if failure is not None:
                    return failure
        gone = _gone_pod_failure(trigger.group("name"), job_message)
        if gone is not None:
            return gone
    failures = [failure for failure in (classify_pod(pod) for pod in pods) if failure is not None]
    if failures:
        return min(failures, key=lambda failure: _SEVERITY[failure.kind])
    if "DisruptionTarget" in job_message:
        return Failure("preempted", "DisruptionTarget", shorten(job_message))
    reason = condition.get("reason") or "JobFailed"
    return Failure("failed", reason, shorten(f"attempt Job failed: {reason}: {job_message}".strip(": ")))


@dataclasses.dataclass(frozen=True)
class PendingProblem:
    """A pod that waits for something that may never come."""

    reason: Reason  # one of PENDING_REASONS
    message: str
    since: dt.datetime


def pending_problem(pod: Mapping[str, Any]) -> PendingProblem | None:
    """Why a Pending pod cannot start (unschedulable, image not pulled, bad container config), or None."""
    status = pod.get("status") or {}
    if status.get("phase", "Pending") != "Pending":
        return None
    name = (pod.get("metadata") or {}).get("name", "?")
    since = parse_time((pod.get("metadata") or {}).get("creationTimestamp")) or dt.datetime.now(dt.timezone.utc)
    scheduled = find_condition(pod, "PodScheduled")
    if scheduled is not None and scheduled.get("status") == "False" and scheduled.get("reason") == "Unschedulable":
        return PendingProblem(Reason.UNSCHEDULABLE, shorten(f"pod {name}: {scheduled.get('message', '')}"), since)
    waiting = (trainer_container_status(pod).get("state") or {}).get("waiting") or {}
    reason = waiting.get("reason")
    if reason in IMAGE_PULL_REASONS:
        return PendingProblem(
            Reason.IMAGE_PULL_FAILED, shorten(f"pod {name}: {reason}: {waiting.get('message', '')}"), since
        )
    if reason in CONFIG_ERROR_REASONS:
        return PendingProblem(
            Reason.CONTAINER_CONFIG_ERROR, shorten(f"pod {name}: {reason}: {waiting.get('message', '')}"), since
        )
    return None


def pods_not_created(job: Mapping[str, Any], refusals: Sequence[str]) -> PendingProblem | None:
    """An attempt Job whose pods the API server refuses to create (a ResourceQuota, Pod Security
    admission, a webhook): the Job controller's FailedCreate events say why; None without any."""
    if not refusals:
        return None
    meta = job.get("metadata") or {}
    since = parse_time(meta.get("creationTimestamp")) or dt.datetime.now(dt.UTC)
    return PendingProblem(Reason.POD_CREATION_FAILED,
                          shorten(f"Job {meta.get('name', '?')} cannot create its pods: {refusals[-1]}"), since)
