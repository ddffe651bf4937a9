"""The Helm chart, linted and rendered by the real `helm` binary (installs: tests/chart/test_install.py).

Every object Helm would create is validated against the Kubernetes OpenAPI schemas
(kubernetes-validate, strict: unknown fields fail) for the oldest Kubernetes the
chart allows and the newest one kubernetes-validate knows; ServiceMonitor and
PodMonitor against prometheus-operator's API models.
"""

from __future__ import annotations

import json
import re
from typing import Any

import kubernetes_validate
import pytest
import yaml
from kubetune_operator.settings import ENV as OPERATOR_ENV

from tests.chart.conftest import CHART, RELEASE_NAMESPACE, HelmFailed, run_helm

OLDEST_KUBERNETES = "1.28"  # Chart.yaml kubeVersion
NEWEST_KUBERNETES = kubernetes_validate.utils.latest_version()
CRD_FILE = CHART.parents[1] / "crds" / "finetunejob.yaml"
# Not in kubernetes-validate: checked with prometheus-operator's models (cloudcoil) instead.
PROMETHEUS_OPERATOR_KINDS = {"ServiceMonitor", "PodMonitor"}
MONITORING_KINDS = PROMETHEUS_OPERATOR_KINDS | {"PrometheusRule"}

VALUE_SETS: dict[str, tuple[dict[str, Any], bool]] = {
    # name: (values, cluster serves monitoring.coreos.com/v1)
    "defaults": ({}, False),
    "defaults-with-prometheus-operator": ({}, True),
    "namespaced": ({"operator": {"watchNamespaces": ["team-a", "team-b"]}, "networkPolicy": {"enabled": True}}, True),
    "monitoring-off": ({"metrics": {"serviceMonitor": {"enabled": False}, "podMonitor": {"enabled": False}}}, True),
    "everything-set": ({
        "fullnameOverride": "kubetune",
        "operator": {"image": {"digest": "sha256:" + "ab" * 32},
                     "extraEnv": [{"name": "KUBETUNE_RESYNC_SECONDS", "value": "5"}],
                     "tolerations": [{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}],
                     "nodeSelector": {"kubernetes.io/os": "linux"}, "priorityClassName": "system-cluster-critical",
                     "imagePullSecrets": [{"name": "registry"}]},
        "trainer": {"image": {"tag": "0.1.0-cpu"},
                    "serviceAccount": {"namespaces": ["default", "ml"], "annotations": {"example.com/role": "x"}}},
        "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
                    "podMonitor": {"enabled": True, "interval": "30s"}},
        "networkPolicy": {"enabled": True},
        "dashboards": {"namespace": "monitoring", "annotations": {"grafana_folder": "KubeTune"}},
    }, True),
}


def schema_errors(obj: dict[str, Any], version: str) -> list[str]:
    """Why kubernetes-validate (strict) refuses an object for a Kubernetes version; [] when valid."""
    try:
        kubernetes_validate.validate(obj, version, strict=True)
    except kubernetes_validate.ValidationError as error:
        where = ".".join(str(part) for part in error.path)
        return [f"{obj['kind']}/{obj['metadata']['name']} {where}: {error.message}"]
    return []


def monitor_errors(obj: dict[str, Any]) -> list[str]:
    """Why prometheus-operator's own model refuses a ServiceMonitor/PodMonitor; unknown fields count too."""
    from cloudcoil.models.prometheus_operator import v1 as monitoring
    from pydantic import ValidationError

    model = getattr(monitoring, obj["kind"])
    try:
        parsed = model.model_validate(obj)
    except ValidationError as error:
        return [f"{obj['kind']}/{obj['metadata']['name']}: {error}"]
    # The models ignore unknown fields; a field that does not survive the round trip is one.
    dumped = parsed.model_dump(mode="json", by_alias=True, exclude_none=True)
    return [] if dumped["spec"] == obj["spec"] else [f"{obj['kind']}: unknown fields in {obj['spec']}"]


def env_of(deployment: dict[str, Any]) -> dict[str, str]:
    """The operator container's environment as a dict."""
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    return {item["name"]: item.get("value", "") for item in container.get("env", [])}


async def test_helm_lint_passes_strictly() -> None:
    # --strict fails on warnings too; INFO lines (e.g. "icon is recommended") are allowed.
    output = await run_helm("lint", "--strict", str(CHART))
    assert "0 chart(s) failed" in output and "[WARNING]" not in output and "[ERROR]" not in output, output


@pytest.mark.parametrize("name", list(VALUE_SETS))
async def test_every_installed_object_validates_against_kubernetes_schemas(helm_install, name: str) -> None:
    values, monitoring = VALUE_SETS[name]
    installed = await helm_install(values, monitoring=monitoring)
    objects = installed.objects + installed.hooks
    builtins = [obj for obj in objects if obj["kind"] not in MONITORING_KINDS]
    assert len(builtins) >= 10
    errors = [error for obj in builtins for version in (OLDEST_KUBERNETES, NEWEST_KUBERNETES)
              for error in schema_errors(obj, version)]
    errors += [error for obj in objects if obj["kind"] in MONITORING_KINDS for error in monitor_errors(obj)]
    assert errors == []


async def test_crd_is_the_generated_file_plus_labels_and_keep_policy(helm_install) -> None:
    installed = await helm_install()
    crd = installed.one("CustomResourceDefinition")
    generated = yaml.safe_load(CRD_FILE.read_text(encoding="utf-8"))
    assert crd["spec"] == generated["spec"]
    assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert crd["metadata"]["labels"].items() >= generated["metadata"]["labels"].items()
    assert crd["metadata"]["labels"]["app.kubernetes.io/instance"] == "kt"


async def test_crds_can_be_left_out_or_not_kept(helm_install) -> None:
    assert (await helm_install({"crds": {"enabled": False}})).of_kind("CustomResourceDefinition") == []
    crd = (await helm_install({"crds": {"keep": False}})).one("CustomResourceDefinition")
    assert "helm.sh/resource-policy" not in (crd["metadata"].get("annotations") or {})


@pytest.mark.parametrize(("enabled", "api_served", "expected"), [
    ("auto", False, set()),
    ("auto", True, PROMETHEUS_OPERATOR_KINDS),
    (False, True, set()),
    (True, True, PROMETHEUS_OPERATOR_KINDS),
])
async def test_monitors_follow_the_monitoring_api_or_the_value(helm_install, enabled, api_served, expected) -> None:
    values = {"metrics": {"serviceMonitor": {"enabled": enabled}, "podMonitor": {"enabled": enabled}}}
    installed = await helm_install(values, monitoring=api_served)
    assert {obj["kind"] for obj in installed.objects} & PROMETHEUS_OPERATOR_KINDS == expected


async def test_forcing_monitors_on_a_cluster_without_prometheus_operator_fails(control_plane) -> None:
    # The test cluster serves no monitoring.coreos.com API: Helm cannot map the kind, even in a dry run.
    with pytest.raises(HelmFailed, match="ServiceMonitor"):
        await run_helm("install", "forced", str(CHART), "--namespace", RELEASE_NAMESPACE, "--dry-run=client",
                       "--set", "metrics.serviceMonitor.enabled=true", env={"KUBECONFIG": str(control_plane.kubeconfig)})


async def test_monitors_scrape_what_the_operator_and_rank_zero_serve(helm_install) -> None:
    installed = await helm_install(monitoring=True)
    deployment = installed.one("Deployment")
    ports = {p["name"]: p["containerPort"] for p in deployment["spec"]["template"]["spec"]["containers"][0]["ports"]}
    service = installed.one("Service", "-metrics")
    assert service["spec"]["ports"][0]["targetPort"] == "metrics" and "metrics" in ports
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    service_monitor = installed.one("ServiceMonitor")
    assert service_monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert service_monitor["spec"]["endpoints"][0]["honorLabels"] is True  # keep the metrics' namespace label
    pod_monitor = installed.one("PodMonitor")
    assert pod_monitor["spec"]["selector"]["matchLabels"] == {
        "app.kubernetes.io/name": "kubetune", "app.kubernetes.io/managed-by": "kubetune-operator",
        "app.kubernetes.io/component": "trainer", "batch.kubernetes.io/job-completion-index": "0"}
    assert pod_monitor["spec"]["namespaceSelector"] == {"any": True}


@pytest.mark.parametrize("values", [
    {"operator": {"imag": {}}},
    {"operator": {"watchNamespaces": ["Not_A_Namespace"]}},
    {"metrics": {"podMonitor": {"enabled": "yes"}}},
    {"operator": {"image": {"pullPolicy": "Sometimes"}}},
])
async def test_values_schema_refuses_typos_and_bad_values(helm_install, values) -> None:
    with pytest.raises(HelmFailed, match="values don't meet the specifications of the schema"):
        await helm_install(values)


async def test_operator_replicas_elect_a_leader_restricted_and_probed(helm_install) -> None:
    deployment = (await helm_install({"operator": {"replicas": 2}})).one("Deployment")
    spec = deployment["spec"]
    # Every replica elects through a Lease in its own namespace, named by its pod: rolling updates are safe.
    assert spec["replicas"] == 2 and spec["strategy"] == {"type": "RollingUpdate"}
    env = {item["name"]: item for item in spec["template"]["spec"]["containers"][0]["env"]}
    assert env["KUBETUNE_LEADER_ELECTION_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert env["KUBETUNE_POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    pod = spec["template"]["spec"]
    container = pod["containers"][0]
    assert pod["securityContext"] == {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
    assert container["securityContext"] == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                            "runAsNonRoot": True, "capabilities": {"drop": ["ALL"]}}
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert container["resources"]["limits"]["memory"] and container["resources"]["requests"]["cpu"]
    assert container["image"] == "ghcr.io/kubetune/operator:0.1.0"


async def test_operator_reads_every_setting_the_chart_passes(helm_install) -> None:
    installed = await helm_install({"operator": {"watchNamespaces": ["a", "b"]}})
    env = env_of(installed.one("Deployment"))
    assert env["KUBETUNE_WATCH_NAMESPACES"] == "a,b"
    assert env["KUBETUNE_TRAINER_IMAGE"] == "ghcr.io/kubetune/trainer:0.1.0"
    assert env["KUBETUNE_TRAINER_SERVICE_ACCOUNT"] == "kt-kubetune-trainer"  # it exists in a and b
    cluster_env = env_of((await helm_install()).one("Deployment"))
    assert "KUBETUNE_TRAINER_SERVICE_ACCOUNT" not in cluster_env  # it cannot exist in every namespace
    assert env["KUBETUNE_HEALTH_PORT"] == "8081" and env["KUBETUNE_METRICS_PORT"] == "8080"
    unread = sorted(set(env) - set(OPERATOR_ENV))
    assert unread == [], f"the chart sets variables the operator's Settings does not read: {unread}"


async def test_trainer_service_account_exists_where_trainers_run_and_has_no_rights(helm_install) -> None:
    installed = await helm_install({"operator": {"watchNamespaces": ["team-a"]},
                                    "trainer": {"serviceAccount": {"namespaces": ["shared"]}}})
    accounts = [sa for sa in installed.of_kind("ServiceAccount") if sa["metadata"]["name"] == "kt-kubetune-trainer"]
    assert sorted(sa["metadata"]["namespace"] for sa in accounts) == ["shared", "team-a"]
    assert all(sa["automountServiceAccountToken"] is False for sa in accounts)
    bound = [subject["name"] for kind in ("RoleBinding", "ClusterRoleBinding")
             for binding in installed.of_kind(kind) for subject in binding["subjects"]]
    assert "kt-kubetune-trainer" not in bound


async def test_namespaced_mode_binds_roles_only_in_watched_namespaces(helm_install) -> None:
    installed = await helm_install({"operator": {"watchNamespaces": ["team-a", "team-b"]}})
    roles = [role for role in installed.of_kind("Role") if not role["metadata"]["name"].endswith("-leader-election")]
    assert sorted(role["metadata"]["namespace"] for role in roles) == ["team-a", "team-b"]
    bindings = [b for b in installed.of_kind("RoleBinding") if not b["metadata"]["name"].endswith("-leader-election")]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b"]
    # With a fixed namespace list the operator turns kopf's scanning off: nothing cluster-wide.
    operator_roles = [role for role in installed.of_kind("ClusterRole") if role["metadata"]["name"].endswith("-operator")]
    assert operator_roles == [] and installed.of_kind("ClusterRoleBinding") == []
    role_binding = bindings[0]
    assert role_binding["subjects"] == [{"kind": "ServiceAccount", "name": "kt-kubetune-operator",
                                         "namespace": RELEASE_NAMESPACE}]


async def test_cluster_mode_uses_one_cluster_role_and_never_lists_namespaces(helm_install) -> None:
    installed = await helm_install()
    # Cluster-wide rules, and only the leader election's Lease rights in the release namespace.
    (election,) = installed.of_kind("Role")
    assert election["metadata"]["namespace"] == RELEASE_NAMESPACE
    assert election["rules"] == [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
                                  "verbs": ["get", "create", "update"]}]
    cluster_resources = {r for rule in installed.one("ClusterRole", "-operator")["rules"] for r in rule["resources"]}
    assert "namespaces" not in cluster_resources and "secrets" not in cluster_resources
    assert {"finetunejobs", "customresourcedefinitions"} <= cluster_resources


async def test_network_policy_admits_operator_and_prometheus_on_metrics_and_workers_to_each_other(helm_install) -> None:
    installed = await helm_install({"networkPolicy": {"enabled": True}, "operator": {"watchNamespaces": ["team-a"]}})
    policy = installed.one("NetworkPolicy")
    assert policy["metadata"]["namespace"] == "team-a"
    metrics_rule, workers_rule = policy["spec"]["ingress"]
    assert metrics_rule["ports"] == [{"port": "metrics", "protocol": "TCP"}]
    operator_peer, prometheus_peer = metrics_rule["from"]
    assert operator_peer["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": RELEASE_NAMESPACE}
    assert operator_peer["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "operator"
    assert prometheus_peer["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "prometheus"}
    assert "ports" not in workers_rule and workers_rule["from"][0]["podSelector"] == policy["spec"]["podSelector"]


async def test_dashboards_are_labelled_for_the_grafana_sidecar(helm_install) -> None:
    installed = await helm_install()
    maps = [cm for cm in installed.of_kind("ConfigMap") if "-dashboard-" in cm["metadata"]["name"]]
    names = sorted(cm["metadata"]["name"] for cm in maps)
    assert names == ["kt-kubetune-dashboard-jobs", "kt-kubetune-dashboard-training"]
    for cm in maps:
        assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
        (body,) = cm["data"].values()
        assert (CHART / "dashboards" / next(iter(cm["data"]))).read_text(encoding="utf-8").strip() == body.strip()


async def test_helm_test_hook_asks_the_operator_metrics_service(helm_install) -> None:
    installed = await helm_install()
    (hook,) = installed.hooks
    assert hook["metadata"]["annotations"]["helm.sh/hook"] == "test"
    script = hook["spec"]["containers"][0]["command"][-1]
    service = installed.one("Service", "-metrics")
    assert f"http://{service['metadata']['name']}.{RELEASE_NAMESPACE}:8080/metrics" in script
    assert hook["spec"]["securityContext"]["runAsNonRoot"] is True


async def test_notes_tell_the_user_what_to_apply_next(helm_install) -> None:
    notes = (await helm_install()).notes
    assert "examples/quickstart-cpu.yaml | kubectl apply -f -" in notes and "kubectl get ftj -w" in notes


def test_values_file_and_schema_agree_on_every_key() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8"))
    schema = json.loads((CHART / "values.schema.json").read_text(encoding="utf-8"))

    def walk(value: Any, node: dict[str, Any], path: str) -> list[str]:
        problems = [] if node.get("description") or path == "" else [f"{path}: no description"]
        if isinstance(value, dict) and "properties" in node:
            # global is shared with a parent chart, whose other globals must pass.
            if node.get("additionalProperties") is not False and path != ".global":
                problems.append(f"{path}: additionalProperties is not false")
            for key, child in value.items():
                if key not in node["properties"]:
                    problems.append(f"{path}.{key}: not in the schema")
                else:
                    problems += walk(child, node["properties"][key], f"{path}.{key}")
        return problems

    assert walk(values, schema, "") == []


def test_every_value_has_a_comment_right_above_it() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text(encoding="utf-8"))

    def is_value(path: list[str]) -> bool:  # a key the schema declares (not content of a free-form map)
        node = schema
        for key in path:
            node = (node.get("properties") or {}).get(key)
            if node is None:
                return False
        return "properties" not in node  # sections group values; the values carry the comments

    lines = (CHART / "values.yaml").read_text(encoding="utf-8").splitlines()
    stack: list[tuple[int, str]] = []
    documented: set[tuple[str, ...]] = set()  # keys with a comment right above (it covers their children)
    undocumented = []
    for number, line in enumerate(lines):
        match = re.match(r"^(\s*)([A-Za-z_][\w.-]*):", line)
        if not match:
            continue
        indent = len(match.group(1))
        stack = [(i, k) for i, k in stack if i < indent] + [(indent, match.group(2))]
        path = tuple(key for _, key in stack)
        if number and lines[number - 1].strip().startswith("#"):
            documented.add(path)
        if is_value(list(path)) and not any(path[:i] in documented for i in range(1, len(path) + 1)):
            undocumented.append(f"values.yaml:{number + 1}: {'.'.join(path)}")
    assert undocumented == []
