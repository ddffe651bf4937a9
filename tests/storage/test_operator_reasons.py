"""The operator's side of uploads: UploadFailed is its own retried reason, the uploaded URI lands in status."""

from __future__ import annotations

from kubetune_operator.reconcile import ActionType, Observed, reconcile

from tests.operator.objects import NOW, ago, attempt_job, failed_by, finetunejob, pod

RUNNING = {
    "phase": "Running",
    "attempt": 0,
    "startTime": ago(600),
    "conditions": [
        {"type": "Accepted", "status": "True", "reason": "Created", "lastTransitionTime": ago(700)},
        {"type": "Running", "status": "True", "reason": "Started", "lastTransitionTime": ago(600)},
    ],
}


def conditions(decision: object) -> dict[str, tuple[str, str]]:
    """type → (status, reason) of the decided status."""
    return {c.type: (c.status, c.reason) for c in decision.status.conditions}  # type: ignore[attr-defined]


def test_an_upload_failure_is_retried_under_its_own_reason() -> None:
    message = {"exitCode": 1, "reason": "UploadFailed", "message": "output.uri s3://models/x: upload failed: denied"}
    failed = pod(0, phase="Failed", exit_code=1, message=message)
    observed = Observed(body=finetunejob(status=RUNNING), now=NOW, jobs=[attempt_job(0, "failed", failed_by(failed))],
                        pods=[failed])

    decision = reconcile(observed)

    assert decision.action.type is ActionType.CREATE_ATTEMPT and decision.action.attempt == 1
    assert decision.status.restarts == 1
    assert conditions(decision)["Running"] == ("False", "UploadFailed")
    assert "upload failed: denied" in decision.status.message


def test_an_ordinary_exit_1_stays_attempt_failed() -> None:
    failed = pod(0, phase="Failed", exit_code=1, message={"exitCode": 1, "reason": "Failed", "message": "boom"})
    observed = Observed(body=finetunejob(status=RUNNING), now=NOW, jobs=[attempt_job(0, "failed", failed_by(failed))],
                        pods=[failed])
    assert conditions(reconcile(observed))["Running"] == ("False", "AttemptFailed")


def test_the_uploaded_uri_becomes_status_output_uri() -> None:
    message = {"exitCode": 0, "reason": "Completed", "message": "training completed", "step": 4, "totalSteps": 4,
               "output": {"adapterPath": "/workspace/output/adapter", "uri": "s3://models/quiz/run-1"}}
    done = pod(0, phase="Succeeded", exit_code=0, message=message)
    decision = reconcile(Observed(body=finetunejob(status=RUNNING), now=NOW, jobs=[attempt_job(0, "complete")],
                                  pods=[done]))
    assert decision.status.output.uri == "s3://models/quiz/run-1"
    assert decision.status.output.adapter_path == "/workspace/output/adapter"
