"""The one list of metric names: what the trainer and the operator export.

The serving code builds its prometheus-client objects from these specs, and the
Helm chart's dashboards and alerts are checked against them, so a dashboard can
only query a metric that the code really exports. Names follow Prometheus
conventions (base units, `_total` for counters); the job label is
`finetunejob`, never `job`, which Prometheus reserves for the scrape job.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

MetricKind = Literal["gauge", "counter", "histogram", "enum"]

JOB_LABELS = ("finetunejob", "namespace")


@dataclass(frozen=True)
class MetricSpec:
    """One exported metric: its name, kind, help text and labels."""

    name: str
    kind: MetricKind
    help: str
    labels: tuple[str, ...] = JOB_LABELS
    states: tuple[str, ...] = ()  # for kind "enum"

    def exported_names(self) -> tuple[str, ...]:
        """The series names Prometheus sees (counters get `_total`, histograms their parts)."""
        if self.kind == "histogram":
            return tuple(f"{self.name}{suffix}" for suffix in ("_bucket", "_sum", "_count"))
        if self.kind == "counter":
            return (f"{self.name}_total",)
        return (self.name,)


TRAINER_PHASES = ("loading", "training", "evaluating", "saving", "exporting", "done", "failed")

TRAINER_METRICS: tuple[MetricSpec, ...] = (
    MetricSpec("kubetune_trainer_step", "gauge", "Last completed optimizer step."),
    MetricSpec("kubetune_trainer_total_steps", "gauge", "Planned number of optimizer steps."),
    MetricSpec("kubetune_trainer_epoch", "gauge", "Fractional epoch."),
    MetricSpec("kubetune_trainer_train_loss", "gauge", "Last logged training loss."),
    MetricSpec("kubetune_trainer_eval_loss", "gauge", "Last validation loss."),
    MetricSpec("kubetune_trainer_learning_rate", "gauge", "Current learning rate."),
    MetricSpec("kubetune_trainer_grad_norm", "gauge", "Last gradient norm before clipping."),
    MetricSpec("kubetune_trainer_tokens_per_second", "gauge", "Training tokens per second, all ranks."),
    MetricSpec("kubetune_trainer_samples_per_second", "gauge", "Training samples per second, all ranks."),
    MetricSpec("kubetune_trainer_tokens", "counter", "Training tokens processed, all ranks."),
    MetricSpec("kubetune_trainer_eta_seconds", "gauge", "Estimated seconds until training ends."),
    MetricSpec("kubetune_trainer_gpu_memory_used_bytes", "gauge", "GPU memory allocated by rank 0."),
    MetricSpec("kubetune_trainer_gpu_memory_peak_bytes", "gauge", "Peak GPU memory allocated by rank 0."),
    MetricSpec("kubetune_trainer_checkpoint_save_seconds", "histogram", "Time to save one checkpoint."),
    MetricSpec("kubetune_trainer_last_checkpoint_step", "gauge", "Step of the newest complete checkpoint."),
    MetricSpec(
        "kubetune_trainer_last_checkpoint_timestamp_seconds",
        "gauge",
        "Unix time the newest complete checkpoint was written.",
    ),
    MetricSpec("kubetune_trainer_phase", "enum", "What the trainer is doing.", states=TRAINER_PHASES),
    # method.type distill: the two parts of the loss (KL to the teacher at temperature T, and cross-entropy).
    MetricSpec("kubetune_trainer_kd_loss", "gauge", "Last logged distillation KL to the teacher (per token)."),
    MetricSpec("kubetune_trainer_ce_loss", "gauge", "Last logged cross-entropy part of the distillation loss."),
    # method.type dpo: TRL's implicit reward of the chosen answer minus the rejected one, and how often it is > 0.
    MetricSpec("kubetune_trainer_dpo_reward_margin", "gauge", "Last logged DPO reward margin, chosen minus rejected."),
    MetricSpec("kubetune_trainer_dpo_reward_accuracy", "gauge", "Last logged fraction of pairs with chosen reward higher."),
)

OPERATOR_METRICS: tuple[MetricSpec, ...] = (
    MetricSpec("kubetune_finetunejobs", "gauge", "FineTuneJobs by phase.", labels=("namespace", "phase")),
    MetricSpec(
        "kubetune_finetunejob_transitions",
        "counter",
        "Phase transitions of FineTuneJobs.",
        labels=("namespace", "phase", "reason"),
    ),
    MetricSpec(
        "kubetune_finetunejob_time_to_running_seconds",
        "histogram",
        "Seconds from a FineTuneJob's creation to its first Running.",
        labels=("namespace",),
    ),
    MetricSpec("kubetune_finetunejob_restarts", "counter", "Failed attempts that were retried."),
    MetricSpec("kubetune_finetunejob_preemptions", "counter", "Preempted attempts that were resumed."),
    MetricSpec(
        "kubetune_finetunejob_failures",
        "counter",
        "FineTuneJobs that ended Failed, by reason.",
        labels=("namespace", "reason"),
    ),
    # Per FineTuneJob, from its status: what a dashboard shows once the trainer's process is gone,
    # kept until the FineTuneJob is deleted. Each is exported only once the status has the value.
    MetricSpec(
        "kubetune_finetunejob_phase",
        "gauge",
        "1 for the phase a FineTuneJob is in, 0 for the other phases.",
        labels=("finetunejob", "namespace", "phase"),
    ),
    MetricSpec("kubetune_finetunejob_step", "gauge", "Last optimizer step the operator saw (status.progress.step)."),
    MetricSpec("kubetune_finetunejob_total_steps", "gauge", "Planned optimizer steps (status.progress.totalSteps)."),
    MetricSpec("kubetune_finetunejob_train_loss", "gauge", "Last training loss the operator saw (status.progress.loss)."),
    MetricSpec(
        "kubetune_finetunejob_completion_timestamp_seconds",
        "gauge",
        "Unix time a FineTuneJob finished (status.completionTime).",
    ),
    MetricSpec("kubetune_operator_reconcile_errors", "counter", "Reconciles that raised.", labels=()),
    MetricSpec("kubetune_operator_reconcile_seconds", "histogram", "Time of one reconcile.", labels=()),
)


def all_exported_names() -> set[str]:
    """Every series name the trainer and the operator export."""
    return {name for spec in TRAINER_METRICS + OPERATOR_METRICS for name in spec.exported_names()}
