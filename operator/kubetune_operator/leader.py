"""Leader election on a `coordination.k8s.io/v1` Lease: one active operator replica, the others standing by.

The protocol of client-go's `leaderelection` package: a replica holds the
Lease while it renews `spec.renewTime` within `leaseDurationSeconds`; any
replica may take a Lease whose holder stopped renewing; every write is a PUT
conditional on the resourceVersion it read, so two replicas never both win.
A leader that cannot renew before the Lease would expire stops at once (its
process exits, as client-go's `OnStoppedLeading` callers do): a standby takes
over, and no two replicas ever reconcile at the same time.

Written by hand because neither kopf (its peering pauses operators of equal
priority, it does not elect one) nor the Python Kubernetes client ships
Lease-based election.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kubernetes.client.exceptions import ApiException

from kubetune_operator.kube import KubeApi

logger = logging.getLogger(__name__)
LEASE_NAME = "kubetune-operator"
MICRO_TIME = "%Y-%m-%dT%H:%M:%S.%fZ"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _parse(value: str | None) -> dt.datetime | None:
    if not value:
        return None
    for layout in (MICRO_TIME, "%Y-%m-%dT%H:%M:%SZ"):
        try:
            return dt.datetime.strptime(value, layout).replace(tzinfo=dt.UTC)
        except ValueError:
            continue
    return None


@dataclass(frozen=True)
class LeaseState:
    """Who holds the Lease and until when, as read."""

    holder: str
    renewed: dt.datetime | None
    duration_seconds: float

    def free_for(self, identity: str, now: dt.datetime) -> bool:
        """Whether `identity` may take or keep the Lease now."""
        if not self.holder or self.holder == identity or self.renewed is None:
            return True
        return now > self.renewed + dt.timedelta(seconds=self.duration_seconds)


def lease_state(lease: dict[str, Any]) -> LeaseState:
    """The holder, last renewal and duration of a Lease object."""
    spec = lease.get("spec") or {}
    return LeaseState(spec.get("holderIdentity") or "", _parse(spec.get("renewTime")),
                      float(spec.get("leaseDurationSeconds") or 0))


class LeaderElector:
    """Acquire, renew and release one Lease for one identity."""

    def __init__(self, kube: KubeApi, namespace: str, identity: str, lease_seconds: float = 15.0,
                 name: str = LEASE_NAME, clock: Callable[[], dt.datetime] = _now) -> None:
        self.kube = kube
        self.namespace = namespace
        self.identity = identity
        self.lease_seconds = lease_seconds
        self.name = name
        self.clock = clock
        self.retry_seconds = max(lease_seconds / 5, 0.2)  # client-go's retryPeriod is duration/7.5
        self._stop = threading.Event()

    def try_acquire_or_renew(self) -> bool:
        """One attempt: True when this identity holds the Lease afterwards."""
        now = self.clock()
        stamp = now.strftime(MICRO_TIME)
        try:
            lease = self.kube.get("Lease", self.namespace, self.name)
            if lease is None:
                self.kube.create({
                    "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": self.name, "namespace": self.namespace},
                    "spec": {"holderIdentity": self.identity, "leaseDurationSeconds": round(self.lease_seconds),
                             "acquireTime": stamp, "renewTime": stamp, "leaseTransitions": 0}})
                return True
            state = lease_state(lease)
            if not state.free_for(self.identity, now):
                return False
            spec = dict(lease.get("spec") or {})
            if state.holder != self.identity:
                spec.update(acquireTime=stamp, leaseTransitions=int(spec.get("leaseTransitions") or 0) + 1)
            spec.update(holderIdentity=self.identity, renewTime=stamp,
                        leaseDurationSeconds=round(self.lease_seconds))
            self.kube.replace({**lease, "apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "spec": spec})
            return True
        except ApiException as error:
            if error.status == 409:  # another replica wrote first: it won this round
                return False
            logger.warning("leader election: %s %s", error.status, error.reason)
            return False

    def acquire(self) -> None:
        """Block until this identity holds the Lease (or `stop()` is called)."""
        announced = False
        while not self._stop.is_set():
            if self.try_acquire_or_renew():
                logger.info("leader election: %s leads (Lease %s/%s)", self.identity, self.namespace, self.name)
                return
            if not announced:
                logger.info("leader election: standing by; another replica holds Lease %s/%s",
                            self.namespace, self.name)
                announced = True
            self._stop.wait(self.retry_seconds)

    def keep(self, on_lost: Callable[[], None]) -> threading.Thread:
        """Renew in a daemon thread; call `on_lost` once renewal fails for as long as the Lease lasts."""
        def renew() -> None:
            last = self.clock()
            while not self._stop.wait(self.retry_seconds):
                if self.try_acquire_or_renew():
                    last = self.clock()
                elif (self.clock() - last).total_seconds() >= self.lease_seconds * 2 / 3:
                    # client-go's renewDeadline: give up before the Lease can be taken over.
                    logger.error("leader election: lost Lease %s/%s", self.namespace, self.name)
                    on_lost()
                    return

        thread = threading.Thread(target=renew, name="leader-election", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        """Stop acquiring or renewing (the Lease then expires; a standby takes over after it)."""
        self._stop.set()
