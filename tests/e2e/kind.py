"""A kind cluster with KubeTune on it: create, build and load both images, helm install, tear down.

Settings come from the environment so CI and a developer can reuse a cluster:
KUBETUNE_E2E_CLUSTER (kind cluster name, default kubetune-e2e; an existing one is
reused and kept), KUBETUNE_E2E_KEEP=1 (keep a cluster this run created),
KUBETUNE_E2E_SKIP_BUILD=1 (images already built and tagged).
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.e2e.tools import run

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "kubetune"


@dataclass
class KindSetup:
    """Names of everything the suite creates."""

    cluster: str = field(default_factory=lambda: os.environ.get("KUBETUNE_E2E_CLUSTER", "kubetune-e2e"))
    registry: str = "kubetune.local"  # never pushed: images go into kind with `kind load`
    version: str = "e2e"
    release: str = "kubetune"
    release_namespace: str = "kubetune-system"
    namespace: str = "kubetune-e2e"  # where the FineTuneJobs run
    keep: bool = field(default_factory=lambda: os.environ.get("KUBETUNE_E2E_KEEP") == "1")
    skip_build: bool = field(default_factory=lambda: os.environ.get("KUBETUNE_E2E_SKIP_BUILD") == "1")
    created: bool = False

    @property
    def context(self) -> str:
        """The kubectl context kind writes for the cluster."""
        return f"kind-{self.cluster}"

    @property
    def operator_image(self) -> str:
        """The operator image, as scripts/build-images.sh tags it."""
        return f"{self.registry}/operator:{self.version}"

    @property
    def trainer_image(self) -> str:
        """The CPU trainer image, as scripts/build-images.sh tags it."""
        return f"{self.registry}/trainer:{self.version}-cpu"

    @property
    def fullname(self) -> str:
        """The chart's object name prefix for this release (the `kubetune.fullname` helper)."""
        return self.release if "kubetune" in self.release else f"{self.release}-kubetune"

    @property
    def operator_selector(self) -> str:
        """Label selector of the operator pod."""
        return f"app.kubernetes.io/instance={self.release},app.kubernetes.io/component=operator"

    def values(self) -> dict[str, Any]:
        """Chart values for kind: the loaded images, never pulled; trainers in the test namespace."""
        return {
            "operator": {
                "image": {"repository": f"{self.registry}/operator", "tag": self.version, "pullPolicy": "Never"},
                # Reconcile and poll progress often: the scenarios wait on status.
                "extraEnv": [{"name": "KUBETUNE_RESYNC_SECONDS", "value": "3"}],
            },
            "trainer": {
                "image": {"repository": f"{self.registry}/trainer", "tag": f"{self.version}-cpu"},
                "serviceAccount": {"namespaces": [self.namespace]},
            },
        }


def create_cluster(setup: KindSetup) -> None:
    """Create the kind cluster unless one of that name exists."""
    existing = run(["kind", "get", "clusters"]).split()
    if setup.cluster not in existing:
        run(["kind", "create", "cluster", "--name", setup.cluster, "--wait", "180s"], timeout=600)
        setup.created = True
    run(["kubectl", "--context", setup.context, "create", "namespace", setup.namespace], check=False)


def build_and_load_images(setup: KindSetup) -> None:
    """Build the operator and the CPU trainer image, and load both into the kind nodes."""
    if not setup.skip_build:
        env = {**os.environ, "REGISTRY": setup.registry, "VERSION": setup.version, "VARIANTS": "cpu"}
        subprocess.run([str(REPO / "scripts" / "build-images.sh")], env=env, check=True, timeout=3600)
    for image in (setup.operator_image, setup.trainer_image):
        run(["kind", "load", "docker-image", image, "--name", setup.cluster], timeout=900)


def helm(setup: KindSetup, *args: str, timeout: float = 600) -> str:
    """Run the helm CLI against the cluster and the release namespace."""
    return run(["helm", "--kube-context", setup.context, "-n", setup.release_namespace, *args], timeout=timeout)


def install_chart(setup: KindSetup) -> None:
    """`helm upgrade --install` the chart with the kind values and wait for the operator."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as values:
        json.dump(setup.values(), values)
    helm(setup, "upgrade", "--install", setup.release, str(CHART), "--create-namespace", "--wait",
         "--timeout", "5m", "-f", values.name)


def uninstall_chart(setup: KindSetup) -> None:
    """`helm uninstall` the release and wait for its objects to go."""
    helm(setup, "uninstall", setup.release, "--wait", "--timeout", "3m")


def delete_cluster(setup: KindSetup) -> None:
    """Delete the cluster if this run created it and nobody asked to keep it."""
    if setup.created and not setup.keep:
        run(["kind", "delete", "cluster", "--name", setup.cluster], timeout=300)
