"""The trainer's Prometheus metrics are exactly metric_specs.TRAINER_METRICS, labelled by FineTuneJob."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import pytest
from kubetune_api.metric_specs import TRAINER_METRICS, TRAINER_PHASES
from kubetune_trainer.metrics import Progress, TrainerMetrics
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tests.trainer.sft_runs import free_port


def _exposition(metrics: TrainerMetrics) -> str:
    return generate_latest(metrics.registry).decode()


def test_every_spec_is_exported_with_job_labels_once_it_has_a_value() -> None:
    metrics = TrainerMetrics("quiz", "team-a")
    for spec in TRAINER_METRICS:
        if spec.kind == "gauge":
            metrics.set(spec.name, 1.0)
    metrics.phase("training")
    text = _exposition(metrics)
    for spec in TRAINER_METRICS:
        for name in spec.exported_names():
            assert f"{name}{{" in text, name
    assert 'finetunejob="quiz"' in text and 'namespace="team-a"' in text
    assert ' job="' not in text and '{job="' not in text


def test_gauges_wait_for_a_value_and_counters_start_at_zero() -> None:
    text = _exposition(TrainerMetrics("quiz", "team-a"))
    samples = [line for line in text.splitlines() if not line.startswith("#")]
    # A 0 before the first value would plot as an eval loss of 0 or a checkpoint from 1970.
    assert not [line for line in samples if "eval_loss" in line or "last_checkpoint" in line or "_phase{" in line]
    # Born at 0, so that increase() counts the first tokens and the first checkpoint save.
    assert 'kubetune_trainer_tokens_total{finetunejob="quiz",namespace="team-a"} 0.0' in samples
    assert 'kubetune_trainer_checkpoint_save_seconds_count{finetunejob="quiz",namespace="team-a"} 0.0' in samples


def test_phase_is_one_state_at_a_time() -> None:
    metrics = TrainerMetrics("quiz", "team-a")
    metrics.phase("saving")
    lines = [line for line in _exposition(metrics).splitlines() if line.startswith("kubetune_trainer_phase{")]
    assert len(lines) == len(TRAINER_PHASES)
    assert [line for line in lines if line.endswith(" 1.0")] == [
        'kubetune_trainer_phase{finetunejob="quiz",kubetune_trainer_phase="saving",namespace="team-a"} 1.0'
    ]


def test_serves_over_http_and_refuses_a_taken_port_quietly() -> None:
    port = free_port()
    first, second = TrainerMetrics("quiz", "ns"), TrainerMetrics("quiz", "ns")
    try:
        assert first.serve(port, "127.0.0.1")
        first.set("kubetune_trainer_step", 7)
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        assert 'kubetune_trainer_step{finetunejob="quiz",namespace="ns"} 7.0' in body
        assert second.serve(port, "127.0.0.1") is False  # metrics are best effort: training goes on
    finally:
        first.shutdown()


def test_progress_uses_the_termination_message_names() -> None:
    progress = Progress(step=3, total_steps=10, loss=1.5, tokens_per_second=99.0)
    assert progress.as_dict() == {"step": 3, "totalSteps": 10, "loss": 1.5, "tokensPerSecond": 99.0}


def test_a_resumed_run_exports_the_checkpoint_it_resumed_from(tmp_path: Path) -> None:
    from kubetune_trainer.checkpoints import write_marker
    from kubetune_trainer.metrics import ProgressCallback
    from transformers import TrainerControl, TrainerState, TrainingArguments

    folder = tmp_path / "checkpoint-40"
    folder.mkdir()
    (folder / "adapter_model.safetensors").write_bytes(b"weights")
    written = write_marker(folder, 40)
    metrics = TrainerMetrics("quiz", "team-a")
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[])
    ProgressCallback(metrics).on_train_begin(args, TrainerState(global_step=40, max_steps=100), TrainerControl())
    samples = {sample.name: sample for family in text_string_to_metric_families(_exposition(metrics))
               for sample in family.samples}
    step = samples["kubetune_trainer_last_checkpoint_step"]
    assert step.value == 40 and step.labels == {"finetunejob": "quiz", "namespace": "team-a"}
    assert samples["kubetune_trainer_last_checkpoint_timestamp_seconds"].value == pytest.approx(written)
    assert samples["kubetune_trainer_checkpoint_save_seconds_count"].value == 0  # a resume is no save

    fresh = TrainerMetrics("quiz", "team-a")  # a first run has no checkpoint: the gauges stay unexported
    ProgressCallback(fresh).on_train_begin(args, TrainerState(global_step=0, max_steps=100), TrainerControl())
    assert "last_checkpoint" not in "".join(l for l in _exposition(fresh).splitlines() if not l.startswith("#"))
