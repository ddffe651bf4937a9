"""Install the chart with the real Helm library into an emulated Kubernetes API.

Each install gets a fresh emulator (the project's, tests/harness/emulator.py: kmock's,
fixed, over real HTTP, validating every create like an API server) and runs Helm in a
child process (see `helm_runner` for why); what Helm created is then read back
from the emulator, so the tests see exactly the objects a cluster would get.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import attrs
import kmock
import pytest

from tests.harness.emulator import KubeEmulator

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "kubetune"
RELEASE = "kt"
RELEASE_NAMESPACE = "kubetune-system"
KUBERNETES_VERSION = "1.33.0"  # what the emulated API server says it is

# What a cluster with prometheus-operator serves; registering it makes Helm's
# `.Capabilities.APIVersions.Has "monitoring.coreos.com/v1"` true.
MONITORING_RESOURCES = {
    "servicemonitors": "ServiceMonitor",
    "podmonitors": "PodMonitor",
    "prometheusrules": "PrometheusRule",
}


class HelmFailed(RuntimeError):
    """Helm refused the chart or the values; the message is Helm's."""


@attrs.define(kw_only=True)
class ChartEmulator(KubeEmulator):
    """The project's emulated API server (tests/harness), claiming a Kubernetes version the chart accepts.

    kmock 0.8 says it is v1.26, older than the chart's kubeVersion (>= 1.28) allows.
    """

    kubernetes_version: str = KUBERNETES_VERSION

    async def _serve_server_version(self, request: Any) -> Any:
        response = await super()._serve_server_version(request)
        major, minor = self.kubernetes_version.split(".")[:2]
        return {**response, "major": major, "minor": minor, "gitVersion": f"v{self.kubernetes_version}"}

    def serve_monitoring_api(self) -> None:
        """Serve monitoring.coreos.com/v1 like a cluster with prometheus-operator."""
        for plural, kind in MONITORING_RESOURCES.items():
            self.resources[kmock.resource("monitoring.coreos.com", "v1", plural)] = kmock.ResourceInfo(
                kind=kind, singular=kind.lower(), namespaced=True,
                verbs={"create", "delete", "get", "list", "patch", "update", "watch"})

    def created(self) -> list[dict[str, Any]]:
        """Every live object in the emulator."""
        return [obj.raw for obj in self.objects.values() if not obj.deleted]


@dataclass(frozen=True)
class Install:
    """What one `helm install` created, and Helm's answer."""

    objects: list[dict[str, Any]]
    release: dict[str, Any]
    hooks: list[dict[str, Any]] = field(default_factory=list)

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        """The created objects of one kind."""
        return [obj for obj in self.objects if obj.get("kind") == kind]

    def one(self, kind: str, name_suffix: str = "") -> dict[str, Any]:
        """The single object of a kind (whose name ends with `name_suffix`)."""
        found = [obj for obj in self.of_kind(kind) if obj["metadata"]["name"].endswith(name_suffix)]
        assert len(found) == 1, f"expected one {kind} *{name_suffix}, found {[o['metadata']['name'] for o in found]}"
        return found[0]


def write_kubeconfig(server: str, path: Path) -> Path:
    """A kubeconfig for the emulator (JSON is YAML)."""
    config = {
        "apiVersion": "v1", "kind": "Config", "current-context": "emulator",
        "clusters": [{"name": "emulator", "cluster": {"server": server.rstrip("/")}}],
        "users": [{"name": "test", "user": {"token": "test"}}],
        "contexts": [{"name": "emulator", "context": {"cluster": "emulator", "user": "test"}}],
    }
    path.write_text(json.dumps(config), encoding="utf-8")
    return path


async def run_helm(*args: str) -> dict[str, Any]:
    """Run `tests.chart.helm_runner` with the memory driver; its JSON answer, or HelmFailed."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.chart.helm_runner", *args,
        cwd=REPO, env={**os.environ, "HELM_DRIVER": "memory"},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    if process.returncode != 0:
        # Helm's Go logger writes INFO lines (e.g. the followed CRD symlink) before the error.
        lines = [line for line in stderr.decode().splitlines() if " INFO " not in line]
        raise HelmFailed("\n".join(lines) or f"helm_runner exited {process.returncode}")
    return json.loads(stdout)


@asynccontextmanager
async def emulated_cluster(tmp_path: Path, *, monitoring: bool = False) -> AsyncIterator[tuple[ChartEmulator, Path]]:
    """A fresh emulated API server and a kubeconfig pointing at it."""
    async with ChartEmulator() as emulator, kmock.Server(emulator):
        if monitoring:
            emulator.serve_monitoring_api()
        yield emulator, write_kubeconfig(str(emulator.url), tmp_path / "kubeconfig")


def _hook_manifests(release: dict[str, Any]) -> list[dict[str, Any]]:
    import yaml

    return [yaml.safe_load(hook["manifest"]) for hook in release.get("hooks") or []]


# Installs are deterministic, so tests asking for the same values share one (about 1 s each).
_INSTALLS: dict[tuple[str, bool], Install] = {}


@pytest.fixture
def helm_install(tmp_path: Path):
    """`await helm_install(values, monitoring=False)`: install the chart into a fresh emulator.

    The result is shared between tests that ask for the same values: treat it as read-only.
    """

    async def install(values: dict[str, Any] | None = None, *, monitoring: bool = False) -> Install:
        key = (json.dumps(values or {}, sort_keys=True), monitoring)
        if key not in _INSTALLS:
            async with emulated_cluster(tmp_path, monitoring=monitoring) as (emulator, kubeconfig):
                release = await run_helm("install", str(CHART), "--kubeconfig", str(kubeconfig), "--release",
                                         RELEASE, "--namespace", RELEASE_NAMESPACE, "--values", key[0])
                _INSTALLS[key] = Install(emulator.created(), release, _hook_manifests(release))
        return _INSTALLS[key]

    return install
