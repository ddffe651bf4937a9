"""Operator settings from env, kopf tuning, and the operator's own metrics."""

from __future__ import annotations

import kopf
import pytest
from prometheus_client import generate_latest

from kubetune_operator import names
from kubetune_operator.metrics import OperatorMetrics
from kubetune_operator.reconcile import Observed, reconcile
from kubetune_operator.settings import Settings, SettingsError
from kubetune_operator.tuning import tune_kopf
from kubetune_api.metric_specs import OPERATOR_METRICS
from kubetune_api.recipe import FineTuneJobStatus
from tests.operator.objects import NOW, attempt_job, finetunejob, pod


def test_settings_default_without_env() -> None:
    settings = Settings.from_env({})
    assert settings == Settings() and settings.clusterwide


def test_settings_from_env() -> None:
    settings = Settings.from_env({
        "KUBETUNE_TRAINER_IMAGE": "ghcr.io/me/trainer:2", "KUBETUNE_TRAINER_SERVICE_ACCOUNT": "trainer",
        "KUBETUNE_WATCH_NAMESPACES": " ml , research ,", "KUBETUNE_METRICS_PORT": "0",
        "KUBETUNE_RESYNC_SECONDS": "2.5", "KUBETUNE_PROGRESS_CONCURRENCY": "3",
    })
    assert settings.trainer_image == "ghcr.io/me/trainer:2" and settings.trainer_service_account == "trainer"
    assert settings.namespaces == ("ml", "research") and not settings.clusterwide
    assert (settings.metrics_port, settings.resync_seconds, settings.progress_concurrency) == (0, 2.5, 3)


@pytest.mark.parametrize("variable,value", [
    ("KUBETUNE_METRICS_PORT", "70000"), ("KUBETUNE_RESYNC_SECONDS", "0"), ("KUBETUNE_RESYNC_SECONDS", "soon"),
    ("KUBETUNE_PROGRESS_CONCURRENCY", "0"), ("KUBETUNE_WATCH_NAMESPACES", "team-*"),
])
def test_a_bad_setting_names_its_variable(variable: str, value: str) -> None:
    with pytest.raises(SettingsError, match=variable):
        Settings.from_env({variable: value})


def test_kopf_is_tuned_to_keep_status_and_the_cluster_quiet() -> None:
    kopf_settings = kopf.OperatorSettings()
    tune_kopf(kopf_settings, Settings(namespaces=("ml",)))
    assert isinstance(kopf_settings.persistence.progress_storage, kopf.AnnotationsProgressStorage)
    assert kopf_settings.peering.standalone and kopf_settings.scanning.disabled
    selectors = {str(selector.group): value for selector, value in kopf_settings.watching.label_selectors.items()}
    assert selectors == {"batch": names.LABEL_FINETUNEJOB, "": names.LABEL_FINETUNEJOB}


def test_handlers_register_no_finalizer_causes() -> None:
    import kubetune_operator.handlers  # noqa: F401 - registers into the default registry

    registry = kopf.get_default_registry()
    assert not any(handler.requires_finalizer for handler in registry._changing._handlers)  # no on.delete
    assert not list(registry._spawning._handlers)  # no timers or daemons (they force a finalizer)


def test_every_operator_metric_is_exported_under_its_spec_name() -> None:
    metrics = OperatorMetrics()
    body = finetunejob()
    first = reconcile(Observed(body=body, now=NOW, jobs=[attempt_job(0)], pods=[pod(0)]))
    metrics.record(body, FineTuneJobStatus(), first.status)
    text = generate_latest(metrics.registry).decode()
    families = {family.name: family.type for family in metrics.registry.collect()}
    assert families == {spec.name: spec.kind for spec in OPERATOR_METRICS}
    assert 'kubetune_finetunejobs{namespace="ml",phase="Running"} 1.0' in text
    assert 'kubetune_finetunejob_transitions_total{namespace="ml",phase="Running",reason="Started"} 1.0' in text
    assert 'kubetune_finetunejob_time_to_running_seconds_count{namespace="ml"} 1.0' in text
    assert '{job="' not in text and ',job="' not in text
    # Known label values start at 0, so increase() counts their first event.
    assert 'kubetune_finetunejob_failures_total{namespace="ml",reason="BackoffLimitExceeded"} 0.0' in text
    for reason in ("InputNotFound", "VolumeFull"):  # the reasons a missing input and a full volume fail with
        assert f'kubetune_finetunejob_failures_total{{namespace="ml",reason="{reason}"}} 0.0' in text
    assert 'kubetune_finetunejob_transitions_total{namespace="ml",phase="Pending",reason="InputNotFound"} 0.0' in text
    assert 'kubetune_finetunejob_restarts_total{finetunejob="demo",namespace="ml"} 0.0' in text
    assert 'kubetune_finetunejob_phase{finetunejob="demo",namespace="ml",phase="Running"} 1.0' in text
    assert 'kubetune_finetunejob_train_loss{' not in text  # no loss polled yet: not exported


def test_restarts_failures_and_forgetting_are_counted() -> None:
    metrics = OperatorMetrics()
    body = finetunejob()
    before = FineTuneJobStatus(phase="Running", restarts=1, preemptions=0)
    after = FineTuneJobStatus(phase="Failed", restarts=3, preemptions=2, conditions=[{
        "type": "Failed", "status": "True", "reason": "BackoffLimitExceeded", "lastTransitionTime": "t"}])
    metrics.record(body, before, after)
    text = generate_latest(metrics.registry).decode()
    assert 'kubetune_finetunejob_restarts_total{finetunejob="demo",namespace="ml"} 2.0' in text
    assert 'kubetune_finetunejob_preemptions_total{finetunejob="demo",namespace="ml"} 2.0' in text
    assert 'kubetune_finetunejob_failures_total{namespace="ml",reason="BackoffLimitExceeded"} 1.0' in text
    metrics.forget("ml", "demo")
    text = generate_latest(metrics.registry).decode()
    assert 'finetunejob="demo"' not in text
    # The namespace stays known: its phases read 0 (a stat panel shows 0, not "no data").
    assert 'kubetune_finetunejobs{namespace="ml",phase="Failed"} 0.0' in text
