"""Chart values for running KubeTune in production: registry, security contexts, disruption budget,
users' roles, scrape settings, and what values.schema.json accepts (Prometheus durations, typed resources).
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.chart.conftest import HelmFailed
from tests.chart.test_chart import env_of, monitor_errors

SCHEMA_REFUSED = "values don't meet the specifications of the schema"


def operator_container(installed: Any) -> dict[str, Any]:
    """The operator Deployment's container."""
    return installed.one("Deployment")["spec"]["template"]["spec"]["containers"][0]


async def test_global_image_registry_moves_both_images_and_the_test_pod(helm_install) -> None:
    installed = await helm_install({"global": {"imageRegistry": "registry.example.com:5000/ml/"}})
    expected = "registry.example.com:5000/ml/{}:0.1.0"
    assert operator_container(installed)["image"] == expected.format("operator")
    assert env_of(installed.one("Deployment"))["KUBETUNE_TRAINER_IMAGE"] == expected.format("trainer")
    (hook,) = installed.hooks
    assert hook["spec"]["containers"][0]["image"] == expected.format("operator")


async def test_global_image_registry_keeps_a_digest(helm_install) -> None:
    digest = "sha256:" + "cd" * 32
    installed = await helm_install({"global": {"imageRegistry": "mirror.example.com/kt"},
                                    "trainer": {"image": {"digest": digest}}})
    assert env_of(installed.one("Deployment"))["KUBETUNE_TRAINER_IMAGE"] == f"mirror.example.com/kt/trainer@{digest}"


async def test_security_contexts_can_be_overridden(helm_install) -> None:
    installed = await helm_install({"operator": {"podSecurityContext": {"runAsUser": 2000, "fsGroup": 2000},
                                                 "securityContext": {"readOnlyRootFilesystem": False}}})
    pod = installed.one("Deployment")["spec"]["template"]["spec"]
    # Helm merges values: the keys set win, the restricted defaults stay.
    assert pod["securityContext"] == {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"},
                                      "runAsUser": 2000, "fsGroup": 2000}
    assert operator_container(installed)["securityContext"]["readOnlyRootFilesystem"] is False
    assert operator_container(installed)["securityContext"]["capabilities"] == {"drop": ["ALL"]}


async def test_disruption_budget_selects_the_operator_and_never_blocks_a_single_replica_drain(helm_install) -> None:
    installed = await helm_install()
    budget = installed.one("PodDisruptionBudget")
    assert budget["spec"]["maxUnavailable"] == 1 and "minAvailable" not in budget["spec"]
    labels = installed.one("Deployment")["spec"]["template"]["metadata"]["labels"]
    assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert budget["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] == "operator"


async def test_disruption_budget_takes_min_available_or_is_left_out(helm_install) -> None:
    # minAvailable alone: it replaces the default maxUnavailable (a budget takes one of the two).
    budget = (await helm_install({"operator": {"podDisruptionBudget": {"minAvailable": "50%"}}})).one(
        "PodDisruptionBudget")
    assert budget["spec"]["minAvailable"] == "50%" and "maxUnavailable" not in budget["spec"]
    assert (await helm_install({"operator": {"podDisruptionBudget": {"enabled": False}}})).of_kind(
        "PodDisruptionBudget") == []


async def test_disruption_budget_without_bounds_fails_with_the_fix(helm_install) -> None:
    with pytest.raises(HelmFailed, match=r"set minAvailable or maxUnavailable \(or enabled: false\)"):
        await helm_install({"operator": {"podDisruptionBudget": {"maxUnavailable": ""}}})


async def test_users_view_and_edit_roles_aggregate_into_the_default_roles(helm_install) -> None:
    installed = await helm_install()
    view = installed.one("ClusterRole", "-view")
    edit = installed.one("ClusterRole", "-edit")
    for role, aggregated in ((view, {"view", "edit", "admin"}), (edit, {"edit", "admin"})):
        labels = role["metadata"]["labels"]
        assert {key.rsplit("-", 1)[1] for key in labels if key.startswith("rbac.authorization.k8s.io/aggregate-to-")
                if labels[key] == "true"} == aggregated
    view_verbs = {verb for rule in view["rules"] for verb in rule["verbs"]}
    assert view_verbs == {"get", "list", "watch"}
    assert {"create", "delete", "patch"} <= {verb for rule in edit["rules"] for verb in rule["verbs"]}
    assert all(rule["apiGroups"] == ["kubetune.io"] for role in (view, edit) for rule in role["rules"])
    # Bound to nobody: Kubernetes folds them into view/edit/admin, which people are already bound to.
    bound = {b["roleRef"]["name"] for kind in ("ClusterRoleBinding", "RoleBinding") for b in installed.of_kind(kind)}
    assert not bound & {view["metadata"]["name"], edit["metadata"]["name"]}
    off = await helm_install({"rbac": {"aggregateToDefaultRoles": False}})
    assert [r["metadata"]["name"] for r in off.of_kind("ClusterRole")] == ["kt-kubetune-operator"]


async def test_monitors_take_scrape_timeout_and_relabelings(helm_install) -> None:
    relabel = [{"action": "replace", "targetLabel": "cluster", "replacement": "gpu-1"}]
    drop = [{"sourceLabels": ["__name__"], "regex": "kubetune_trainer_grad_norm", "action": "drop"}]
    settings = {"interval": "1m30s", "scrapeTimeout": "20s", "relabelings": relabel, "metricRelabelings": drop}
    installed = await helm_install({"metrics": {"serviceMonitor": settings, "podMonitor": settings}}, monitoring=True)
    service = installed.one("ServiceMonitor")["spec"]["endpoints"][0]
    pod = installed.one("PodMonitor")["spec"]["podMetricsEndpoints"][0]
    for endpoint in (service, pod):
        assert endpoint["interval"] == "1m30s" and endpoint["scrapeTimeout"] == "20s"
        assert endpoint["relabelings"] == relabel and endpoint["metricRelabelings"] == drop
        assert endpoint["honorLabels"] is True
    errors = [e for kind in ("ServiceMonitor", "PodMonitor") for e in monitor_errors(installed.one(kind))]
    assert errors == []
    default = (await helm_install(monitoring=True)).one("PodMonitor")["spec"]["podMetricsEndpoints"][0]
    assert "scrapeTimeout" not in default and "relabelings" not in default


@pytest.mark.parametrize("values", [
    {"metrics": {"podMonitor": {"interval": "1m30s"}}},
    {"metrics": {"serviceMonitor": {"interval": "500ms", "scrapeTimeout": "250ms"}}},
    {"alerts": {"pendingFor": "1h30m", "noProgressFor": "2h"}},
    {"operator": {"resources": {"requests": {"cpu": 0.5, "memory": "256Mi"}, "limits": {"memory": "1Gi"}}}},
    {"operator": {"resources": {"requests": {"cpu": "250m", "ephemeral-storage": "1G"}}}},
])
async def test_values_schema_accepts_prometheus_durations_and_kubernetes_quantities(helm_install, values) -> None:
    await helm_install(values)


@pytest.mark.parametrize("values", [
    {"metrics": {"podMonitor": {"interval": "90"}}},  # no unit
    {"metrics": {"podMonitor": {"interval": "1.5m"}}},  # Prometheus durations are integers
    {"metrics": {"serviceMonitor": {"scrapeTimeout": "30s10m"}}},  # largest unit first
    {"alerts": {"pendingFor": ""}},
    {"operator": {"resources": {"requests": {"cpu": "lots"}}}},
    {"operator": {"resources": {"request": {"cpu": "1"}}}},  # misspelt requests
    {"operator": {"resources": {"limits": {"memory": -1}}}},
    {"global": {"imageRegistry": "https://registry.example.com"}},  # a registry, not a URL
])
async def test_values_schema_refuses_bad_durations_and_resources(helm_install, values) -> None:
    with pytest.raises(HelmFailed, match=SCHEMA_REFUSED):
        await helm_install(values)


async def test_notes_suggest_the_cpu_quickstart_by_the_trainer_image_set(helm_install) -> None:
    cpu_notes = (await helm_install({"trainer": {"image": {"tag": "0.1.0-cpu"}}})).notes
    assert "runs on the CPU" in cpu_notes and "helm upgrade" not in cpu_notes
    default_notes = (await helm_install()).notes
    assert "--set trainer.image.tag=0.1.0-cpu" in default_notes and "helm upgrade kt" in default_notes
    for notes in (cpu_notes, default_notes):
        assert "examples/quickstart-cpu.yaml | kubectl apply -f -" in notes
