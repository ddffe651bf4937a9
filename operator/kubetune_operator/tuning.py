"""kopf's settings for this operator, applied once, by the startup handler (handlers.operator_startup).

kopf hands its `OperatorSettings` to startup handlers before any watch starts, so tuning there covers
both ways the operator runs: `kubetune-operator` / `run_operator` (main.py) and `kopf run -m
kubetune_operator.handlers`. This module imports neither of those, so the import graph stays one-way:
main → handlers → tuning.
"""

from __future__ import annotations

import kopf

from kubetune_operator import names
from kubetune_operator.settings import Settings

KOPF_PREFIX = "kubetune.io"


def tune_kopf(kopf_settings: kopf.OperatorSettings, settings: Settings) -> None:
    """kopf's settings for this operator, one comment per choice."""
    # kopf's bookkeeping (handler progress, last-handled spec) in annotations, never in status: the status
    # has one writer, the reconcile, and the CRD's structural schema would prune a `status.kopf` anyway.
    kopf_settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=KOPF_PREFIX)
    kopf_settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=KOPF_PREFIX, key="last-handled-configuration"
    )
    # Only our children are streamed: a server-side label selector on the Job and pod watches, so a
    # cluster with thousands of pods sends the operator only trainer pods (the handlers' label filters
    # alone would filter client-side, after receiving everything).
    kopf_settings.watching.label_selectors["batch", "v1", "jobs"] = names.LABEL_FINETUNEJOB
    kopf_settings.watching.label_selectors["", "v1", "pods"] = names.LABEL_FINETUNEJOB
    # Watches end on the server's side every few minutes and are re-established; without a bound a
    # silently dead connection (a load balancer dropping idle TCP) would stall the operator forever.
    kopf_settings.watching.server_timeout = 300
    kopf_settings.watching.client_timeout = 330
    kopf_settings.watching.connect_timeout = 30
    # Short API calls fail fast and are retried by kopf, instead of hanging a handler for 5 minutes.
    kopf_settings.networking.request_timeout = settings.request_timeout_seconds
    # The controller posts one Event per transition itself (events.py); handler log lines stay logs.
    kopf_settings.posting.loggers = False
    kopf_settings.posting.reporting_component = "kubetune-operator"
    # One replica, no peering objects to create or watch (the chart runs a single replica).
    kopf_settings.peering.standalone = True
    # A fixed namespace list needs no namespace scanning (and no RBAC to list namespaces).
    kopf_settings.scanning.disabled = not settings.clusterwide
    # A handler that raised is retried after a minute at most; the resync loop catches up sooner anyway.
    kopf_settings.execution.default_backoff = 60
    # Sync handlers run in a thread pool; a few threads suffice, they mostly wait on the API.
    kopf_settings.execution.max_workers = max(4, settings.reconcile_concurrency * 2)
