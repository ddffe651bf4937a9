"""`helm install`, `upgrade` (switching RBAC modes) and `uninstall` by the real `helm` on a fresh control plane."""

from __future__ import annotations

import json
from pathlib import Path

from tests.chart.conftest import CHART, RELEASE, RELEASE_NAMESPACE
from tests.cluster.controlplane import ControlPlane
from tests.cluster.fixtures import helm, kubectl
from tests.cluster.rest import RestClient, path_of
from tests.foundation.test_recipe_and_crd import MINIMAL

CRD = ("apiextensions.k8s.io/v1", "customresourcedefinitions")


def test_upgrade_switches_rbac_modes_and_uninstall_keeps_the_crd_and_the_jobs(tmp_path: Path) -> None:
    with ControlPlane(tmp_path / "plane") as plane:
        rest = RestClient(plane.server, plane.token, str(plane.ca_file))
        operator_role = f"{RELEASE}-kubetune-operator"
        helm(plane, "install", RELEASE, str(CHART), "--namespace", RELEASE_NAMESPACE, "--create-namespace")
        assert rest.get(path_of("rbac.authorization.k8s.io/v1", "clusterroles", name=operator_role))
        kubectl(plane, "wait", "--for=condition=Established", "crd/finetunejobs.kubetune.io", "--timeout=60s")
        rest.create(path_of("v1", "namespaces"), {"metadata": {"name": "team-a"}})
        kubectl(plane, "apply", "-n", "team-a", "-f", "-", stdin=json.dumps(MINIMAL))

        helm(plane, "upgrade", RELEASE, str(CHART), "--namespace", RELEASE_NAMESPACE,
             "--set", "operator.watchNamespaces={team-a}")
        history = json.loads(helm(plane, "history", RELEASE, "-n", RELEASE_NAMESPACE, "-o", "json").stdout)
        assert [entry["revision"] for entry in history] == [1, 2]
        assert rest.get(path_of("rbac.authorization.k8s.io/v1", "roles", "team-a", operator_role))
        assert rest.get(path_of("rbac.authorization.k8s.io/v1", "clusterroles", name=operator_role)) is None

        helm(plane, "uninstall", RELEASE, "--namespace", RELEASE_NAMESPACE)
        # helm.sh/resource-policy: keep: the CRD, and so every FineTuneJob, outlives the release.
        assert rest.get(path_of(*CRD, name="finetunejobs.kubetune.io")) is not None
        assert rest.get(path_of("kubetune.io/v1alpha1", "finetunejobs", "team-a", "tiny")) is not None
        assert rest.get(path_of("rbac.authorization.k8s.io/v1", "roles", "team-a", operator_role)) is None
        assert rest.get(path_of("apps/v1", "deployments", RELEASE_NAMESPACE, operator_role)) is None

        # A later install adopts the kept CRD instead of failing on it.
        helm(plane, "install", RELEASE, str(CHART), "--namespace", RELEASE_NAMESPACE)
        assert rest.get(path_of("apps/v1", "deployments", RELEASE_NAMESPACE, operator_role)) is not None
