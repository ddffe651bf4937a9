"""The operator's own Prometheus metrics, built from `metric_specs.OPERATOR_METRICS` on a private registry.

Names and labels come from the spec list (so the chart's dashboards and alerts
can be checked against it); this module only decides when each moves:
`record` compares a FineTuneJob's status before and after one reconcile.
Labels are `namespace`, `phase`, `reason` and `finetunejob`, never `job`.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from kubetune_operator import classify
from kubetune_operator.reconcile import phase_of
from kubetune_trainer.metric_specs import OPERATOR_METRICS, MetricSpec
from kubetune_trainer.recipe import FineTuneJobStatus, Phase

# Seconds from creation to Running span queueing for GPUs: minutes to hours.
TIME_TO_RUNNING_BUCKETS = (5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 43200, 86400)

_KINDS = {"gauge": Gauge, "counter": Counter, "histogram": Histogram}


def _build(spec: MetricSpec, registry: CollectorRegistry) -> Any:
    kwargs: dict[str, Any] = {"registry": registry}
    if spec.name == "kubetune_finetunejob_time_to_running_seconds":
        kwargs["buckets"] = TIME_TO_RUNNING_BUCKETS
    return _KINDS[spec.kind](spec.name, spec.help, list(spec.labels), **kwargs)


class OperatorMetrics:
    """Every operator metric, plus the per-object phase index behind the by-phase gauge."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.by_name = {spec.name: _build(spec, self.registry) for spec in OPERATOR_METRICS}
        self._phases: dict[tuple[str, str], str] = {}
        self._lock = threading.Lock()

    def __getitem__(self, name: str) -> Any:
        return self.by_name[name]

    def serve(self, port: int) -> None:
        """Expose the registry on `port` (a daemon thread); port 0 serves nothing."""
        if port:
            start_http_server(port, registry=self.registry)

    def record(self, body: Mapping[str, Any], before: FineTuneJobStatus, after: FineTuneJobStatus) -> None:
        """Count what one reconcile changed: phase transitions, restarts, preemptions, failures."""
        meta = body.get("metadata") or {}
        namespace, name = str(meta.get("namespace", "")), str(meta.get("name", ""))
        phase = after.phase.value if after.phase else Phase.pending.value
        self._set_phase(namespace, name, phase)
        if after.phase != before.phase:
            _, deciding = phase_of({c.type: c for c in after.conditions})
            reason = deciding.reason if deciding is not None else ""
            self["kubetune_finetunejob_transitions"].labels(namespace, phase, reason).inc()
            if after.phase is Phase.failed:
                self["kubetune_finetunejob_failures"].labels(namespace, reason).inc()
        if before.start_time is None and after.start_time is not None:
            created = classify.parse_time(meta.get("creationTimestamp"))
            started = classify.parse_time(after.start_time)
            if created and started:
                self["kubetune_finetunejob_time_to_running_seconds"].labels(namespace).observe(
                    max((started - created).total_seconds(), 0.0))
        if after.restarts > before.restarts:
            self["kubetune_finetunejob_restarts"].labels(name, namespace).inc(after.restarts - before.restarts)
        if after.preemptions > before.preemptions:
            self["kubetune_finetunejob_preemptions"].labels(name, namespace).inc(after.preemptions - before.preemptions)

    def forget(self, namespace: str, name: str) -> None:
        """A FineTuneJob was deleted: drop it from the by-phase gauge and its own series."""
        self._set_phase(namespace, name, None)
        for metric in ("kubetune_finetunejob_restarts", "kubetune_finetunejob_preemptions"):
            try:
                self[metric].remove(name, namespace)
            except KeyError:
                pass

    def _set_phase(self, namespace: str, name: str, phase: str | None) -> None:
        with self._lock:
            if phase is None:
                self._phases.pop((namespace, name), None)
            else:
                self._phases[(namespace, name)] = phase
            counts: dict[tuple[str, str], int] = {}
            for (ns, _), value in self._phases.items():
                counts[(ns, value)] = counts.get((ns, value), 0) + 1
            gauge = self["kubetune_finetunejobs"]
            gauge.clear()
            for (ns, value), count in counts.items():
                gauge.labels(ns, value).set(count)
