"""`ClusterClient` (tests/cluster/client.py) over kubectl, for a real kind cluster.

The lifecycle scenarios written for the emulated cluster run unchanged against
kind through this class. What the emulator does in process, a real cluster
does through its own means here:

- files on a PVC are read through a reader pod that mounts the claim read-only
  (the trainer image, already loaded into kind, so nothing is pulled);
- a signal to a pod's container goes from the kind node (a Docker container)
  to the container's main process, found with `crictl inspect`: a signal sent
  from inside the container to its PID 1 would be ignored by the kernel;
- the operator restarts by force-deleting its pod; its Deployment brings it back.
"""

from __future__ import annotations

import base64
import json
import signal
from pathlib import Path
from typing import Any

from tests.cluster.client import PollingWaits
from tests.e2e.tools import CommandFailed, run

OWNER_LABEL = "kubetune.io/finetunejob"
READER_MOUNT = "/data"
POLL_SECONDS = 1.0


class KubectlCluster(PollingWaits):
    """A `ClusterClient` on a real cluster, through kubectl (and docker for the kind nodes)."""

    poll_seconds = POLL_SECONDS

    def __init__(self, context: str, namespace: str, *, reader_image: str, operator_namespace: str,
                 operator_selector: str, validate: bool = True) -> None:
        self.context = context
        self.namespace = namespace
        # kubectl validates against the server's OpenAPI documents (off only for a server without them).
        self.validate = validate
        self.reader_image = reader_image
        self.operator_namespace = operator_namespace
        self.operator_selector = operator_selector
        self._readers: dict[str, str] = {}

    # ------------------------------------------------------------ kubectl

    def kubectl(self, *args: str, input: str | None = None, namespace: str | None = None, check: bool = True,
                timeout: float = 120) -> str:
        """Run kubectl in this cluster's context and namespace; its stdout."""
        ns = namespace or self.namespace
        return run(["kubectl", "--context", self.context, "-n", ns, *args], input=input, timeout=timeout, check=check)

    def _json(self, *args: str) -> Any:
        out = self.kubectl(*args, "-o", "json")
        return json.loads(out) if out.strip() else None

    # ------------------------------------------------------------ ClusterClient

    def apply(self, manifest: dict[str, Any]) -> dict[str, Any]:
        validate = "--validate=strict" if self.validate else "--validate=false"
        return json.loads(self.kubectl("create", validate, "-f", "-", "-o", "json", input=json.dumps(manifest)))

    def get(self, name: str) -> dict[str, Any] | None:
        return self._json("get", "finetunejobs.kubetune.io", name, "--ignore-not-found")

    def patch_spec(self, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        return json.loads(self.kubectl("patch", "finetunejobs.kubetune.io", name, "--type", "merge",
                                       "-p", json.dumps({"spec": spec}), "-o", "json"))

    def delete(self, name: str) -> None:
        self.kubectl("delete", "finetunejobs.kubetune.io", name, "--wait=false")

    def children(self, name: str, kind: str) -> list[dict[str, Any]]:
        items = self._json("get", kind, "-l", f"{OWNER_LABEL}={name}")["items"]
        return [item for item in items if not item["metadata"].get("deletionTimestamp")]

    def get_object(self, kind: str, name: str) -> dict[str, Any] | None:
        return self._json("get", kind, name, "--ignore-not-found")

    def events(self, name: str) -> list[dict[str, Any]]:
        return self._json("get", "events", "--field-selector", f"involvedObject.name={name}")["items"]

    def read_pvc_file(self, claim: str, path: str) -> bytes | None:
        reader = self._reader(claim)
        out = self.kubectl("exec", reader, "--", "sh", "-c", 'test -f "$0" && base64 "$0" || true',
                           f"{READER_MOUNT}/{path}")
        return base64.b64decode(out) if out.strip() else None

    def pvc_files(self, claim: str, under: str = "") -> list[str]:
        reader = self._reader(claim)
        root = f"{READER_MOUNT}/{under}".rstrip("/")
        out = self.kubectl("exec", reader, "--", "sh", "-c", 'test -d "$0" && find "$0" -type f || true', root)
        return sorted(line.removeprefix(f"{READER_MOUNT}/") for line in out.splitlines() if line)

    def kill_pod(self, pod: str, sig: int = signal.SIGKILL) -> None:
        node, pid = self._container_process(pod)
        run(["docker", "exec", node, "kill", f"-{int(sig)}", str(pid)])

    def oom_kill(self, pod: str) -> None:
        # A real OOM kill: fill the container's memory cgroup until the kernel's OOM killer acts.
        # Needs a memory limit on the pod (spec.resources.memory), as any OOM kill does.
        hog = "b = []\nwhile True: b.append(bytearray(64 << 20))"
        self.kubectl("exec", pod, "--", "python", "-c", hog, check=False)

    def evict(self, pod: str) -> None:
        eviction = {"apiVersion": "policy/v1", "kind": "Eviction",
                    "metadata": {"name": pod, "namespace": self.namespace}}
        self.kubectl("create", "--raw", f"/api/v1/namespaces/{self.namespace}/pods/{pod}/eviction", "-f", "-",
                     input=json.dumps(eviction))

    def admit(self, job: str) -> None:
        self.kubectl("patch", "job", job, "--type", "merge", "-p", '{"spec": {"suspend": false}}')

    def restart_operator(self) -> None:
        ns = self.operator_namespace
        self.kubectl("delete", "pod", "-l", self.operator_selector, "--grace-period=0", "--force", namespace=ns)
        self.kubectl("wait", "pod", "-l", self.operator_selector, "--for=condition=Ready", "--timeout=180s",
                     namespace=ns, timeout=200)

    def pod_log(self, pod: str) -> str:
        return self.kubectl("logs", pod, "--all-containers", check=False)

    def input_path(self, local: Path) -> str:
        raise NotImplementedError(
            f"{local}: a kind pod cannot see local files; give the FineTuneJob its data through "
            "dataset.configMap (see tests/e2e/test_kind.py) or a model through pkg:// in the trainer image")

    # ------------------------------------------------------------ helpers

    def _reader(self, claim: str) -> str:
        """A pod mounting the claim read-only (created once per claim)."""
        if claim in self._readers:
            return self._readers[claim]
        name = f"pvc-reader-{claim}"[:63].rstrip("-")
        pod = {
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"app": "kubetune-e2e-reader"}},
            "spec": {
                "restartPolicy": "Never",
                "securityContext": {"runAsNonRoot": True, "runAsUser": 1000,
                                    "seccompProfile": {"type": "RuntimeDefault"}},
                "containers": [{
                    "name": "reader", "image": self.reader_image, "imagePullPolicy": "Never",
                    "command": ["sleep", "infinity"],
                    "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
                    "volumeMounts": [{"name": "data", "mountPath": READER_MOUNT, "readOnly": True}]}],
                "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}}],
            },
        }
        self.kubectl("apply", "-f", "-", input=json.dumps(pod))
        self.kubectl("wait", "pod", name, "--for=condition=Ready", "--timeout=180s", timeout=200)
        self._readers[claim] = name
        return name

    def _container_process(self, pod: str) -> tuple[str, int]:
        """The kind node running the pod, and the host pid of its first container's main process."""
        obj = self._json("get", "pod", pod)
        node = obj["spec"]["nodeName"]
        container_id = obj["status"]["containerStatuses"][0]["containerID"].split("://", 1)[1]
        info = json.loads(run(["docker", "exec", node, "crictl", "inspect", container_id]))
        return node, int(info["info"]["pid"])

    def close(self) -> None:
        """Delete the reader pods."""
        for reader in self._readers.values():
            self.kubectl("delete", "pod", reader, "--wait=false", "--ignore-not-found", check=False)
        self._readers.clear()

    def diagnose(self, name: str | None = None) -> str:
        """What a failed wait shows: FineTuneJobs, pods, recent events, the operator's log tail."""
        parts = []
        for args, ns in ((["get", "ftj,jobs,pods", "-o", "wide"], None),
                         (["get", "events", "--sort-by=.lastTimestamp"], None),
                         (["logs", "-l", self.operator_selector, "--tail=40"], self.operator_namespace)):
            try:
                parts.append(self.kubectl(*args, namespace=ns, check=False)[-3000:])
            except CommandFailed as error:
                parts.append(str(error))
        return "\n".join(parts)
