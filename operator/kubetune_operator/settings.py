"""Operator settings, read once from the environment (the Helm chart sets these variables).

Every variable is optional; a bad value stops the operator at start with a
one-line error that names the variable, instead of surfacing later as a
confusing pod failure.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Mapping

DEFAULT_TRAINER_IMAGE = "ghcr.io/kubetune/trainer:0.1.0"


class SettingsError(ValueError):
    """An operator environment variable holds a value the operator cannot use."""


@dataclasses.dataclass(frozen=True)
class Settings:
    """What the operator needs beyond each FineTuneJob's own spec."""

    trainer_image: str = DEFAULT_TRAINER_IMAGE
    """Image of trainer pods whose FineTuneJob sets no `spec.image`."""

    trainer_service_account: str | None = None
    """Service account of trainer pods whose FineTuneJob sets no `spec.serviceAccountName` (the chart's)."""

    namespaces: tuple[str, ...] = ()
    """Namespaces to watch; empty means all namespaces (cluster-wide)."""

    metrics_port: int = 8080
    """Port of the operator's own Prometheus metrics (0 disables the server, e.g. in tests)."""

    health_port: int = 8081
    """Port of the liveness endpoint `/healthz` (0 disables it)."""

    resync_seconds: float = 15.0
    """How often every unfinished FineTuneJob is reconciled and its progress polled (backoffs and deadlines
    are checked at this granularity)."""

    progress_timeout_seconds: float = 2.0
    """Time limit of one poll of a trainer's metrics endpoint."""

    progress_concurrency: int = 8
    """How many trainer metrics endpoints are polled at once."""

    reconcile_concurrency: int = 32
    """How many FineTuneJobs are reconciled at once: threads that mostly wait on the API server (a new
    FineTuneJob's turn is four requests in a row), so a turn's latency, not the CPU, bounds how many
    FineTuneJobs a second get their first attempt; 32 keep up with 50 created per second."""

    request_timeout_seconds: float = 30.0
    """Time limit of one Kubernetes API request made by the handlers."""

    trainer_cpu_request: str | None = None
    """CPU request of trainer containers whose FineTuneJob sets no `resources.cpu` (a Kubernetes quantity)."""

    trainer_memory_request: str | None = None
    """Memory request of trainer containers whose FineTuneJob sets no `resources.memory`."""

    leader_election_namespace: str | None = None
    """Namespace of the Lease that elects one active replica (the chart's release namespace); None: no
    election, this process is the only operator."""

    leader_election_lease_seconds: float = 15.0
    """How long a leader's Lease holds without renewal before a standby replica takes over."""

    pod_name: str | None = None
    """This replica's identity in the Lease (the pod's name; the host name when unset)."""

    lost_node_timeout_seconds: float = 300.0
    """How long a trainer pod may stay Terminating past its grace period on a lost node (NotReady,
    unreachable or gone: no kubelet will ever confirm its end) before the operator force-deletes it
    (grace 0) so the next attempt can start. Long enough for a node that only blinked to come back;
    force-deleting is only safe once the node's processes are really gone."""

    @property
    def clusterwide(self) -> bool:
        """Whether the operator watches every namespace."""
        return not self.namespaces

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Settings from `KUBETUNE_*` variables (see `ENV`); unset variables keep the defaults."""
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for variable, (field, parse) in ENV.items():
            raw = env.get(variable, "").strip()
            if not raw:
                continue
            try:
                values[field] = parse(raw)
            except ValueError as error:
                raise SettingsError(f"{variable}={raw!r}: {error}") from None
        return cls(**values)  # type: ignore[arg-type]


def _port(raw: str) -> int:
    value = int(raw)
    if value != 0 and not 1 <= value <= 65535:
        raise ValueError("expected a TCP port 1..65535, or 0 to disable")
    return value


def _positive_float(raw: str) -> float:
    value = float(raw)
    if value <= 0:
        raise ValueError("expected a number of seconds > 0")
    return value


def _positive_int(raw: str) -> int:
    value = int(raw)
    if value < 1:
        raise ValueError("expected an integer >= 1")
    return value


def _namespaces(raw: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in raw.split(",") if name.strip())
    if any("*" in name or "?" in name for name in names):
        raise ValueError("list plain namespace names separated by commas (no patterns), or leave empty for all")
    return names


def _text(raw: str) -> str:
    return raw


def _quantity(raw: str) -> str:
    if not re.fullmatch(r"[0-9]+(\.[0-9]+)?(m|k|Ki|Mi|Gi|Ti|M|G|T)?", raw) or float(re.sub(r"[^0-9.]", "", raw)) <= 0:
        raise ValueError("expected a positive Kubernetes quantity such as 4, 500m or 16Gi")
    return raw


ENV: dict[str, tuple[str, Callable[[str], object]]] = {
    "KUBETUNE_TRAINER_IMAGE": ("trainer_image", _text),
    "KUBETUNE_TRAINER_SERVICE_ACCOUNT": ("trainer_service_account", _text),
    "KUBETUNE_WATCH_NAMESPACES": ("namespaces", _namespaces),
    "KUBETUNE_METRICS_PORT": ("metrics_port", _port),
    "KUBETUNE_HEALTH_PORT": ("health_port", _port),
    "KUBETUNE_RESYNC_SECONDS": ("resync_seconds", _positive_float),
    "KUBETUNE_PROGRESS_TIMEOUT_SECONDS": ("progress_timeout_seconds", _positive_float),
    "KUBETUNE_PROGRESS_CONCURRENCY": ("progress_concurrency", _positive_int),
    "KUBETUNE_RECONCILE_CONCURRENCY": ("reconcile_concurrency", _positive_int),
    "KUBETUNE_REQUEST_TIMEOUT_SECONDS": ("request_timeout_seconds", _positive_float),
    "KUBETUNE_TRAINER_CPU_REQUEST": ("trainer_cpu_request", _quantity),
    "KUBETUNE_TRAINER_MEMORY_REQUEST": ("trainer_memory_request", _quantity),
    "KUBETUNE_LEADER_ELECTION_NAMESPACE": ("leader_election_namespace", _text),
    "KUBETUNE_LEADER_ELECTION_LEASE_SECONDS": ("leader_election_lease_seconds", _positive_float),
    "KUBETUNE_POD_NAME": ("pod_name", _text),
    "KUBETUNE_LOST_NODE_TIMEOUT_SECONDS": ("lost_node_timeout_seconds", _positive_float),
}
"""Environment variable → (Settings field, parser). The chart documents each one."""
