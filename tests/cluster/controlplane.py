"""A real Kubernetes control plane on loopback: etcd, kube-apiserver, kube-controller-manager, kube-scheduler.

The binaries come from `scripts/build-cluster.sh` (built from Go modules into
`build/cluster/bin`). `ControlPlane.start()` generates what the components
need (service-account keys, a static admin token), picks free ports, starts
each component with its log in the given folder, waits on `/readyz` and
writes an admin kubeconfig; `stop()` ends them all (SIGTERM, then SIGKILL).
A component that exits or does not get ready raises `ComponentFailed` with
the tail of its own log, so a failed start explains itself.

Only the kubelet is not real: `tests.cluster.kubelet` registers the nodes and
runs the pods the real scheduler binds to them.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(os.environ.get("KUBETUNE_CLUSTER_BIN", ROOT / "build" / "cluster" / "bin"))
START_TIMEOUT_SECONDS = 120.0
STOP_GRACE_SECONDS = 10.0
LOG_TAIL_LINES = 40
SERVICE_CIDR = "10.96.0.0/16"

# The controllers a FineTuneJob's life touches; nodelifecycle is left out because the test
# kubelet's nodes do not run a real node agent (their leases are renewed by the test kubelet).
CONTROLLERS = (
    "job-controller", "garbage-collector-controller", "namespace-controller", "serviceaccount-controller",
    "serviceaccount-token-controller", "persistentvolume-binder-controller", "ttl-after-finished-controller",
    "root-ca-certificate-publisher-controller", "disruption-controller", "pod-garbage-collector-controller",
    "resourcequota-controller", "clusterrole-aggregation-controller", "persistentvolumeclaim-protection-controller",
    "persistentvolume-protection-controller",
    # Node Ready/lease tracking: removes the not-ready taint new Nodes are born with, and evicts the
    # pods of a node whose lease stops being renewed (a lost node).
    "node-lifecycle-controller", "taint-eviction-controller",
)
# Admission plugins on top of the defaults: the OpenShift-style check that an owner reference with
# blockOwnerDeletion needs the right to update the owner's finalizers.
EXTRA_ADMISSION = ("OwnerReferencesPermissionEnforcement",)


class ComponentFailed(RuntimeError):
    """A control-plane component exited or did not get ready; the message holds its log's tail."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last lines of a log file ('' when it does not exist)."""
    if not path.exists():
        return ""
    return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])


def binary(name: str) -> Path:
    """The path of a built program; a clear error naming the build script when it is missing."""
    path = BIN / name
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: build it with scripts/build-cluster.sh")
    return path


@dataclass
class Component:
    """One running program of the control plane."""

    name: str
    argv: list[str]
    log: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start it in its own process group, output to its log."""
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True)

    def check_alive(self) -> None:
        """Raise ComponentFailed with the log tail when the process has exited."""
        if self.process is not None and self.process.poll() is not None:
            raise ComponentFailed(f"{self.name} exited with code {self.process.returncode}; "
                                  f"last lines of {self.log}:\n{log_tail(self.log)}")

    def stop(self) -> None:
        """SIGTERM, then SIGKILL of its process group after a grace period."""
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(STOP_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


@dataclass
class ControlPlane:
    """etcd + kube-apiserver + kube-controller-manager + kube-scheduler, on loopback, in `root`."""

    root: Path
    admission: tuple[str, ...] = EXTRA_ADMISSION
    components: dict[str, Component] = field(default_factory=dict)
    token: str = field(default_factory=lambda: secrets.token_hex(16))
    api_port: int = 0
    etcd_port: int = 0

    @property
    def server(self) -> str:
        """The API server's URL."""
        return f"https://127.0.0.1:{self.api_port}"

    @property
    def kubeconfig(self) -> Path:
        """The admin kubeconfig (a static token in system:masters)."""
        return self.root / "admin.kubeconfig"

    @property
    def audit_log(self) -> Path:
        """The API server's audit log: one JSON event per request of a ServiceAccount."""
        return self.root / "audit.log"

    def audit_events(self, user: str) -> list[dict[str, Any]]:
        """The audit events of one user (e.g. `system:serviceaccount:<namespace>:<name>`), oldest first."""
        if not self.audit_log.exists():
            return []
        events = (json.loads(line) for line in self.audit_log.read_text(encoding="utf-8").splitlines() if line)
        return [event for event in events if event.get("user", {}).get("username") == user]

    @property
    def ca_file(self) -> Path:
        """The API server's self-signed serving certificate (it is its own CA)."""
        return self.root / "certs" / "apiserver.crt"

    # ------------------------------------------------------------ lifecycle

    def start(self) -> Self:
        """Start every component in order and wait until each is ready; stop all on any failure."""
        self.root.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        try:
            self._prepare()
            self._start("etcd", self._etcd_argv())
            self._wait_http("etcd", f"http://127.0.0.1:{self.etcd_port}/health")
            self._start("kube-apiserver", self._apiserver_argv())
            self._wait_http("kube-apiserver", f"{self.server}/readyz", token=self.token)
            self._write_kubeconfig(self.kubeconfig, token=self.token)
            self._start("kube-controller-manager", self._controller_manager_argv())
            self._start("kube-scheduler", self._scheduler_argv())
            self._wait_http("kube-controller-manager", f"https://127.0.0.1:{self.kcm_port}/healthz")
            self._wait_http("kube-scheduler", f"https://127.0.0.1:{self.scheduler_port}/healthz")
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - started
        return self

    def stop(self) -> None:
        """Stop the components, the last started first."""
        for component in reversed(list(self.components.values())):
            component.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def restart(self, name: str, down_seconds: float) -> None:
        """Stop one component, leave it down `down_seconds`, start it again with the same argv (same
        ports, same data), and wait until it is ready and the API server answers /readyz again.

        A fault for tests: the other components and clients see it go away and must reconnect by
        themselves (etcd down makes the API server unready; it recovers without a restart of its own).
        """
        component = self.components[name]
        component.stop()
        time.sleep(down_seconds)
        component.start()
        self._wait_http(name, self._health_url(name), token=self.token if name == "kube-apiserver" else None)
        self._wait_http("kube-apiserver", f"{self.server}/readyz", token=self.token)

    def _health_url(self, name: str) -> str:
        return {"etcd": f"http://127.0.0.1:{self.etcd_port}/health", "kube-apiserver": f"{self.server}/readyz",
                "kube-controller-manager": f"https://127.0.0.1:{self.kcm_port}/healthz",
                "kube-scheduler": f"https://127.0.0.1:{self.scheduler_port}/healthz"}[name]

    def check_alive(self) -> None:
        """Raise ComponentFailed naming the first component that exited."""
        for component in self.components.values():
            component.check_alive()

    def logs(self) -> dict[str, Path]:
        """Each component's log file."""
        return {name: component.log for name, component in self.components.items()}

    def diagnose(self) -> str:
        """The tail of every component's log (what a failed test prints)."""
        return "\n".join(f"--- {name} ({path}):\n{log_tail(path, 15)}" for name, path in self.logs().items())

    def write_kubeconfig(self, path: Path, *, token: str, namespace: str = "default") -> Path:
        """A kubeconfig for this cluster with a bearer token (the admin's, or a ServiceAccount's)."""
        self._write_kubeconfig(path, token=token, namespace=namespace)
        return path

    # ------------------------------------------------------------ set-up

    def _prepare(self) -> None:
        certs = self.root / "certs"
        certs.mkdir(exist_ok=True)
        key = certs / "sa.key"
        if not key.exists():
            subprocess.run(["openssl", "genrsa", "-out", str(key), "2048"], check=True, capture_output=True)
            subprocess.run(["openssl", "rsa", "-in", str(key), "-pubout", "-out", str(certs / "sa.pub")],
                           check=True, capture_output=True)
        client_ca = certs / "client-ca.crt"
        if not client_ca.exists():
            # No client certificate is ever used; the CA only makes the API server publish the
            # extension-apiserver-authentication ConfigMap that the other components read at start.
            subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                            "-subj", "/CN=kubetune-test-client-ca", "-keyout", str(certs / "client-ca.key"),
                            "-out", str(client_ca)], check=True, capture_output=True)
        # A static token for the admin and for the controllers (kube-apiserver's --token-auth-file):
        # simpler than client certificates, and RBAC sees the same users and groups.
        (self.root / "tokens.csv").write_text(f'{self.token},admin,admin,"system:masters"\n', encoding="utf-8")
        # Every request a ServiceAccount makes, at Metadata level: the RBAC test reads what the
        # operator really asked for (verb, resource, subresource, answer code) from this log.
        (self.root / "audit-policy.yaml").write_text(
            "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\nrules:\n"
            "- level: Metadata\n  userGroups: [system:serviceaccounts]\n- level: None\n", encoding="utf-8")
        self.etcd_port, self.etcd_peer_port = free_port(), free_port()
        self.api_port, self.kcm_port, self.scheduler_port = free_port(), free_port(), free_port()

    def _start(self, name: str, argv: list[str]) -> None:
        component = Component(name, argv, self.root / f"{name}.log")
        self.components[name] = component
        component.start()

    def _wait_http(self, name: str, url: str, token: str | None = None) -> None:
        """Poll `url` until it answers 200 'ok', the component exits, or the start timeout passes."""
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        last = ""
        while time.monotonic() < deadline:
            self.components[name].check_alive()
            try:
                with urllib.request.urlopen(request, timeout=5, context=context) as answer:
                    if answer.status == 200:
                        return
            except (urllib.error.URLError, OSError) as error:
                last = str(error)
            time.sleep(0.2)
        log = self.components[name].log
        raise ComponentFailed(f"{name} not ready at {url} within {START_TIMEOUT_SECONDS:.0f} s ({last}); "
                              f"last lines of {log}:\n{log_tail(log)}")

    def _write_kubeconfig(self, path: Path, *, token: str, namespace: str = "default") -> None:
        path.write_text(
            "apiVersion: v1\nkind: Config\n"
            f"clusters:\n- name: kubetune-test\n  cluster:\n    server: {self.server}\n"
            f"    certificate-authority: {self.ca_file}\n"
            f"users:\n- name: user\n  user:\n    token: {token}\n"
            f"contexts:\n- name: kubetune-test\n  context:\n    cluster: kubetune-test\n    user: user\n"
            f"    namespace: {namespace}\n"
            "current-context: kubetune-test\n",
            encoding="utf-8",
        )
        path.chmod(0o600)

    # ------------------------------------------------------------ command lines

    def _etcd_argv(self) -> list[str]:
        return [
            str(binary("etcd")), "--data-dir", str(self.root / "etcd"),
            "--listen-client-urls", f"http://127.0.0.1:{self.etcd_port}",
            "--advertise-client-urls", f"http://127.0.0.1:{self.etcd_port}",
            "--listen-peer-urls", f"http://127.0.0.1:{self.etcd_peer_port}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{self.etcd_peer_port}",
            "--initial-cluster", f"default=http://127.0.0.1:{self.etcd_peer_port}",
            "--unsafe-no-fsync", "--quota-backend-bytes", str(2 << 30), "--log-level", "warn",
        ]

    def _apiserver_argv(self) -> list[str]:
        certs = self.root / "certs"
        return [
            str(binary("kube-apiserver")), "--etcd-servers", f"http://127.0.0.1:{self.etcd_port}",
            "--bind-address", "127.0.0.1", "--advertise-address", "127.0.0.1",
            "--secure-port", str(self.api_port), "--cert-dir", str(certs),
            "--token-auth-file", str(self.root / "tokens.csv"), "--client-ca-file", str(certs / "client-ca.crt"),
            "--authorization-mode", "Node,RBAC",
            "--enable-admission-plugins", ",".join(self.admission),
            "--service-account-issuer", "https://kubernetes.default.svc.cluster.local",
            "--service-account-key-file", str(certs / "sa.pub"),
            "--service-account-signing-key-file", str(certs / "sa.key"),
            "--service-cluster-ip-range", SERVICE_CIDR, "--allow-privileged",
            "--audit-policy-file", str(self.root / "audit-policy.yaml"), "--audit-log-path", str(self.audit_log),
            "--audit-log-format", "json",
            "--endpoint-reconciler-type", "none", "--profiling=false", "--v", "1",
        ]

    def _component_kubeconfig(self, name: str) -> Path:
        path = self.root / f"{name}.kubeconfig"
        self._write_kubeconfig(path, token=self.token)
        return path

    def _controller_manager_argv(self) -> list[str]:
        return [
            str(binary("kube-controller-manager")),
            "--kubeconfig", str(self._component_kubeconfig("kube-controller-manager")),
            "--authentication-kubeconfig", str(self._component_kubeconfig("kube-controller-manager")),
            "--authorization-kubeconfig", str(self._component_kubeconfig("kube-controller-manager")),
            "--bind-address", "127.0.0.1", "--secure-port", str(self.kcm_port),
            "--cert-dir", str(self.root / "certs" / "kcm"),
            "--controllers", ",".join(CONTROLLERS), "--leader-elect=false",
            "--root-ca-file", str(self.ca_file),
            "--service-account-private-key-file", str(self.root / "certs" / "sa.key"),
            "--use-service-account-credentials=false", "--profiling=false", "--v", "1",
        ]

    def _scheduler_argv(self) -> list[str]:
        kubeconfig = str(self._component_kubeconfig("kube-scheduler"))
        return [
            str(binary("kube-scheduler")), "--kubeconfig", kubeconfig,
            "--authentication-kubeconfig", kubeconfig, "--authorization-kubeconfig", kubeconfig,
            "--bind-address", "127.0.0.1", "--secure-port", str(self.scheduler_port),
            "--cert-dir", str(self.root / "certs" / "scheduler"),
            "--leader-elect=false", "--profiling=false", "--v", "1",
        ]
