"""The reconcile function as a table: observed state → status, phase, conditions and action.

Each row is one situation a cluster can be in; the expectations are what
API.md promises for it. A second group replays a decision's status as the next
observation, to show that a failure is counted once and a finished
FineTuneJob never gets children again.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

import pytest

from kubetune_operator.classify import classify_failure
from kubetune_operator.reconcile import ActionType, Observed, backoff_seconds, reconcile
from kubetune_api.recipe import CheckpointStatus, Progress
from tests.operator.objects import NOW, ago, attempt_job, failed_by, finetunejob, later, pod

CREATE, DELETE, DELETE_SELF, NONE = (
    ActionType.CREATE_ATTEMPT, ActionType.DELETE_JOB, ActionType.DELETE_FINETUNEJOB, ActionType.NONE,
)


def running(attempt: int = 0, **extra: Any) -> dict[str, Any]:
    """A status with attempt `attempt` running."""
    return {
        "phase": "Running",
        "attempt": attempt,
        "startTime": ago(600),
        "conditions": [
            {"type": "Accepted", "status": "True", "reason": "Created", "lastTransitionTime": ago(700)},
            {"type": "Running", "status": "True", "reason": "Started", "lastTransitionTime": ago(600)},
        ],
        **extra,
    }


def finished(kind: str, reason: str, completed_ago: float = 100) -> dict[str, Any]:
    """A status of a FineTuneJob that ended."""
    return {
        "phase": kind,
        "attempt": 0,
        "completionTime": ago(completed_ago),
        "conditions": [{"type": kind, "status": "True", "reason": reason, "lastTransitionTime": ago(completed_ago)}],
    }


@dataclasses.dataclass
class Case:
    """One row: an observation and what must come out of it."""

    id: str
    spec: dict[str, Any] = dataclasses.field(default_factory=dict)
    status: dict[str, Any] | None = None
    jobs: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    pods: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    accepted: dict[str, Any] | None = None
    refusals: list[str] = dataclasses.field(default_factory=list)  # FailedCreate messages of the current Job
    phase: str = "Pending"
    action: ActionType = NONE
    action_attempt: int | None = None
    delay: float = 0.0
    fields: dict[str, Any] = dataclasses.field(default_factory=dict)  # expected status fields (camelCase)
    conditions: dict[str, tuple[str, str]] = dataclasses.field(default_factory=dict)  # type → (status, reason)
    message: str = ""  # must appear in status.message


OOM = pod(0, phase="Failed", exit_code=137, reason="OOMKilled")
STOPPED_AFTER_OOM = pod(0, index=1, phase="Failed", exit_code=75)
INVALID = pod(0, phase="Failed", exit_code=2, message={"reason": "invalid", "message": "dataset.path /x: no such file"})
PREEMPTED_POD = pod(0, phase="Failed", exit_code=137, disruption="PreemptionByScheduler")
MISSING_TEXT = "dataset.path /workspace/data/quiz.jsonl: no such file or folder"
MISSING = pod(0, phase="Failed", exit_code=2, message={"reason": "InputNotFound", "message": MISSING_TEXT})
MISSING_AGAIN = pod(1, phase="Failed", exit_code=2, message={"reason": "InputNotFound", "message": MISSING_TEXT})
FULL = pod(0, phase="Failed", exit_code=1, message={
    "reason": "Failed", "message": "OSError: [Errno 28] No space left on device: "
                                   "'/workspace/output/checkpoints/checkpoint-40/adapter_model.safetensors'"})

CASES = [
    Case("new job creates attempt 0", action=CREATE, action_attempt=0, fields={"attempt": 0, "restarts": 0},
         conditions={"Accepted": ("True", "Created")}),
    Case("created suspended waits", spec={"suspend": True}, phase="Suspended",
         conditions={"Suspended": ("True", "Suspended")}),
    Case("pod pending without a problem stays Pending", status=running() | {"conditions": []},
         jobs=[attempt_job(0)], pods=[pod(0, phase="Pending")]),
    Case("running pod makes it Running", jobs=[attempt_job(0)], pods=[pod(0)], phase="Running",
         fields={"startTime": NOW.strftime("%Y-%m-%dT%H:%M:%SZ")}, conditions={"Running": ("True", "Started")}),
    Case("complete job succeeds with outputs", status=running(), jobs=[attempt_job(0, "complete")],
         pods=[pod(0, phase="Succeeded", exit_code=0, message={
             "exitCode": 0, "reason": "Completed", "message": "training completed", "step": 60, "totalSteps": 60,
             "loss": 0.42, "checkpoint": {"step": 60, "path": "/workspace/output/checkpoints/checkpoint-60"},
             "output": {"adapterPath": "/workspace/output/adapter", "mergedPath": "/workspace/output/merged"}})],
         phase="Succeeded", conditions={"Succeeded": ("True", "Completed"), "Running": ("False", "Completed")},
         fields={"output": {"adapterPath": "/workspace/output/adapter", "mergedPath": "/workspace/output/merged"},
                 "checkpoint": {"step": 60, "path": "/workspace/output/checkpoints/checkpoint-60",
                                "time": NOW.strftime("%Y-%m-%dT%H:%M:%SZ")}},
         message="step 60 (loss 0.42); results in /workspace/output/adapter on PersistentVolumeClaim demo-data"),
    Case("success keeps what the trainer said beyond completion", status=running(), jobs=[attempt_job(0, "complete")],
         pods=[pod(0, phase="Succeeded", exit_code=0, message={
             "exitCode": 0, "reason": "Completed", "step": 10, "totalSteps": 10,
             "message": "training completed; damaged checkpoint removed: checkpoint-10 (optimizer.pt is missing)"})],
         phase="Succeeded", conditions={"Succeeded": ("True", "Completed")},
         message="demo-data; damaged checkpoint removed: checkpoint-10 (optimizer.pt is missing)"),
    Case("a Job whose pods the API refuses waits, naming the refusal", status=running() | {"conditions": []},
         jobs=[attempt_job(0)], refusals=['pods "demo-0-0-x" is forbidden: exceeded quota: q, requested: pods=1'],
         conditions={"Running": ("False", "PodCreationFailed")}, message="exceeded quota"),
    Case("a Job whose pods the API refuses fails after the pending deadline", spec={"pendingDeadlineSeconds": 60},
         status=running() | {"conditions": []}, jobs=[attempt_job(0, created_ago=120)],
         refusals=['pods "demo-0-0-x" is forbidden: violates PodSecurity "restricted:latest"'], phase="Failed",
         action=DELETE, action_attempt=0,
         conditions={"Failed": ("True", "PodCreationFailed")}, message="violates PodSecurity"),
    Case("exit 2 fails InvalidRecipe with the trainer's reason", status=running(),
         jobs=[attempt_job(0, "failed", failed_by(INVALID, 2))], pods=[INVALID], phase="Failed",
         conditions={"Failed": ("True", "InvalidRecipe")}, message="dataset.path /x: no such file"),
    Case("a missing input is waited for: the next attempt in 10s, no restart counted, status says what is missing",
         status=running(), jobs=[attempt_job(0, "failed", failed_by(MISSING, 2))], pods=[MISSING],
         action=CREATE, action_attempt=1, delay=10,
         fields={"attempt": 1, "restarts": 0, "inputMissingSince": NOW.strftime("%Y-%m-%dT%H:%M:%SZ")},
         conditions={"Running": ("False", "InputNotFound"), "Accepted": ("True", "Created")},
         message=f"{MISSING_TEXT}; waiting for it: attempt 1 starts in 10s"),
    Case("an input still missing: the wait grows with the time it has been missing",
         status=running(1, inputMissingSince=ago(100)), jobs=[attempt_job(1, "failed", failed_by(MISSING_AGAIN, 2))],
         pods=[MISSING_AGAIN], action=CREATE, action_attempt=2, delay=100,
         fields={"attempt": 2, "restarts": 0, "inputMissingSince": ago(100)},
         conditions={"Running": ("False", "InputNotFound")}, message="missing for 100s"),
    Case("the wait never passes pendingDeadlineSeconds", spec={"pendingDeadlineSeconds": 600},
         status=running(1, inputMissingSince=ago(550)), jobs=[attempt_job(1, "failed", failed_by(MISSING_AGAIN, 2))],
         pods=[MISSING_AGAIN], action=CREATE, action_attempt=2, delay=50, fields={"restarts": 0}),
    Case("an input missing for pendingDeadlineSeconds fails InputNotFound, naming it", spec={"pendingDeadlineSeconds": 600},
         status=running(1, inputMissingSince=ago(600)), jobs=[attempt_job(1, "failed", failed_by(MISSING_AGAIN, 2))],
         pods=[MISSING_AGAIN], phase="Failed", fields={"attempt": 1, "restarts": 0},
         conditions={"Failed": ("True", "InputNotFound")}, message=f"{MISSING_TEXT}; still missing 600s"),
    Case("another failure after a missing input forgets the wait", status=running(1, inputMissingSince=ago(100)),
         jobs=[attempt_job(1, "failed", "")], pods=[pod(1, phase="Failed", exit_code=1)],
         action=CREATE, action_attempt=2, delay=10, fields={"restarts": 1, "inputMissingSince": None}),
    Case("a full volume fails VolumeFull at once, naming the claim, its size and the fix", status=running(),
         jobs=[attempt_job(0, "failed", failed_by(FULL, 1))], pods=[FULL], phase="Failed",
         fields={"attempt": 0, "restarts": 0}, conditions={"Failed": ("True", "VolumeFull")},
         message="ran out of space on PersistentVolumeClaim demo-data, spec.storage.size 50Gi: pod demo-0-0"),
    Case("a full existing claim is named as the user's", spec={"storage": {"existingClaim": "team-volume"}},
         status=running(), jobs=[attempt_job(0, "failed", failed_by(FULL, 1))], pods=[FULL], phase="Failed",
         conditions={"Failed": ("True", "VolumeFull")}, message="PersistentVolumeClaim team-volume: pod"),
    Case("a pod that just started is loading, not training", jobs=[attempt_job(0)], pods=[pod(0)], phase="Running",
         fields={"progress": {"stage": "loading"}}, conditions={"Running": ("True", "Started")},
         message="attempt 0 is loading the model and data"),
    Case("exit 75 is a preemption: next attempt now", status=running(),
         jobs=[attempt_job(0, "failed", "")], pods=[pod(0, phase="Failed", exit_code=75, message={
             "exitCode": 75, "reason": "Stopped", "checkpoint": {"step": 33, "path": "/w/checkpoint-33"}})],
         action=CREATE, action_attempt=1, fields={"attempt": 1, "preemptions": 1, "restarts": 0,
                                                  "checkpoint": {"step": 33, "path": "/w/checkpoint-33",
                                                                 "time": NOW.strftime("%Y-%m-%dT%H:%M:%SZ")}},
         conditions={"Running": ("False", "Preempted")}),
    Case("DisruptionTarget is a preemption", status=running(),
         jobs=[attempt_job(0, "failed", failed_by(PREEMPTED_POD, None))], pods=[PREEMPTED_POD],
         action=CREATE, action_attempt=1, fields={"preemptions": 1}, message="PreemptionByScheduler"),
    Case("a pod deleted by hand stopped with a checkpoint (exit 75, pod gone): a preemption", status=running(),
         jobs=[attempt_job(0, "failed", failed_by(pod(0), 75))], pods=[],
         action=CREATE, action_attempt=1, fields={"preemptions": 1, "restarts": 0}, message="saved a checkpoint"),
    Case("node lost is a preemption", status=running(), jobs=[attempt_job(0, "failed", "")],
         pods=[pod(0, phase="Failed", pod_reason="NodeLost")],
         action=CREATE, action_attempt=1, fields={"preemptions": 1}),
    Case("pod gone, Job says DisruptionTarget: preemption", status=running(),
         jobs=[attempt_job(0, "failed", "Pod ml/demo-0-0-abc has condition DisruptionTarget matching FailJob rule "
                                         "at index 0")], action=CREATE, action_attempt=1, fields={"preemptions": 1}),
    Case("OOMKilled restarts after 10s", status=running(),
         jobs=[attempt_job(0, "failed", failed_by(OOM, 137))], pods=[OOM, STOPPED_AFTER_OOM],
         action=CREATE, action_attempt=1, delay=10, fields={"attempt": 1, "restarts": 1, "preemptions": 0,
                                                            "nextAttemptTime": later(10)},
         conditions={"Running": ("False", "AttemptFailed")}, message="OOMKilled"),
    Case("without a trigger message the real failure beats the stopped pods", status=running(),
         jobs=[attempt_job(0, "failed", "")], pods=[STOPPED_AFTER_OOM, OOM],
         action=CREATE, action_attempt=1, delay=10, fields={"restarts": 1, "preemptions": 0}),
    Case("third restart waits 40s", status=running(2, restarts=2) | {"attempt": 0},
         jobs=[attempt_job(0, "failed", "")], pods=[pod(0, phase="Failed", exit_code=1)],
         action=CREATE, action_attempt=1, delay=40, fields={"restarts": 3}),
    Case("backoff is capped at 5 minutes", spec={"backoffLimit": 20}, status=running(0, restarts=9),
         jobs=[attempt_job(0, "failed", "")], pods=[pod(0, phase="Failed", exit_code=1)],
         action=CREATE, action_attempt=1, delay=300, fields={"restarts": 10}),
    Case("backoffLimit reached fails", spec={"backoffLimit": 2}, status=running(0, restarts=2),
         jobs=[attempt_job(0, "failed", "")], pods=[pod(0, phase="Failed", exit_code=1)], phase="Failed",
         fields={"restarts": 2, "attempt": 0}, conditions={"Failed": ("True", "BackoffLimitExceeded")}),
    Case("maxPreemptions reached fails", spec={"maxPreemptions": 1}, status=running(0, preemptions=1),
         jobs=[attempt_job(0, "failed", "")], pods=[pod(0, phase="Failed", exit_code=75)], phase="Failed",
         conditions={"Failed": ("True", "PreemptionLimitExceeded")}),
    Case("backoff not over: create later", status=running(1, restarts=1, nextAttemptTime=later(7)),
         jobs=[attempt_job(0, "failed", "")], pods=[pod(0, phase="Failed", exit_code=1)],
         phase="Running", action=CREATE, action_attempt=1, delay=7, fields={"restarts": 1}),
    Case("backoff over: create now", status=running(1, restarts=1, nextAttemptTime=ago(1)),
         jobs=[attempt_job(0, "failed", "")], pods=[pod(0, phase="Failed", exit_code=1)],
         phase="Running", action=CREATE, action_attempt=1, fields={"restarts": 1}),
    Case("the running attempt's Job deleted by hand: the same attempt again, no failure", status=running(),
         pods=[pod(0, terminating=True)], phase="Pending",
         conditions={"Running": ("False", "AttemptJobDeleted")}, message="Job demo-0 of attempt 0 was deleted",
         fields={"attempt": 0, "restarts": 0}),
    Case("old pods still stopping: wait", status=running(1, preemptions=1),
         jobs=[attempt_job(0, "failed", "")], pods=[pod(0, terminating=True)], phase="Running"),
    Case("Kueue keeps the Job suspended: Queued", spec={"queueName": "gpu"}, jobs=[attempt_job(0, "suspended", queue="gpu")],
         phase="Queued", conditions={"Queued": ("True", "QueuedByKueue")}, message="queue gpu"),
    Case("Kueue admits", spec={"queueName": "gpu"},
         status={"attempt": 0, "conditions": [{"type": "Queued", "status": "True", "reason": "QueuedByKueue",
                                                "lastTransitionTime": ago(30)}]},
         jobs=[attempt_job(0, queue="gpu")], pods=[pod(0)], phase="Running",
         conditions={"Queued": ("False", "Admitted"), "Running": ("True", "Started")}),
    Case("Kueue evicts a running attempt: Queued, not failed", spec={"queueName": "gpu"}, status=running(),
         jobs=[attempt_job(0, "suspended", queue="gpu")], pods=[pod(0, phase="Failed", exit_code=75)],
         phase="Queued", fields={"restarts": 0, "preemptions": 0, "attempt": 0},
         conditions={"Running": ("False", "QueuedByKueue")}),
    Case("unschedulable past pendingDeadlineSeconds fails and stops the Job", spec={"pendingDeadlineSeconds": 60},
         jobs=[attempt_job(0)], pods=[pod(0, phase="Pending", unschedulable=True, created=61)], phase="Failed",
         action=DELETE, action_attempt=0, conditions={"Failed": ("True", "Unschedulable")}, message="Insufficient"),
    Case("image pull failing within the deadline is reported", jobs=[attempt_job(0)],
         pods=[pod(0, phase="Pending", waiting="ImagePullBackOff", created=30)],
         conditions={"Running": ("False", "ImagePullFailed")}, message="fails after 900s"),
    Case("image pull failing past the deadline fails", jobs=[attempt_job(0)],
         pods=[pod(0, phase="Pending", waiting="ErrImagePull", created=901)], phase="Failed", action=DELETE,
         conditions={"Failed": ("True", "ImagePullFailed")}),
    Case("activeDeadlineSeconds from startTime fails and stops the Job", spec={"activeDeadlineSeconds": 500},
         status=running(), jobs=[attempt_job(0)], pods=[pod(0)], phase="Failed", action=DELETE,
         conditions={"Failed": ("True", "DeadlineExceeded")}),
    Case("suspend deletes the running attempt and moves on", spec={"suspend": True}, status=running(),
         jobs=[attempt_job(0)], pods=[pod(0)], phase="Suspended", action=DELETE, action_attempt=0,
         fields={"attempt": 1}, conditions={"Suspended": ("True", "Suspended"), "Running": ("False", "Suspended")}),
    Case("an attempt failing from the suspend's SIGTERM is superseded, not counted", spec={"suspend": True},
         status=running(), jobs=[attempt_job(0, "failed", "")], pods=[pod(0, phase="Failed", exit_code=75)],
         phase="Suspended", fields={"attempt": 1, "preemptions": 0, "restarts": 0}),
    Case("suspended with the Job gone stays suspended", spec={"suspend": True},
         status=running(1) | {"conditions": [{"type": "Suspended", "status": "True", "reason": "Suspended",
                                               "lastTransitionTime": ago(5)}]},
         jobs=[attempt_job(0, "failed", "")], pods=[pod(0, phase="Failed", exit_code=75)], phase="Suspended",
         fields={"attempt": 1, "preemptions": 0, "restarts": 0}),
    Case("unsuspend starts the next attempt", status=running(1) | {"conditions": [
        {"type": "Suspended", "status": "True", "reason": "Suspended", "lastTransitionTime": ago(5)}]},
         jobs=[attempt_job(0, "failed", "")], pods=[pod(0, phase="Failed", exit_code=75)],
         action=CREATE, action_attempt=1, conditions={"Suspended": ("False", "Resumed")}),
    Case("succeeded never recreates children", status=finished("Succeeded", "Completed"), phase="Succeeded"),
    Case("failed never recreates children", status=finished("Failed", "BackoffLimitExceeded"), phase="Failed",
         jobs=[attempt_job(0, "failed", "")]),
    Case("finished with a Job still active deletes it", status=finished("Failed", "DeadlineExceeded"),
         jobs=[attempt_job(0)], pods=[pod(0)], phase="Failed", action=DELETE, action_attempt=0),
    Case("ttlSecondsAfterFinished not reached", spec={"ttlSecondsAfterFinished": 600},
         status=finished("Succeeded", "Completed"), phase="Succeeded", action=DELETE_SELF, delay=500),
    Case("ttlSecondsAfterFinished reached deletes the FineTuneJob", spec={"ttlSecondsAfterFinished": 60},
         status=finished("Succeeded", "Completed"), phase="Succeeded", action=DELETE_SELF),
    Case("a Job of an older attempt still active is deleted", status=running(1),
         jobs=[attempt_job(0), attempt_job(1)], pods=[pod(0), pod(1)], phase="Running", action=DELETE,
         action_attempt=0),
    Case("a lost status adopts the newest attempt", jobs=[attempt_job(0, "failed", ""), attempt_job(2)],
         pods=[pod(2)], phase="Running", fields={"attempt": 2}, conditions={"Running": ("True", "Resumed")}),
    Case("a changed immutable field: a condition and no action", spec={"training": {"learningRate": 1e-3}},
         accepted={**finetunejob()["spec"], "training": {"learningRate": 2e-4}},
         conditions={"Accepted": ("False", "ImmutableFieldChanged")}, message="spec.training.learningRate"),
    Case("changing only suspend is no drift", spec={"suspend": True}, accepted=finetunejob()["spec"],
         phase="Suspended", conditions={"Accepted": ("True", "Created")}),
]


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_reconcile_table(case: Case) -> None:
    observed = Observed(
        body=finetunejob(case.spec, case.status), now=NOW, jobs=case.jobs, pods=case.pods,
        accepted_spec=case.accepted, refusals=case.refusals,
    )
    decision = reconcile(observed)
    status = decision.status.to_api()
    assert status["phase"] == case.phase, status
    assert decision.action.type is case.action, decision.action
    if case.action_attempt is not None:
        assert decision.action.attempt == case.action_attempt
    assert decision.action.delay_seconds == pytest.approx(case.delay), decision.action
    for key, value in case.fields.items():
        assert status.get(key) == value, (key, status)
    conditions = {c["type"]: (c["status"], c["reason"]) for c in status.get("conditions", [])}
    for kind, expected in case.conditions.items():
        assert conditions.get(kind) == expected, conditions
    assert case.message in status.get("message", ""), status


def replay(body: dict[str, Any], **observed: Any) -> Any:
    """Reconcile, then reconcile again with the first decision's status stored on the object."""
    first = reconcile(Observed(body=body, now=NOW, **observed))
    again = dict(body, status=first.status.to_api())
    return first, reconcile(Observed(body=again, now=NOW, **observed))


WAITING = ("a Job whose pods the API refuses waits, naming the refusal",
           "image pull failing within the deadline is reported")


@pytest.mark.parametrize("case", [case for case in CASES if case.id in WAITING], ids=WAITING)
def test_a_waiting_job_keeps_its_status_from_turn_to_turn(case: Case) -> None:
    """A status rewritten every turn is an API write and a watch event per turn for nothing: while a
    FineTuneJob waits, its next turn (here 30 s later) decides exactly the same status."""
    body = finetunejob(case.spec, case.status)
    seen = {"jobs": case.jobs, "pods": case.pods, "refusals": case.refusals}
    first = reconcile(Observed(body=body, now=NOW, **seen))
    turn = reconcile(Observed(body=dict(body, status=first.status.to_api()), now=NOW + dt.timedelta(seconds=30),
                              **seen))
    assert turn.status.to_api() == first.status.to_api()


def test_a_failure_is_counted_once() -> None:
    first, second = replay(finetunejob(status=running()), jobs=[attempt_job(0, "failed", failed_by(OOM, 137))],
                           pods=[OOM])
    assert first.status.restarts == second.status.restarts == 1
    assert second.status.attempt == 1
    assert second.action.type is CREATE and second.action.delay_seconds == pytest.approx(10)
    assert second.events == ()  # nothing changed, nothing to announce


def test_a_finished_job_never_creates_children_whatever_is_observed() -> None:
    for status in (finished("Succeeded", "Completed"), finished("Failed", "InvalidRecipe")):
        for jobs in ([], [attempt_job(0, "failed", "")], [attempt_job(0, "complete")]):
            decision = reconcile(Observed(body=finetunejob(status=status), now=NOW, jobs=jobs, pods=[]))
            assert decision.action.type is not CREATE


def test_backoff_doubles_from_10s_and_caps_at_5_minutes() -> None:
    assert [backoff_seconds(n) for n in range(1, 8)] == [10, 20, 40, 80, 160, 300, 300]


def test_a_preemption_posts_a_warning_event() -> None:
    decision = reconcile(Observed(body=finetunejob(status=running()), now=NOW,
                                  jobs=[attempt_job(0, "failed", failed_by(PREEMPTED_POD, None))], pods=[PREEMPTED_POD]))
    assert [(e.type, e.reason) for e in decision.events] == [("Warning", "Preempted")]


def test_progress_is_taken_while_running_and_kept_otherwise() -> None:
    progress = Progress(step=45, total_steps=100, percent="45%", loss=1.25, loss_text="1.250", stage="training")
    checkpoint = CheckpointStatus(step=40, path="/workspace/output/checkpoints/checkpoint-40", time=ago(30))
    decision = reconcile(Observed(body=finetunejob(status=running()), now=NOW, jobs=[attempt_job(0)],
                                  pods=[pod(0)], progress=progress, checkpoint=checkpoint))
    assert decision.status.progress == progress and decision.status.checkpoint == checkpoint
    later_decision = reconcile(Observed(body=finetunejob(status=decision.status.to_api()), now=NOW,
                                        jobs=[attempt_job(0)], pods=[pod(0, phase="Pending")]))
    assert later_decision.status.progress == progress  # a missed poll never erases progress


def test_phase_is_derived_from_conditions_only() -> None:
    status = running() | {"phase": "Succeeded"}  # a stale or hand-written phase
    decision = reconcile(Observed(body=finetunejob(status=status), now=NOW, jobs=[attempt_job(0)], pods=[pod(0)]))
    assert decision.status.phase.value == "Running"


def test_the_running_message_follows_the_trainers_stage_and_a_finished_job_shows_none() -> None:
    def follow(status: dict[str, Any], stage: str | None, step: int | None = None) -> Any:
        return reconcile(Observed(body=finetunejob(status=status), now=NOW, jobs=[attempt_job(0)], pods=[pod(0)],
                                  progress=Progress(stage=stage, step=step)))

    loading = follow(running(), "loading")
    assert loading.status.progress.stage == "loading" and "is loading the model and data" in loading.status.message
    training = follow(loading.status.to_api(), "training", step=3)
    assert training.status.progress.stage == "training" and "attempt 0 is training" in training.status.message
    missed_poll = reconcile(Observed(body=finetunejob(status=training.status.to_api()), now=NOW,
                                     jobs=[attempt_job(0)], pods=[pod(0)]))
    assert missed_poll.status.progress.stage == "training"  # a missed poll keeps what was seen
    done = reconcile(Observed(body=finetunejob(status=training.status.to_api()), now=NOW,
                              jobs=[attempt_job(0, "complete")], pods=[pod(0, phase="Succeeded", exit_code=0, message={
                                  "exitCode": 0, "reason": "Completed", "step": 3, "totalSteps": 3, "loss": 2.0})]))
    assert done.status.progress.stage is None and done.status.progress.loss_text == "2.000"


def test_an_input_found_at_last_ends_the_wait() -> None:
    waiting = running(1, inputMissingSince=ago(100))
    decision = reconcile(Observed(body=finetunejob(status=waiting), now=NOW, jobs=[attempt_job(1)], pods=[pod(1)],
                                  progress=Progress(step=1, stage="training")))
    assert decision.status.input_missing_since is None


@pytest.mark.parametrize(("text", "full"), [
    ("OSError: [Errno 28] No space left on device: '/workspace/output/checkpoints/checkpoint-40/optimizer.pt'", True),
    ("SafetensorError: Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: \"No space left "
     "on device\" })", True),
    ("OSError: [Errno 122] Disk quota exceeded", True),
    ("RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB", False),
    ("ValueError: the tokenizer has no space token", False),
])
def test_a_full_volume_is_recognised_in_the_words_of_each_writer(text: str, full: bool) -> None:
    failed = pod(0, phase="Failed", exit_code=1, message={"reason": "Failed", "message": text})
    failure = classify_failure(attempt_job(0, "failed", failed_by(failed, 1)), [failed])
    assert (failure.kind, failure.detail) == (("full", "VolumeFull") if full else ("failed", "ExitCode1"))


def test_success_after_a_wait_for_input_forgets_the_wait() -> None:
    done = pod(1, phase="Succeeded", exit_code=0, message={"exitCode": 0, "reason": "Completed", "step": 5})
    decision = reconcile(Observed(body=finetunejob(status=running(1, inputMissingSince=ago(100))), now=NOW,
                                  jobs=[attempt_job(1, "complete")], pods=[done]))
    assert decision.status.phase.value == "Succeeded" and decision.status.input_missing_since is None


def test_an_ended_attempt_leaves_no_stage_while_the_next_one_waits() -> None:
    status = running(progress={"stage": "loading"})
    failed = reconcile(Observed(body=finetunejob(status=status), now=NOW, jobs=[attempt_job(0, "failed", "")],
                                pods=[pod(0, phase="Failed", exit_code=1)]))
    assert failed.action.type is CREATE and failed.status.progress.stage is None
    suspended = reconcile(Observed(body=finetunejob({"suspend": True}, status), now=NOW, jobs=[attempt_job(0)],
                                   pods=[pod(0)]))
    assert suspended.status.progress.stage is None
