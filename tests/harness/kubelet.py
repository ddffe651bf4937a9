"""A test kubelet: runs the emulator's pods as local processes, or fakes them.

For every pod (created by `jobcontroller.JobController`, or by anyone) it
picks a `PodPlan`: rules added by the test (newest first), else what the one
emulated node says (a nodeSelector it does not match or an extended resource
such as nvidia.com/gpu it lacks: Unschedulable, as the scheduler reports; an
image from a `*.invalid` registry: ErrImagePull), else run:

- `run`: bind the pod to the emulated node with a distinct loopback IP
  (127.0.0.N, so each pod's metrics port is its own), materialize its
  volumes (ConfigMaps/Secrets as files, each PVC as one host folder per
  claim name kept for the kubelet's life, so a later attempt sees the same
  files), start each container's command as a local process with the pod's
  env (downward API resolved, paths under mount points remapped, see
  `podenv`), then report Running and, on exit, the container's exit code,
  reason (Completed, Error, OOMKilled) and termination message;
- `unschedulable` / `image-pull`: stay Pending with the scheduler's
  `Unschedulable` condition, or a waiting `ErrImagePull` container;
- `exit`: no process; Running, then terminated with the given exit code and
  termination message after `after` seconds (the scale benchmark's pods).

Deleting a pod sends SIGTERM to the container's main process (as the
kubelet does to PID 1), then SIGKILL to its whole process group after the
grace period; `kill`, `oom` and the Eviction API fake what a node does.
PersistentVolumeClaims are bound at once (a provisioner).
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import os
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import kmock

from tests.harness import podenv
from tests.harness.emulator import PODS, KubeEmulator, now_iso
from tests.harness.selectors import labels_match
from tests.harness.syncloop import SyncLoop

PVCS = kmock.resource("", "v1", "persistentvolumeclaims")
CONFIGMAPS = kmock.resource("", "v1", "configmaps")
SECRETS = kmock.resource("", "v1", "secrets")
NODE_NAME = "emulated-node"
VENV_BIN = str(Path(sys.executable).parent)
SETUP_RETRY_SECONDS = 1.0  # a pod whose ConfigMap is missing retries its setup this often


@dataclass(frozen=True)
class PodPlan:
    """What the kubelet does with a pod instead of (or by) running it."""

    mode: Literal["run", "unschedulable", "image-pull", "exit"] = "run"
    exit_code: int = 0  # mode "exit"
    after: float = 0.0  # mode "exit": seconds Running before the exit
    message: str = ""  # "exit": the termination message; pending modes: the scheduler's/kubelet's message
    reason: str | None = None  # "exit": the terminated reason (default Completed/Error)


@dataclass
class Rule:
    """Pods whose labels match `selector` get `plan`, `times` times (None: always)."""

    plan: PodPlan
    selector: str | None
    times: int | None


@dataclass
class ContainerRun:
    """One container of a running pod."""

    name: str
    spec: podenv.ProcessSpec | None  # None for faked containers
    log_file: Path
    process: asyncio.subprocess.Process | None = None
    exit_code: int | None = None
    started_at: str = ""
    finished_at: str = ""
    reason: str | None = None  # forced terminated reason (OOMKilled)
    message: str = ""  # faked termination message


@dataclass
class PodRun:
    """The kubelet's state of one pod."""

    uid: str
    namespace: str
    name: str
    plan: PodPlan
    ip: str | None = None
    containers: list[ContainerRun] = field(default_factory=list)
    reported: str = ""  # the last phase written, to write each transition once
    sigterm_at: float | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    released: bool = False  # the pod object is gone and its IP and tasks are freed


class Kubelet(SyncLoop):
    """Runs or fakes every pod of the emulator; lives in the emulator's event loop."""

    loop_name = "test-kubelet"

    def __init__(self, emulator: KubeEmulator, root: Path, *, node_env: dict[str, str] | None = None,
                 entrypoints: dict[str, list[str]] | None = None, resync_seconds: float = 0.2,
                 node_labels: dict[str, str] | None = None, extended_resources: set[str] | None = None) -> None:
        super().__init__(resync_seconds)
        self.emulator = emulator
        # The one node: its labels (for nodeSelector) and extended resources (none: no GPUs here).
        self.node_labels = {"kubernetes.io/hostname": NODE_NAME, "kubernetes.io/os": "linux",
                            "kubernetes.io/arch": "amd64", **(node_labels or {})}
        self.extended_resources = extended_resources or set()
        self.root = root
        self.node_env = node_env or {}
        self.entrypoints = entrypoints or {}
        self.rules: list[Rule] = []
        self.pods: dict[str, PodRun] = {}
        self._free_ips = [f"127.0.0.{n}" for n in range(2, 255)]
        self._seq = itertools.count()
        emulator.add_listener(lambda res, event: self.wake())

    # ------------------------------------------------------------ public

    async def stop(self) -> None:
        """Kill every process and stop."""
        self.stop_loop()
        for run in self.pods.values():
            for container in run.containers:
                self._signal_group(container, signal.SIGKILL)
            for task in run.tasks:
                task.cancel()
        for run in self.pods.values():
            for container in run.containers:
                if container.process is not None:
                    await container.process.wait()

    def add_rule(self, plan: PodPlan, selector: str | None = None, times: int | None = None) -> Rule:
        """Give pods matching a label selector this plan (newest rule first)."""
        rule = Rule(plan, selector, times)
        self.rules.insert(0, rule)
        return rule

    def pvc_dir(self, namespace: str, claim: str) -> Path:
        """The host folder behind a PVC (created on demand, kept across pods)."""
        return self.root / "pvcs" / namespace / claim

    def pod_dir(self, namespace: str, name: str) -> Path:
        """The host folder of one pod: volumes, logs, termination messages."""
        return self.root / "pods" / namespace / name

    def log_file(self, namespace: str, pod: str, container: str | None = None) -> Path:
        """Where a container's stdout/stderr goes."""
        run = next((r for r in self.pods.values() if (r.namespace, r.name) == (namespace, pod)), None)
        if container is None and run is not None and run.containers:
            container = run.containers[0].name
        return self.pod_dir(namespace, pod) / f"{container}.log"

    def log_text(self, namespace: str, pod: str) -> str:
        """A pod's first container's log, with host paths mapped back to the pod's (as `kubectl logs` shows)."""
        file = self.log_file(namespace, pod)
        text = file.read_text(encoding="utf-8", errors="replace") if file.exists() else ""
        run = next((r for r in self.pods.values() if (r.namespace, r.name) == (namespace, pod)), None)
        if run is not None and run.containers and run.containers[0].spec is not None:
            text = run.containers[0].spec.mounts.to_pod(text)
        return text

    async def kill(self, namespace: str, pod: str, sig: int = signal.SIGKILL) -> None:
        """Signal a pod's containers: SIGKILL hits the process group (a container dies whole)."""
        for container in self._run_of(namespace, pod).containers:
            if sig == signal.SIGKILL:
                self._signal_group(container, sig)
            elif container.process is not None and container.process.returncode is None:
                container.process.send_signal(sig)

    async def oom(self, namespace: str, pod: str) -> None:
        """Fake the kernel's OOM killer: SIGKILL, reported as reason OOMKilled, exit code 137."""
        for container in self._run_of(namespace, pod).containers:
            container.reason = "OOMKilled"
            self._signal_group(container, signal.SIGKILL)
            if container.process is None and container.exit_code is None:
                container.exit_code = 137
        self.wake()

    # ------------------------------------------------------------ loop

    async def sync(self) -> None:
        """One pass over PVCs and pods."""
        for pvc in self.emulator.list_objects(PVCS):
            if (pvc.get("status") or {}).get("phase") != "Bound":
                await self._bind(pvc)
        for pod in self.emulator.list_objects(PODS):
            try:
                await self._sync_pod(pod)
            except kmock.KubernetesError as error:
                if error.status not in (404, 409):  # gone or changed meanwhile: the next pass sees it
                    raise
        live = {pod["metadata"]["uid"] for pod in self.emulator.list_objects(PODS)}
        for uid, run in self.pods.items():
            # Runs of deleted pods stay known (their logs and mounts), only their resources go.
            if uid not in live and not run.released and all(
                    c.process is None or c.process.returncode is not None for c in run.containers):
                self._release(run)
                run.released = True

    async def _bind(self, pvc: dict[str, Any]) -> None:
        meta = pvc["metadata"]
        capacity = ((pvc.get("spec") or {}).get("resources") or {}).get("requests", {}).get("storage", "1Gi")
        await self.emulator.api_patch(PVCS, meta["namespace"], meta["name"], {"status": {
            "phase": "Bound", "accessModes": pvc["spec"].get("accessModes", ["ReadWriteOnce"]),
            "capacity": {"storage": capacity}}}, subresource="status", validate=False)

    # ------------------------------------------------------------ pods

    async def _sync_pod(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        run = self.pods.get(meta["uid"])
        if run is None:
            run = self.pods[meta["uid"]] = PodRun(meta["uid"], meta["namespace"], meta["name"], self._plan_for(pod))
            await self._start(pod, run)
            return
        if meta.get("deletionTimestamp"):
            await self._terminate(pod, run)
        await self._report(pod, run)

    def _plan_for(self, pod: dict[str, Any]) -> PodPlan:
        for rule in self.rules:
            if (rule.times is None or rule.times > 0) and labels_match(rule.selector, pod):
                if rule.times is not None:
                    rule.times -= 1
                return rule.plan
        unschedulable = self._unschedulable(pod)
        if unschedulable:
            return PodPlan(mode="unschedulable", message=unschedulable)
        for container in pod["spec"]["containers"]:
            image = container.get("image", "")
            host = image.split("/", 1)[0] if "/" in image else ""
            if host.endswith(".invalid"):  # RFC 2606: never resolves, on any cluster
                return PodPlan(mode="image-pull", message=(
                    f'Failed to pull image "{image}": failed to resolve reference "{image}": '
                    f"dial tcp: lookup {host}: no such host"))
        return PodPlan()

    def _unschedulable(self, pod: dict[str, Any]) -> str | None:
        """The scheduler's message when the one emulated node cannot take the pod, else None."""
        selector = pod["spec"].get("nodeSelector") or {}
        if any(self.node_labels.get(key) != value for key, value in selector.items()):
            return "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector."
        for container in pod["spec"]["containers"]:
            resources = container.get("resources") or {}
            for name in {**(resources.get("requests") or {}), **(resources.get("limits") or {})}:
                if name not in ("cpu", "memory", "ephemeral-storage") and not name.startswith("hugepages-") \
                        and name not in self.extended_resources:
                    return f"0/1 nodes are available: 1 Insufficient {name}."
        return None

    async def _start(self, pod: dict[str, Any], run: PodRun) -> None:
        plan, meta = run.plan, pod["metadata"]
        if meta.get("deletionTimestamp"):
            await self._finish_deletion(pod)
            return
        if plan.mode == "unschedulable":
            message = plan.message or "0/1 nodes are available: 1 Insufficient nvidia.com/gpu."
            await self._write_status(pod, {"phase": "Pending", "conditions": [
                _condition("PodScheduled", "False", "Unschedulable", message)]})
            run.reported = "Pending"
            return
        run.ip = self._free_ips.pop(0)
        if pod["spec"].get("nodeName") != NODE_NAME:
            await self.emulator.api_patch(PODS, meta["namespace"], meta["name"], {"spec": {"nodeName": NODE_NAME}},
                                          validate=False)
        if plan.mode == "image-pull":
            image = pod["spec"]["containers"][0].get("image", "")
            message = plan.message or f'Failed to pull image "{image}": not found'
            await self._write_status(pod, {"phase": "Pending", "podIP": run.ip, "hostIP": "127.0.0.1",
                                           "conditions": [_condition("PodScheduled", "True")],
                                           "containerStatuses": [_waiting(c, "ErrImagePull", message)
                                                                 for c in pod["spec"]["containers"]]})
            run.reported = "Pending"
            return
        try:
            run.containers = await self._launch(pod, run)
        except podenv.PodSetupError as error:
            # As the kubelet: the pod stays Pending (ContainerCreating / CreateContainerConfigError); retried.
            self._release(run)
            waiting = [_waiting(c, error.reason, error.message) for c in pod["spec"]["containers"]]
            if (pod.get("status") or {}).get("containerStatuses") != waiting:
                await self._write_status(pod, {"phase": "Pending", "conditions": [_condition("PodScheduled", "True")],
                                               "containerStatuses": waiting})
            asyncio.get_running_loop().call_later(SETUP_RETRY_SECONDS, self._retry, meta["uid"])
            return
        await self._report(pod, run)

    async def _launch(self, pod: dict[str, Any], run: PodRun) -> list[ContainerRun]:
        ns, name = run.namespace, run.name
        pod_dir = self.pod_dir(ns, name)
        pod_dir.mkdir(parents=True, exist_ok=True)
        if run.plan.mode == "exit":
            containers = [ContainerRun(c["name"], None, pod_dir / f"{c['name']}.log", started_at=now_iso(),
                                       message=run.plan.message, reason=run.plan.reason)
                          for c in pod["spec"]["containers"]]
            run.tasks.append(asyncio.get_running_loop().create_task(self._fake_exit(run, containers)))
            return containers
        pod = copy.deepcopy(pod)
        pod.setdefault("status", {})["podIP"] = run.ip  # the downward API's status.podIP
        pod["spec"]["nodeName"] = NODE_NAME
        configmaps, secrets = self._lookup(CONFIGMAPS), self._lookup(SECRETS)
        volumes = podenv.materialize_volumes(pod, pod_dir, lambda claim: self.pvc_dir(ns, claim), configmaps, secrets)
        specs = []
        for container in pod["spec"]["containers"]:
            termination_file = pod_dir / f"{container['name']}.termination-log"
            env = podenv.container_env(pod, container, configmaps, secrets)
            mounts = podenv.container_mounts(container, volumes, termination_file)
            specs.append(podenv.process_spec(
                pod, container, base_env=self._base_env(pod_dir), env=env, mounts=mounts, hosts=self._hosts(ns),
                pod_dir=pod_dir, termination_file=termination_file, entrypoints=self.entrypoints))
        containers = []
        for container, spec in zip(pod["spec"]["containers"], specs, strict=True):
            run_ = ContainerRun(container["name"], spec, pod_dir / f"{container['name']}.log", started_at=now_iso())
            with run_.log_file.open("ab") as log:
                run_.process = await asyncio.create_subprocess_exec(
                    *spec.argv, env=spec.env, cwd=spec.cwd, stdout=log, stderr=asyncio.subprocess.STDOUT,
                    stdin=asyncio.subprocess.DEVNULL, start_new_session=True)  # own group: SIGKILL takes all
            run.tasks.append(asyncio.get_running_loop().create_task(self._wait(run_)))
            containers.append(run_)
        return containers

    def _retry(self, uid: str) -> None:
        run = self.pods.get(uid)
        if run is not None and not run.containers:
            del self.pods[uid]  # the next sync starts it afresh
            self.wake()

    def _base_env(self, pod_dir: Path) -> dict[str, str]:
        home = pod_dir / "home"
        home.mkdir(parents=True, exist_ok=True)
        path = f"{VENV_BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}"
        return {"PATH": path, "HOME": str(home), "LANG": "C.UTF-8", "PYTHONUNBUFFERED": "1", **self.node_env}

    def _hosts(self, namespace: str) -> dict[str, str]:
        # Pod DNS names of a headless Service, as CoreDNS would answer them.
        hosts: dict[str, str] = {}
        for run in self.pods.values():
            pod = self.emulator.get_object(PODS, run.namespace, run.name)
            if pod is None or run.ip is None or run.namespace != namespace:
                continue
            hostname, subdomain = pod["spec"].get("hostname"), pod["spec"].get("subdomain")
            if hostname and subdomain:
                for suffix in ("", f".{namespace}", f".{namespace}.svc", f".{namespace}.svc.cluster.local"):
                    hosts[f"{hostname}.{subdomain}{suffix}"] = run.ip
        return hosts

    def _lookup(self, res: kmock.resource) -> podenv.Lookup:
        return lambda namespace, name: self.emulator.get_object(res, namespace, name)

    async def _wait(self, container: ContainerRun) -> None:
        assert container.process is not None
        code = await container.process.wait()
        try:  # the container goes with its main process: nothing it started outlives it
            os.killpg(container.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        container.exit_code = code if code >= 0 else 128 - code  # killed by signal N: 128+N, as a runtime says
        container.finished_at = now_iso()
        self.wake()

    async def _fake_exit(self, run: PodRun, containers: list[ContainerRun]) -> None:
        await asyncio.sleep(run.plan.after)
        for container in containers:
            if container.exit_code is None:
                container.exit_code = run.plan.exit_code
                container.finished_at = now_iso()
        self.wake()

    async def _terminate(self, pod: dict[str, Any], run: PodRun) -> None:
        now = asyncio.get_running_loop().time()
        live = [c for c in run.containers if c.exit_code is None]
        if not run.containers:  # nothing ever ran (pending, faked): nothing to stop
            await self._finish_deletion(pod)
            return
        if not live:
            return  # _report() writes the final status, then deletes
        grace = pod["metadata"].get("deletionGracePeriodSeconds", 30)
        if run.sigterm_at is None:
            run.sigterm_at = now
            for container in live:
                if container.process is not None:
                    container.process.send_signal(signal.SIGTERM)  # PID 1 only; a launcher forwards it
                else:  # faked container: "exits" at once on SIGTERM like a well-behaved trainer
                    container.exit_code, container.finished_at = 143, now_iso()
            self.wake()
        elif now - run.sigterm_at >= grace:
            for container in live:
                self._signal_group(container, signal.SIGKILL)

    async def _finish_deletion(self, pod: dict[str, Any]) -> None:
        # The kubelet's final delete (grace 0): gone unless a finalizer (the Job controller's tracking) holds it.
        meta = pod["metadata"]
        current = self.emulator.get_object(PODS, meta["namespace"], meta["name"])
        if current is not None and current["metadata"].get("deletionGracePeriodSeconds") != 0:
            await self.emulator.api_delete(PODS, meta["namespace"], meta["name"], grace_seconds=0)

    async def _report(self, pod: dict[str, Any], run: PodRun) -> None:
        if not run.containers:
            return
        done = [c for c in run.containers if c.exit_code is not None]
        if len(done) < len(run.containers):
            phase = "Running"
        else:
            phase = "Succeeded" if all(c.exit_code == 0 for c in done) else "Failed"
        if phase == run.reported:
            if phase != "Running" and pod["metadata"].get("deletionTimestamp"):
                await self._finish_deletion(pod)
            return
        statuses = [self._container_status(c) for c in run.containers]
        ready = "True" if phase == "Running" else "False"
        kept = [c for c in (pod.get("status") or {}).get("conditions", []) if c["type"] == "DisruptionTarget"]
        status = {"phase": phase, "podIP": run.ip, "podIPs": [{"ip": run.ip}], "hostIP": "127.0.0.1",
                  "startTime": run.containers[0].started_at, "containerStatuses": statuses,
                  "conditions": [_condition("PodScheduled", "True"), _condition("Initialized", "True"),
                                 _condition("ContainersReady", ready), _condition("Ready", ready), *kept]}
        await self._write_status(pod, status)
        run.reported = phase
        if phase != "Running":
            self._release_ip(run)
            if pod["metadata"].get("deletionTimestamp"):
                await self._finish_deletion(pod)

    def _container_status(self, container: ContainerRun) -> dict[str, Any]:
        status: dict[str, Any] = {"name": container.name, "image": "", "imageID": "", "restartCount": 0,
                                  "started": container.exit_code is None, "ready": container.exit_code is None}
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

    async def _write_status(self, pod: dict[str, Any], status: dict[str, Any]) -> None:
        meta = pod["metadata"]
        await self.emulator.api_patch(PODS, meta["namespace"], meta["name"], {"status": status},
                                      subresource="status", validate=False)

    # ------------------------------------------------------------ helpers

    def _run_of(self, namespace: str, pod: str) -> PodRun:
        for run in self.pods.values():
            if (run.namespace, run.name) == (namespace, pod):
                return run
        raise KeyError(f"pod {namespace}/{pod} is not known to the test kubelet")

    @staticmethod
    def _signal_group(container: ContainerRun, sig: int) -> None:
        process = container.process
        if process is not None and process.returncode is None:
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                pass

    def _release_ip(self, run: PodRun) -> None:
        if run.ip is not None and run.ip not in self._free_ips:
            self._free_ips.append(run.ip)

    def _release(self, run: PodRun) -> None:
        self._release_ip(run)
        for task in run.tasks:
            if not task.done():
                task.cancel()


def _condition(kind: str, status: str, reason: str | None = None, message: str | None = None) -> dict[str, Any]:
    condition = {"type": kind, "status": status, "lastTransitionTime": now_iso()}
    if reason:
        condition["reason"] = reason
    if message:
        condition["message"] = message
    return condition


def _waiting(container: dict[str, Any], reason: str, message: str) -> dict[str, Any]:
    return {"name": container["name"], "image": container.get("image", ""), "imageID": "", "ready": False,
            "restartCount": 0, "started": False, "state": {"waiting": {"reason": reason, "message": message}}}

