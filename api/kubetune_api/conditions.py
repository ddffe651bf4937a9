"""The FineTuneJob's status conditions and the reasons each of them may carry, in one place.

As Kubeflow Trainer's `trainjob_types.go` does for a TrainJob: every condition type, and
every reason with the condition types it is set on, documented where it is defined. The
operator's reconcile sets conditions only with these; `status.phase` summarizes them
(the first of Failed, Succeeded, Suspended, Queued, Running that is True; Pending otherwise).

A few reasons are also what the trainer writes as `reason` in its termination message
(`TerminationReason`): the operator carries those into the Running or Failed condition.
Reasons of Kubernetes' own that only appear inside a message (a pod's `OOMKilled`, a
node's `Evicted`, `ExitCode137`) are not condition reasons and are not listed.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Self


class ConditionType(StrEnum):
    """The types of `status.conditions`: at most one condition of each, in this order."""

    ACCEPTED = "Accepted"
    """True: the recipe is valid and attempts are created from it. False: it is invalid, or a field changed
    after creation (nothing new starts)."""
    QUEUED = "Queued"
    """True while the current attempt's Job waits for admission by Kueue (`spec.queueName`)."""
    RUNNING = "Running"
    """True while an attempt's pods train. False says why nothing trains now (waiting, retrying, stopped)."""
    SUSPENDED = "Suspended"
    """True while `spec.suspend` is true (the pods checkpoint and stop); False once it is lifted."""
    SUCCEEDED = "Succeeded"
    """True when training finished and the results are on the volume (and uploaded, with `output.uri`). Final."""
    FAILED = "Failed"
    """True when the FineTuneJob gave up; its reason says why. Final."""


_C = ConditionType  # shorthand for the table below


class Reason(StrEnum):
    """A condition's reason: a CamelCase word, with the condition types it is set on and whether its
    Kubernetes Event is a Warning.

    A reason that ends the FineTuneJob (on Failed or Succeeded) is also set on Running and Queued
    (False) where those were set, so that no condition still says the job runs or waits.
    """

    conditions: tuple[ConditionType, ...]
    warning: bool

    def __new__(cls, value: str, conditions: tuple[ConditionType, ...], warning: bool = False) -> Self:
        member = str.__new__(cls, value)
        member._value_ = value
        member.conditions = conditions
        member.warning = warning
        return member

    # ---- Accepted
    CREATED = "Created", (_C.ACCEPTED,)
    """Accepted=True: the recipe is valid; attempts are created from it."""
    INVALID_RECIPE = "InvalidRecipe", (_C.ACCEPTED, _C.FAILED, _C.RUNNING, _C.QUEUED), True
    """Accepted=False and Failed=True: the recipe model, the API server (the trainer's objects were refused)
    or the trainer (exit 2) refused the recipe. Never retried."""
    IMMUTABLE_FIELD_CHANGED = "ImmutableFieldChanged", (_C.ACCEPTED,), True
    """Accepted=False: a spec field other than suspend changed after creation (past the CRD's rule); the
    running attempt keeps the accepted recipe and nothing new starts."""

    # ---- Queued
    QUEUED_BY_KUEUE = "QueuedByKueue", (_C.QUEUED, _C.RUNNING)
    """Queued=True (and Running=False where it was set): the attempt's Job waits for Kueue's admission."""
    ADMITTED = "Admitted", (_C.QUEUED,)
    """Queued=False: Kueue admitted the attempt's Job."""

    # ---- Running
    STARTED = "Started", (_C.RUNNING,)
    """Running=True: the first attempt's pods run."""
    RESUMED = "Resumed", (_C.RUNNING, _C.SUSPENDED)
    """Running=True: a later attempt's pods run, resuming from the newest checkpoint. Suspended=False:
    spec.suspend was lifted."""
    PREEMPTED = "Preempted", (_C.RUNNING,), True
    """Running=False: the attempt was preempted (its pods disrupted or stopped with a checkpoint); the next
    attempt resumes at once, counted in status.preemptions."""
    ATTEMPT_FAILED = "AttemptFailed", (_C.RUNNING,), True
    """Running=False: the attempt failed and the next one starts after a backoff, counted in status.restarts."""
    UPLOAD_FAILED = "UploadFailed", (_C.RUNNING,), True
    """Running=False: as AttemptFailed, because the trainer could not write or verify output.uri (the volume
    keeps the result). Also the trainer's termination reason (exit 1)."""
    DOWNLOAD_FAILED = "DownloadFailed", (_C.RUNNING,), True
    """Running=False: as AttemptFailed, because the trainer could not read an input URI (access, credentials,
    network). Also the trainer's termination reason (exit 1)."""
    INPUT_NOT_FOUND = "InputNotFound", (_C.RUNNING, _C.FAILED, _C.QUEUED), True
    """Running=False: an input the recipe names (dataset.path, a URI) is not there yet; attempts retry with a
    growing wait, without counting restarts. Failed=True once it was missing for pendingDeadlineSeconds.
    Also the trainer's termination reason (exit 2)."""
    ATTEMPT_JOB_DELETED = "AttemptJobDeleted", (_C.RUNNING,)
    """Running=False: the running attempt's Job was deleted from outside; it is created again and resumes."""
    WAITING_FOR_GARBAGE_COLLECTION = "WaitingForGarbageCollection", (_C.RUNNING,)
    """Running=False: objects of a deleted FineTuneJob of the same name are still there; the first attempt
    starts once the garbage collector removed them."""
    NODE_LOST = "NodeLost", (_C.RUNNING,), True
    """Running=False: a pod of a stopped attempt is stuck Terminating on a lost node (NotReady, unreachable,
    gone); it is force-deleted after lostNodeTimeoutSeconds."""
    PODS_FORCE_DELETED = "PodsForceDeleted", (_C.RUNNING,), True
    """Running=False: pods stuck on a lost node were force-deleted (grace 0) so that the next attempt can start."""
    UNSCHEDULABLE = "Unschedulable", (_C.RUNNING, _C.FAILED, _C.QUEUED), True
    """Running=False: a trainer pod cannot be scheduled. Failed=True after pendingDeadlineSeconds."""
    IMAGE_PULL_FAILED = "ImagePullFailed", (_C.RUNNING, _C.FAILED, _C.QUEUED), True
    """Running=False: the trainer image cannot be pulled. Failed=True after pendingDeadlineSeconds."""
    CONTAINER_CONFIG_ERROR = "ContainerConfigError", (_C.RUNNING, _C.FAILED, _C.QUEUED), True
    """Running=False: the trainer container cannot be created (a missing Secret or ConfigMap key).
    Failed=True after pendingDeadlineSeconds."""
    POD_CREATION_FAILED = "PodCreationFailed", (_C.RUNNING, _C.FAILED, _C.QUEUED), True
    """Running=False: the Job controller cannot create the attempt's pods (quota, admission webhooks).
    Failed=True after pendingDeadlineSeconds."""

    # ---- Suspended
    SUSPENDED = "Suspended", (_C.SUSPENDED, _C.RUNNING, _C.QUEUED)
    """Suspended=True (Running and Queued False where set): spec.suspend is true and the pods checkpoint and stop."""

    # ---- Succeeded
    COMPLETED = "Completed", (_C.SUCCEEDED, _C.RUNNING, _C.QUEUED)
    """Succeeded=True: training finished; the results are on the volume (and at output.uri). Also the
    trainer's termination reason (exit 0)."""

    # ---- Failed
    BACKOFF_LIMIT_EXCEEDED = "BackoffLimitExceeded", (_C.FAILED, _C.RUNNING, _C.QUEUED), True
    """Failed=True: an attempt failed and backoffLimit failures were already retried."""
    PREEMPTION_LIMIT_EXCEEDED = "PreemptionLimitExceeded", (_C.FAILED, _C.RUNNING, _C.QUEUED), True
    """Failed=True: an attempt was preempted and maxPreemptions preemptions were already resumed."""
    DEADLINE_EXCEEDED = "DeadlineExceeded", (_C.FAILED, _C.RUNNING, _C.QUEUED), True
    """Failed=True: activeDeadlineSeconds passed since status.startTime."""
    VOLUME_FULL = "VolumeFull", (_C.FAILED, _C.RUNNING, _C.QUEUED), True
    """Failed=True: a write failed for lack of space on the job's volume (a retry would fill it again); the
    message names the claim and its size. Also the trainer's termination reason (exit 1)."""


WARNING_REASONS = frozenset(reason for reason in Reason if reason.warning)
"""Reasons whose Kubernetes Event is a Warning (the others are Normal)."""

PENDING_REASONS = (
    Reason.UNSCHEDULABLE, Reason.IMAGE_PULL_FAILED, Reason.CONTAINER_CONFIG_ERROR, Reason.POD_CREATION_FAILED,
)
"""Why an attempt's pods do not start: Running=False while pendingDeadlineSeconds lasts, then Failed."""


class TerminationReason(StrEnum):
    """The `reason` of the trainer's termination message (launcher.termination_message), with its exit code.

    Those that are also condition reasons have the same value as their `Reason`: the operator sets them
    on the condition as they are.
    """

    COMPLETED = Reason.COMPLETED.value
    """Exit 0: training finished."""
    STOPPED = "Stopped"
    """Exit 75: stopped on request (SIGTERM: preemption, suspend) after saving a checkpoint."""
    INVALID_RECIPE = Reason.INVALID_RECIPE.value
    """Exit 2: the recipe or its data cannot be used as given; never retried."""
    FAILED = "Failed"
    """Exit 1: anything else; retried with backoff up to backoffLimit."""
    UPLOAD_FAILED = Reason.UPLOAD_FAILED.value
    """Exit 1, retried: output.uri could not be written or verified; the volume keeps the result."""
    DOWNLOAD_FAILED = Reason.DOWNLOAD_FAILED.value
    """Exit 1, retried: an input URI could not be read (access, credentials, network)."""
    INPUT_NOT_FOUND = Reason.INPUT_NOT_FOUND.value
    """Exit 2: an input the recipe names is not there; the operator waits for it (see Reason.INPUT_NOT_FOUND)."""
    VOLUME_FULL = Reason.VOLUME_FULL.value
    """Exit 1, not retried: a write failed for lack of space (ENOSPC, EDQUOT)."""
    PEER_LOST = "PeerLost"
    """Exit 1, retried: another pod of the attempt was lost, so this one ended its trainer."""


RETRYABLE_TRAINER_REASONS = (TerminationReason.UPLOAD_FAILED, TerminationReason.DOWNLOAD_FAILED)
"""Trainer reasons the operator shows as the Running condition's reason when it retries."""
