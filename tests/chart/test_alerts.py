"""The chart's PrometheusRule: every alert checked with `promtool test rules` on series of known scenarios.

The rules are the ones Helm renders (values included), written out as a Prometheus
rule file. Each alert gets a scenario where it fires, with its labels and its
summary as a person reads it, and one where it must stay quiet. promtool comes
with Debian's `prometheus` package (`apt-get install -y prometheus`).
"""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart.conftest import RELEASE, RELEASE_NAMESPACE

OPERATOR_JOB = f"{RELEASE}-kubetune-metrics"  # the metrics Service: the ServiceMonitor's job label
QUIZ = 'finetunejob="quiz",namespace="ml"'
TRAINER = f'{QUIZ},pod="quiz-0-0",job="ml/kt-kubetune-trainers"'  # what a PodMonitor scrape adds


def promtool() -> str:
    """The promtool executable; fails with the command that installs it."""
    found = shutil.which("promtool")
    if found is None:
        pytest.fail("promtool is missing: apt-get install -y prometheus (Debian's package brings promtool)")
    return found


async def rendered_rules(helm_install: Any, values: dict[str, Any] | None = None) -> dict[str, Any]:
    """The PrometheusRule's spec as Helm renders it, i.e. a Prometheus rule file."""
    installed = await helm_install(values or {}, monitoring=True)
    return installed.one("PrometheusRule")["spec"]


def rules_by_alert(spec: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Rules of the spec by alert name (one alert may have several rules)."""
    found: dict[str, list[dict[str, Any]]] = {}
    for group in spec["groups"]:
        for rule in group["rules"]:
            found.setdefault(rule["alert"], []).append(rule)
    return found


def expand(text: str, labels: dict[str, str]) -> str:
    """An annotation with `{{ $labels.x }}` filled in, as Prometheus does for these plain templates."""
    return re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda match: labels[match.group(1)], text)


@dataclass
class Scenario:
    """Input series (promtool's expanding notation, one sample a minute) and what an alert does at a time."""

    alert: str
    series: dict[str, str]
    at: str
    fires: list[dict[str, str]] = field(default_factory=list)  # each alert's labels; [] means quiet
    summary: str = ""


def scenarios(checkpoint_minutes: int) -> list[Scenario]:
    """Known histories and the expected outcome of each alert (default values: pendingFor 15m, ...)."""
    quiz = {"finetunejob": "quiz", "namespace": "ml"}
    training = {f'kubetune_trainer_phase{{{TRAINER},kubetune_trainer_phase="training"}}': "1x200"}
    stalled_step = {f"kubetune_trainer_step{{{TRAINER}}}": "0+1x10 10x190"}  # 10 steps, then none
    now = 200 * 60  # promtool's time() at 200m, in seconds since its epoch 0
    return [
        Scenario("KubeTuneJobFailed", {f'kubetune_finetunejob_phase{{{QUIZ},phase="Failed"}}': "0x5 1x10"}, "8m",
                 [{**quiz, "phase": "Failed", "severity": "warning"}], "FineTuneJob ml/quiz failed"),
        Scenario("KubeTuneJobFailed", {f'kubetune_finetunejob_phase{{{QUIZ},phase="Failed"}}': "0x20"}, "10m"),
        Scenario("KubeTuneJobPendingTooLong", {f'kubetune_finetunejob_phase{{{QUIZ},phase="Pending"}}': "1x30"},
                 "20m", [{**quiz, "phase": "Pending", "severity": "warning"}],
                 "FineTuneJob ml/quiz has been Pending for 15m"),
        Scenario("KubeTuneJobPendingTooLong",  # Pending 10 minutes, then Running: never alerted
                 {f'kubetune_finetunejob_phase{{{QUIZ},phase="Pending"}}': "1x10 0x20"}, "25m"),
        Scenario("KubeTuneTrainingStalled", {**stalled_step, **training}, "60m",
                 [{**quiz, "pod": "quiz-0-0", "job": "ml/kt-kubetune-trainers", "severity": "warning"}],
                 "FineTuneJob ml/quiz made no training step for 30m"),
        Scenario("KubeTuneTrainingStalled", {**stalled_step, **training}, "40m"),  # 30 min stalled: not yet 30m + 5m
        Scenario("KubeTuneTrainingStalled",  # a step every minute
                 {f"kubetune_trainer_step{{{TRAINER}}}": "0+1x200", **training}, "100m"),
        Scenario("KubeTuneTrainingStalled",  # stuck while loading a model, not training: not this alert
                 {**stalled_step,
                  f'kubetune_trainer_phase{{{TRAINER},kubetune_trainer_phase="loading"}}': "1x200"}, "100m"),
        Scenario("KubeTuneCheckpointTooOld",  # one checkpoint at minute 5, never another
                 {f"kubetune_trainer_last_checkpoint_timestamp_seconds{{{TRAINER}}}": "300x200", **training},
                 f"{5 + checkpoint_minutes + 2}m",
                 [{**quiz, "pod": "quiz-0-0", "job": "ml/kt-kubetune-trainers", "severity": "warning"}],
                 f"FineTuneJob ml/quiz: newest checkpoint older than {checkpoint_minutes} minutes"),
        Scenario("KubeTuneCheckpointTooOld",  # a checkpoint every minute
                 {f"kubetune_trainer_last_checkpoint_timestamp_seconds{{{TRAINER}}}": "0+60x200", **training},
                 f"{checkpoint_minutes + 10}m"),
        Scenario("KubeTuneCheckpointTooOld", training, f"{checkpoint_minutes + 2}m",  # training, no checkpoint ever
                 [{**quiz, "pod": "quiz-0-0", "job": "ml/kt-kubetune-trainers", "kubetune_trainer_phase": "training",
                   "severity": "warning"}],
                 f"FineTuneJob ml/quiz: no checkpoint in {checkpoint_minutes} minutes of training"),
        Scenario("KubeTuneCheckpointTooOld",  # finished: no trainer series left at all
                 {f"kubetune_trainer_last_checkpoint_timestamp_seconds{{{TRAINER}}}": "300x5"}, f"{now // 60 - 1}m"),
        Scenario("KubeTuneOperatorDown", {f'up{{job="{OPERATOR_JOB}",namespace="{RELEASE_NAMESPACE}"}}': "1x5 0x20"},
                 "15m", [{"severity": "critical"}],  # absent() of a filtered vector carries no labels
                 f"The KubeTune operator in {RELEASE_NAMESPACE} is not scraped"),
        Scenario("KubeTuneOperatorDown", {}, "10m", [{"severity": "critical"}],  # no target at all
                 f"The KubeTune operator in {RELEASE_NAMESPACE} is not scraped"),
        Scenario("KubeTuneOperatorDown", {f'up{{job="{OPERATOR_JOB}",namespace="{RELEASE_NAMESPACE}"}}': "1x30"},
                 "20m"),
        Scenario("KubeTuneReconcileErrors", {"kubetune_operator_reconcile_errors_total": "0+2x40"}, "25m",
                 [{"severity": "warning"}], "KubeTune operator reconciles keep failing"),
        Scenario("KubeTuneReconcileErrors",  # one error, then none: transient
                 {"kubetune_operator_reconcile_errors_total": "0 1x40"}, "25m"),
    ]


def promtool_case(scenario: Scenario, rules: list[dict[str, Any]]) -> dict[str, Any]:
    """One promtool test: its input series and the expected alerts with their annotations."""
    expected = []
    for labels in scenario.fires:
        # The rule that produced it: the one whose summary matches (an alert may have several rules).
        (rule,) = [r for r in rules if expand(r["annotations"]["summary"], labels) == scenario.summary]
        annotations = {key: expand(value, labels) for key, value in rule["annotations"].items()}
        expected.append({"exp_labels": {**labels, **rule.get("labels", {})}, "exp_annotations": annotations})
    return {
        "interval": "1m",
        "input_series": [{"series": series, "values": values} for series, values in scenario.series.items()],
        "alert_rule_test": [{"eval_time": scenario.at, "alertname": scenario.alert, "exp_alerts": expected}],
    }


def run_promtool(tmp_path: Path, spec: dict[str, Any], cases: list[dict[str, Any]]) -> subprocess.CompletedProcess[str]:
    """`promtool test rules` of the cases against the rendered rules."""
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(spec), encoding="utf-8")
    tests = {"rule_files": ["rules.yaml"], "evaluation_interval": "1m", "tests": cases}
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump(tests, sort_keys=False), encoding="utf-8")
    return subprocess.run([promtool(), "test", "rules", "tests.yaml"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120, check=False)


async def test_rendered_rules_pass_promtool_check(helm_install, tmp_path: Path) -> None:
    spec = await rendered_rules(helm_install)
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(spec), encoding="utf-8")
    result = await asyncio.to_thread(subprocess.run, [promtool(), "check", "rules", "rules.yaml"], cwd=tmp_path,
                                     capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


async def test_every_alert_has_a_firing_and_a_quiet_scenario(helm_install) -> None:
    alerts = set(rules_by_alert(await rendered_rules(helm_install)))
    cases = scenarios(120)
    assert alerts == {case.alert for case in cases if case.fires} == {case.alert for case in cases if not case.fires}
    assert alerts == {"KubeTuneJobFailed", "KubeTuneJobPendingTooLong", "KubeTuneTrainingStalled",
                      "KubeTuneCheckpointTooOld", "KubeTuneOperatorDown", "KubeTuneReconcileErrors"}


@pytest.mark.parametrize("minutes", [120, 30])
async def test_alerts_fire_exactly_in_their_scenarios(helm_install, tmp_path: Path, minutes: int) -> None:
    spec = await rendered_rules(helm_install, {"alerts": {"checkpointOlderThanMinutes": minutes}})
    rules = rules_by_alert(spec)
    cases = [promtool_case(scenario, rules[scenario.alert]) for scenario in scenarios(minutes)]
    result = await asyncio.to_thread(run_promtool, tmp_path, spec, cases)
    assert result.returncode == 0, result.stdout + result.stderr


async def test_rule_labels_reach_every_alert_and_rule_labels_select_the_rule(helm_install) -> None:
    installed = await helm_install({"alerts": {"ruleLabels": {"team": "ml"}, "labels": {"release": "prom"}}},
                                   monitoring=True)
    rule = installed.one("PrometheusRule")
    assert rule["metadata"]["labels"]["release"] == "prom"
    for rules in rules_by_alert(rule["spec"]).values():
        assert all(r["labels"]["team"] == "ml" and r["labels"]["severity"] for r in rules)


@pytest.mark.parametrize(("enabled", "api_served", "expected"), [("auto", False, 0), ("auto", True, 1), (False, True, 0)])
async def test_rule_follows_the_monitoring_api_or_the_value(helm_install, enabled, api_served, expected) -> None:
    installed = await helm_install({"alerts": {"enabled": enabled}}, monitoring=api_served)
    assert len(installed.of_kind("PrometheusRule")) == expected
