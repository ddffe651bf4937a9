"""The chart installed by the real `helm` into a real control plane; the operator run as it configures it.

For each mode (all namespaces; one watched namespace), on a fresh control plane
(the chart's CRD and cluster-wide objects differ per mode): `helm install`, then
the operator starts as its image starts it (the `kubetune-operator` console
script) with the environment of the Deployment Helm created and a token of the
ServiceAccount Helm created. The `helm test` hook's script runs against it (its
Service URL resolved to the operator's metrics port: no pod network here). The
operator then handles FineTuneJobs (one worker; two workers with a headless
Service; suspend; delete). The API server's audit log holds every request it
made: none may be refused, and the chart's rules may grant nothing that neither
a request nor the operator's own list (handlers.py) asks for.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import kubetune_operator.handlers
import pytest
import yaml

from tests.chart.conftest import CHART, RELEASE, RELEASE_NAMESPACE
from tests.cluster.controlplane import ControlPlane, free_port
from tests.cluster.fixtures import healthy, helm, service_account_token
from tests.cluster.rest import RestClient, path_of

T = TypeVar("T")
FTJ_NAMESPACE = "ml"
OPERATOR_NAME = f"{RELEASE}-kubetune-operator"
QUICKSTART = CHART.parents[1] / "examples" / "quickstart-cpu.yaml"
MODES = {
    "all-namespaces": {"trainer": {"serviceAccount": {"namespaces": [FTJ_NAMESPACE]}},
                       "networkPolicy": {"enabled": True}},
    "namespaced": {"operator": {"watchNamespaces": [FTJ_NAMESPACE]}, "networkPolicy": {"enabled": True}},
}
Rule = tuple[str, str, str]  # (API group, resource, verb)
FTJ_PATH = ("kubetune.io/v1alpha1", "finetunejobs")


def eventually(check: Callable[[], T | None], seconds: float, what: str) -> T:
    """Poll a check until it is truthy."""
    deadline = time.monotonic() + seconds
    while not (result := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {seconds} s: {what}")
        time.sleep(0.1)
    return result


def container_env(deployment: dict[str, Any]) -> dict[str, str]:
    """The operator container's environment as Helm rendered it."""
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    return {item["name"]: item["value"] for item in container["env"] if "value" in item}


@dataclass
class Operator:
    """A running `kubetune-operator` process and where it serves."""

    process: subprocess.Popen[bytes]
    log: Path
    metrics_port: int

    def alive(self) -> bool:
        """Whether the process still runs."""
        return self.process.poll() is None

    def log_tail(self) -> str:
        """The end of its log."""
        return self.log.read_text(errors="replace")[-3000:]


@contextlib.contextmanager
def operator_process(env: dict[str, str], kubeconfig: Path, log: Path) -> Iterator[Operator]:
    """`kubetune-operator`, as the image starts it, with the Deployment's environment.

    Its ports move to free local ones (the chart's defaults may be taken on a shared machine), through
    the same variables; it resyncs every second so the test does not wait for it.
    """
    health, metrics = free_port(), free_port()
    command = shutil.which("kubetune-operator", path=str(Path(sys.executable).parent))
    assert command, "the kubetune-operator console script is missing: pip install -e ."
    process_env = {key: value for key, value in os.environ.items()
                   if not key.startswith(("KUBERNETES_", "KUBETUNE_"))}
    process_env.update(env, KUBECONFIG=str(kubeconfig), KUBETUNE_HEALTH_PORT=str(health),
                       KUBETUNE_METRICS_PORT=str(metrics), KUBETUNE_RESYNC_SECONDS="1")
    with log.open("wb") as out:
        process = subprocess.Popen([command], env=process_env, stdout=out, stderr=subprocess.STDOUT)
    operator = Operator(process, log, metrics)
    try:
        eventually(lambda: healthy(health) or (not operator.alive() and _exited(operator)), 60,
                   "the operator's /healthz")
        yield operator
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()


def _exited(operator: Operator) -> bool:
    raise AssertionError(f"the operator exited with {operator.process.returncode}: {operator.log_tail()}")


def run_test_hook(hook: dict[str, Any], services: dict[str, str]) -> tuple[int, str]:
    """The `helm test` hook's own script, run here with its Service URL resolved to the operator."""
    command = list(hook["spec"]["containers"][0]["command"])
    assert command[:2] == ["python", "-c"], command
    script = command[2]
    for service_url, local_url in services.items():
        script = script.replace(service_url, local_url)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30, check=False)
    return done.returncode, done.stdout + done.stderr


def finetunejob(name: str, **spec: Any) -> dict[str, Any]:
    """The CPU quickstart as a FineTuneJob the operator accepts (its data from a ConfigMap)."""
    manifest = copy.deepcopy(yaml.safe_load(QUICKSTART.read_text(encoding="utf-8")))
    manifest["metadata"] = {"name": name, "namespace": FTJ_NAMESPACE}
    manifest["spec"]["dataset"].pop("path")
    manifest["spec"]["dataset"]["configMap"] = {"name": "data", "key": "quiz.jsonl"}
    for key, value in spec.items():
        manifest["spec"][key] = {**manifest["spec"].get(key, {}), **value} if isinstance(value, dict) else value
    return manifest


def exercise_operator(rest: RestClient) -> dict[str, Any]:
    """FineTuneJobs through the paths that make distinct API calls: create, gang, suspend, delete.

    Returns the first attempt Job the operator created, as it created it.
    """
    ftjs = path_of(*FTJ_PATH, FTJ_NAMESPACE)
    rest.create(ftjs, finetunejob("single"))
    rest.create(ftjs, finetunejob("gang", resources={"workers": 2}, storage={"accessModes": ["ReadWriteMany"]}))
    jobs = path_of("batch/v1", "jobs", FTJ_NAMESPACE)
    for name in ("single", "gang"):
        eventually(lambda n=name: rest.get(f"{jobs}/{n}-0"), 30, f"{name}-0 Job")
    eventually(lambda: rest.get(path_of("v1", "services", FTJ_NAMESPACE, "gang")), 30, "the gang's Service")
    job = rest.get(f"{jobs}/single-0")
    rest.patch(f"{ftjs}/single", {"spec": {"suspend": True}})
    eventually(lambda: rest.get(f"{jobs}/single-0") is None, 30, "the suspended attempt's Job deleted")
    rest.delete(f"{ftjs}/gang", propagationPolicy="Background")
    time.sleep(2)  # a resync or two after the deletion
    assert job is not None
    return job


def rules_of(obj: dict[str, Any]) -> set[Rule]:
    """A Role's or ClusterRole's rules, one (group, resource, verb) each."""
    return {(group, resource, verb) for rule in obj["rules"] for group in rule["apiGroups"]
            for resource in rule["resources"] for verb in rule["verbs"]}


def allowed(call: Call, cluster_rules: set[Rule], namespace_rules: dict[str, set[Rule]]) -> bool:
    """Whether RBAC allows a request: a ClusterRole anywhere, a Role only in its namespace."""
    wanted = (call.group, call.resource, call.verb)
    in_namespace = namespace_rules.get(call.namespace, set()) if call.namespace is not None else set()
    return wanted in cluster_rules or wanted in in_namespace


def declared_rules(*, conditional: bool = True) -> set[Rule]:
    """The operator's own list of what it calls (the RBAC table in handlers.py's docstring).

    Rows with a parenthesised note apply only in some setups; `conditional=False` leaves them out.
    """
    declared: set[Rule] = set()
    for line in (kubetune_operator.handlers.__doc__ or "").splitlines():
        match = re.fullmatch(r"\s{4}(\S+)\s+([a-z/]+)\s+([a-z, ]+?)(\s{2,}\(.*\))?", line)
        if match and (conditional or not match.group(4)):
            group = "" if match.group(1) == '""' else match.group(1)
            declared |= {(group, match.group(2), verb.strip()) for verb in match.group(3).split(",")}
    assert declared, "handlers.py lists no RBAC table any more: update this parser"
    return declared


@dataclass(frozen=True)
class Call:
    """One request of the operator, from the audit log."""

    verb: str
    group: str
    resource: str  # with its subresource: finetunejobs/status
    namespace: str | None
    code: int


def operator_calls(control_plane: ControlPlane) -> list[Call]:
    """The requests the operator's ServiceAccount made, as the API server audited them."""
    user = f"system:serviceaccount:{RELEASE_NAMESPACE}:{OPERATOR_NAME}"
    calls = []
    for event in control_plane.audit_events(user):
        ref = event.get("objectRef") or {}
        if not ref.get("resource"):
            continue  # discovery and health paths: no resource, no RBAC rule
        resource = ref["resource"] + (f"/{ref['subresource']}" if ref.get("subresource") else "")
        calls.append(Call(event["verb"], ref.get("apiGroup", ""), resource, ref.get("namespace"),
                          int((event.get("responseStatus") or {}).get("code", 0))))
    return calls


@dataclass
class Run:
    """What one install-and-run left: the installed objects, the operator's requests, its first attempt Job."""

    objects: list[dict[str, Any]]
    calls: list[Call]
    job: dict[str, Any]


def installed_objects(control_plane: ControlPlane) -> list[dict[str, Any]]:
    """What the release holds, as Helm recorded it (`helm get manifest`)."""
    manifest = helm(control_plane, "get", "manifest", RELEASE, "--namespace", RELEASE_NAMESPACE).stdout
    return [doc for doc in yaml.safe_load_all(manifest) if doc]


def install_and_run(tmp_path: Path, values: dict[str, Any]) -> Run:
    """A fresh control plane; install the chart; start the operator as the Deployment says; exercise it."""
    with ControlPlane(tmp_path / "plane") as plane:
        rest = RestClient(plane.server, plane.token, str(plane.ca_file))
        rest.create(path_of("v1", "namespaces"), {"metadata": {"name": FTJ_NAMESPACE}})
        values_file = tmp_path / "values.json"
        values_file.write_text(json.dumps(values), encoding="utf-8")
        helm(plane, "install", RELEASE, str(CHART), "--namespace", RELEASE_NAMESPACE, "--create-namespace",
             "--values", str(values_file))
        eventually(lambda: rest.get(path_of("apiextensions.k8s.io/v1", "customresourcedefinitions",
                                            name="finetunejobs.kubetune.io")), 30, "the CRD")
        deployment = rest.get(path_of("apps/v1", "deployments", RELEASE_NAMESPACE, OPERATOR_NAME))
        assert deployment is not None
        env = container_env(deployment)
        token = service_account_token(rest, RELEASE_NAMESPACE, OPERATOR_NAME)
        kubeconfig = plane.write_kubeconfig(tmp_path / "operator.kubeconfig", token=token)
        objects = installed_objects(plane)
        with operator_process(env, kubeconfig, tmp_path / "operator.log") as operator:
            (hook,) = [o for o in yaml.safe_load_all(helm(plane, "get", "hooks", RELEASE, "--namespace",
                                                          RELEASE_NAMESPACE).stdout) if o]
            service = f"http://{RELEASE}-kubetune-metrics.{RELEASE_NAMESPACE}:{env['KUBETUNE_METRICS_PORT']}"
            code, output = run_test_hook(hook, {service: f"http://127.0.0.1:{operator.metrics_port}"})
            assert code == 0, f"the helm test hook's script failed: {output}"
            job = exercise_operator(rest)
            assert operator.alive(), operator.log_tail()
        return Run(objects, operator_calls(plane), job)


_RUNS: dict[str, Run] = {}


def run_mode(tmp_path: Path, mode: str) -> Run:
    """One install-and-run per mode, shared by the tests below (each takes a control plane's start)."""
    if mode not in _RUNS:
        _RUNS[mode] = install_and_run(tmp_path, MODES[mode])
    return _RUNS[mode]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("mode", MODES)
def test_operator_runs_on_the_install_and_rbac_covers_exactly_its_calls(tmp_path: Path, mode: str) -> None:
    run = run_mode(tmp_path, mode)
    calls = run.calls
    objects = run.objects
    cluster_rules = set().union(*(rules_of(o) for o in objects if o["kind"] == "ClusterRole"
                                  and o["metadata"]["name"].endswith("-operator")))  # not the users' roles
    namespace_rules = {o["metadata"]["namespace"]: rules_of(o) for o in objects if o["kind"] == "Role"}
    assert calls, "no request of the operator was recorded"

    refused = sorted({(c.verb, c.group, c.resource, c.namespace) for c in calls if c.code == 403})
    assert refused == [], f"{mode}: the API server refused requests of the operator"
    denied = sorted({(c.verb, c.group, c.resource, c.namespace) for c in calls
                     if not allowed(c, cluster_rules, namespace_rules)})
    assert denied == [], f"{mode}: the chart's RBAC refuses requests the operator made"

    granted = cluster_rules | set().union(*namespace_rules.values())
    used = {(c.group, c.resource, c.verb) for c in calls}
    assert granted - used - declared_rules() == set(), f"{mode}: granted, never used nor declared"
    assert declared_rules(conditional=False) - granted == set(), f"{mode}: declared by the operator, not granted"


@pytest.mark.timeout(120)
def test_trainer_pods_get_what_the_chart_and_the_image_agree_on(tmp_path: Path) -> None:
    from tests.chart.test_images import TRAINER, final_stage

    run = run_mode(tmp_path, "all-namespaces")
    template = run.job["spec"]["template"]
    pod, (container,) = template["spec"], template["spec"]["containers"]
    # Watching every namespace, the chart's trainer account cannot exist everywhere: the namespace's default.
    assert "serviceAccountName" not in pod and pod["automountServiceAccountToken"] is False
    namespaced = run_mode(tmp_path, "namespaced").job["spec"]["template"]["spec"]
    assert namespaced["serviceAccountName"] == f"{RELEASE}-kubetune-trainer"  # created in the watched namespace
    assert container["image"] == "ghcr.io/kubetune/trainer:0.1.0"  # trainer.image from values
    (user,) = [c.value[0] for c in final_stage(TRAINER) if c.cmd == "USER"]
    assert f"{pod['securityContext']['runAsUser']}:{pod['securityContext']['runAsGroup']}" == user
    # What the PodMonitor scrapes and the NetworkPolicy opens: the container's "metrics" port, these labels.
    assert "metrics" in {port["name"] for port in container["ports"]}
    (policy,) = [o for o in run.objects if o["kind"] == "NetworkPolicy"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= template["metadata"]["labels"].items()
    assert policy["spec"]["ingress"][0]["ports"][0]["port"] == "metrics"
