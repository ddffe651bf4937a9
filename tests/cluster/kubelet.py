"""The test kubelet: registers Nodes on the real API server and runs the pods the real scheduler binds to them.

Written by hand because no node agent runs pods without a container runtime;
kwok fakes pods without running anything, and here the trainer must really run.
It does what a kubelet does for the scenarios, on the real API:

- registers its Nodes (one with `nvidia.com/gpu` capacity, one CPU-only), keeps
  their Ready condition and their Leases in `kube-node-lease` fresh;
- provisions a hostPath PersistentVolume pre-bound to every pending claim (a
  tiny dynamic provisioner); the real PV controller binds the pair, and the
  PV's folder is what pods mount;
- for every pod bound to its nodes: a loopback IP (127.0.0.2 on, so each pod's
  metrics port is its own), volumes as folders (ConfigMaps/Secrets as files),
  the containers' commands as local processes with the pod's env (downward API
  resolved, mount paths remapped: `tests.cluster.podenv`), then the pod's
  phase, conditions, container states, exit codes, reasons and termination
  messages written to `pods/status`;
- on request (`size_claims`), the claims of a namespace get a tmpfs of their
  requested size instead of a plain folder, so a full volume fails writes with
  ENOSPC as a real one does (hostPath enforces no quota);
- a pod being deleted (by the Job controller, the garbage collector, an
  eviction) gets SIGTERM on its main process and SIGKILL on the whole
  process group after its grace period, then the final delete (grace 0);
- fakes on request: an image from a `*.invalid` registry stays in
  ErrImagePull; `oom()` kills as the OOM killer does (reason OOMKilled); a
  `PodPlan(mode="exit")` rule ends a pod without a process;
- `lose(node)` makes one node a lost one (a machine that died): its pods'
  processes are killed, its lease and status are no longer renewed (the node
  lifecycle controller turns it NotReady/Unknown and taints it), and nothing
  about its pods is reported or confirmed any more (a deleted pod stays
  Terminating); `recover(node)` brings it back.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import itertools
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tests.cluster import podenv
from tests.cluster.rest import STRATEGIC_PATCH, ApiError, RestClient, path_of

logger = logging.getLogger(__name__)
VENV_BIN = str(Path(sys.executable).parent)
RESYNC_SECONDS = 0.5  # a full pass at least this often, besides every pod event
HEARTBEAT_SECONDS = 10.0
LEASE_SECONDS = 40
GPU_NODE = "gpu-node"
CPU_NODE = "cpu-node"
GPU_RESOURCE = "nvidia.com/gpu"


def now_iso() -> str:
    """The current time as the API writes timestamps."""
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class NodeSpec:
    """One Node the test kubelet registers and serves."""

    name: str
    labels: dict[str, str]
    capacity: dict[str, str]


def default_nodes() -> list[NodeSpec]:
    """A GPU node (4 × nvidia.com/gpu) and a CPU-only node, labelled for the scheduling tests."""
    base = {"cpu": "16", "memory": "64Gi", "pods": "110", "ephemeral-storage": "100Gi"}
    return [
        NodeSpec(GPU_NODE, {"kubetune.test/accelerator": "gpu"}, {**base, GPU_RESOURCE: "4"}),
        NodeSpec(CPU_NODE, {"kubetune.test/accelerator": "none"}, base),
    ]


@dataclass(frozen=True)
class PodPlan:
    """What the kubelet does with a pod instead of running it (`run`: run it)."""

    mode: Literal["run", "exit"] = "run"
    exit_code: int = 0  # mode "exit"
    after: float = 0.0  # mode "exit": seconds Running before the exit
    message: str = ""  # mode "exit": the termination message
    reason: str | None = None  # mode "exit": the terminated reason (default Completed/Error)


@dataclass
class Rule:
    """Pods carrying every label of `labels` get `plan`, `times` times (None: always)."""

    plan: PodPlan
    labels: dict[str, str]
    times: int | None


@dataclass
class ContainerRun:
    """One container of a pod: its process (None when faked) and how it ended."""

    name: str
    spec: podenv.ProcessSpec | None
    log_file: Path
    process: subprocess.Popen[bytes] | None = None
    exit_code: int | None = None
    started_at: str = field(default_factory=now_iso)
    finished_at: str = ""
    reason: str | None = None  # a forced terminated reason (OOMKilled)
    message: str = ""  # a faked termination message


@dataclass
class PodRun:
    """The kubelet's state of one pod (by uid)."""

    uid: str
    namespace: str
    name: str
    plan: PodPlan
    ip: str | None = None
    containers: list[ContainerRun] = field(default_factory=list)
    reported: str = ""  # the last status written, so each transition is written once
    sigterm_at: float | None = None
    deleted: bool = False  # the final delete was sent
    node: str = ""


class Kubelet:
    """Serves the nodes of `nodes` on the API server behind `rest`; one sync thread, one watch thread."""

    def __init__(self, rest: RestClient, root: Path, *, nodes: list[NodeSpec] | None = None,
                 node_env: dict[str, str] | None = None) -> None:
        self.rest = rest
        self.root = root
        self.nodes = nodes or default_nodes()
        self.node_env = node_env or {}
        self.rules: list[Rule] = []
        self.pods: dict[str, PodRun] = {}
        # Any 127/8 address is loopback on Linux: from 127.0.0.2 on, never reused, so thousands of faked
        # pods (the scale benchmark) each get their own, and a poll of an ended pod never reaches a new one.
        self._new_ips = (str(ip) for ip in itertools.islice(ipaddress.ip_network("127.0.0.0/8").hosts(), 1, None))
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.RLock()  # pods and rules: the sync thread and test calls
        self._threads: list[threading.Thread] = []
        self._heartbeat_at = 0.0
        self._pv_seq = itertools.count()
        self.sized_namespaces: set[str] = set()  # claims there get a tmpfs of their size (size_claims)
        self._mounts: list[Path] = []
        self.errors: list[str] = []  # what a sync pass raised (shown by diagnose)
        self.lost: set[str] = set()  # nodes that died: no heartbeat, no pod handled (lose/recover)

    # ------------------------------------------------------------ lifecycle

    def start(self) -> Kubelet:
        """Register the nodes and start serving them."""
        for node in self.nodes:
            self._register(node)
        self._heartbeat()
        for target, name in ((self._sync_loop, "test-kubelet"), (self._watch_loop, "test-kubelet-watch")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        """Stop syncing and kill every process."""
        self._stop.set()
        self._wake.set()
        for thread in self._threads:
            thread.join(timeout=10)
        with self._lock:
            for run in self.pods.values():
                for container in run.containers:
                    _signal_group(container, signal.SIGKILL)
            for run in self.pods.values():
                for container in run.containers:
                    if container.process is not None:
                        container.process.wait()
        for mount in self._mounts:
            subprocess.run(["umount", "--lazy", str(mount)], check=False, capture_output=True)

    def wake(self) -> None:
        """Ask for a sync pass now."""
        self._wake.set()

    # ------------------------------------------------------------ what tests do

    def add_rule(self, plan: PodPlan, labels: dict[str, str] | None = None, times: int | None = None) -> Rule:
        """Give pods carrying these labels (all pods: None) this plan (newest rule first)."""
        with self._lock:
            rule = Rule(plan, labels or {}, times)
            self.rules.insert(0, rule)
            return rule

    def size_claims(self, namespace: str) -> None:
        """Back the claims of `namespace` provisioned from now on by a tmpfs of the claim's requested
        storage (needs root): writes beyond it fail with ENOSPC, as on a full volume."""
        self.sized_namespaces.add(namespace)

    def kill(self, namespace: str, pod: str, sig: int = signal.SIGKILL) -> None:
        """Signal a pod's containers: SIGKILL hits the process group (a container dies whole)."""
        with self._lock:
            for container in self._run_of(namespace, pod).containers:
                if sig == signal.SIGKILL:
                    _signal_group(container, sig)
                elif container.process is not None and container.process.poll() is None:
                    container.process.send_signal(sig)
        self.wake()

    def oom(self, namespace: str, pod: str) -> None:
        """Fake the kernel's OOM killer: SIGKILL, reported as reason OOMKilled, exit code 137."""
        with self._lock:
            for container in self._run_of(namespace, pod).containers:
                container.reason = "OOMKilled"
                _signal_group(container, signal.SIGKILL)
        self.wake()

    def lose(self, node: str) -> None:
        """The node dies: its pods' processes are killed, its lease expires, its pods are never reported again."""
        with self._lock:
            self.lost.add(node)
            for run in self.pods.values():
                if run.node == node:
                    for container in run.containers:
                        _signal_group(container, signal.SIGKILL)

    def recover(self, node: str) -> None:
        """A lost node comes back: heartbeats at once, its pods handled again."""
        with self._lock:
            self.lost.discard(node)
            self._heartbeat_at = 0.0
        self.wake()

    def pv_dir(self, namespace: str, claim: str) -> Path | None:
        """The host folder behind a bound claim, None while it is not bound."""
        pvc = self.rest.get(path_of("v1", "persistentvolumeclaims", namespace, claim))
        volume = ((pvc or {}).get("spec") or {}).get("volumeName")
        if not volume:
            return None
        pv = self.rest.get(path_of("v1", "persistentvolumes", name=volume)) or {}
        host = ((pv.get("spec") or {}).get("hostPath") or {}).get("path")
        return Path(host) if host else None

    def pod_dir(self, namespace: str, name: str, uid: str = "") -> Path:
        """The host folder of one pod: volumes, logs, termination messages."""
        return self.root / "pods" / namespace / (f"{name}-{uid[:8]}" if uid else name)

    def log_text(self, namespace: str, pod: str) -> str:
        """A pod's first container's log, host paths mapped back to the pod's (as `kubectl logs` shows)."""
        with self._lock:
            run = self._find(namespace, pod)
        if run is None or not run.containers:
            return ""
        container = run.containers[0]
        text = container.log_file.read_text(encoding="utf-8", errors="replace") if container.log_file.exists() else ""
        return container.spec.mounts.to_pod(text) if container.spec is not None else text

    # ------------------------------------------------------------ nodes

    def _register(self, node: NodeSpec) -> None:
        labels = {"kubernetes.io/hostname": node.name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
                  **node.labels}
        try:
            self.rest.create(path_of("v1", "nodes"), {"apiVersion": "v1", "kind": "Node",
                                                     "metadata": {"name": node.name, "labels": labels}})
        except ApiError as error:
            if error.status != 409:
                raise
        lease = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                 "metadata": {"name": node.name, "namespace": "kube-node-lease"},
                 "spec": {"holderIdentity": node.name, "leaseDurationSeconds": LEASE_SECONDS}}
        with contextlib.suppress(ApiError):
            self.rest.create(path_of("coordination.k8s.io/v1", "leases", "kube-node-lease"), lease)

    def _heartbeat(self) -> None:
        """Node status (Ready, capacity) and Lease renewal, as a kubelet's node-status loop."""
        now, micro = now_iso(), dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        for node in self.nodes:
            if node.name in self.lost:
                continue
            status = {
                "capacity": node.capacity, "allocatable": node.capacity,
                "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                                "message": "test kubelet is posting ready status",
                                "lastHeartbeatTime": now, "lastTransitionTime": now}],
                "addresses": [{"type": "InternalIP", "address": "127.0.0.1"},
                              {"type": "Hostname", "address": node.name}],
                "nodeInfo": {"kubeletVersion": "v1.37.2-test", "containerRuntimeVersion": "process://local",
                             "operatingSystem": "linux", "architecture": "amd64", "osImage": "test",
                             "kernelVersion": os.uname().release, "kubeProxyVersion": "", "machineID": "",
                             "systemUUID": "", "bootID": ""},
            }
            self.rest.patch(path_of("v1", "nodes", name=node.name, subresource="status"), {"status": status},
                            content_type=STRATEGIC_PATCH)
            self.rest.patch(path_of("coordination.k8s.io/v1", "leases", "kube-node-lease", node.name),
                            {"spec": {"renewTime": micro}})
        self._heartbeat_at = time.monotonic()

    # ------------------------------------------------------------ loops

    def _watch_loop(self) -> None:
        """Wake the sync loop on every pod or claim event (a lost watch is simply restarted)."""
        while not self._stop.is_set():
            try:
                for _event in self.rest.watch(path_of("v1", "pods"), timeout_seconds=20):
                    self._wake.set()
                    if self._stop.is_set():
                        return
            except Exception as error:  # noqa: BLE001 - a broken watch is retried; the resync covers the gap
                logger.debug("pod watch ended: %s", error)
                self._stop.wait(0.5)

    def _sync_loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(RESYNC_SECONDS)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.sync()
            except Exception as error:
                logger.exception("test kubelet sync failed")
                self.errors.append(repr(error))

    def sync(self) -> None:
        """One pass: heartbeats when due, claims to provision, pods to start, report and stop."""
        if time.monotonic() - self._heartbeat_at > HEARTBEAT_SECONDS:
            self._heartbeat()
        for pvc in self.rest.list(path_of("v1", "persistentvolumeclaims")):
            if not (pvc.get("spec") or {}).get("volumeName") and (pvc.get("status") or {}).get("phase") == "Pending":
                self._provision(pvc)
        mine = {node.name for node in self.nodes if node.name not in self.lost}
        pods = [p for p in self.rest.list(path_of("v1", "pods")) if (p.get("spec") or {}).get("nodeName") in mine]
        with self._lock:
            for pod in pods:
                if pod["spec"].get("nodeName") in self.lost:
                    continue  # lost meanwhile (lose() holds the lock): never report its pods again
                try:
                    self._sync_pod(pod)
                except ApiError as error:
                    if error.status not in (404, 409):  # gone or changed meanwhile: the next pass sees it
                        raise

    # ------------------------------------------------------------ storage

    def _provision(self, pvc: dict[str, Any]) -> None:
        """A hostPath PV pre-bound to the claim; the real PV controller completes the binding."""
        meta, spec = pvc["metadata"], pvc["spec"]
        name = f"pv-{meta['namespace']}-{meta['name']}-{meta['uid'][:8]}"[:63].rstrip("-")
        folder = self.root / "volumes" / name
        folder.mkdir(parents=True, exist_ok=True)
        size = spec.get("resources", {}).get("requests", {}).get("storage", "1Gi")
        if meta["namespace"] in self.sized_namespaces and folder not in self._mounts:
            from kubernetes.utils import parse_quantity  # here: the GPU machine's pytest has no kubernetes

            bytes_ = int(parse_quantity(size))
            subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={bytes_}", "tmpfs", str(folder)], check=True,
                           capture_output=True)
            self._mounts.append(folder)
        volume = {
            "apiVersion": "v1", "kind": "PersistentVolume",
            "metadata": {"name": name, "labels": {"kubetune.test/provisioned": "true"}},
            "spec": {
                "capacity": {"storage": size},
                "accessModes": spec.get("accessModes") or ["ReadWriteOnce"],
                "persistentVolumeReclaimPolicy": "Retain",
                "storageClassName": spec.get("storageClassName") or "",
                "hostPath": {"path": str(folder), "type": "DirectoryOrCreate"},
                "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "namespace": meta["namespace"],
                             "name": meta["name"], "uid": meta["uid"]},
            },
        }
        try:
            self.rest.create(path_of("v1", "persistentvolumes"), volume)
        except ApiError as error:
            if error.status != 409:
                raise

    # ------------------------------------------------------------ pods

    def _sync_pod(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        run = self.pods.get(meta["uid"])
        if run is None:
            if meta.get("deletionTimestamp"):
                self._final_delete(pod, None)
                return
            run = self.pods[meta["uid"]] = PodRun(meta["uid"], meta["namespace"], meta["name"], self._plan_for(pod),
                                                  node=pod["spec"].get("nodeName") or "")
        if not run.containers and not run.deleted:
            self._start(pod, run)
        if meta.get("deletionTimestamp"):
            self._terminate(pod, run)
        self._report(pod, run)

    def _plan_for(self, pod: dict[str, Any]) -> PodPlan:
        for rule in self.rules:
            labels = pod["metadata"].get("labels") or {}
            if (rule.times is None or rule.times > 0) and rule.labels.items() <= labels.items():
                if rule.times is not None:
                    rule.times -= 1
                return rule.plan
        return PodPlan()

    def _start(self, pod: dict[str, Any], run: PodRun) -> None:
        if pod["metadata"].get("deletionTimestamp"):
            return
        image_error = _image_pull_error(pod)
        if image_error:
            self._write_waiting(pod, run, "ErrImagePull", image_error)
            return
        if run.ip is None:
            run.ip = next(self._new_ips)
        try:
            run.containers = self._launch(pod, run)
        except podenv.PodSetupError as error:
            # As the kubelet: the pod stays Pending (ContainerCreating / CreateContainerConfigError); retried.
            self._write_waiting(pod, run, error.reason, error.message)

    def _launch(self, pod: dict[str, Any], run: PodRun) -> list[ContainerRun]:
        pod_dir = self.pod_dir(run.namespace, run.name, run.uid)
        pod_dir.mkdir(parents=True, exist_ok=True)
        if run.plan.mode == "exit":
            containers = [ContainerRun(c["name"], None, pod_dir / f"{c['name']}.log", message=run.plan.message,
                                       reason=run.plan.reason) for c in pod["spec"]["containers"]]
            timer = threading.Timer(run.plan.after, self._fake_exit, (containers, run.plan.exit_code))
            timer.daemon = True
            timer.start()
            return containers
        pod = {**pod, "status": {**(pod.get("status") or {}), "podIP": run.ip}}  # the downward API's status.podIP
        volumes = podenv.materialize_volumes(pod, pod_dir, lambda claim: self._claim_dir(run.namespace, claim),
                                             self._lookup("configmaps"), self._lookup("secrets"))
        specs = []
        for container in pod["spec"]["containers"]:
            termination_file = pod_dir / f"{container['name']}.termination-log"
            env = podenv.container_env(pod, container, self._lookup("configmaps"), self._lookup("secrets"))
            mounts = podenv.container_mounts(container, volumes, termination_file)
            specs.append(podenv.process_spec(
                pod, container, base_env=self._base_env(pod_dir), env=env, mounts=mounts,
                hosts=self._hosts(run.namespace), pod_dir=pod_dir, termination_file=termination_file,
                entrypoints={}))
        containers = []
        for container, spec in zip(pod["spec"]["containers"], specs, strict=True):
            started = ContainerRun(container["name"], spec, pod_dir / f"{container['name']}.log")
            with started.log_file.open("ab") as log:
                started.process = subprocess.Popen(spec.argv, env=spec.env, cwd=spec.cwd, stdout=log,
                                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                                   start_new_session=True)  # own group: SIGKILL takes all
            waiter = threading.Thread(target=self._wait, args=(started,), name=f"wait-{run.name}", daemon=True)
            waiter.start()
            containers.append(started)
        return containers

    def _claim_dir(self, namespace: str, claim: str) -> Path:
        folder = self.pv_dir(namespace, claim)
        if folder is None:
            raise podenv.PodSetupError("ContainerCreating",
                                       f'persistentvolumeclaim "{claim}" is not bound yet')
        return folder

    def _lookup(self, plural: str) -> podenv.Lookup:
        return lambda namespace, name: self.rest.get(path_of("v1", plural, namespace, name))

    def _base_env(self, pod_dir: Path) -> dict[str, str]:
        home = pod_dir / "home"
        home.mkdir(parents=True, exist_ok=True)
        path = f"{VENV_BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}"
        return {"PATH": path, "HOME": str(home), "LANG": "C.UTF-8", "PYTHONUNBUFFERED": "1", **self.node_env}

    def _hosts(self, namespace: str) -> dict[str, str]:
        """Pod DNS names of a headless Service, as CoreDNS would answer them."""
        hosts: dict[str, str] = {}
        for pod in self.rest.list(path_of("v1", "pods", namespace)):
            run = self.pods.get(pod["metadata"]["uid"])
            hostname, subdomain = pod["spec"].get("hostname"), pod["spec"].get("subdomain")
            if run is None or run.ip is None or not (hostname and subdomain):
                continue
            for suffix in ("", f".{namespace}", f".{namespace}.svc", f".{namespace}.svc.cluster.local"):
                hosts[f"{hostname}.{subdomain}{suffix}"] = run.ip
        return hosts

    def _wait(self, container: ContainerRun) -> None:
        assert container.process is not None
        code = container.process.wait()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(container.process.pid, signal.SIGKILL)  # nothing a container started outlives it
        container.exit_code = code if code >= 0 else 128 - code  # killed by signal N: 128+N, as a runtime says
        container.finished_at = now_iso()
        self.wake()

    def _fake_exit(self, containers: list[ContainerRun], exit_code: int) -> None:
        for container in containers:
            if container.exit_code is None:
                container.exit_code, container.finished_at = exit_code, now_iso()
        self.wake()

    def _terminate(self, pod: dict[str, Any], run: PodRun) -> None:
        live = [c for c in run.containers if c.exit_code is None]
        if not run.containers or not live:
            return  # nothing runs: _report writes the final status, then deletes
        grace = pod["metadata"].get("deletionGracePeriodSeconds", 30)
        now = time.monotonic()
        if run.sigterm_at is None:
            run.sigterm_at = now
            for container in live:
                if container.process is not None:
                    container.process.send_signal(signal.SIGTERM)  # PID 1 only; the launcher forwards it
                else:  # a faked container ends at once on SIGTERM, like a well-behaved trainer
                    container.exit_code, container.finished_at = 143, now_iso()
        elif now - run.sigterm_at >= grace:
            for container in live:
                _signal_group(container, signal.SIGKILL)

    def _report(self, pod: dict[str, Any], run: PodRun) -> None:
        if not run.containers:
            if pod["metadata"].get("deletionTimestamp"):
                self._final_delete(pod, run)
            return
        done = [c for c in run.containers if c.exit_code is not None]
        if len(done) < len(run.containers):
            phase = "Running"
        else:
            phase = "Succeeded" if all(c.exit_code == 0 for c in done) else "Failed"
        if phase != run.reported:
            ready = "True" if phase == "Running" else "False"
            status = {"phase": phase, "podIP": run.ip, "podIPs": [{"ip": run.ip}], "hostIP": "127.0.0.1",
                      "hostIPs": [{"ip": "127.0.0.1"}], "startTime": run.containers[0].started_at,
                      "containerStatuses": [self._container_status(c, pod) for c in run.containers],
                      "conditions": [_condition("Initialized", "True"), _condition("ContainersReady", ready),
                                     _condition("Ready", ready)]}
            self._write_status(pod, status)
            run.reported = phase
        if phase != "Running":
            if pod["metadata"].get("deletionTimestamp"):
                self._final_delete(pod, run)

    def _container_status(self, container: ContainerRun, pod: dict[str, Any]) -> dict[str, Any]:
        image = next((c.get("image", "") for c in pod["spec"]["containers"] if c["name"] == container.name), "")
        status: dict[str, Any] = {"name": container.name, "image": image, "imageID": f"process://{image}",
                                  "restartCount": 0, "started": container.exit_code is None,
                                  "ready": container.exit_code is None}
        if container.exit_code is None:
            status["state"] = {"running": {"startedAt": container.started_at}}
            return status
        if container.spec is not None:
            message = podenv.termination_message(container.spec, container.log_file, container.exit_code != 0)
        else:
            message = container.message
        reason = container.reason or ("Completed" if container.exit_code == 0 else "Error")
        terminated = {"exitCode": container.exit_code, "reason": reason, "startedAt": container.started_at,
                      "finishedAt": container.finished_at or now_iso()}
        if message:
            terminated["message"] = message
        status["state"] = {"terminated": terminated}
        return status

    def _write_waiting(self, pod: dict[str, Any], run: PodRun, reason: str, message: str) -> None:
        key = f"waiting:{reason}:{message}"
        if run.reported == key:
            return
        waiting = [{"name": c["name"], "image": c.get("image", ""), "imageID": "", "ready": False,
                    "restartCount": 0, "started": False, "state": {"waiting": {"reason": reason, "message": message}}}
                   for c in pod["spec"]["containers"]]
        self._write_status(pod, {"phase": "Pending", "containerStatuses": waiting,
                                 "conditions": [_condition("Initialized", "True")]})
        run.reported = key

    def _write_status(self, pod: dict[str, Any], status: dict[str, Any]) -> None:
        # Strategic merge: conditions merge by type, so the scheduler's PodScheduled and the API
        # server's DisruptionTarget stay.
        meta = pod["metadata"]
        self.rest.patch(path_of("v1", "pods", meta["namespace"], meta["name"], "status"),
                        {"metadata": {"uid": meta["uid"]}, "status": status}, content_type=STRATEGIC_PATCH)

    def _final_delete(self, pod: dict[str, Any], run: PodRun | None) -> None:
        """The kubelet's last word on a pod being deleted: delete it with grace 0 (finalizers may still hold it)."""
        if run is not None and run.deleted:
            return
        meta = pod["metadata"]
        self.rest.delete(path_of("v1", "pods", meta["namespace"], meta["name"]), gracePeriodSeconds=0,
                         preconditions={"uid": meta["uid"]})
        if run is not None:
            run.deleted = True

    # ------------------------------------------------------------ helpers

    def _find(self, namespace: str, pod: str) -> PodRun | None:
        runs = [r for r in self.pods.values() if (r.namespace, r.name) == (namespace, pod)]
        return runs[-1] if runs else None

    def _run_of(self, namespace: str, pod: str) -> PodRun:
        run = self._find(namespace, pod)
        if run is None:
            raise KeyError(f"pod {namespace}/{pod} is not known to the test kubelet")
        return run


def _signal_group(container: ContainerRun, sig: int) -> None:
    process = container.process
    if process is not None and process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)


def _image_pull_error(pod: dict[str, Any]) -> str | None:
    """The runtime's message for an image from a `*.invalid` registry (RFC 2606: never resolves), else None."""
    for container in pod["spec"]["containers"]:
        image = container.get("image", "")
        host = image.split("/", 1)[0] if "/" in image else ""
        if host.endswith(".invalid"):
            return (f'Failed to pull image "{image}": failed to resolve reference "{image}": '
                    f"dial tcp: lookup {host}: no such host")
    return None


def _condition(kind: str, status: str, reason: str | None = None, message: str | None = None) -> dict[str, Any]:
    condition = {"type": kind, "status": status, "lastTransitionTime": now_iso()}
    if reason:
        condition["reason"] = reason
    if message:
        condition["message"] = message
    return condition
