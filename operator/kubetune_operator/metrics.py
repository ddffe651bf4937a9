"""The operator's own Prometheus metrics, built from `metric_specs.OPERATOR_METRICS` on a private registry.

Names and labels come from the spec list (so the chart's dashboards and alerts
can be checked against it); this module only decides when each moves:
`record` compares a FineTuneJob's status before and after one reconcile.
Labels are `namespace`, `phase`, `reason` and `finetunejob`, never `job`.

Two rules keep the queries honest:

- A counter series that appears at 1 makes `increase()` miss its first event
  (Prometheus has no earlier sample to subtract). So every counter and histogram
  series whose label values are known in advance is created at 0 as soon as its
  namespace (or FineTuneJob) is known: the phases, the reasons reconcile can
  give, the failure reasons. A namespace given to the constructor (the watched
  ones) is ready before its first FineTuneJob; otherwise the first
  FineTuneJob's entry into Pending is the one event that can go uncounted.
- A gauge is exported only once it has a value: a per-FineTuneJob gauge only
  when the status holds it (no loss of 0 before the first logged loss).

The per-FineTuneJob gauges (phase, step, loss, completion time) carry each
job's outcome after its trainer process is gone, until the FineTuneJob is deleted.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from kubetune_operator import classify
from kubetune_operator.reconcile import phase_of
from kubetune_api.conditions import PENDING_REASONS, RETRYABLE_TRAINER_REASONS, ConditionType, Reason
from kubetune_api.metric_specs import OPERATOR_METRICS, MetricSpec
from kubetune_api.recipe import FineTuneJobStatus, Phase

# Seconds from creation to Running: under a second on an idle cluster, hours when queueing for GPUs.
TIME_TO_RUNNING_BUCKETS = (0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, 43200, 86400)


FAILURE_REASONS: tuple[str, ...] = tuple(reason for reason in Reason if ConditionType.FAILED in reason.conditions)
"""The reasons of a Failed condition (kubetune_api.conditions says which): created at 0 per namespace."""

TRANSITION_REASONS: dict[Phase, tuple[str, ...]] = {
    # Pending is entered when created, and again after a retried failure or preemption (Running False).
    Phase.pending: (Reason.CREATED, Reason.ATTEMPT_FAILED, Reason.PREEMPTED,
                    Reason.INPUT_NOT_FOUND, *RETRYABLE_TRAINER_REASONS, *PENDING_REASONS),
    Phase.queued: (Reason.QUEUED_BY_KUEUE,),
    Phase.running: (Reason.STARTED, Reason.RESUMED),
    Phase.suspended: (Reason.SUSPENDED,),
    Phase.succeeded: (Reason.COMPLETED,),
    Phase.failed: FAILURE_REASONS,
}
"""(phase, deciding reason) pairs reconcile produces: the transition series created at 0 per namespace.

A pair not listed still counts; it only starts at 1 (its first event is missed by increase())."""

_PER_JOB_GAUGES = {
    "kubetune_finetunejob_step": lambda status: status.progress and status.progress.step,
    "kubetune_finetunejob_total_steps": lambda status: status.progress and status.progress.total_steps,
    "kubetune_finetunejob_train_loss": lambda status: status.progress and status.progress.loss,
    "kubetune_finetunejob_completion_timestamp_seconds": lambda status: _timestamp(status.completion_time),
}
_PER_JOB_COUNTERS = ("kubetune_finetunejob_restarts", "kubetune_finetunejob_preemptions")

_KINDS = {"gauge": Gauge, "counter": Counter, "histogram": Histogram}


def _timestamp(value: str | None) -> float | None:
    parsed = classify.parse_time(value)
    return parsed.timestamp() if parsed else None


def _build(spec: MetricSpec, registry: CollectorRegistry) -> Any:
    kwargs: dict[str, Any] = {"registry": registry}
    if spec.name == "kubetune_finetunejob_time_to_running_seconds":
        kwargs["buckets"] = TIME_TO_RUNNING_BUCKETS
    return _KINDS[spec.kind](spec.name, spec.help, list(spec.labels), **kwargs)


class OperatorMetrics:
    """Every operator metric, plus the per-object phase index behind the by-phase gauge."""

    def __init__(self, registry: CollectorRegistry | None = None, namespaces: Iterable[str] = ()) -> None:
        self.registry = registry or CollectorRegistry()
        self.by_name = {spec.name: _build(spec, self.registry) for spec in OPERATOR_METRICS}
        self._phases: dict[tuple[str, str], str] = {}
        self._namespaces: set[str] = set()
        self._lock = threading.Lock()
        with self._lock:
            for namespace in namespaces:
                self._know_namespace(namespace)
            self._refresh_phase_counts()

    def __getitem__(self, name: str) -> Any:
        return self.by_name[name]

    def serve(self, port: int) -> None:
        """Expose the registry on `port` (a daemon thread); port 0 serves nothing."""
        if port:
            start_http_server(port, registry=self.registry)

    def record(self, body: Mapping[str, Any], before: FineTuneJobStatus, after: FineTuneJobStatus) -> None:
        """Count what one reconcile changed (transitions, restarts, preemptions, failures); mirror the status."""
        meta = body.get("metadata") or {}
        namespace, name = str(meta.get("namespace", "")), str(meta.get("name", ""))
        phase = after.phase.value if after.phase else Phase.pending.value
        with self._lock:
            self._know_namespace(namespace)
            self._know_job(namespace, name)
            self._phases[(namespace, name)] = phase
            self._refresh_phase_counts()
            self._mirror_status(namespace, name, phase, after)
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
        with self._lock:
            self._phases.pop((namespace, name), None)
            self._refresh_phase_counts()
            for metric in (*_PER_JOB_COUNTERS, *_PER_JOB_GAUGES):
                self._remove(metric, name, namespace)
            for phase in Phase:
                self._remove("kubetune_finetunejob_phase", name, namespace, phase.value)

    def _remove(self, metric: str, *labels: str) -> None:
        try:
            self[metric].remove(*labels)
        except KeyError:  # never exported: nothing to drop
            pass

    def _know_namespace(self, namespace: str) -> None:
        """Create the namespace's counter and histogram series at 0 (see the module docstring)."""
        if namespace in self._namespaces:
            return
        self._namespaces.add(namespace)
        for phase, reasons in TRANSITION_REASONS.items():
            for reason in reasons:
                self["kubetune_finetunejob_transitions"].labels(namespace, phase.value, reason)
        for reason in FAILURE_REASONS:
            self["kubetune_finetunejob_failures"].labels(namespace, reason)
        self["kubetune_finetunejob_time_to_running_seconds"].labels(namespace)

    def _know_job(self, namespace: str, name: str) -> None:
        if (namespace, name) not in self._phases:
            for metric in _PER_JOB_COUNTERS:
                self[metric].labels(name, namespace)

    def _mirror_status(self, namespace: str, name: str, phase: str, status: FineTuneJobStatus) -> None:
        for value in Phase:
            self["kubetune_finetunejob_phase"].labels(name, namespace, value.value).set(int(value.value == phase))
        for metric, read in _PER_JOB_GAUGES.items():
            value = read(status)
            if value is not None:
                self[metric].labels(name, namespace).set(value)

    def _refresh_phase_counts(self) -> None:
        """Every phase of every known namespace, 0 included: a stat panel reads 0, not 'no data', when none."""
        counts = {(namespace, phase.value): 0 for namespace in self._namespaces for phase in Phase}
        for (namespace, _), phase in self._phases.items():
            counts[(namespace, phase)] = counts.get((namespace, phase), 0) + 1
        gauge = self["kubetune_finetunejobs"]
        gauge.clear()
        for (namespace, phase), count in counts.items():
            gauge.labels(namespace, phase).set(count)
