"""The small cluster interface the lifecycle scenarios are written against.

`ClusterClient` is what a scenario may do: create/get/patch/delete a
FineTuneJob, wait for its conditions, list its children and events, read its
PVC, and play the cluster's part (kill or OOM a pod's process, evict a pod,
admit a Kueue-suspended Job, restart the operator). `EmulatedCluster`
implements it in process: the emulated API server, the test Job controller
and kubelet, and an operator runner. The kind suite implements the same
protocol with kubectl against a real cluster, so the same scenario code runs
on both.

Calls are synchronous: the emulator serves from its own thread, so a test
body may block freely.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, Self, TypeVar

import kmock
from kubetune_trainer.recipe import API_GROUP, API_VERSION, PLURAL

from tests.harness.emulator import EVENTS, JOBS, PODS, ApiServer, KubeEmulator
from tests.harness.jobcontroller import JobController
from tests.harness.kubelet import CONFIGMAPS, PVCS, Kubelet, PodPlan
from tests.harness.operator_runner import OperatorRunner

FTJ = kmock.resource(API_GROUP, API_VERSION, PLURAL)
SERVICES = kmock.resource("", "v1", "services")
OWNER_LABEL = "kubetune.io/finetunejob"
ATTEMPT_LABEL = "kubetune.io/attempt"
CHILD_KINDS = {"jobs": JOBS, "pods": PODS, "configmaps": CONFIGMAPS, "persistentvolumeclaims": PVCS,
               "services": SERVICES}
T = TypeVar("T")


class ClusterClient(Protocol):
    """What a lifecycle scenario may do to a cluster (emulated or real)."""

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

    def restart_operator(self) -> None:
        """Kill the operator as abruptly as possible and start a new one."""

    def pod_log(self, pod: str) -> str:
        """The pod's container log."""

    def input_path(self, local: Path) -> str:
        """The path a trainer pod sees for a local file or folder staged for it (a model, a dataset)."""


class PollingWaits:
    """`wait_for`/`wait_until` by polling `get()`, shared by the emulated and the kubectl clients.

    A failed wait raises with `diagnose(name)`: what the cluster looked like at the deadline.
    """

    poll_seconds = 0.1

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


class EmulatedCluster(PollingWaits):
    """`ClusterClient` over the emulated API server, the test Job controller and kubelet."""

    def __init__(self, root: Path, namespace: str = "default", *, node_env: dict[str, str] | None = None,
                 **emulator_options: Any) -> None:
        self.root = root
        self.namespace = namespace
        self.node_env = node_env or {}
        self.server = ApiServer(**emulator_options)  # KubeEmulator's keep_history, admission
        self.kubelet: Kubelet | None = None
        self.controller: JobController | None = None
        self.operator: OperatorRunner | None = None
        self.kubeconfig = root / "kubeconfig"

    # ------------------------------------------------------------ lifecycle

    def start(self) -> EmulatedCluster:
        """Start the API server, the Job controller and the kubelet; write the kubeconfig."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.server.start()
        self.server.write_kubeconfig(self.kubeconfig, self.namespace)
        self.server.call(self._start_nodes())
        return self

    async def _start_nodes(self) -> None:
        self.controller = JobController(self.emulator)
        self.kubelet = Kubelet(self.emulator, self.root / "node", node_env=self.node_env)
        self.controller.start()
        self.kubelet.start()

    def stop(self) -> None:
        """Stop the operator, every pod process and the API server."""
        if self.operator is not None and self.operator.alive():
            self.operator.stop()
        if self.kubelet is not None and self.controller is not None:
            self.server.call(self.controller.stop())
            self.server.call(self.kubelet.stop())
        self.server.stop()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def emulator(self) -> KubeEmulator:
        """The emulator (for assertions on `objects`, `calls`, `warnings`)."""
        assert self.server.emulator is not None, "start() the cluster first"
        return self.server.emulator

    def run_operator(self, runner: OperatorRunner) -> None:
        """Start an operator and keep it for restart_operator() and stop()."""
        self.operator = runner
        runner.start()

    def add_pod_rule(self, plan: PodPlan, selector: str | None = None, times: int | None = None) -> None:
        """Make the kubelet fake pods matching a label selector (see `kubelet.PodPlan`)."""
        assert self.kubelet is not None
        self.server.call_soon(self.kubelet.add_rule, plan, selector, times)

    # ------------------------------------------------------------ ClusterClient

    def apply(self, manifest: dict[str, Any]) -> dict[str, Any]:
        return self.server.call(self.emulator.api_create(FTJ, self.namespace, manifest, strict=True))

    def get(self, name: str) -> dict[str, Any] | None:
        return self._copy(lambda: self.emulator.get_object(FTJ, self.namespace, name))

    def patch_spec(self, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        return self.server.call(self.emulator.api_patch(FTJ, self.namespace, name, {"spec": spec}))

    def delete(self, name: str) -> None:
        self.server.call(self.emulator.api_delete(FTJ, self.namespace, name, propagation="Background"))

    def children(self, name: str, kind: str) -> list[dict[str, Any]]:
        res = CHILD_KINDS[kind]
        return self._copy(lambda: self.emulator.list_objects(res, self.namespace, f"{OWNER_LABEL}={name}"))

    def get_object(self, kind: str, name: str) -> dict[str, Any] | None:
        res = CHILD_KINDS[kind]
        return self._copy(lambda: self.emulator.get_object(res, self.namespace, name))

    def events(self, name: str) -> list[dict[str, Any]]:
        return self._copy(lambda: self.emulator.list_objects(
            EVENTS, self.namespace, field_selector=f"involvedObject.name={name}"))

    def read_pvc_file(self, claim: str, path: str) -> bytes | None:
        file = self._pvc_root(claim) / path
        return file.read_bytes() if file.is_file() else None

    def pvc_files(self, claim: str, under: str = "") -> list[str]:
        root = self._pvc_root(claim)
        base = root / under
        return sorted(str(p.relative_to(root)) for p in base.rglob("*") if p.is_file()) if base.exists() else []

    def kill_pod(self, pod: str, sig: int = signal.SIGKILL) -> None:
        assert self.kubelet is not None
        self.server.call(self.kubelet.kill(self.namespace, pod, sig))

    def oom_kill(self, pod: str) -> None:
        assert self.kubelet is not None
        self.server.call(self.kubelet.oom(self.namespace, pod))

    def evict(self, pod: str) -> None:
        self.server.call(self.emulator.api_evict(self.namespace, pod))

    def admit(self, job: str) -> None:
        self.server.call(self.emulator.api_patch(JOBS, self.namespace, job, {"spec": {"suspend": False}}))

    def restart_operator(self) -> None:
        assert self.operator is not None, "run_operator() first"
        self.operator.kill()
        self.operator.start()

    def pod_log(self, pod: str) -> str:
        assert self.kubelet is not None
        return self.kubelet.log_text(self.namespace, pod)

    def input_path(self, local: Path) -> str:
        # Pods here see the host's file system outside their mounts.
        return str(local.resolve())

    # ------------------------------------------------------------ helpers

    def _pvc_root(self, claim: str) -> Path:
        assert self.kubelet is not None
        return self.kubelet.pvc_dir(self.namespace, claim)

    def _copy(self, read: Callable[[], T]) -> T:
        # Read in the emulator's loop and hand back a deep copy: its objects change under us otherwise.
        async def run() -> T:
            return json.loads(json.dumps(read()))

        return self.server.call(run())

    def diagnose(self, name: str | None = None) -> str:
        """What a failed wait should show: the FineTuneJob, its Jobs and pods, events and log tails."""
        lines: list[str] = []
        if name is not None:
            obj = self.get(name)
            lines.append(f"FineTuneJob status: {json.dumps((obj or {}).get('status'), indent=1)[:3000]}")
            for job in self.children(name, "jobs"):
                lines.append(f"Job {job['metadata']['name']}: suspend={job['spec'].get('suspend')} "
                             f"status={json.dumps(job.get('status'))[:800]}")
            for pod in self.children(name, "pods"):
                status = pod.get("status") or {}
                lines.append(f"Pod {pod['metadata']['name']}: {status.get('phase')} "
                             f"{json.dumps(status.get('containerStatuses'))[:800]}")
                lines.append(f"  log tail: {self.pod_log(pod['metadata']['name'])[-1500:]}")
            for event in self.events(name)[-10:]:
                lines.append(f"Event {event.get('reason')}: {event.get('message')}")
        log_tail = getattr(self.operator, "log_tail", None)
        if callable(log_tail):
            lines.append(f"operator log tail: {log_tail()}")
        return "\n".join(lines)


def kubeconfig_env(cluster: EmulatedCluster) -> dict[str, str]:
    """An environment for a subprocess (an operator, kubectl) that talks to the emulated cluster."""
    return {**os.environ, "KUBECONFIG": str(cluster.kubeconfig)}
