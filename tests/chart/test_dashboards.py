"""The Grafana dashboards: valid dashboard JSON, and every query asks only for metrics the code exports.

Queries are parsed with a real PromQL parser (promql-parser, the Rust one), so a
metric name hidden in a function call or a binary expression is found too.
Grafana's own macros are replaced by durations first, as Grafana does before it
sends a query.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import promql_parser
import pytest
from grafana_foundation_sdk.models.dashboard import Dashboard
from kubetune_api.metric_specs import all_exported_names

from tests.chart.conftest import CHART

DASHBOARDS = sorted((CHART / "dashboards").glob("*.json"))
GRAFANA_MACROS = {"$__rate_interval": "1m", "$__interval": "30s", "$__range": "1h"}
TITLES = {"jobs.json": "KubeTune jobs", "training.json": "KubeTune training"}
PANEL_TYPES = {"row", "stat", "timeseries", "bargauge", "table", "gauge"}


def load(path: Path) -> dict[str, Any]:
    """A dashboard file as JSON."""
    return json.loads(path.read_text(encoding="utf-8"))


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, those inside collapsed rows included."""
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def queries(dashboard: dict[str, Any]) -> Iterator[str]:
    """Every PromQL expression: panel targets and query variables."""
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            yield target["expr"]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            # label_values(<selector>, <label>) is Grafana's, not PromQL: check its selector.
            match = re.fullmatch(r"label_values\((.*),\s*\w+\)", variable["query"]["query"])
            assert match, f"variable {variable['name']}: unexpected query {variable['query']['query']}"
            yield match.group(1)


def expand_macros(expr: str) -> str:
    """The query as Grafana sends it: macros replaced; `$var` stays inside label matchers' strings."""
    for macro, value in GRAFANA_MACROS.items():
        expr = expr.replace(macro, value)
    return expr


def selectors(node: Any) -> Iterator[promql_parser.VectorSelector]:
    """Every vector selector in a parsed PromQL expression."""
    if isinstance(node, promql_parser.VectorSelector):
        yield node
        return
    for attribute in ("expr", "lhs", "rhs", "vector_selector", "param"):
        child = getattr(node, attribute, None)
        if child is not None:
            yield from selectors(child)
    for child in getattr(node, "args", None) or []:
        yield from selectors(child)


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads."""
    return {selector.name for selector in selectors(promql_parser.parse(expand_macros(expr))) if selector.name}


def label_names(expr: str) -> set[str]:
    """Label names used in matchers of an expression."""
    return {m.name for s in selectors(promql_parser.parse(expand_macros(expr))) for m in s.matchers.matchers}


def test_there_are_the_two_dashboards() -> None:
    assert {path.name: load(path)["title"] for path in DASHBOARDS} == TITLES


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_is_a_grafana_dashboard(path: Path) -> None:
    raw = load(path)
    parsed = Dashboard.from_json(raw)
    assert (parsed.uid, parsed.title) == (raw["uid"], raw["title"])
    assert raw["schemaVersion"] >= 36 and re.fullmatch(r"[a-z0-9-]{8,40}", raw["uid"])
    ids = [panel["id"] for panel in panels(raw)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels(raw):
        assert panel["type"] in PANEL_TYPES
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24 and grid["h"] > 0, f"{panel['title']}: gridPos {grid}"
        for target in panel.get("targets", []):
            assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_panels_do_not_overlap(path: Path) -> None:
    cells: dict[tuple[int, int], str] = {}
    for panel in load(path)["panels"]:
        grid = panel["gridPos"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_every_metric_queried_is_exported_by_the_code(path: Path) -> None:
    exported = all_exported_names()
    used = {name for expr in queries(load(path)) for name in metric_names(expr)}
    assert used, "no metric found: the parser walk is broken"
    assert used - exported == set()


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_queries_filter_by_finetunejob_and_namespace_never_job(path: Path) -> None:
    for expr in queries(load(path)):
        assert "job" not in label_names(expr), expr
        assert not re.search(r"by \([^)]*\bjob\b", expr), expr


def test_dashboards_cover_the_training_metrics_the_issue_asks_for() -> None:
    training = {name for expr in queries(load(CHART / "dashboards" / "training.json")) for name in metric_names(expr)}
    jobs = {name for expr in queries(load(CHART / "dashboards" / "jobs.json")) for name in metric_names(expr)}
    assert {"kubetune_trainer_train_loss", "kubetune_trainer_eval_loss", "kubetune_trainer_learning_rate",
            "kubetune_trainer_tokens_total", "kubetune_trainer_gpu_memory_used_bytes", "kubetune_trainer_step",
            "kubetune_trainer_total_steps", "kubetune_trainer_eta_seconds",
            "kubetune_trainer_last_checkpoint_timestamp_seconds"} <= training
    assert {"kubetune_finetunejobs", "kubetune_finetunejob_time_to_running_seconds_bucket",
            "kubetune_finetunejob_restarts_total", "kubetune_finetunejob_preemptions_total",
            "kubetune_finetunejob_failures_total", "kubetune_finetunejob_phase"} <= jobs
    # One source of throughput: the gauge and the counter's rate disagreed on the same panel.
    assert "kubetune_trainer_tokens_per_second" not in training


def test_no_query_turns_missing_data_into_zero() -> None:
    # `or vector(0)` shows 0 when nothing is scraped at all; the operator exports real zeros instead.
    for path in DASHBOARDS:
        for expr in queries(load(path)):
            assert "vector(0)" not in expr.replace(" ", ""), f"{path.name}: {expr}"


def test_metric_walk_finds_names_inside_functions_and_operators() -> None:
    expr = "histogram_quantile(0.9, sum by (le) (rate(a_bucket[$__rate_interval]))) / on() b - time() + c offset 5m"
    assert metric_names(expr) == {"a_bucket", "b", "c"}
