"""What a lifecycle scenario may do to a cluster (`ClusterClient`), and its implementation on the real API.

`ClusterClient` is the seam: create/get/patch/delete a FineTuneJob, wait for
its conditions, list its children and events, read its PVC, and play the
cluster's part (kill or OOM a pod's process, evict a pod through the Eviction
API, admit a Kueue-suspended Job, restart the operator). `RealCluster` does it
on the test control plane (real API server and controllers, the test kubelet);
the kind suite's kubectl client does it on a kind cluster, so the same scenario
code runs on both.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar

from kubetune_api.recipe import API_GROUP, API_VERSION, PLURAL

from tests.cluster.controlplane import ControlPlane
from tests.cluster.kubelet import Kubelet
from tests.cluster.operator_runner import ProcessOperator
from tests.cluster.rest import MERGE_PATCH, ApiError, RestClient, path_of

OWNER_LABEL = "kubetune.io/finetunejob"
FTJ_VERSION = f"{API_GROUP}/{API_VERSION}"
# kind (as scenarios name it) -> (apiVersion, plural)
CHILD_KINDS = {"jobs": ("batch/v1", "jobs"), "pods": ("v1", "pods"), "configmaps": ("v1", "configmaps"),
               "persistentvolumeclaims": ("v1", "persistentvolumeclaims"), "services": ("v1", "services")}
T = TypeVar("T")


class ClusterClient(Protocol):
    """What a lifecycle scenario may do to a cluster."""

    namespace: str

    def apply(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """Create a FineTuneJob (as `kubectl apply` of a new object); returns it as stored."""

    def get(self, name: str) -> dict[str, Any] | None:
        """The FineTuneJob, or None when it does not exist."""

    def patch_spec(self, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        """Merge-patch the FineTuneJob's spec (only `suspend` may change)."""

    def delete(self, name: str) -> None:
        """Delete the FineTuneJob (background propagation, as kubectl)."""

    def wait_for(self, name: str, check: Callable[[dict[str, Any]], bool], timeout: float, what: str) -> dict[str, Any]:
        """Poll the FineTuneJob until `check(obj)` holds; raise AssertionError naming `what` on timeout."""

    def wait_until(self, check: Callable[[], T], timeout: float, what: str) -> T:
        """Poll `check()` until it returns something truthy; return it."""

    def children(self, name: str, kind: str) -> list[dict[str, Any]]:
        """Live children of a kind (jobs, pods, configmaps, persistentvolumeclaims, services) by the owner label."""

    def get_object(self, kind: str, name: str) -> dict[str, Any] | None:
        """Any object of those kinds by name."""

    def events(self, name: str) -> list[dict[str, Any]]:
        """Events about the FineTuneJob."""

    def read_pvc_file(self, claim: str, path: str) -> bytes | None:
        """A file on a PVC, by its path relative to the volume root; None if absent."""

    def pvc_files(self, claim: str, under: str = "") -> list[str]:
        """Relative paths of the files on a PVC (under a folder)."""

    def kill_pod(self, pod: str, sig: int = signal.SIGKILL) -> None:
        """Send a signal into the pod's container (SIGKILL: the whole container dies)."""

    def oom_kill(self, pod: str) -> None:
        """Kill the pod's container as the OOM killer does (reason OOMKilled, exit code 137)."""

    def evict(self, pod: str) -> None:
        """Evict the pod through the Eviction API (DisruptionTarget, then graceful deletion)."""

    def admit(self, job: str) -> None:
        """Unsuspend a Job as Kueue does when it admits a workload."""

    def preempt(self, job: str) -> None:
        """Suspend a running Job as Kueue does when it preempts a workload."""

    def restart_operator(self) -> None:
        """Kill the operator as abruptly as possible and start a new one."""

    def pod_log(self, pod: str) -> str:
        """The pod's container log."""

    def input_path(self, local: Path) -> str:
        """The path a trainer pod sees for a local file or folder staged for it (a model, a dataset)."""


class PollingWaits:
    """`wait_for`/`wait_until` by polling, shared by the cluster clients.

    A failed wait raises with `diagnose(name)`: what the cluster looked like at the deadline.
    """

    poll_seconds = 0.2

    def get(self, name: str) -> dict[str, Any] | None:
        """The FineTuneJob, or None."""
        raise NotImplementedError

    def diagnose(self, name: str | None = None) -> str:
        """What a failed wait shows."""
        raise NotImplementedError

    def wait_for(self, name: str, check: Callable[[dict[str, Any]], bool], timeout: float, what: str) -> dict[str, Any]:
        """The FineTuneJob once `check` holds for it; AssertionError after `timeout` seconds."""
        def probe() -> dict[str, Any] | None:
            obj = self.get(name)
            return obj if obj is not None and check(obj) else None

        return self.wait_until(probe, timeout, f"{name}: {what}", name)

    def wait_until(self, check: Callable[[], T], timeout: float, what: str, name: str | None = None) -> T:
        """The first truthy result of `check`; AssertionError after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                result = check()
            except (KeyError, IndexError, TypeError):  # a field not there yet
                result = None
            if result:
                return result
            if time.monotonic() > deadline:
                raise AssertionError(f"not within {timeout} s: {what}\n{self.diagnose(name)}")
            time.sleep(self.poll_seconds)


class RealCluster(PollingWaits):
    """`ClusterClient` on the test control plane, in one namespace, with its operator process."""

    def __init__(self, control_plane: ControlPlane, rest: RestClient, kubelet: Kubelet, namespace: str,
                 operator: ProcessOperator | None = None) -> None:
        self.control_plane = control_plane
        self.rest = rest
        self.kubelet = kubelet
        self.namespace = namespace
        self.operator = operator

    # ------------------------------------------------------------ FineTuneJobs

    def _ftj(self, name: str | None = None) -> str:
        return path_of(FTJ_VERSION, PLURAL, self.namespace, name)

    def apply(self, manifest: dict[str, Any]) -> dict[str, Any]:
        return self.rest.request("POST", self._ftj(), manifest, query={"fieldValidation": "Strict"})

    def get(self, name: str) -> dict[str, Any] | None:
        return self.rest.get(self._ftj(name))

    def patch_spec(self, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        answer = self.rest.patch(self._ftj(name), {"spec": spec})
        assert answer is not None, f"FineTuneJob {name} is gone"
        return answer

    def delete(self, name: str) -> None:
        self.rest.delete(self._ftj(name), propagationPolicy="Background")

    # ------------------------------------------------------------ children and events

    def _path(self, kind: str, name: str | None = None, subresource: str | None = None) -> str:
        version, plural = CHILD_KINDS[kind]
        return path_of(version, plural, self.namespace, name, subresource)

    def children(self, name: str, kind: str) -> list[dict[str, Any]]:
        return self.rest.list(self._path(kind), labelSelector=f"{OWNER_LABEL}={name}")

    def get_object(self, kind: str, name: str) -> dict[str, Any] | None:
        return self.rest.get(self._path(kind, name))

    def events(self, name: str) -> list[dict[str, Any]]:
        return self.rest.list(path_of("v1", "events", self.namespace), fieldSelector=f"involvedObject.name={name}")

    def read_pvc_file(self, claim: str, path: str) -> bytes | None:
        root = self.kubelet.pv_dir(self.namespace, claim)
        file = root / path if root is not None else None
        return file.read_bytes() if file is not None and file.is_file() else None

    def pvc_files(self, claim: str, under: str = "") -> list[str]:
        root = self.kubelet.pv_dir(self.namespace, claim)
        if root is None or not (root / under).exists():
            return []
        return sorted(str(p.relative_to(root)) for p in (root / under).rglob("*") if p.is_file())

    # ------------------------------------------------------------ the cluster's part

    def kill_pod(self, pod: str, sig: int = signal.SIGKILL) -> None:
        self.kubelet.kill(self.namespace, pod, sig)

    def oom_kill(self, pod: str) -> None:
        self.kubelet.oom(self.namespace, pod)

    def evict(self, pod: str) -> None:
        eviction = {"apiVersion": "policy/v1", "kind": "Eviction",
                    "metadata": {"name": pod, "namespace": self.namespace}}
        self.rest.create(self._path("pods", pod, "eviction"), eviction)

    def admit(self, job: str) -> None:
        self.rest.patch(self._path("jobs", job), {"spec": {"suspend": False}}, content_type=MERGE_PATCH)

    def preempt(self, job: str) -> None:
        self.rest.patch(self._path("jobs", job), {"spec": {"suspend": True}}, content_type=MERGE_PATCH)

    def restart_operator(self) -> None:
        assert self.operator is not None, "this cluster runs no operator"
        self.operator.kill()
        self.operator.start()

    def pod_log(self, pod: str) -> str:
        return self.kubelet.log_text(self.namespace, pod)

    def input_path(self, local: Path) -> str:
        # Pods of the test kubelet see the host's file system outside their mounts.
        return str(local.resolve())

    # ------------------------------------------------------------ diagnosis

    def diagnose(self, name: str | None = None) -> str:
        """The FineTuneJob, its Jobs and pods, events, log tails, the operator's and the components' logs."""
        lines: list[str] = []
        try:
            if name is not None:
                obj = self.get(name)
                lines.append(f"FineTuneJob status: {json.dumps((obj or {}).get('status'), indent=1)[:3000]}")
                for job in self.children(name, "jobs"):
                    lines.append(f"Job {job['metadata']['name']}: suspend={job['spec'].get('suspend')} "
                                 f"status={json.dumps(job.get('status'))[:800]}")
                for pod in self.children(name, "pods"):
                    status = pod.get("status") or {}
                    lines.append(f"Pod {pod['metadata']['name']} on {pod['spec'].get('nodeName')}: "
                                 f"{status.get('phase')} {json.dumps(status.get('conditions'))[:600]} "
                                 f"{json.dumps(status.get('containerStatuses'))[:800]}")
                    lines.append(f"  log tail: {self.pod_log(pod['metadata']['name'])[-1500:]}")
                for event in self.events(name)[-10:]:
                    lines.append(f"Event {event.get('reason')}: {event.get('message')}")
        except ApiError as error:
            lines.append(f"(the API failed while diagnosing: {error})")
        if self.kubelet.errors:
            lines.append(f"test kubelet errors: {self.kubelet.errors[-5:]}")
        if self.operator is not None:
            lines.append(f"operator log tail: {self.operator.log_tail()}")
        lines.append(self.control_plane.diagnose())
        return "\n".join(lines)
