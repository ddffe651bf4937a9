"""Training progress: tracked on every rank, served as Prometheus metrics by global rank 0.

`TrainerMetrics` builds its prometheus-client objects from `metric_specs.TRAINER_METRICS`
(the one list the operator and the Helm dashboards are checked against), each with the
labels `finetunejob` and `namespace`. A gauge is exported only once it has a value (a 0
before the first evaluation would plot as a real eval loss of 0, and a checkpoint
timestamp of 0 as a checkpoint 56 years old); counters and histograms are exported at 0
from the start, so that `rate()`/`increase()` count their first event. `ProgressCallback`
turns Trainer events into a `Progress` record (step, loss, throughput, ETA) that feeds the
metrics, the local progress bar and the final summary.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Enum, Gauge, Histogram, start_http_server
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from kubetune_trainer.checkpoints import Checkpoint
from kubetune_api.contract import CHECKPOINT_PREFIX
from kubetune_api.metric_specs import TRAINER_METRICS, MetricSpec

log = logging.getLogger(__name__)

_KINDS = {"gauge": Gauge, "counter": Counter, "histogram": Histogram, "enum": Enum}

METHOD_LOG_METRICS = {
    "kd_loss": "kubetune_trainer_kd_loss",  # distill.DistillationTrainer
    "ce_loss": "kubetune_trainer_ce_loss",
    "rewards/margins": "kubetune_trainer_dpo_reward_margin",  # TRL's DPOTrainer
    "rewards/accuracies": "kubetune_trainer_dpo_reward_accuracy",
}
"""Training-log keys of distillation and DPO exported as gauges when a log has them."""


def _build(spec: MetricSpec, registry: CollectorRegistry) -> Any:
    kwargs: dict[str, Any] = {"registry": registry}
    if spec.kind == "enum":
        kwargs["states"] = list(spec.states)
    if spec.kind == "histogram":
        # Checkpoint saves take from well under a second (tiny LoRA) to minutes (DeepSpeed, full state).
        kwargs["buckets"] = (0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, float("inf"))
    return _KINDS[spec.kind](spec.name, spec.help, spec.labels, **kwargs)


class TrainerMetrics:
    """The trainer's Prometheus metrics for one FineTuneJob, in a registry of their own."""

    def __init__(self, finetunejob: str, namespace: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._labels = {"finetunejob": finetunejob, "namespace": namespace}
        self._specs = {spec.name: spec for spec in TRAINER_METRICS}
        self._metrics = {spec.name: _build(spec, self.registry) for spec in TRAINER_METRICS}
        # A labelled prometheus-client metric exports no sample until .labels() creates its child:
        # gauges get theirs at the first value, counters and histograms now, at 0.
        self._children: dict[str, Any] = {}
        for spec in TRAINER_METRICS:
            if spec.kind in ("counter", "histogram"):
                self._child(spec.name)
        self._server: Any = None

    def _child(self, name: str) -> Any:
        child = self._children.get(name)
        if child is None:
            labels = {key: self._labels[key] for key in self._specs[name].labels}
            child = self._children[name] = self._metrics[name].labels(**labels)
        return child

    def serve(self, port: int, host: str) -> bool:
        """Serve /metrics on host:port in a daemon thread; False (and a warning) if the port is taken."""
        try:
            self._server, _ = start_http_server(port, addr=host, registry=self.registry)
        except OSError as error:
            log.warning("metrics not served on %s:%s: %s", host, port, error)
            return False
        log.info("serving metrics on http://%s:%s/metrics", host, port)
        return True

    def shutdown(self) -> None:
        """Stop serving (tests start several trainers in one process)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def set(self, name: str, value: float | None) -> None:
        """Set a gauge (exporting it from now on); None leaves it as it was."""
        if value is not None:
            self._child(name).set(value)

    def inc(self, name: str, amount: float) -> None:
        """Add to a counter."""
        if amount > 0:
            self._child(name).inc(amount)

    def observe(self, name: str, value: float) -> None:
        """Record one histogram observation."""
        self._child(name).observe(value)

    def phase(self, state: str) -> None:
        """Set the phase enum (one of metric_specs.TRAINER_PHASES)."""
        self._child("kubetune_trainer_phase").state(state)


@dataclass
class Progress:
    """The latest training numbers, in the termination message's camelCase when dumped."""

    step: int = 0
    total_steps: int = 0
    epoch: float | None = None
    loss: float | None = None
    eval_loss: float | None = None
    learning_rate: float | None = None
    grad_norm: float | None = None
    tokens_per_second: float | None = None
    samples_per_second: float | None = None
    eta_seconds: float | None = None

    def as_dict(self) -> dict[str, Any]:
        """The numbers with camelCase keys, Nones left out."""
        camel = {"total_steps": "totalSteps", "eval_loss": "evalLoss", "learning_rate": "learningRate",
                 "grad_norm": "gradNorm", "tokens_per_second": "tokensPerSecond",
                 "samples_per_second": "samplesPerSecond", "eta_seconds": "etaSeconds"}
        return {camel.get(key, key): value for key, value in asdict(self).items() if value is not None}


class ProgressCallback(TrainerCallback):
    """Keeps `progress` current from Trainer events and mirrors it into `metrics` (rank 0 only)."""

    def __init__(self, metrics: TrainerMetrics | None, listeners: tuple[Any, ...] = ()) -> None:
        self.metrics = metrics
        self.listeners = listeners
        self.progress = Progress()
        self._window_start: float | None = None
        self._window_step = 0
        self._window_tokens = 0
        self._tokens_counted = 0
        self._started_steps = 0

    def _update(self, name: str, value: float | None) -> None:
        if self.metrics is not None:
            self.metrics.set(name, value)

    def _phase(self, phase: str) -> None:
        if self.metrics is not None:
            self.metrics.phase(phase)

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self.progress.total_steps = state.max_steps
        self.progress.step = state.global_step
        self._started_steps = state.global_step
        self._window_start = time.monotonic()
        self._window_step = state.global_step
        self._window_tokens = self._tokens_counted = state.num_input_tokens_seen
        self._update("kubetune_trainer_total_steps", state.max_steps)
        self._update("kubetune_trainer_step", state.global_step)
        if state.global_step > 0:
            self._resumed_checkpoint(Path(args.output_dir), state.global_step)
        self._phase("training")

    def _resumed_checkpoint(self, directory: Path, step: int) -> None:
        """A resumed run's newest checkpoint is the one it resumed from (step `step`): export it now.

        Without this the last-checkpoint gauges stay unset until the next save, and an alert on the
        checkpoint's age sees no checkpoint at all for up to `saveSteps` steps after every resume.
        """
        record = Checkpoint(step, directory / f"{CHECKPOINT_PREFIX}{step}").record()
        if record is None or not isinstance(record.get("time"), (int, float)):
            return  # resumed from a folder without our marker (not ours to vouch for)
        self._update("kubetune_trainer_last_checkpoint_step", step)
        self._update("kubetune_trainer_last_checkpoint_timestamp_seconds", float(record["time"]))

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        progress = self.progress
        progress.step = state.global_step
        progress.epoch = state.epoch
        now = time.monotonic()
        steps = state.global_step - self._window_step
        elapsed = now - (self._window_start or now)
        if steps > 0 and elapsed > 0:
            tokens = state.num_input_tokens_seen - self._window_tokens
            progress.tokens_per_second = tokens / elapsed
            batch = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
            progress.samples_per_second = steps * batch / elapsed
            progress.eta_seconds = (state.max_steps - state.global_step) * elapsed / steps
        # A sliding window of about 10 steps keeps throughput current but not jumpy.
        if steps >= 10:
            self._window_start, self._window_step, self._window_tokens = now, state.global_step, state.num_input_tokens_seen
        if self.metrics is not None:
            self._export_step(state)
            if control.should_evaluate:
                self._phase("evaluating")
            elif control.should_save:
                self._phase("saving")
        for listener in self.listeners:
            listener(progress)

    def _export_step(self, state: TrainerState) -> None:
        progress = self.progress
        for name, value in (
            ("kubetune_trainer_step", progress.step),
            ("kubetune_trainer_epoch", progress.epoch),
            ("kubetune_trainer_tokens_per_second", progress.tokens_per_second),
            ("kubetune_trainer_samples_per_second", progress.samples_per_second),
            ("kubetune_trainer_eta_seconds", progress.eta_seconds),
        ):
            self._update(name, value)
        assert self.metrics is not None
        self.metrics.inc("kubetune_trainer_tokens", state.num_input_tokens_seen - self._tokens_counted)
        self._tokens_counted = state.num_input_tokens_seen
        self._export_gpu_memory()

    def _export_gpu_memory(self) -> None:
        import torch

        if torch.cuda.is_available():
            self._update("kubetune_trainer_gpu_memory_used_bytes", torch.cuda.memory_allocated())
            self._update("kubetune_trainer_gpu_memory_peak_bytes", torch.cuda.max_memory_allocated())

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        logs = logs or {}
        progress = self.progress
        for key, attribute, metric in (
            ("loss", "loss", "kubetune_trainer_train_loss"),
            ("eval_loss", "eval_loss", "kubetune_trainer_eval_loss"),
            ("learning_rate", "learning_rate", "kubetune_trainer_learning_rate"),
            ("grad_norm", "grad_norm", "kubetune_trainer_grad_norm"),
        ):
            if key in logs:
                setattr(progress, attribute, float(logs[key]))
                self._update(metric, float(logs[key]))
        for key, metric in METHOD_LOG_METRICS.items():
            if key in logs:
                self._update(metric, float(logs[key]))
        for listener in self.listeners:
            listener(progress)

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        # After the last on_log: a listener closed at the last step end would miss the last loss.
        for listener in self.listeners:
            getattr(listener, "close", lambda: None)()

    def on_evaluate(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        self._phase("training")

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        self._phase("training")

    def checkpoint_saved(self, step: int, path: object, seconds: float, written: float) -> None:
        """Called by the checkpoint callback once a checkpoint is complete (rank 0)."""
        if self.metrics is not None:
            self.metrics.observe("kubetune_trainer_checkpoint_save_seconds", seconds)
            self._update("kubetune_trainer_last_checkpoint_step", step)
            self._update("kubetune_trainer_last_checkpoint_timestamp_seconds", written)
