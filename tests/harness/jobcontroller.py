"""A test Job controller: the part of kube-controller-manager that batch/v1 Jobs need.

It follows the Kubernetes Job controller's documented behaviour, for the
features an operator of training gangs uses:

- pods from the template, Indexed (one per completion index: the
  `batch.kubernetes.io/job-completion-index` annotation and label,
  `JOB_COMPLETION_INDEX` env, hostname `<job>-<index>`) or NonIndexed, up to
  `parallelism`, owned by the Job and held by the `batch.kubernetes.io/job-tracking`
  finalizer until counted;
- `podFailurePolicy` (rules in order: `onExitCodes` with In/NotIn on non-zero
  codes, `onPodConditions`; actions FailJob, Ignore, Count, FailIndex), else
  `backoffLimit`; `activeDeadlineSeconds`;
- status: active, ready, terminating, succeeded, failed, completedIndexes,
  startTime, completionTime and the conditions Complete / SuccessCriteriaMet,
  Failed / FailureTarget (reasons PodFailurePolicy, BackoffLimitExceeded,
  DeadlineExceeded, with the controller's messages) and Suspended;
- a terminating pod's index is not replaced before that pod has finished
  (podReplacementPolicy Failed, the default with a podFailurePolicy);
- `spec.suspend`: active pods deleted (gracefully), Suspended=True; resumed
  with a new startTime. Pods the controller deletes do not count as failures.

Written by hand: no Python library emulates the Job controller.
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

import kmock

from tests.harness.emulator import JOBS, PODS, KubeEmulator, now_iso, parse_iso
from tests.harness.syncloop import SyncLoop

TRACKING_FINALIZER = "batch.kubernetes.io/job-tracking"
INDEX_KEY = "batch.kubernetes.io/job-completion-index"


def completed_indexes(indexes: set[int]) -> str:
    """Compress indexes as the Job status writes them: `0-2,5`."""
    ranges: list[str] = []
    for index in sorted(indexes):
        if ranges and ranges[-1].split("-")[-1] == str(index - 1):
            ranges[-1] = f"{ranges[-1].split('-')[0]}-{index}"
        else:
            ranges.append(str(index))
    return ",".join(ranges)


def _terminal(pod: dict[str, Any]) -> bool:
    return (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")


def _index(pod: dict[str, Any]) -> int | None:
    value = (pod["metadata"].get("annotations") or {}).get(INDEX_KEY)
    return None if value is None else int(value)


def _has_condition(job: dict[str, Any], kind: str) -> bool:
    return any(c["type"] == kind and c["status"] == "True" for c in (job.get("status") or {}).get("conditions", []))


def match_pod_failure_policy(job: dict[str, Any], pod: dict[str, Any]) -> tuple[str, str]:
    """The action ("FailJob", "Ignore", "Count", "FailIndex") a failed pod gets, and the controller's message."""
    meta = pod["metadata"]
    for number, rule in enumerate((job["spec"].get("podFailurePolicy") or {}).get("rules", [])):
        on_codes = rule.get("onExitCodes")
        if on_codes:
            for status in (pod.get("status") or {}).get("containerStatuses", []):
                terminated = (status.get("state") or {}).get("terminated")
                if terminated is None or on_codes.get("containerName") not in (None, status["name"]):
                    continue
                code = terminated["exitCode"]
                listed = code in on_codes.get("values", [])
                if code != 0 and (listed if on_codes["operator"] == "In" else not listed):
                    return rule["action"], (f"Container {status['name']} for pod {meta['namespace']}/{meta['name']} "
                                            f"failed with exit code {code} matching {rule['action']} rule at index {number}")
        for requirement in rule.get("onPodConditions") or []:
            for condition in (pod.get("status") or {}).get("conditions", []):
                if condition["type"] == requirement["type"] and condition["status"] == requirement.get("status", "True"):
                    return rule["action"], (f"Pod {meta['namespace']}/{meta['name']} has condition {condition['type']} "
                                            f"matching {rule['action']} rule at index {number}")
    return "Count", ""


def build_pod(job: dict[str, Any], index: int | None) -> dict[str, Any]:
    """A pod from the Job's template, as the Job controller creates it."""
    meta, template = job["metadata"], copy.deepcopy(job["spec"]["template"])
    pod_meta = template.get("metadata") or {}
    labels, annotations = dict(pod_meta.get("labels") or {}), dict(pod_meta.get("annotations") or {})
    spec = template["spec"]
    prefix = f"{meta['name']}-"
    if index is not None:
        labels[INDEX_KEY] = annotations[INDEX_KEY] = str(index)
        prefix = f"{meta['name']}-{index}-"
        spec.setdefault("hostname", f"{meta['name']}-{index}")
        for container in spec["containers"]:
            container["env"] = [*(container.get("env") or []), {"name": "JOB_COMPLETION_INDEX", "valueFrom": {
                "fieldRef": {"fieldPath": f"metadata.annotations['{INDEX_KEY}']"}}}]
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("restartPolicy", "Never")
    for container in spec["containers"]:
        container.setdefault("terminationMessagePath", "/dev/termination-log")
        container.setdefault("terminationMessagePolicy", "File")
    owner = {"apiVersion": "batch/v1", "kind": "Job", "name": meta["name"], "uid": meta["uid"],
             "controller": True, "blockOwnerDeletion": True}
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"generateName": prefix, "namespace": meta["namespace"], "labels": labels,
                         "annotations": annotations, "ownerReferences": [owner], "finalizers": [TRACKING_FINALIZER]},
            "spec": spec}


class JobController(SyncLoop):
    """Drives every batch/v1 Job of the emulator; lives in the emulator's event loop."""

    loop_name = "test-job-controller"

    def __init__(self, emulator: KubeEmulator, resync_seconds: float = 0.2) -> None:
        super().__init__(resync_seconds)
        self.emulator = emulator
        self._outcomes: dict[str, dict[str, tuple[str, str]]] = {}  # job uid -> pod uid -> (outcome, message)
        self._deleted_by_us: set[str] = set()
        emulator.add_listener(self._on_event)

    def _on_event(self, res: kmock.resource, event: dict[str, Any]) -> None:
        if res in (JOBS, PODS):
            self.wake()

    async def stop(self) -> None:
        """Stop the sync loop."""
        self.stop_loop()

    async def sync(self) -> None:
        """One pass over all Jobs, then over pods whose Job is gone."""
        jobs = self.emulator.list_objects(JOBS)
        pods_by_owner: dict[str, list[dict[str, Any]]] = {}  # one pass over pods, not one per Job
        for pod in self.emulator.list_objects(PODS):
            for ref in pod["metadata"].get("ownerReferences") or []:
                pods_by_owner.setdefault(ref.get("uid"), []).append(pod)
        for job in jobs:
            try:
                await self._sync_job(job, pods_by_owner.get(job["metadata"]["uid"], []))
            except kmock.KubernetesError as error:
                if error.status not in (404, 409):  # changed meanwhile: the next pass sees it
                    raise
        await self._release_orphans({job["metadata"]["uid"] for job in jobs})

    async def _release_orphans(self, job_uids: set[str]) -> None:
        # As the real controller: a tracked pod whose Job is gone is not counted by anyone; let it go.
        for pod in self.emulator.list_objects(PODS):
            meta = pod["metadata"]
            owners = {ref.get("uid") for ref in meta.get("ownerReferences") or [] if ref.get("kind") == "Job"}
            if TRACKING_FINALIZER in (meta.get("finalizers") or []) and not owners & job_uids:
                finalizers = [f for f in meta["finalizers"] if f != TRACKING_FINALIZER]
                await self.emulator.api_patch(PODS, meta["namespace"], meta["name"],
                                              {"metadata": {"finalizers": finalizers or None}}, validate=False)

    async def _sync_job(self, job: dict[str, Any], pods: list[dict[str, Any]]) -> None:
        meta, spec = job["metadata"], job["spec"]
        if meta.get("deletionTimestamp"):
            return
        finished = _has_condition(job, "Complete") or _has_condition(job, "Failed")
        if finished and all(_terminal(p) and TRACKING_FINALIZER not in (p["metadata"].get("finalizers") or [])
                            for p in pods):
            return  # nothing left to do for a finished Job whose pods are all counted
        outcomes = self._outcomes.setdefault(meta["uid"], {})
        await self._account(job, pods, outcomes)
        status = copy.deepcopy(job.get("status") or {})
        finished = _has_condition(job, "Complete") or _has_condition(job, "Failed")
        if not finished:
            finished = self._decide(job, status, outcomes)
        live = [p for p in pods if not _terminal(p) and not p["metadata"].get("deletionTimestamp")]
        if finished or spec.get("suspend"):
            for pod in live:
                await self._delete_pod(pod)
            live = []
        if not finished:
            self._suspension(job, status)
            if not spec.get("suspend"):
                terminating = [p for p in pods if p["metadata"].get("deletionTimestamp") and not _terminal(p)]
                live += await self._create_missing(job, live, terminating, outcomes)
        self._counts(status, pods, live, outcomes)
        if status != (job.get("status") or {}):
            await self.emulator.api_patch(JOBS, meta["namespace"], meta["name"],
                                          [{"op": "add", "path": "/status", "value": status}],
                                          content_type="application/json-patch+json", subresource="status",
                                          validate=False)

    async def _account(self, job: dict[str, Any], pods: list[dict[str, Any]],
                       outcomes: dict[str, tuple[str, str]]) -> None:
        # Count finished pods once, then release them (the job-tracking finalizer).
        for pod in pods:
            uid, meta = pod["metadata"]["uid"], pod["metadata"]
            phase = (pod.get("status") or {}).get("phase")
            never_ran = meta.get("deletionTimestamp") and not (pod.get("status") or {}).get("containerStatuses")
            if uid not in outcomes and (phase in ("Succeeded", "Failed") or never_ran):
                if phase == "Succeeded":
                    outcomes[uid] = ("Succeeded", str(_index(pod)))
                elif uid in self._deleted_by_us or never_ran:
                    outcomes[uid] = ("Removed", "")
                else:
                    outcomes[uid] = match_pod_failure_policy(job, pod)
            if uid in outcomes and TRACKING_FINALIZER in (meta.get("finalizers") or []):
                finalizers = [f for f in meta["finalizers"] if f != TRACKING_FINALIZER]
                await self.emulator.api_patch(PODS, meta["namespace"], meta["name"],
                                              {"metadata": {"finalizers": finalizers or None}}, validate=False)

    def _decide(self, job: dict[str, Any], status: dict[str, Any], outcomes: dict[str, tuple[str, str]]) -> bool:
        """Set Complete or Failed if due; True when the Job has finished."""
        spec = job["spec"]
        fail_job = next((message for outcome, message in outcomes.values() if outcome == "FailJob"), None)
        failed = sum(1 for outcome, _ in outcomes.values() if outcome in ("Count", "FailIndex"))
        succeeded = sum(1 for outcome, _ in outcomes.values() if outcome == "Succeeded")
        deadline = spec.get("activeDeadlineSeconds")
        if fail_job is not None:
            self._finish(status, "Failed", "PodFailurePolicy", fail_job)
        elif failed > spec.get("backoffLimit", 6):
            self._finish(status, "Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit")
        elif deadline and status.get("startTime") and not spec.get("suspend") and (
                _age(status["startTime"]) > deadline):
            self._finish(status, "Failed", "DeadlineExceeded", "Job was active longer than specified deadline")
        elif succeeded >= spec.get("completions", 1):
            self._finish(status, "Complete", "CompletionsReached", "Reached expected number of succeeded pods")
            status["completionTime"] = now_iso()
        else:
            return False
        return True

    @staticmethod
    def _finish(status: dict[str, Any], kind: str, reason: str, message: str) -> None:
        interim = "FailureTarget" if kind == "Failed" else "SuccessCriteriaMet"
        conditions = [c for c in status.get("conditions", []) if c["type"] != "Suspended" or c["status"] == "True"]
        for condition_type in (interim, kind):
            conditions.append({"type": condition_type, "status": "True", "reason": reason, "message": message,
                               "lastProbeTime": now_iso(), "lastTransitionTime": now_iso()})
        status["conditions"] = conditions

    @staticmethod
    def _suspension(job: dict[str, Any], status: dict[str, Any]) -> None:
        suspended = bool(job["spec"].get("suspend"))
        conditions = status.setdefault("conditions", [])
        current = next((c for c in conditions if c["type"] == "Suspended"), None)
        if suspended and (current is None or current["status"] != "True"):
            conditions[:] = [c for c in conditions if c["type"] != "Suspended"]
            conditions.append({"type": "Suspended", "status": "True", "reason": "JobSuspended",
                               "message": "Job suspended", "lastProbeTime": now_iso(), "lastTransitionTime": now_iso()})
        elif not suspended and current is not None and current["status"] == "True":
            current.update(status="False", reason="JobResumed", message="Job resumed",
                           lastProbeTime=now_iso(), lastTransitionTime=now_iso())
            status["startTime"] = now_iso()
        if not suspended:
            status.setdefault("startTime", now_iso())
        if not conditions:
            del status["conditions"]

    async def _create_missing(self, job: dict[str, Any], live: list[dict[str, Any]], terminating: list[dict[str, Any]],
                              outcomes: dict[str, tuple[str, str]]) -> list[dict[str, Any]]:
        spec = job["spec"]
        completions, parallelism = spec.get("completions", 1), spec.get("parallelism", 1)
        done = {int(message) for outcome, message in outcomes.values() if outcome == "Succeeded" and message != "None"}
        if spec.get("completionMode") == "Indexed":
            # podReplacementPolicy Failed (the default with a podFailurePolicy): a terminating pod's index
            # gets no replacement until that pod has finished.
            busy = {_index(p) for p in live} | {_index(p) for p in terminating}
            wanted: list[int | None] = [i for i in range(completions) if i not in done and i not in busy]
        else:
            succeeded = sum(1 for outcome, _ in outcomes.values() if outcome == "Succeeded")
            wanted = [None] * max(0, min(parallelism, completions - succeeded) - len(live) - len(terminating))
        created = []
        for index in wanted[: max(0, parallelism - len(live) - len(terminating))]:
            created.append(await self.emulator.api_create(PODS, job["metadata"]["namespace"], build_pod(job, index)))
        return created

    async def _delete_pod(self, pod: dict[str, Any]) -> None:
        self._deleted_by_us.add(pod["metadata"]["uid"])
        await self.emulator.api_delete(PODS, pod["metadata"]["namespace"], pod["metadata"]["name"])

    @staticmethod
    def _counts(status: dict[str, Any], pods: list[dict[str, Any]], live: list[dict[str, Any]],
                outcomes: dict[str, tuple[str, str]]) -> None:
        live_uids = {p["metadata"]["uid"] for p in live}
        terminating = [p for p in pods if p["metadata"].get("deletionTimestamp") and not _terminal(p)]
        ready = [p for p in live if (p.get("status") or {}).get("phase") == "Running"]
        indexes = {int(m) for o, m in outcomes.values() if o == "Succeeded" and m != "None"}
        values = {"active": len(live_uids), "ready": len(ready), "terminating": len(terminating),
                  "succeeded": sum(1 for o, _ in outcomes.values() if o == "Succeeded"),
                  "failed": sum(1 for o, _ in outcomes.values() if o not in ("Succeeded", "Removed", "Ignore")),
                  "completedIndexes": completed_indexes(indexes)}
        for key, value in values.items():
            if value:
                status[key] = value
            else:
                status.pop(key, None)


def _age(timestamp: str) -> float:
    return (datetime.now(UTC) - parse_iso(timestamp)).total_seconds()
