"""status: phase, conditions, progress, checkpoint and output, written by the operator."""

from __future__ import annotations

from enum import Enum
from typing import Literal

from pydantic import Field

from kubetune_api.conditions import ConditionType
from kubetune_api.recipe.base import LONG, KubeModel


class Phase(str, Enum):
    """Summary of the conditions, for `kubectl get`."""

    pending = "Pending"
    queued = "Queued"
    running = "Running"
    suspended = "Suspended"
    succeeded = "Succeeded"
    failed = "Failed"


class Condition(KubeModel):
    """A Kubernetes-style condition (metav1.Condition)."""

    type: ConditionType = Field(description="type of the condition.")
    status: Literal["True", "False", "Unknown"] = Field(description="status is True, False or Unknown.")
    reason: str = Field(max_length=1024, description="reason is a CamelCase word for the last transition.")
    message: str = Field(default="", max_length=32768, description="message is a human-readable explanation.")
    last_transition_time: str = Field(max_length=64, description="lastTransitionTime is when status last changed.")
    observed_generation: int | None = Field(
        default=None, ge=0, description="observedGeneration is the metadata.generation this reflects."
    )


class Progress(KubeModel):
    """Training progress polled from rank 0's metrics (best effort)."""

    step: int | None = Field(default=None, description="step is the last optimizer step.")
    total_steps: int | None = Field(default=None, description="totalSteps is the planned number of steps.")
    percent: str | None = Field(default=None, max_length=8, description="percent is step/totalSteps as text, e.g. 45%.")
    epoch: float | None = Field(default=None, description="epoch is the fractional epoch.")
    loss: float | None = Field(default=None, description="loss is the last training loss.")
    loss_text: str | None = Field(
        default=None, max_length=32, description="lossText is loss as kubectl get shows it (3 decimals); absent until "
        "the first logged loss."
    )
    stage: str | None = Field(
        default=None, max_length=16, description="stage is what the running attempt's trainer does: loading, "
        "training, evaluating, saving, exporting, done."
    )
    eval_loss: float | None = Field(default=None, description="evalLoss is the last validation loss.")
    learning_rate: float | None = Field(default=None, description="learningRate is the current learning rate.")
    tokens_per_second: float | None = Field(default=None, description="tokensPerSecond is training throughput.")
    eta_seconds: float | None = Field(default=None, description="etaSeconds estimates the time left.")
    updated_at: str | None = Field(default=None, max_length=64, description="updatedAt is when this was polled.")


class CheckpointStatus(KubeModel):
    """The newest complete checkpoint."""

    step: int | None = Field(default=None, description="step of the newest complete checkpoint.")
    path: str | None = Field(default=None, max_length=LONG, description="path of the checkpoint on the PVC.")
    time: str | None = Field(default=None, max_length=64, description="time the checkpoint was completed.")


class OutputStatus(KubeModel):
    """Where the results are on the PVC."""

    adapter_path: str | None = Field(default=None, max_length=LONG, description="adapterPath holds the LoRA adapter.")
    merged_path: str | None = Field(default=None, max_length=LONG, description="mergedPath holds the merged model.")
    archive_path: str | None = Field(default=None, max_length=LONG, description="archivePath is the .tar.gz result.")
    uri: str | None = Field(
        default=None, max_length=LONG, description="uri is where the result was uploaded and verified (output.uri)."
    )


class FineTuneJobStatus(KubeModel):
    """Observed state, written by the operator's reconcile in one patch."""

    phase: Phase | None = Field(default=None, description="phase summarizes the conditions for kubectl get.")
    conditions: list[Condition] = Field(
        default_factory=list, max_length=8, description="conditions are the latest observations, one per type."
    )
    attempt: int | None = Field(default=None, ge=0, description="attempt is the number of the current attempt Job.")
    restarts: int = Field(default=0, ge=0, description="restarts counts failures retried so far.")
    preemptions: int = Field(default=0, ge=0, description="preemptions counts preemptions resumed so far.")
    progress: Progress | None = Field(default=None, description="progress is the last polled training progress.")
    checkpoint: CheckpointStatus | None = Field(default=None, description="checkpoint is the newest complete one.")
    output: OutputStatus | None = Field(default=None, description="output locates the results.")
    start_time: str | None = Field(default=None, max_length=64, description="startTime is when the first attempt started.")
    completion_time: str | None = Field(default=None, max_length=64, description="completionTime is when it finished.")
    next_attempt_time: str | None = Field(
        default=None, max_length=64, description="nextAttemptTime is when the next attempt starts after a backoff."
    )
    input_missing_since: str | None = Field(
        default=None, max_length=64, description="inputMissingSince is when an attempt first found its input missing "
        "(InputNotFound); attempts retry until pendingDeadlineSeconds after it."
    )
    observed_generation: int | None = Field(default=None, description="observedGeneration is the generation seen.")
    message: str | None = Field(default=None, max_length=32768, description="message explains the phase.")
