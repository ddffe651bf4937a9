"""Kueue's real manager (sigs.k8s.io/kueue's cmd/kueue) against the test control plane, its webhooks on loopback.

`scripts/build-cluster.sh kueue` builds the binary into `build/cluster/bin` and
copies the module's manifests (CRDs, their conversion patches, the webhook
configurations) next to it, so what runs here is what Kueue's release
installs, at the same version.

Webhooks are served, not disabled: Kueue always starts its webhook server
(there is no switch for it) and its certificate manager only reports ready
once the CA bundle is in every webhook configuration and conversion CRD it
knows. And served webhooks are the point: the operator's attempt Jobs go
through Kueue's real Job defaulting and validation, as on a cluster. The
API server calls them at `https://127.0.0.1:<port>/...` (`url` instead of a
Service: there is no pod network here). Kueue's internal certificate
management makes a certificate for `kueue-webhook-service.kueue-system.svc`
only, which a loopback URL would not match, so `start()` makes one CA and a
serving certificate with that DNS name *and* IP 127.0.0.1, puts them in the
Secret Kueue's rotator reads (it keeps valid certificates) and in its
certificate folder (what a pod's Secret volume would hold).

The Job webhooks only look at namespaces labelled by `manage()`, and `stop()`
removes the webhook configurations, so no other test's objects depend on this
process being up. Kueue's controllers, though, manage every Job that carries a
queue-name label in any namespace: run it only while the tests that use it run
(tests/cluster/fixtures.py gives it one module).
"""

from __future__ import annotations

import base64
import copy
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import yaml

from tests.cluster.controlplane import (
    BIN,
    Component,
    ComponentFailed,
    ControlPlane,
    binary,
    free_port,
    log_tail,
)
from tests.cluster.rest import ApiError, RestClient, path_of

API = "kueue.x-k8s.io/v1beta2"
NAMESPACE = "kueue-system"
SERVICE = "kueue-webhook-service"  # Kueue's default; its certificate's DNS name derives from it
SECRET = "kueue-webhook-server-cert"
# Kueue's rotator injects its CA into configurations with these names (derived from SERVICE).
WEBHOOK_CONFIGURATIONS = {"MutatingWebhookConfiguration": "kueue-mutating-webhook-configuration",
                          "ValidatingWebhookConfiguration": "kueue-validating-webhook-configuration"}
# Webhooks of Kueue's own API and of the one integration enabled here (batch/job); the manifests list
# every framework's, and a webhook for one that is off has no handler (a 404 would refuse the object).
WEBHOOK_GROUPS = {"kueue.x-k8s.io", "batch"}
MANAGED_LABEL = "kubetune.test/kueue"
START_TIMEOUT_SECONDS = 120.0
CRD_PATH = path_of("apiextensions.k8s.io/v1", "customresourcedefinitions")


def manifests_dir() -> Path:
    """The Kueue manifests the build copied for the built binary's version."""
    stamp = BIN / ".kueue.version"
    if not stamp.exists():
        raise FileNotFoundError(f"{stamp} is missing: build Kueue with scripts/build-cluster.sh kueue")
    folder = BIN.parent / "kueue" / stamp.read_text(encoding="utf-8").strip()
    if not (folder / "crd" / "kustomization.yaml").exists():
        raise FileNotFoundError(f"{folder} has no Kueue manifests: rebuild with scripts/build-cluster.sh kueue")
    return folder


def openssl(*args: str) -> None:
    """Run openssl; its own message on failure."""
    done = subprocess.run(["openssl", *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed:\n{done.stderr}")


def make_certificates(folder: Path, dns_name: str) -> dict[str, bytes]:
    """A CA and a serving certificate for `dns_name` and 127.0.0.1, as Kueue's Secret holds them.

    Shaped for the rotator's checks (open-policy-agent/cert-controller), or it would replace them with
    certificates the loopback URL does not match: the CA is valid for DNS name `kueue-ca` and its key is
    PKCS#1; both outlive its 90-day look-ahead.
    """
    folder.mkdir(parents=True, exist_ok=True)
    ca_key, ca_crt, key, csr, crt = (folder / n for n in ("ca.key", "ca.crt", "tls.key", "tls.csr", "tls.crt"))
    openssl("genrsa", "-traditional", "-out", str(ca_key), "2048")
    openssl("req", "-x509", "-new", "-key", str(ca_key), "-days", "3650", "-subj", "/O=kueue/CN=kueue-ca",
            "-addext", "subjectAltName=DNS:kueue-ca",
            "-addext", "keyUsage=critical,keyCertSign,digitalSignature,keyEncipherment", "-out", str(ca_crt))
    openssl("genrsa", "-traditional", "-out", str(key), "2048")
    openssl("req", "-new", "-key", str(key), "-subj", f"/CN={dns_name}", "-out", str(csr))
    extensions = folder / "tls.ext"
    extensions.write_text(f"subjectAltName=DNS:{dns_name},IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"
                          "keyUsage=critical,digitalSignature,keyEncipherment\n", encoding="utf-8")
    openssl("x509", "-req", "-in", str(csr), "-CA", str(ca_crt), "-CAkey", str(ca_key), "-CAcreateserial",
            "-days", "3650", "-extfile", str(extensions), "-out", str(crt))
    return {name: (folder / name).read_bytes() for name in ("ca.crt", "ca.key", "tls.crt", "tls.key")}


def put(rest: RestClient, path: str, obj: dict[str, Any]) -> dict[str, Any]:
    """Create `obj` under the list `path`, or replace the one already there (same name)."""
    try:
        return rest.create(path, obj)
    except ApiError as error:
        if error.status != 409:
            raise
    item = f"{path}/{obj['metadata']['name']}"
    current = rest.get(item) or {}
    obj = {**obj, "metadata": {**obj["metadata"], "resourceVersion": current["metadata"]["resourceVersion"]}}
    return rest.request("PUT", item, obj)


def established(crd: dict[str, Any] | None) -> bool:
    """Whether a CRD serves its resources (condition Established)."""
    conditions = ((crd or {}).get("status") or {}).get("conditions") or []
    return any(c["type"] == "Established" and c["status"] == "True" for c in conditions)


@dataclass
class Kueue:
    """One Kueue manager process for the session's control plane (`start()`, `stop()`)."""

    control_plane: ControlPlane
    rest: RestClient
    root: Path
    webhook_port: int = field(default_factory=free_port)
    health_port: int = field(default_factory=free_port)
    process: Component | None = None

    @property
    def log(self) -> Path:
        """The manager's log."""
        return self.root / "kueue.log"

    def start(self) -> Self:
        """Install the CRDs and webhook configurations, start the manager, wait until it is ready."""
        self.root.mkdir(parents=True, exist_ok=True)
        manifests = manifests_dir()
        certs = make_certificates(self.root / "certs", f"{SERVICE}.{NAMESPACE}.svc")
        ca_bundle = base64.b64encode(certs["ca.crt"]).decode()
        self._install_crds(manifests / "crd", ca_bundle)
        put(self.rest, path_of("v1", "namespaces"), {"apiVersion": "v1", "kind": "Namespace",
                                                       "metadata": {"name": NAMESPACE}})
        put(self.rest, path_of("v1", "secrets", NAMESPACE), {
            "apiVersion": "v1", "kind": "Secret", "metadata": {"name": SECRET},
            "data": {name: base64.b64encode(value).decode() for name, value in certs.items()}})
        self._install_webhooks(manifests / "webhook" / "manifests.yaml", ca_bundle)
        config = self.root / "config.yaml"
        config.write_text(yaml.safe_dump(self._configuration()), encoding="utf-8")
        self.process = Component("kueue", [
            str(binary("kueue")), f"--config={config}", f"--kubeconfig={self.control_plane.kubeconfig}",
            # The on-demand visibility API would need an APIService and a port of its own; nothing reads it.
            "--feature-gates=VisibilityOnDemand=false", "--zap-log-level=2",
        ], self.log)
        self.process.start()
        self._wait_ready()
        return self

    def stop(self) -> None:
        """Stop the manager and remove its webhook configurations (the CRDs and objects stay)."""
        if self.process is not None:
            self.process.stop()
        for kind, name in WEBHOOK_CONFIGURATIONS.items():
            self.rest.delete(path_of("admissionregistration.k8s.io/v1", kind.lower() + "s", name=name))

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def manage(self, namespace: str) -> None:
        """Put a namespace under Kueue's Job webhooks (the label their namespaceSelector asks for)."""
        self.rest.patch(path_of("v1", "namespaces", name=namespace), {"metadata": {"labels": {MANAGED_LABEL: "true"}}})

    def diagnose(self) -> str:
        """The tail of the manager's log."""
        return f"--- kueue ({self.log}):\n{log_tail(self.log, 30)}"

    # ------------------------------------------------------------ set-up

    def _url(self, path: str) -> str:
        return f"https://127.0.0.1:{self.webhook_port}{path}"

    def _install_crds(self, folder: Path, ca_bundle: str) -> None:
        """Kueue's CRDs, with the conversion webhooks its kustomization turns on (its rotator waits for them)."""
        kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text(encoding="utf-8"))
        conversions = {}
        for patch in kustomization.get("patches") or []:
            body = yaml.safe_load((folder / patch["path"]).read_text(encoding="utf-8"))
            conversion = body["spec"]["conversion"]
            conversion["webhook"]["clientConfig"] = {"url": self._url(conversion["webhook"]["clientConfig"]["service"]
                                                                      ["path"]), "caBundle": ca_bundle}
            conversions[body["metadata"]["name"]] = conversion
        names = []
        for resource in kustomization["resources"]:
            crd = yaml.safe_load((folder / resource).read_text(encoding="utf-8"))
            name = crd["metadata"]["name"]
            if name in conversions:
                crd["spec"]["conversion"] = conversions[name]
            put(self.rest, CRD_PATH, crd)
            names.append(name)
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        for name in names:
            while not established(self.rest.get(f"{CRD_PATH}/{name}")):
                if time.monotonic() > deadline:
                    raise ComponentFailed(f"the CRD {name} is not Established after {START_TIMEOUT_SECONDS:.0f} s")
                time.sleep(0.2)

    def _install_webhooks(self, manifests: Path, ca_bundle: str) -> None:
        """Kueue's webhook configurations: its own API and batch Jobs, called on loopback, in managed namespaces."""
        for document in yaml.safe_load_all(manifests.read_text(encoding="utf-8")):
            if not document:
                continue
            configuration = copy.deepcopy(document)
            configuration["metadata"] = {"name": WEBHOOK_CONFIGURATIONS[document["kind"]]}
            hooks = []
            for hook in document["webhooks"]:
                if not all(set(rule["apiGroups"]) <= WEBHOOK_GROUPS for rule in hook["rules"]):
                    continue
                hook["clientConfig"] = {"url": self._url(hook["clientConfig"]["service"]["path"]), "caBundle": ca_bundle}
                hook["namespaceSelector"] = {"matchLabels": {MANAGED_LABEL: "true"}}
                hooks.append(hook)
            configuration["webhooks"] = hooks
            plural = document["kind"].lower() + "s"
            put(self.rest, path_of("admissionregistration.k8s.io/v1", plural), configuration)

    def _configuration(self) -> dict[str, Any]:
        """Kueue's Configuration: loopback ports, no leader election, its certificate manager, Jobs only."""
        return {
            "apiVersion": "config.kueue.x-k8s.io/v1beta2", "kind": "Configuration", "namespace": NAMESPACE,
            "health": {"healthProbeBindAddress": f"127.0.0.1:{self.health_port}"},
            "metrics": {"bindAddress": "0"},
            "webhook": {"host": "127.0.0.1", "port": self.webhook_port, "certDir": str(self.root / "certs")},
            "leaderElection": {"leaderElect": False},
            "internalCertManagement": {"enable": True, "webhookServiceName": SERVICE, "webhookSecretName": SECRET},
            "integrations": {"frameworks": ["batch/job"]},
        }

    def _wait_ready(self) -> None:
        """Poll /readyz (ready once the certificates are in place and the webhook server listens)."""
        assert self.process is not None
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            self.process.check_alive()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/readyz", timeout=2) as answer:
                    if answer.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.3)
        self.stop()
        raise ComponentFailed(f"kueue not ready within {START_TIMEOUT_SECONDS:.0f} s; {self.diagnose()}")
