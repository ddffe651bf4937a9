"""The one reconcile function: what is observed → the whole new status and the one action to take.

Pure: no API calls, no clock (`now` is an input), no kopf. Every handler and
the resync loop call `reconcile`, write the status it returns in one patch,
then perform its action; a failed action is simply decided again next time,
because the decision depends only on what is observed.

The attempt model (API.md): attempt N is the Job `<name>-N`. A failed attempt
is classified (classify.py): an invalid recipe fails the FineTuneJob at once; a
preemption starts the next attempt at once, counted in `preemptions`; any other
failure starts the next attempt after an exponential backoff, counted in
`restarts`. Counting happens exactly when `status.attempt` moves on, in the same
status write, so a repeated reconcile never counts one failure twice. At most
one attempt runs: a Job of another attempt that is still active is deleted, and
a new attempt is only created once every earlier pod has stopped (the PVC's
checkpoints have one writer).

`phase` is derived from the conditions, never set on its own.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import ValidationError

from kubetune_operator import classify, names
from kubetune_operator.classify import format_time, parse_time
from kubetune_operator.progress import shown_loss
from kubetune_api import contract
from kubetune_api.conditions import RETRYABLE_TRAINER_REASONS, WARNING_REASONS, ConditionType, Reason
from kubetune_api.recipe import (
    CheckpointStatus,
    Condition,
    FineTuneJob,
    FineTuneJobSpec,
    FineTuneJobStatus,
    OutputStatus,
    Phase,
    Progress,
    RecipeError,
    parse_finetunejob,
)

BACKOFF_BASE_SECONDS = 10.0
BACKOFF_CAP_SECONDS = 300.0

INPUT_RETRY_MIN_SECONDS = 10.0
LEFTOVER_RETRY_SECONDS = 2.0
TAINT_EVICTION = "DeletionByTaintManager"  # DisruptionTarget reason: evicted for a NoExecute node taint
TRAINER_COMPLETED = "training completed"  # the launcher's plain success message: nothing to add

# What the Running condition says the trainer does, by the stage its metrics report.
STAGE_WORDS = {
    "loading": "loading the model and data",
    "training": "training",
    "evaluating": "evaluating",
    "saving": "saving a checkpoint",
    "exporting": "exporting the results",
    "done": "finishing",
}
LOADING = "loading"

# Which condition decides the phase, most decisive first.
_PHASE_ORDER = (
    (ConditionType.FAILED, Phase.failed),
    (ConditionType.SUCCEEDED, Phase.succeeded),
    (ConditionType.SUSPENDED, Phase.suspended),
    (ConditionType.QUEUED, Phase.queued),
    (ConditionType.RUNNING, Phase.running),
)


def backoff_seconds(restarts: int) -> float:
    """Delay before the attempt that follows the `restarts`-th failure: 10 s, doubling, capped at 5 min."""
    return min(BACKOFF_BASE_SECONDS * 2 ** max(restarts - 1, 0), BACKOFF_CAP_SECONDS)


class ActionType(str, enum.Enum):
    """What the caller does after writing the status."""

    NONE = "none"
    CREATE_ATTEMPT = "create-attempt"  # ensure the ConfigMap/PVC/Service, then create Job <name>-<attempt>
    DELETE_JOB = "delete-job"
    DELETE_FINETUNEJOB = "delete-finetunejob"  # ttlSecondsAfterFinished ran out
    FORCE_DELETE_PODS = "force-delete-pods"  # delete `Action.pods` with grace 0: stuck on a lost node


@dataclasses.dataclass(frozen=True)
class Action:
    """The one action of a decision. `delay_seconds` > 0: not due yet, decide again after that long."""

    type: ActionType = ActionType.NONE
    attempt: int | None = None
    job_name: str | None = None
    delay_seconds: float = 0.0
    pods: tuple[str, ...] = ()  # FORCE_DELETE_PODS: the pods' names

    @property
    def due(self) -> bool:
        """Whether the caller should act now."""
        return self.type is not ActionType.NONE and self.delay_seconds <= 0


NO_ACTION = Action()


@dataclasses.dataclass(frozen=True)
class Event:
    """A Kubernetes Event to post on the FineTuneJob for a transition."""

    type: str  # Normal or Warning
    reason: str
    message: str


@dataclasses.dataclass(frozen=True)
class Observed:
    """Everything the reconcile looks at, read fresh by the caller."""

    body: Mapping[str, Any]  # the FineTuneJob as the API returned it
    now: dt.datetime
    jobs: Sequence[Mapping[str, Any]] = ()  # its attempt Jobs (label kubetune.io/finetunejob)
    pods: Sequence[Mapping[str, Any]] = ()  # its trainer pods, all attempts
    accepted_spec: Mapping[str, Any] | None = None  # spec in the recipe ConfigMap: what the pods run
    progress: Progress | None = None  # last poll of rank 0's metrics, best effort
    checkpoint: CheckpointStatus | None = None
    rejected: str | None = None  # the API server refused this attempt's children (422): its message
    # Objects with this FineTuneJob's name label that another incarnation owns (a FineTuneJob of the
    # same name, deleted, whose children the garbage collector has not removed yet): "Kind name" each.
    leftovers: Sequence[str] = ()
    # The Job controller's FailedCreate messages for the current attempt Job when it has no pods.
    refusals: Sequence[str] = ()
    # Nodes that will never confirm a pod's end (NotReady, unreachable or gone) → since when (the epoch
    # for a deleted Node), looked up only for Terminating pods; such a pod is force-deleted this long
    # after both its deletion and its node's loss.
    lost_nodes: Mapping[str, dt.datetime] = dataclasses.field(default_factory=dict)
    lost_node_timeout_seconds: float = 300.0


@dataclasses.dataclass(frozen=True)
class Decision:
    """The whole new status, the action, and the events of this transition."""

    status: FineTuneJobStatus
    action: Action
    events: tuple[Event, ...]
    job: FineTuneJob | None  # the validated FineTuneJob, for rendering; None when invalid


# ---------------------------------------------------------------- the draft status


class _Draft:
    """The status being decided: the previous one, changed step by step."""

    def __init__(self, previous: FineTuneJobStatus, now: dt.datetime, generation: int | None) -> None:
        self.previous = previous
        self.status = previous.model_copy(deep=True)
        self.conditions: dict[str, Condition] = {c.type: c for c in previous.conditions}
        self.now = now
        self.generation = generation
        self.status.observed_generation = generation

    @property
    def finished(self) -> bool:
        return any(self.is_true(kind) for kind in (ConditionType.SUCCEEDED, ConditionType.FAILED))

    def is_true(self, kind: ConditionType) -> bool:
        condition = self.conditions.get(kind)
        return condition is not None and condition.status == "True"

    def set(self, kind: ConditionType, status: bool, reason: str, message: str) -> None:
        """Set a condition; lastTransitionTime moves only when its status flips."""
        value = "True" if status else "False"
        old = self.conditions.get(kind)
        since = old.last_transition_time if old is not None and old.status == value else format_time(self.now)
        self.conditions[kind] = Condition(
            type=kind,
            status=value,
            reason=reason,
            message=classify.shorten(message, 4096),
            last_transition_time=since,
            observed_generation=self.generation,
        )

    def set_if_present(self, kind: ConditionType, status: bool, reason: str, message: str) -> None:
        """Set a condition only if it was ever set (e.g. Running False after a Running True)."""
        if kind in self.conditions:
            self.set(kind, status, reason, message)

    def finish(self, succeeded: bool, reason: str, message: str) -> None:
        """End the FineTuneJob: Succeeded or Failed, for good."""
        self.set(ConditionType.SUCCEEDED if succeeded else ConditionType.FAILED, True, reason, message)
        self.set_if_present(ConditionType.RUNNING, False, reason, message)
        self.set_if_present(ConditionType.QUEUED, False, reason, message)
        self.status.completion_time = self.status.completion_time or format_time(self.now)
        self.status.next_attempt_time = None
        _no_trainer(self)

    def decide(self, action: Action, job: FineTuneJob | None) -> Decision:
        self.status.conditions = [self.conditions[kind] for kind in ConditionType if kind in self.conditions]
        self.status.phase, deciding = phase_of(self.conditions)
        self.status.message = deciding.message if deciding is not None else self.status.message
        return Decision(self.status, action, _events(self.previous.conditions, self.status.conditions), job)


def phase_of(conditions: Mapping[str, Condition]) -> tuple[Phase, Condition | None]:
    """The phase the conditions (by type) summarize, and the condition that decides it."""
    for kind, phase in _PHASE_ORDER:
        condition = conditions.get(kind)
        if condition is not None and condition.status == "True":
            return phase, condition
    return Phase.pending, conditions.get(ConditionType.RUNNING) or conditions.get(ConditionType.ACCEPTED)


def _events(before: Sequence[Condition], after: Sequence[Condition]) -> tuple[Event, ...]:
    """One event per condition whose status or reason changed (once per reason)."""
    old = {c.type: (c.status, c.reason) for c in before}
    events: dict[str, Event] = {}
    for condition in after:
        if old.get(condition.type) == (condition.status, condition.reason) or condition.reason in events:
            continue
        kind = "Warning" if condition.reason in WARNING_REASONS else "Normal"
        events[condition.reason] = Event(kind, condition.reason, condition.message)
    return tuple(events.values())


def previous_status(body: Mapping[str, Any]) -> FineTuneJobStatus:
    """The stored status, tolerating foreign keys and garbage: an unreadable status starts afresh."""
    raw = body.get("status")
    if not isinstance(raw, Mapping):
        return FineTuneJobStatus()
    known = {field.alias or key for key, field in FineTuneJobStatus.model_fields.items()}
    try:
        return FineTuneJobStatus.model_validate({key: value for key, value in raw.items() if key in known})
    except ValidationError:
        return FineTuneJobStatus()


def _validate(body: Mapping[str, Any]) -> tuple[FineTuneJob | None, str | None]:
    """Re-validate with the recipe model (the object may have bypassed the CRD): the job or a message."""
    metadata = body.get("metadata") or {}
    manifest = {
        "apiVersion": body.get("apiVersion", names.API_VERSION),
        "kind": body.get("kind", "FineTuneJob"),
        "metadata": {"name": metadata.get("name"), "namespace": metadata.get("namespace")},
        "spec": body.get("spec"),
    }
    try:
        return parse_finetunejob(manifest), None
    except RecipeError as error:
        return None, "; ".join(line for line in str(error).splitlines() if line)


# ---------------------------------------------------------------- the steps


def reconcile(observed: Observed) -> Decision:
    """The whole new status and the action for one FineTuneJob, from what is observed."""
    generation = (observed.body.get("metadata") or {}).get("generation")
    draft = _Draft(previous_status(observed.body), observed.now, generation)
    job, problem = _validate(observed.body)
    if job is None:
        if not draft.finished:
            draft.set(ConditionType.ACCEPTED, False, Reason.INVALID_RECIPE, f"invalid FineTuneJob: {problem}")
            draft.finish(False, Reason.INVALID_RECIPE, f"invalid FineTuneJob: {problem}")
        return draft.decide(_after_finish(draft, observed, _raw_ttl(observed.body)), None)
    if observed.rejected and not draft.finished:
        message = f"the API server refused the trainer's objects: {observed.rejected}"
        draft.set(ConditionType.ACCEPTED, False, Reason.INVALID_RECIPE, message)
        draft.finish(False, Reason.INVALID_RECIPE, message)
    if draft.finished:
        return draft.decide(_after_finish(draft, observed, job.spec.ttl_seconds_after_finished), job)
    action = _track(draft, job, observed)
    if draft.finished and action.type is ActionType.NONE:
        action = _after_finish(draft, observed, job.spec.ttl_seconds_after_finished)
    drift = _drift(job.spec, observed.accepted_spec)
    if drift:
        draft.set(
            ConditionType.ACCEPTED,
            False,
            Reason.IMMUTABLE_FIELD_CHANGED,
            f"{drift} changed after creation; only spec.suspend may change. The running attempt keeps the "
            "accepted recipe and nothing new is started: restore the field, or delete and re-create the "
            "FineTuneJob (checkpoints on a retained PVC are kept)",
        )
        action = NO_ACTION
    elif not draft.is_true(ConditionType.ACCEPTED):
        draft.set(ConditionType.ACCEPTED, True, Reason.CREATED, "the recipe is valid; attempts are created from it")
    return draft.decide(action, job)


def _raw_ttl(body: Mapping[str, Any]) -> int | None:
    value = (body.get("spec") or {}).get("ttlSecondsAfterFinished") if isinstance(body.get("spec"), Mapping) else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _active_jobs(jobs: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return [job for job in jobs if classify.job_state(job) in ("active", "suspended")]


def _delete(job: Mapping[str, Any]) -> Action:
    return Action(ActionType.DELETE_JOB, names.attempt_of(job), job["metadata"]["name"])


def _after_finish(draft: _Draft, observed: Observed, ttl: int | None) -> Action:
    """A finished FineTuneJob: stop what still runs, never create anything, delete itself after its TTL."""
    active = _active_jobs(observed.jobs)
    if active:
        return _delete(active[0])
    finished_at = parse_time(draft.status.completion_time)
    if ttl is None or finished_at is None:
        return NO_ACTION
    remaining = (finished_at + dt.timedelta(seconds=ttl) - draft.now).total_seconds()
    return Action(ActionType.DELETE_FINETUNEJOB, delay_seconds=max(remaining, 0.0))


def _track(draft: _Draft, job: FineTuneJob, observed: Observed) -> Action:
    """Follow the current attempt; returns the action (finishing the draft where it ends)."""
    spec = job.spec
    known = [a for a in (names.attempt_of(j) for j in observed.jobs) if a is not None]
    if draft.status.attempt is None:
        # A status lost or wiped while Jobs exist: adopt the newest attempt instead of starting over.
        draft.status.attempt = max(known, default=0)
    attempt = draft.status.attempt
    current = next(
        (j for j in observed.jobs if names.attempt_of(j) == attempt and classify.job_state(j) != "deleting"),
        None,
    )
    pods = [pod for pod in observed.pods if names.attempt_of(pod) == attempt]
    state = classify.job_state(current) if current is not None else None

    if state == "complete":
        _succeed(draft, pods, spec.storage.existing_claim or names.pvc_name(job.metadata.name))
        return NO_ACTION
    lost = _lost_node_action(observed)
    if lost is not None and lost[0].due:
        draft.set(ConditionType.RUNNING, False, Reason.PODS_FORCE_DELETED, lost[1])
        return lost[0]
    stale = [j for j in _active_jobs(observed.jobs) if names.attempt_of(j) != attempt]
    if stale:
        return _delete(stale[0])
    if _deadline_passed(draft, spec):
        draft.finish(False, Reason.DEADLINE_EXCEEDED, f"activeDeadlineSeconds ({spec.active_deadline_seconds}s) "
                     f"passed since {draft.status.start_time}")
        return NO_ACTION
    if spec.suspend:
        return _suspend(draft, current, state, attempt)
    if draft.is_true(ConditionType.SUSPENDED):
        draft.set(ConditionType.SUSPENDED, False, Reason.RESUMED,
                  f"spec.suspend is false: attempt {attempt} resumes from the newest "
                  "checkpoint")
    if state == "failed":
        claim = spec.storage.existing_claim or names.pvc_name(job.metadata.name)
        _after_failure(draft, spec, current, pods, claim)  # type: ignore[arg-type]
        return NO_ACTION if draft.finished else _next_attempt(draft, observed)
    if state in ("active", "suspended"):
        return _follow(draft, spec, current, state, pods, observed)  # type: ignore[arg-type]
    if current is None and any(not classify.force_deleted(pod) for pod in pods):
        # Pods of this attempt without its Job: the Job was deleted under them (by hand, by a tool). Not
        # pods force-deleted after it (the lost-node deadline): that was said, and they are gone for good.
        # The same attempt starts again and resumes from the newest checkpoint; not a failure.
        draft.set(ConditionType.RUNNING, False, Reason.ATTEMPT_JOB_DELETED,
                  f"Job {names.job_name(_name(observed), attempt)} of attempt "
                  f"{attempt} was deleted; it is created again and resumes from the newest checkpoint")
    return _next_attempt(draft, observed)


def _deadline_passed(draft: _Draft, spec: FineTuneJobSpec) -> bool:
    started = parse_time(draft.status.start_time)
    if spec.active_deadline_seconds is None or started is None or spec.suspend:
        return False
    return (draft.now - started).total_seconds() >= spec.active_deadline_seconds


def _suspend(draft: _Draft, current: Mapping[str, Any] | None, state: str | None, attempt: int) -> Action:
    """spec.suspend: stop the attempt (its pods checkpoint on SIGTERM); resuming starts the next one."""
    message = f"spec.suspend is true: attempt {attempt} is stopped and its pods save a checkpoint"
    _no_trainer(draft)
    draft.set(ConditionType.SUSPENDED, True, Reason.SUSPENDED, message)
    draft.set_if_present(ConditionType.RUNNING, False, Reason.SUSPENDED, message)
    draft.set_if_present(ConditionType.QUEUED, False, Reason.SUSPENDED, message)
    if current is None:
        return NO_ACTION
    # Move on now, in the same status write as the delete: a stale Job keeps being deleted until it goes.
    # An attempt that failed meanwhile (its pods saw our SIGTERM first) is superseded too, never counted.
    draft.status.attempt = attempt + 1
    draft.status.next_attempt_time = None
    return _delete(current) if state in ("active", "suspended") else NO_ACTION


def _after_failure(draft: _Draft, spec: FineTuneJobSpec, job: Mapping[str, Any], pods: list, claim: str) -> None:
    """Classify a failed attempt and either fail the FineTuneJob or count it and move to the next attempt."""
    failure = classify.classify_failure(job, pods)
    attempt = draft.status.attempt or 0
    _checkpoint_from(classify.termination_message(classify.rank0_pod(pods)), draft)
    _no_trainer(draft)
    if failure.kind == "missing":
        _wait_for_input(draft, spec, failure, attempt)
        return
    draft.status.input_missing_since = None
    if failure.kind == "invalid":
        message = f"the trainer refused the recipe: {failure.message}"
        draft.set(ConditionType.ACCEPTED, False, Reason.INVALID_RECIPE, message)
        draft.finish(False, Reason.INVALID_RECIPE, message)
        return
    if failure.kind == "full":
        draft.finish(False, Reason.VOLUME_FULL, _volume_full_message(draft, spec, failure, attempt, claim))
        return
    if failure.kind == "preempted":
        if draft.status.preemptions >= spec.max_preemptions:
            draft.finish(False, Reason.PREEMPTION_LIMIT_EXCEEDED, f"attempt {attempt} was preempted "
                         f"({failure.message}) and maxPreemptions ({spec.max_preemptions}) is reached")
            return
        draft.status.preemptions += 1
        draft.status.attempt = attempt + 1
        draft.status.next_attempt_time = format_time(draft.now)
        draft.set(ConditionType.RUNNING, False, Reason.PREEMPTED,
                  f"attempt {attempt} was preempted ({failure.message}); attempt "
                  f"{attempt + 1} resumes from the newest checkpoint (preemption {draft.status.preemptions} "
                  f"of {spec.max_preemptions})")
        return
    if draft.status.restarts >= spec.backoff_limit:
        draft.finish(False, Reason.BACKOFF_LIMIT_EXCEEDED, f"attempt {attempt} failed ({failure.message}) and "
                     f"backoffLimit ({spec.backoff_limit}) is reached")
        return
    draft.status.restarts += 1
    delay = backoff_seconds(draft.status.restarts)
    draft.status.attempt = attempt + 1
    draft.status.next_attempt_time = format_time(draft.now + dt.timedelta(seconds=delay))
    retried = failure.detail if failure.detail in RETRYABLE_TRAINER_REASONS else Reason.ATTEMPT_FAILED
    draft.set(ConditionType.RUNNING, False, retried, f"attempt {attempt} failed ({failure.message}); attempt "
              f"{attempt + 1} starts in {delay:.0f}s (restart {draft.status.restarts} of {spec.backoff_limit})")


def _wait_for_input(draft: _Draft, spec: FineTuneJobSpec, failure: classify.Failure, attempt: int) -> None:
    """An input is not there (yet): on a cluster often a race with whatever copies it. Retry, waiting about
    as long as it has been missing (10 s, then roughly doubling, at most 5 min), without counting restarts;
    fail with InputNotFound once it has been missing for pendingDeadlineSeconds."""
    since = parse_time(draft.status.input_missing_since) or draft.now
    draft.status.input_missing_since = format_time(since)
    waited = (draft.now - since).total_seconds()
    deadline = spec.pending_deadline_seconds
    if waited >= deadline:
        draft.finish(False, Reason.INPUT_NOT_FOUND,
                     f"attempt {attempt}: {failure.message}; still missing {waited:.0f}s after "
                     f"it was first found missing (pendingDeadlineSeconds {deadline}): provide it, then delete and "
                     "re-apply the FineTuneJob")
        return
    delay = min(max(waited, INPUT_RETRY_MIN_SECONDS), BACKOFF_CAP_SECONDS, deadline - waited)
    draft.status.attempt = attempt + 1
    draft.status.next_attempt_time = format_time(draft.now + dt.timedelta(seconds=delay))
    draft.set(ConditionType.RUNNING, False, Reason.INPUT_NOT_FOUND,
              f"attempt {attempt}: {failure.message}; waiting for it: attempt "
              f"{attempt + 1} starts in {delay:.0f}s (missing for {waited:.0f}s; fails after pendingDeadlineSeconds "
              f"{deadline}s)")


def _volume_full_message(draft: _Draft, spec: FineTuneJobSpec, failure: classify.Failure, attempt: int,
                         claim: str) -> str:
    """Why a full volume fails at once, and how to give the job room (a retry would fill it again)."""
    size = "" if spec.storage.existing_claim else f", spec.storage.size {spec.storage.size}"
    kept = draft.status.checkpoint.step if draft.status.checkpoint is not None else None
    resume = f" from the checkpoint of step {kept}" if kept is not None else ""
    return (f"attempt {attempt} ran out of space on PersistentVolumeClaim {claim}{size}: {failure.message}. A retry "
            f"would fill it again. Make room: expand the claim (kubectl patch pvc {claim}, where its StorageClass "
            f"allows volume expansion) or free space on it, then delete and re-apply the FineTuneJob to resume"
            f"{resume}; "
            "or start afresh with a larger spec.storage.size (or a lower training.saveTotalLimit)")


def _next_attempt(draft: _Draft, observed: Observed) -> Action:
    """Create the current attempt's Job once its backoff is over and every earlier pod has stopped."""
    attempt = draft.status.attempt or 0
    due = parse_time(draft.status.next_attempt_time)
    if due is not None and due > draft.now:
        return Action(ActionType.CREATE_ATTEMPT, attempt, names.job_name(_name(observed), attempt),
                      (due - draft.now).total_seconds())
    if any(classify.pod_alive(pod) for pod in observed.pods):
        # The previous gang is still stopping (saving a checkpoint); its pod events return here. A pod on
        # a lost node never stops: it is forced gone after a deadline (`_lost_node_action`), said in status.
        lost = _lost_node_action(observed)
        if lost is None:
            return NO_ACTION
        draft.set(ConditionType.RUNNING, False, Reason.NODE_LOST, lost[1])
        return lost[0]
    if observed.leftovers:
        # Same names, another owner: creating now would collide with (or, by name, adopt) the old
        # incarnation's objects, and its pods may still write to a retained PVC. The garbage collector
        # removes them; the resync comes back.
        draft.set(ConditionType.RUNNING, False, Reason.WAITING_FOR_GARBAGE_COLLECTION,
                  f"waiting for the objects of a deleted FineTuneJob of the same name to be garbage collected: "
                  f"{', '.join(observed.leftovers[:3])}")
        return Action(ActionType.CREATE_ATTEMPT, attempt, names.job_name(_name(observed), attempt),
                      LEFTOVER_RETRY_SECONDS)
    return Action(ActionType.CREATE_ATTEMPT, attempt, names.job_name(_name(observed), attempt))


def _lost_node_action(observed: Observed) -> tuple[Action, str] | None:
    """Pods stuck Terminating on a lost node: force-delete those past the deadline now, else wait for the
    first one's deadline; the action and what to say. None when no pod is stuck.

    Stuck: alive and being deleted on a node in `lost_nodes`, or evicted for a NoExecute node taint (the
    taint manager says so on the pod, readable without rights on Nodes). No kubelet will honour its grace
    period or report its end, and the Job controller waits for it, so the next attempt would wait forever.
    The deadline runs from the later of the deletion and the node's loss: by then the node's processes
    are presumed gone with it.
    """
    limit = observed.lost_node_timeout_seconds
    stuck: dict[str, tuple[str, dt.datetime]] = {}  # pod name -> (its node, stuck since)
    for pod in observed.pods:
        meta, node = pod.get("metadata") or {}, (pod.get("spec") or {}).get("nodeName") or "?"
        deleted = parse_time(meta.get("deletionTimestamp"))
        if deleted is None or not classify.pod_alive(pod):
            continue
        since = deleted - dt.timedelta(seconds=meta.get("deletionGracePeriodSeconds") or 0)  # the request
        evicted = (classify.find_condition(pod, "DisruptionTarget") or {}).get("reason") == TAINT_EVICTION
        if node in observed.lost_nodes:
            since = max(since, observed.lost_nodes[node])
        elif not evicted:
            continue
        stuck[str(meta.get("name"))] = (node, since)
    if not stuck:
        return None
    # Times, not "stuck for Ns": the message stays the same from turn to turn, so a waiting FineTuneJob's
    # status is not rewritten on every turn (each write is an API request and a watch event).
    what = ", ".join(f"pod {name} on lost node {node} (Terminating, stuck since {format_time(since)})"
                     for name, (node, since) in list(stuck.items())[:3])
    what += f" and {len(stuck) - 3} more" if len(stuck) > 3 else ""
    deadline = {name: since + dt.timedelta(seconds=limit) for name, (_, since) in stuck.items()}
    due = tuple(name for name, at in deadline.items() if at <= observed.now)
    if due:
        said = (f"{what}: force-deleted (grace 0) after lostNodeTimeoutSeconds ({limit:.0f}s); the next attempt "
                "starts once no earlier pod is left")
        return Action(ActionType.FORCE_DELETE_PODS, pods=due), said
    first = min(deadline.values())
    said = (f"{what}: no kubelet will confirm its end; force-deleted (grace 0) at {format_time(first)} "
            f"(lostNodeTimeoutSeconds {limit:.0f}s), then the next attempt starts")
    return Action(ActionType.FORCE_DELETE_PODS, pods=tuple(stuck),
                  delay_seconds=(first - observed.now).total_seconds()), said


def _name(observed: Observed) -> str:
    return str((observed.body.get("metadata") or {}).get("name"))


def _follow(
    draft: _Draft, spec: FineTuneJobSpec, job: Mapping[str, Any], state: str, pods: list, observed: Observed
) -> Action:
    """The current attempt exists and has not ended: queued, pending, or running."""
    attempt = draft.status.attempt or 0
    draft.status.next_attempt_time = None
    if state == "suspended":
        queue = (job["metadata"].get("labels") or {}).get(names.LABEL_KUEUE_QUEUE, "")
        message = f"attempt {attempt} waits for admission by Kueue" + (f" in queue {queue}" if queue else "")
        draft.set(ConditionType.QUEUED, True, Reason.QUEUED_BY_KUEUE, message)
        draft.set_if_present(ConditionType.RUNNING, False, Reason.QUEUED_BY_KUEUE, message)
        return NO_ACTION
    if draft.is_true(ConditionType.QUEUED):
        draft.set(ConditionType.QUEUED, False, Reason.ADMITTED, f"attempt {attempt} was admitted by Kueue")
    problems = [classify.pending_problem(pod) for pod in pods]
    if not pods:
        problems.append(classify.pods_not_created(job, observed.refusals))
    for problem in problems:
        if problem is None:
            continue
        waited = (draft.now - problem.since).total_seconds()
        if waited >= spec.pending_deadline_seconds:
            draft.finish(False, problem.reason, f"{problem.message} (pending {waited:.0f}s, more than "
                         f"pendingDeadlineSeconds {spec.pending_deadline_seconds})")
            return NO_ACTION
        # The deadline as a time, not "pending Ns": the same message every turn, no status rewrite per turn.
        fails_at = problem.since + dt.timedelta(seconds=spec.pending_deadline_seconds)
        draft.set(ConditionType.RUNNING, False, problem.reason,
                  f"{problem.message} (pending since {format_time(problem.since)}; fails after "
                  f"{spec.pending_deadline_seconds}s, at {format_time(fails_at)})")
        return NO_ACTION
    if any(classify.pod_running(pod) for pod in pods):
        reason = Reason.STARTED if attempt == 0 else Reason.RESUMED
        workers = spec.resources.workers
        was_running = draft.is_true(ConditionType.RUNNING)
        _take_progress(draft, observed)
        stage = _stage(draft, observed, was_running)
        draft.set(ConditionType.RUNNING, True, reason,
                  f"attempt {attempt} is {STAGE_WORDS.get(stage, stage)} ({workers} worker"
                  f"{'s' if workers > 1 else ''})")
        draft.status.start_time = draft.status.start_time or format_time(draft.now)
    return NO_ACTION


def _no_trainer(draft: _Draft) -> None:
    """No trainer runs (the attempt ended, the job is suspended or finished): the Stage column goes blank."""
    if draft.status.progress is not None:
        draft.status.progress.stage = None


def _stage(draft: _Draft, observed: Observed, was_running: bool) -> str:
    """What the running attempt's trainer does: its metrics say so; until they answer, a pod that just
    started is loading (imports, model, data), never "training"."""
    progress = draft.status.progress = draft.status.progress or Progress()
    if observed.progress is not None and (observed.progress.stage or observed.progress.step is not None):
        stage = observed.progress.stage or "training"  # a trainer that reports steps without a stage
    elif was_running and progress.stage:
        stage = progress.stage
    else:
        stage = LOADING
    progress.stage = stage
    return stage


def _take_progress(draft: _Draft, observed: Observed) -> None:
    if observed.progress is not None:
        draft.status.progress = observed.progress.model_copy()
        if observed.progress.step is not None:
            draft.status.input_missing_since = None  # the trainer got past its inputs
    if observed.checkpoint is not None and observed.checkpoint.step is not None:
        draft.status.checkpoint = observed.checkpoint


def _checkpoint_from(message: Mapping[str, Any], draft: _Draft) -> None:
    """The newest complete checkpoint the trainer reported in its termination message, if newer."""
    reported = message.get("checkpoint")
    if not isinstance(reported, Mapping) or not isinstance(reported.get("step"), int):
        return
    known = draft.status.checkpoint
    if known is None or known.step is None or reported["step"] >= known.step:
        path = reported.get("path")
        draft.status.checkpoint = CheckpointStatus(
            step=reported["step"], path=str(path) if path else None,
            time=known.time if known is not None and known.step == reported["step"] else format_time(draft.now),
        )


def _succeed(draft: _Draft, pods: list, claim: str) -> None:
    """The attempt Job completed: results and final numbers from rank 0's termination message.

    The status message names the claim the results are on, and carries what the trainer had to say
    beyond "training completed" (e.g. a damaged checkpoint it removed before resuming).

    The launcher's message (launcher.termination_message): {"exitCode", "reason", "message", "step",
    "totalSteps", "loss", "evalLoss", "tokensPerSecond", "checkpoint": {...}, "output": {"adapterPath", ...}}.
    """
    message = classify.termination_message(classify.rank0_pod(pods))
    output_part = message.get("output")
    nested: Mapping[str, Any] = output_part if isinstance(output_part, Mapping) else message
    out = lambda *keys: classify.message_field(nested, *keys)  # noqa: E731
    field = lambda *keys: classify.message_field(message, *keys)  # noqa: E731
    output = OutputStatus(
        adapter_path=out("adapterPath"), merged_path=out("mergedPath"), archive_path=out("archivePath"),
        uri=out("uri"),
    )
    if any(value is not None for value in output.model_dump().values()):
        draft.status.output = output
    _checkpoint_from(message, draft)
    progress = (draft.status.progress or Progress()).model_copy()
    for attribute, key in (("step", "step"), ("total_steps", "totalSteps")):
        value = field(key)
        if isinstance(value, (int, float)):
            setattr(progress, attribute, int(value))
    for attribute, key in (("loss", "loss"), ("eval_loss", "evalLoss"), ("tokens_per_second", "tokensPerSecond")):
        value = field(key)
        if isinstance(value, (int, float)):
            setattr(progress, attribute, float(value))
    progress.total_steps = progress.total_steps or progress.step
    progress.percent, progress.eta_seconds = "100%", 0.0
    progress.loss_text = shown_loss(progress.loss)
    draft.status.progress = progress
    draft.status.input_missing_since = None  # whatever was missing came
    loss = f" (loss {progress.loss:.4g})" if progress.loss is not None else ""
    where = output.adapter_path or contract.output_dir(contract.WORKSPACE)
    at = f" at step {progress.step}" if progress.step is not None else ""
    said = field("message")
    extra = said.removeprefix(TRAINER_COMPLETED).lstrip("; ") if isinstance(said, str) else ""
    note = f"; {extra}" if extra else ""
    draft.finish(True, Reason.COMPLETED, f"training finished{at}{loss}; results in {where} on PersistentVolumeClaim "
                 f"{claim}{note}")


def _drift(spec: FineTuneJobSpec, accepted: Mapping[str, Any] | None) -> str | None:
    """The spec paths that differ from the accepted recipe (suspend excluded), or None."""
    if accepted is None:
        return None
    try:
        before = FineTuneJobSpec.model_validate(accepted).to_api()
    except ValidationError:
        return None
    after = spec.to_api()
    before.pop("suspend", None)
    after.pop("suspend", None)
    paths = _differences(before, after, "spec")
    if not paths:
        return None
    return ", ".join(paths[:5]) + (f" and {len(paths) - 5} more" if len(paths) > 5 else "")


def _differences(before: Any, after: Any, path: str) -> list[str]:
    if isinstance(before, dict) and isinstance(after, dict):
        keys = sorted(set(before) | set(after))
        return [p for key in keys for p in _differences(before.get(key), after.get(key), f"{path}.{key}")]
    return [] if before == after else [path]
