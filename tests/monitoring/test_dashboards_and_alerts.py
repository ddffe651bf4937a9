"""Every dashboard query and every alert expression, evaluated by a real Prometheus on a known scenario.

Prometheus (Debian's package) scrapes a real training run and the operator's metrics every
second (scenario.py); then each panel's queries run as Grafana would send them (its macros
and the variables replaced) and each panel must show the data the scenario implies: a
panel with no data fails, and so do the failures the dashboards used to have (a gauge
reading 0 before its first value, counters missing their first event, NaN between
checkpoint saves, 0 shown when nothing is scraped, a wrong time to running). The chart's
alert rules are loaded into the same Prometheus and each expression is checked against
the scenario too.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart.conftest import (
    CHART,
    KUBERNETES_VERSION,
    MONITORING_API,
    RELEASE,
    RELEASE_NAMESPACE,
    run_helm,
)
from tests.chart.test_dashboards import load, panels
from tests.monitoring.prometheus import (
    INTERVAL,
    SCRAPE_INTERVAL_SECONDS,
    PrometheusServer,
    Series,
)
from tests.monitoring.scenario import (
    BAD_RESTARTS,
    BAD_TIME_TO_RUNNING,
    EVAL_STEPS,
    FAILING_JOB,
    JOB,
    NAMESPACE,
    OPERATOR_NAMESPACE,
    OPERATOR_SCRAPE_JOB,
    QUIZ_TIME_TO_RUNNING,
    SAVE_STEPS,
    STEPS,
    TRANSITIONS,
    OperatorSide,
    Outcome,
    scrape_scenario,
)
from tests.trainer.sft_runs import free_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

# Grafana's $__rate_interval: max($__interval + scrape interval, 4 × scrape interval).
RATE_INTERVAL = f"{round(4 * SCRAPE_INTERVAL_SECONDS * 1000)}ms"
# Panels with nothing to show in this scenario, and why.
EXPECTED_EMPTY = {("training.json", "GPU memory (rank 0)"): "a CPU run allocates no GPU memory"}


@dataclass
class Live:
    """The scraped scenario: the server to query, the timeline and the rules it evaluates."""

    prometheus: PrometheusServer
    outcome: Outcome
    rules: dict[str, Any]

    def grafana(self, expr: str) -> str:
        """The query as Grafana sends it for this FineTuneJob over the scenario's time range."""
        replacements = {
            "$__rate_interval": RATE_INTERVAL,
            "$__range": f"{math.ceil(self.outcome.end - self.outcome.begin)}s",
            "$__interval": INTERVAL,
            "$namespace": NAMESPACE,
            "$finetunejob": JOB,
        }
        for macro, value in replacements.items():
            expr = expr.replace(macro, value)
        return expr

    def evaluate(self, target: dict[str, Any]) -> list[Series]:
        """A panel target: instant at the end of the scenario, or over its whole time range."""
        expr = self.grafana(target["expr"])
        if target.get("instant"):
            return self.prometheus.query(expr, at=self.outcome.end)
        return self.prometheus.query_range(expr, self.outcome.begin, self.outcome.end)


def chart_rules() -> dict[str, Any]:
    """The chart's PrometheusRule spec with default values (a Prometheus rule file), rendered by the real helm."""
    rendered = asyncio.run(run_helm("template", RELEASE, str(CHART), "--namespace", RELEASE_NAMESPACE,
                                    "--kube-version", KUBERNETES_VERSION, "--api-versions", MONITORING_API, "--show-only", "templates/prometheusrule.yaml"))
    return yaml.safe_load(rendered)["spec"]


_SCENARIO_FAILED: list[str] = []  # pytest would rerun a failed module fixture for every test


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path, toy_data: Path) -> Iterator[Live]:
    if _SCENARIO_FAILED:
        pytest.fail(f"the scenario failed in an earlier test: {_SCENARIO_FAILED[0]}")
    folder = tmp_path_factory.mktemp("monitoring")
    rules = chart_rules()
    trainer_port = free_port()
    operator = OperatorSide()
    targets = {"trainer": [f"127.0.0.1:{trainer_port}"], OPERATOR_SCRAPE_JOB: [f"127.0.0.1:{operator.port}"]}
    labels = {OPERATOR_SCRAPE_JOB: {"namespace": OPERATOR_NAMESPACE}}  # the Service's namespace, as on a cluster
    with PrometheusServer.start(folder / "prometheus", targets, rules, labels) as prometheus:
        try:
            outcome = scrape_scenario(prometheus, operator, trainer_port, folder, tiny_llama, toy_data)
        except BaseException as error:
            operator.stop()
            _SCENARIO_FAILED.append(f"{type(error).__name__}: {error}"[:500])
            raise
        yield Live(prometheus, outcome, rules)


def dashboard_panels() -> list[tuple[str, str]]:
    """(dashboard file, panel title) of every panel with queries."""
    return [(path.name, panel["title"]) for path in sorted((CHART / "dashboards").glob("*.json"))
            for panel in panels(load(path)) if panel.get("targets")]


def panel_results(live: Live, dashboard: str, title: str) -> dict[str, list[Series]]:
    """Each target's result by refId (rows, which may share a panel's title, have no targets)."""
    (panel,) = [p for p in panels(load(CHART / "dashboards" / dashboard)) if p["title"] == title and p.get("targets")]
    return {target["refId"]: live.evaluate(target) for target in panel["targets"]}


def finite(series: list[Series]) -> list[float]:
    """Every sample value of some series; NaN/Inf fail (a panel shows them as broken lines)."""
    values = [value for one in series for value in one.values]
    assert all(math.isfinite(value) for value in values), values
    return values


def by_label(series: list[Series], label: str) -> dict[str, Series]:
    """Series keyed by one label's value."""
    return {one.labels.get(label, ""): one for one in series}


def last(series: list[Series]) -> float:
    """The newest value of the one series of a result."""
    assert len(series) == 1, f"expected one series: {[one.labels for one in series]}"
    return series[0].last


# ------------------------------------------------------------------ the panels and what they must show

def _progress(r: dict[str, list[Series]], live: Live) -> None:
    assert last(r["A"]) == 1.0 and all(0 <= v <= 1 for v in finite(r["A"]))


def _since_checkpoint(r: dict[str, list[Series]], live: Live) -> None:
    # Not exported before the first checkpoint: no 1.8e9 s "since 1970".
    assert 0 <= min(finite(r["A"])) and max(finite(r["A"])) < live.outcome.end - live.outcome.begin


def _trainer_phase(r: dict[str, list[Series]], live: Live) -> None:
    assert "training" in by_label(r["A"], "kubetune_trainer_phase")


def _outcome(r: dict[str, list[Series]], live: Live) -> None:
    newest = max(r["A"], key=lambda one: one.samples[-1][0])
    assert newest.labels["phase"] == "Succeeded" and newest.samples[-1][0] >= live.outcome.trainer_exited


def _loss(r: dict[str, list[Series]], live: Live) -> None:
    train, evaluation = r["A"], r["B"]
    assert min(finite(train)) > 0 and min(finite(evaluation)) > 0  # no 0 before the first evaluation
    (train_series,), (eval_series,) = train, evaluation
    assert eval_series.samples[0][0] > train_series.samples[0][0], "eval loss plotted before the first evaluation"


def _positive(ref: str) -> Callable[[dict[str, list[Series]], Live], None]:
    def check(r: dict[str, list[Series]], live: Live) -> None:
        assert min(finite(r[ref])) > 0

    return check


def _tokens(r: dict[str, list[Series]], live: Live) -> None:
    # The one throughput line must agree with what the run really did: its tokens over its training time.
    rates = [v for v in finite(r["A"]) if v > 0]
    total = live.prometheus.query(f'max_over_time(kubetune_trainer_tokens_total{{finetunejob="{JOB}"}}[1h])',
                                  at=live.outcome.end)
    assert rates and total
    mean_rate = total[0].last / (live.outcome.trainer_exited - live.outcome.first_step)
    median = sorted(rates)[len(rates) // 2]
    assert 0.5 * mean_rate < median < 3 * mean_rate, (median, mean_rate)


def _checkpoint_step(r: dict[str, list[Series]], live: Live) -> None:
    assert set(finite(r["A"])) <= set(range(SAVE_STEPS, STEPS + 1, SAVE_STEPS)) and last(r["A"]) == STEPS


def _checkpoint_saves(r: dict[str, list[Series]], live: Live) -> None:
    mean = finite(r["A"])  # NaN between saves was the bug: the mean since the start has none
    assert mean and all(0 < v < 120 for v in mean)
    assert last(r["B"]) == STEPS // SAVE_STEPS


def _phase_stat(expected: int) -> Callable[[dict[str, list[Series]], Live], None]:
    def check(r: dict[str, list[Series]], live: Live) -> None:
        assert last(r["A"]) == expected and set(finite(r["A"])) <= {0, 1, 2}

    return check


def _by_phase(r: dict[str, list[Series]], live: Live) -> None:
    final = {phase: one.last for phase, one in by_label(r["A"], "phase").items()}
    assert final == {"Pending": 0, "Queued": 0, "Running": 0, "Suspended": 0, "Succeeded": 1, "Failed": 1}


def _transitions(r: dict[str, list[Series]], live: Live) -> None:
    entered = {(one.labels["phase"], one.labels["reason"]) for one in r["A"] if max(finite([one])) > 0}
    assert {("Pending", "Created"), ("Running", "Started"), ("Failed", "BackoffLimitExceeded"),
            ("Succeeded", "Completed")} <= entered
    # Every transition of the scenario, counted over the whole range (born at 0, none missed).
    (total,) = live.prometheus.query(live.grafana(
        f'sum(increase(kubetune_finetunejob_transitions_total{{namespace="{NAMESPACE}"}}[$__range]))'),
        at=live.outcome.end)
    assert round(total.last) == TRANSITIONS, total.last


def _time_to_running(r: dict[str, list[Series]], live: Live) -> None:
    mean = (QUIZ_TIME_TO_RUNNING + BAD_TIME_TO_RUNNING) / 2
    assert last(r["A"]) == pytest.approx(mean, abs=0.01)
    assert QUIZ_TIME_TO_RUNNING <= last(r["B"]) <= last(r["C"]) <= 2.5  # within the buckets that hold them


def _restarts(r: dict[str, list[Series]], live: Live) -> None:
    assert max(finite(r["A"])) > 0 and max(finite(r["B"])) == 0


def _failures(r: dict[str, list[Series]], live: Live) -> None:
    counts = {reason: round(one.last) for reason, one in by_label(r["A"], "reason").items()}
    assert counts.pop("BackoffLimitExceeded") == 1 and set(counts.values()) == {0}, counts


def _jobs_table(r: dict[str, list[Series]], live: Live) -> None:
    phase = {one.labels["finetunejob"]: one.labels["phase"] for one in r["A"]}
    assert phase == {JOB: "Succeeded", FAILING_JOB: "Failed"}
    termination = live.outcome.termination
    assert by_label(r["B"], "finetunejob")[JOB].last == termination["step"] == STEPS
    assert by_label(r["C"], "finetunejob")[JOB].last == STEPS
    assert by_label(r["D"], "finetunejob")[JOB].last == pytest.approx(termination["loss"])
    assert {name: one.last for name, one in by_label(r["E"], "finetunejob").items()} == {JOB: 0, FAILING_JOB: BAD_RESTARTS}
    assert {one.last for one in r["F"]} == {0}


CHECKS: dict[tuple[str, str], Callable[[dict[str, list[Series]], Live], None]] = {
    ("training.json", "Step"): lambda r, live: _ends_at(r, STEPS),
    ("training.json", "Total steps"): lambda r, live: _ends_at(r, STEPS, constant=True),
    ("training.json", "Progress"): _progress,
    ("training.json", "ETA"): lambda r, live: _non_negative(r),
    ("training.json", "Since last checkpoint"): _since_checkpoint,
    ("training.json", "Trainer phase"): _trainer_phase,
    ("training.json", "FineTuneJob phase"): _outcome,
    ("training.json", "Loss"): _loss,
    ("training.json", "Learning rate"): _positive("A"),
    ("training.json", "Gradient norm"): _positive("A"),
    ("training.json", "Epoch"): _positive("A"),
    ("training.json", "Tokens per second"): _tokens,
    ("training.json", "Samples per second"): _positive("A"),
    ("training.json", "Checkpoint step"): _checkpoint_step,
    ("training.json", "Checkpoint saves"): _checkpoint_saves,
    ("jobs.json", "Running"): _phase_stat(0),
    ("jobs.json", "Queued"): _phase_stat(0),
    ("jobs.json", "Pending"): _phase_stat(0),
    ("jobs.json", "Suspended"): _phase_stat(0),
    ("jobs.json", "Succeeded"): _phase_stat(1),
    ("jobs.json", "Failed"): _phase_stat(1),
    ("jobs.json", "FineTuneJobs by phase"): _by_phase,
    ("jobs.json", "Phase transitions"): _transitions,
    ("jobs.json", "Time to running"): _time_to_running,
    ("jobs.json", "Restarts and preemptions"): _restarts,
    ("jobs.json", "Failures by reason"): _failures,
    ("jobs.json", "FineTuneJobs and outcomes"): _jobs_table,
    ("jobs.json", "Reconcile time"): _positive("A"),
    ("jobs.json", "Reconcile errors"): lambda r, live: _non_negative(r, some_positive=True),
}


def _ends_at(r: dict[str, list[Series]], expected: int, constant: bool = False) -> None:
    values = finite(r["A"])
    assert last(r["A"]) == expected and (not constant or set(values) == {expected})


def _non_negative(r: dict[str, list[Series]], some_positive: bool = False) -> None:
    values = finite(r["A"])
    assert min(values) >= 0 and (not some_positive or max(values) > 0)


def test_every_panel_has_a_check() -> None:
    assert set(dashboard_panels()) == set(CHECKS) | set(EXPECTED_EMPTY)


@pytest.mark.parametrize(("dashboard", "title"), dashboard_panels(), ids=lambda value: value)
def test_panel_shows_the_scenario(live: Live, dashboard: str, title: str) -> None:
    results = panel_results(live, dashboard, title)
    if (dashboard, title) in EXPECTED_EMPTY:
        assert all(not series for series in results.values()), EXPECTED_EMPTY[(dashboard, title)]
        return
    empty = [ref for ref, series in results.items() if not series]
    assert not empty, f"{dashboard} / {title}: no data for targets {empty}"
    CHECKS[(dashboard, title)](results, live)


def test_queries_read_nothing_when_nothing_is_scraped(live: Live) -> None:
    # Before the first scrape (an hour earlier) every panel is empty: no `or vector(0)` invents zeros.
    before = live.outcome.begin - 3600
    for path in sorted((CHART / "dashboards").glob("*.json")):
        for panel in panels(load(path)):
            for target in panel.get("targets", []):
                assert live.prometheus.query(live.grafana(target["expr"]), at=before) == [], panel["title"]


# ------------------------------------------------------------------ the alerts

def alert_rules(live: Live) -> list[dict[str, Any]]:
    """Every alerting rule of the chart's PrometheusRule."""
    return [rule for group in live.rules["groups"] for rule in group["rules"]]


def test_prometheus_loaded_every_alert_and_evaluates_it_without_error(live: Live) -> None:
    loaded = [rule for group in live.prometheus.api("rules")["groups"] for rule in group["rules"]]
    assert sorted(rule["name"] for rule in loaded) == sorted(rule["alert"] for rule in alert_rules(live))
    assert [(rule["name"], rule.get("lastError")) for rule in loaded if rule["health"] != "ok"] == []


def _alert_expr(live: Live, alert: str, index: int = 0) -> str:
    return [rule for rule in alert_rules(live) if rule["alert"] == alert][index]["expr"]


def test_job_failed_holds_for_the_failed_job_and_fires(live: Live) -> None:
    result = live.prometheus.query(_alert_expr(live, "KubeTuneJobFailed"), at=live.outcome.end)
    assert [one.labels["finetunejob"] for one in result] == [FAILING_JOB]
    firing = live.prometheus.query('ALERTS{alertname="KubeTuneJobFailed",alertstate="firing"}', at=live.outcome.end)
    assert [one.labels["finetunejob"] for one in firing] == [FAILING_JOB]


def test_pending_holds_while_jobs_are_pending_only(live: Live) -> None:
    expr = _alert_expr(live, "KubeTuneJobPendingTooLong")
    during = live.prometheus.query_range(expr, live.outcome.begin, live.outcome.first_step)
    assert {one.labels["finetunejob"] for one in during} == {JOB, FAILING_JOB}
    assert live.prometheus.query(expr, at=live.outcome.end) == []


def test_stalled_does_not_hold_while_steps_advance(live: Live) -> None:
    expr = _alert_expr(live, "KubeTuneTrainingStalled")
    # From the second scrape of a step on, the 5-minute window sees it change: never a stall. (On the first
    # scrape it holds, for one evaluation: the rule's `for` is what turns a held expression into an alert.)
    (steps,) = live.prometheus.query_range(f'kubetune_trainer_step{{finetunejob="{JOB}"}}', live.outcome.begin,
                                           live.outcome.end)
    assert live.prometheus.query_range(expr, steps.samples[1][0], live.outcome.trainer_exited) == []


def test_checkpoint_age_holds_only_before_the_first_checkpoint(live: Live) -> None:
    too_old, never = _alert_expr(live, "KubeTuneCheckpointTooOld", 0), _alert_expr(live, "KubeTuneCheckpointTooOld", 1)
    assert live.prometheus.query_range(too_old, live.outcome.begin, live.outcome.end) == []
    (holding,) = live.prometheus.query_range(never, live.outcome.begin, live.outcome.end)
    first_checkpoint = live.prometheus.query_range(
        f'kubetune_trainer_last_checkpoint_step{{finetunejob="{JOB}"}}', live.outcome.begin, live.outcome.end)
    assert holding.samples[-1][0] < first_checkpoint[0].samples[0][0] + 2 * SCRAPE_INTERVAL_SECONDS


def test_operator_down_holds_only_once_the_operator_is_gone(live: Live) -> None:
    expr = _alert_expr(live, "KubeTuneOperatorDown")
    assert live.prometheus.query(expr, at=live.outcome.end) == []
    assert live.prometheus.query(expr, at=live.outcome.operator_down) != []


def test_reconcile_errors_hold_after_an_error(live: Live) -> None:
    result = live.prometheus.query_range(_alert_expr(live, "KubeTuneReconcileErrors"), live.outcome.begin,
                                         live.outcome.end)
    assert result and max(finite(result)) > 0


def test_every_eval_happened_after_its_steps(live: Live) -> None:
    # evalSteps with loggingSteps 1: the eval loss series starts after step 10 was scraped.
    (eval_loss,) = live.prometheus.query_range(f'kubetune_trainer_eval_loss{{finetunejob="{JOB}"}}',
                                               live.outcome.begin, live.outcome.end)
    (step,) = live.prometheus.query(f'kubetune_trainer_step{{finetunejob="{JOB}"}}', at=eval_loss.samples[0][0])
    assert step.last >= EVAL_STEPS
