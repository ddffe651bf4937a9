"""Pytest fixtures of the real control plane: one cluster per test session, one namespace per test.

Session: the control plane (`control_plane`), an admin REST client (`kube`),
the test kubelet with its two nodes (`kubelet`), and the chart installed by
the real `helm` binary (`kubetune_release`: the CRD, the operator's
ServiceAccount and RBAC). The operator of a test runs as a local process with
a token of the chart's ServiceAccount (`operator_kubeconfig`), so a verb
missing from the chart's rules fails a test instead of passing as an admin.

Test: a fresh namespace labelled for the restricted Pod Security Standard
(`namespace`), and `cluster`: a `RealCluster` in it with the operator running.

On request only: `kueue`, Kueue's real manager (`tests.cluster.kueue`) for
the test module that asks for it.
"""

from __future__ import annotations

import functools
import itertools
import os
import re
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.cluster.client import RealCluster
from tests.cluster.controlplane import ROOT, ControlPlane, binary, free_port
from tests.cluster.kubelet import Kubelet
from tests.cluster.kueue import Kueue
from tests.cluster.operator_runner import ProcessOperator
from tests.cluster.rest import ApiError, RestClient, path_of

CHART = ROOT / "charts" / "kubetune"
RELEASE = "kubetune"
RELEASE_NAMESPACE = "kubetune-system"
OPERATOR_SERVICE_ACCOUNT = "kubetune-operator"
# The node's env for every pod: one BLAS thread each, so two workers share the CI's 2 cores politely.
NODE_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
OPERATOR_RESYNC_SECONDS = 1.0  # the operator's resync (progress polls, backoffs, deadlines, TTLs)
LOST_NODE_TIMEOUT_SECONDS = 5.0  # a pod stuck Terminating on a lost node is force-deleted after this
RESTRICTED = {"pod-security.kubernetes.io/enforce": "restricted", "pod-security.kubernetes.io/warn": "restricted"}
_namespace_numbers = itertools.count(1)


@dataclass(frozen=True)
class Release:
    """The chart as installed: where, and the operator's identity."""

    name: str
    namespace: str
    service_account: str


def helm(control_plane: ControlPlane, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run the built `helm` against the test cluster; a failure raises with Helm's own message."""
    env = {**os.environ, "KUBECONFIG": str(control_plane.kubeconfig), "HELM_CACHE_HOME": str(control_plane.root / "helm"),
           "HELM_CONFIG_HOME": str(control_plane.root / "helm"), "HELM_DATA_HOME": str(control_plane.root / "helm")}
    done = subprocess.run([str(binary("helm")), *args], env=env, capture_output=True, text=True, timeout=120,
                          check=False)
    if check and done.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed ({done.returncode}):\n{done.stderr}{done.stdout}")
    return done


def kubectl(control_plane: ControlPlane, *args: str, kubeconfig: Path | None = None, check: bool = True,
            stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run the built `kubectl` as a user would (admin unless another kubeconfig is given)."""
    env = {**os.environ, "KUBECONFIG": str(kubeconfig or control_plane.kubeconfig)}
    done = subprocess.run([str(binary("kubectl")), *args], env=env, capture_output=True, text=True, timeout=120,
                          input=stdin, check=False)
    if check and done.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)} failed ({done.returncode}):\n{done.stderr}{done.stdout}")
    return done


def healthy(port: int) -> bool:
    """Whether an operator's liveness endpoint on this port answers 200."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as answer:
            return answer.status == 200
    except OSError:
        return False


def service_account_token(rest: RestClient, namespace: str, name: str, seconds: int = 86400) -> str:
    """A token of a ServiceAccount from the TokenRequest API (what a pod's projected token holds)."""
    request = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
               "spec": {"expirationSeconds": seconds}}
    answer = rest.create(path_of("v1", "serviceaccounts", namespace, name, "token"), request)
    return str(answer["status"]["token"])


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """etcd, kube-apiserver, kube-controller-manager and kube-scheduler for the whole session."""
    plane = ControlPlane(tmp_path_factory.mktemp("control-plane"))
    plane.start()
    sys.stderr.write(f"\n[control plane ready in {plane.start_seconds:.1f} s at {plane.server}; logs in {plane.root}]\n")
    try:
        yield plane
    finally:
        plane.stop()


@pytest.fixture(scope="session")
def kube(control_plane: ControlPlane) -> RestClient:
    """An admin REST client of the test cluster."""
    return RestClient(control_plane.server, control_plane.token, str(control_plane.ca_file))


@pytest.fixture(scope="session")
def kubelet(kube: RestClient, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kubelet]:
    """The test kubelet serving a GPU node and a CPU node."""
    node = Kubelet(kube, tmp_path_factory.mktemp("nodes"), node_env=NODE_ENV).start()
    try:
        yield node
    finally:
        node.stop()


@pytest.fixture(scope="session")
def kubetune_release(control_plane: ControlPlane) -> Release:
    """The chart installed by `helm install` (CRD, operator ServiceAccount, cluster-wide RBAC)."""
    helm(control_plane, "install", RELEASE, str(CHART), "--namespace", RELEASE_NAMESPACE, "--create-namespace",
         )
    kubectl(control_plane, "wait", "--for=condition=Established", "crd/finetunejobs.kubetune.io", "--timeout=60s")
    return Release(RELEASE, RELEASE_NAMESPACE, OPERATOR_SERVICE_ACCOUNT)


@pytest.fixture(scope="module")
def kueue(control_plane: ControlPlane, kube: RestClient, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kueue]:
    """Kueue's manager (built by `scripts/build-cluster.sh kueue`) for one test module.

    Not for the session: Kueue manages every Job with a queue-name label, in any namespace (its
    managedJobsNamespaceSelector does not exempt batch Jobs), so it would re-suspend the Jobs that
    test_suspend_and_queue.py admits by hand ("Not admitted by cluster queue").
    """
    manager = Kueue(control_plane, kube, tmp_path_factory.mktemp("kueue")).start()
    sys.stderr.write(f"\n[kueue ready, webhooks on 127.0.0.1:{manager.webhook_port}; log {manager.log}]\n")
    try:
        yield manager
    finally:
        manager.stop()


@pytest.fixture(scope="session")
def operator_kubeconfig(control_plane: ControlPlane, kube: RestClient, kubetune_release: Release) -> Path:
    """A kubeconfig with the chart's operator ServiceAccount's token."""
    token = service_account_token(kube, kubetune_release.namespace, kubetune_release.service_account)
    return control_plane.write_kubeconfig(control_plane.root / "operator.kubeconfig", token=token)


@pytest.fixture
def namespace(kube: RestClient, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace for one test, enforcing the restricted Pod Security Standard."""
    slug = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower())[:40].strip("-")
    name = f"t{next(_namespace_numbers)}-{slug}"
    kube.create(path_of("v1", "namespaces"), {"apiVersion": "v1", "kind": "Namespace",
                                               "metadata": {"name": name, "labels": RESTRICTED}})
    try:
        yield name
    finally:
        try:
            kube.delete(path_of("v1", "namespaces", name=name))
        except ApiError:
            pass


def operator_process(control_plane: ControlPlane, kubeconfig: Path, namespace: str, log_file: Path,
                     **settings: str) -> ProcessOperator:
    """`kubetune-operator` with the chart's identity, watching one namespace, with short timers."""
    health = free_port()
    env = {**os.environ, "KUBECONFIG": str(kubeconfig), "KUBETUNE_WATCH_NAMESPACES": namespace,
           "KUBETUNE_METRICS_PORT": str(free_port()), "KUBETUNE_HEALTH_PORT": str(health),
           "KUBETUNE_RESYNC_SECONDS": str(OPERATOR_RESYNC_SECONDS), "KUBETUNE_PROGRESS_TIMEOUT_SECONDS": "0.5",
           "KUBETUNE_TRAINER_IMAGE": "kubetune/trainer:e2e",
           "KUBETUNE_LOST_NODE_TIMEOUT_SECONDS": str(LOST_NODE_TIMEOUT_SECONDS), **settings}

    return ProcessOperator([str(Path(sys.executable).parent / "kubetune-operator")], env, log_file,
                           make_probe=lambda: functools.partial(healthy, health))


@pytest.fixture
def cluster(control_plane: ControlPlane, kube: RestClient, kubelet: Kubelet, operator_kubeconfig: Path,
            namespace: str, tmp_path: Path) -> Iterator[RealCluster]:
    """A `RealCluster` in a fresh namespace with the operator running as the chart's ServiceAccount."""
    operator = operator_process(control_plane, operator_kubeconfig, namespace, tmp_path / "operator.log")
    operator.start()
    try:
        yield RealCluster(control_plane, kube, kubelet, namespace, operator)
    finally:
        operator.stop()
