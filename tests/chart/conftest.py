"""The chart, rendered and installed by the real `helm` binary (built from Go modules by scripts/build-cluster.sh).

`helm_install(values, monitoring=)` renders what `helm install` would create
(`helm template` with the values, the Kubernetes version of the test cluster
and, with `monitoring`, the prometheus-operator API registered as served), so
the many tests of what the chart renders stay fast; the tests that install,
upgrade, test and uninstall for real do so on the session's control plane
(tests/cluster/fixtures.py).
"""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cluster.controlplane import ControlPlane, binary

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "kubetune"
RELEASE = "kt"
RELEASE_NAMESPACE = "kubetune-system"
KUBERNETES_VERSION = "1.37.2"  # what the test control plane runs (scripts/build-cluster.sh)
MONITORING_API = "monitoring.coreos.com/v1"  # served where prometheus-operator runs
HOOK_ANNOTATION = "helm.sh/hook"


class HelmFailed(RuntimeError):
    """Helm refused the chart or the values; the message is Helm's."""


@dataclass(frozen=True)
class Install:
    """What one `helm install` creates (hooks apart), its hooks and its notes."""

    objects: list[dict[str, Any]]
    notes: str
    hooks: list[dict[str, Any]] = field(default_factory=list)

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        """The created objects of one kind."""
        return [obj for obj in self.objects if obj.get("kind") == kind]

    def one(self, kind: str, name_suffix: str = "") -> dict[str, Any]:
        """The single object of a kind (whose name ends with `name_suffix`)."""
        found = [obj for obj in self.of_kind(kind) if obj["metadata"]["name"].endswith(name_suffix)]
        assert len(found) == 1, f"expected one {kind} *{name_suffix}, found {[o['metadata']['name'] for o in found]}"
        return found[0]


async def run_helm(*args: str, env: dict[str, str] | None = None) -> str:
    """Run the real `helm`; its standard output, or HelmFailed with its error."""
    process = await asyncio.create_subprocess_exec(
        str(binary("helm")), *args, cwd=REPO, env={**os.environ, **(env or {})},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=120)
    if process.returncode != 0:
        raise HelmFailed(stderr.decode().strip() or f"helm exited {process.returncode}")
    return stdout.decode()


async def render(values: dict[str, Any] | None = None, *, monitoring: bool = False, tmp: Path,
                 kubeconfig: Path) -> Install:
    """`helm template` of the chart as release RELEASE in RELEASE_NAMESPACE; notes through `helm install --dry-run`."""
    values_file = tmp / "values.json"
    values_file.write_text(json.dumps(values or {}), encoding="utf-8")
    common = [RELEASE, str(CHART), "--namespace", RELEASE_NAMESPACE, "--values", str(values_file)]
    rendered = await run_helm("template", *common, "--kube-version", KUBERNETES_VERSION,
                              *(["--api-versions", MONITORING_API] if monitoring else []))
    documents = [doc for doc in yaml.safe_load_all(rendered) if doc]
    objects = [doc for doc in documents if HOOK_ANNOTATION not in (doc["metadata"].get("annotations") or {})]
    hooks = [doc for doc in documents if HOOK_ANNOTATION in (doc["metadata"].get("annotations") or {})]
    # A dry run renders NOTES.txt as an install would; Helm asks the cluster for its version even then
    # (NOTES.txt reads values only, so the capabilities `template` was given do not matter here).
    # Monitors off: Helm maps every kind even in a dry run, and the test cluster serves no monitoring API.
    monitors_off = ["--set", "metrics.serviceMonitor.enabled=false", "--set", "metrics.podMonitor.enabled=false"]
    # The session's `kubetune` release may already own the same objects (tests/cluster/fixtures.py), and
    # Helm refuses, even in a dry run, to import what another release owns unless told to take it.
    dry_run = json.loads(await run_helm("install", *common, *monitors_off, "--take-ownership", "--dry-run=client",
                                        "--output", "json",
                                        env={"KUBECONFIG": str(kubeconfig)}))
    return Install(objects, dry_run["info"].get("notes", ""), hooks)


# Renders are deterministic, so tests asking for the same values share one.
_INSTALLS: dict[tuple[str, bool], Install] = {}


@pytest.fixture
def helm_install(tmp_path: Path, control_plane: ControlPlane):
    """`await helm_install(values, monitoring=False)`: what installing the chart with these values creates.

    The result is shared between tests that ask for the same values: treat it as read-only.
    """

    async def install(values: dict[str, Any] | None = None, *, monitoring: bool = False) -> Install:
        key = (json.dumps(values or {}, sort_keys=True), monitoring)
        if key not in _INSTALLS:
            _INSTALLS[key] = await render(values, monitoring=monitoring, tmp=tmp_path,
                                          kubeconfig=control_plane.kubeconfig)
        return _INSTALLS[key]

    return install
