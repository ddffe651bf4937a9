"""The operator, run with the settings the chart gave it, against what Helm installed; RBAC against its calls.

For each mode (all namespaces; one watched namespace): Helm installs the chart into
the emulated API server. The operator starts as its image starts it (the
`kubetune-operator` console script) with the environment of the Deployment Helm
created. The `helm test` hook pod is created from Helm's rendering and its own
script runs here, its Service URL resolved to the operator's metrics port; its
exit code becomes the pod's phase. The operator then handles FineTuneJobs
(one worker; two workers with a headless Service; suspend; delete), and every
API request it made, as the emulator recorded it, must be allowed by the RBAC
rules Helm created for that mode. The rules must also grant nothing that neither
a recorded request nor the operator's own list (handlers.py) asks for.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import urllib.request
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import kmock
import kubetune_operator.handlers
import pytest
import yaml

from tests.chart.conftest import CHART, RELEASE, RELEASE_NAMESPACE, ChartEmulator, emulated_cluster, run_helm
from tests.harness.client import FTJ, SERVICES
from tests.harness.emulator import JOBS, PODS, ApiCall

T = TypeVar("T")
DEPLOYMENTS = kmock.resource("apps", "v1", "deployments")
FTJ_NAMESPACE = "ml"
OPERATOR_NAME = f"{RELEASE}-kubetune-operator"
TEST_POD = f"{RELEASE}-kubetune-test-operator"
QUICKSTART = CHART.parents[1] / "examples" / "quickstart-cpu.yaml"
MODES = {
    "all-namespaces": {"trainer": {"serviceAccount": {"namespaces": [FTJ_NAMESPACE]}},
                       "networkPolicy": {"enabled": True}},
    "namespaced": {"operator": {"watchNamespaces": [FTJ_NAMESPACE]}, "networkPolicy": {"enabled": True}},
}
Rule = tuple[str, str, str]  # (API group, resource, verb)


async def eventually(check: Callable[[], T | None], seconds: float, what: str) -> T:
    """Poll a check in the test's loop (the emulator's too, so it keeps serving) until it is truthy."""
    deadline = asyncio.get_running_loop().time() + seconds
    while not (result := check()):
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not within {seconds} s: {what}")
        await asyncio.sleep(0.05)
    return result


def free_port() -> int:
    """A TCP port nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def container_env(deployment: dict[str, Any]) -> dict[str, str]:
    """The operator container's environment as Helm rendered it."""
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    return {item["name"]: item["value"] for item in container["env"]}


def healthy(port: int) -> bool:
    """Whether the operator's liveness endpoint answers 200."""
    with contextlib.suppress(OSError), urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as answer:
        return answer.status == 200
    return False


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


@contextlib.asynccontextmanager
async def operator_process(env: dict[str, str], kubeconfig: Path, log: Path) -> AsyncIterator[Operator]:
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
        process = await asyncio.to_thread(subprocess.Popen, [command], env=process_env, stdout=out,
                                          stderr=subprocess.STDOUT)
    operator = Operator(process, log, metrics)
    try:
        await eventually(lambda: healthy(health) or (not operator.alive() and _exited(operator)), 60,
                         "the operator's /healthz")
        yield operator
    finally:
        process.terminate()
        try:
            await asyncio.to_thread(process.wait, 30)
        except subprocess.TimeoutExpired:
            process.kill()


def _exited(operator: Operator) -> bool:
    raise AssertionError(f"the operator exited with {operator.process.returncode}: {operator.log_tail()}")


async def run_test_pod(emulator: ChartEmulator, pod: dict[str, Any], services: dict[str, str]) -> tuple[int, str]:
    """Play the kubelet for the `helm test` pod: run its command here with Service URLs resolved, report its exit."""
    command = list(pod["spec"]["containers"][0]["command"])
    assert command[:2] == ["python", "-c"], command
    script = command[2]
    for service_url, local_url in services.items():
        script = script.replace(service_url, local_url)
    process = await asyncio.create_subprocess_exec(sys.executable, "-c", script, stdout=asyncio.subprocess.PIPE,
                                                   stderr=asyncio.subprocess.STDOUT)
    output = (await asyncio.wait_for(process.communicate(), 30))[0].decode()
    code = process.returncode
    state = {"terminated": {"exitCode": code, "reason": "Completed" if code == 0 else "Error"}}
    status = {"phase": "Succeeded" if code == 0 else "Failed",
              "containerStatuses": [{"name": "check", "ready": False, "restartCount": 0, "image": "test",
                                     "imageID": "", "state": state}]}
    meta = pod["metadata"]
    await emulator.api_patch(PODS, meta["namespace"], meta["name"], {"status": status}, subresource="status")
    return code, output


def finetunejob(name: str, **spec: Any) -> dict[str, Any]:
    """The CPU quickstart as a FineTuneJob the operator accepts (its data from a ConfigMap)."""
    manifest = copy.deepcopy(yaml.safe_load(QUICKSTART.read_text(encoding="utf-8")))
    manifest["metadata"] = {"name": name, "namespace": FTJ_NAMESPACE}
    manifest["spec"]["dataset"].pop("path")
    manifest["spec"]["dataset"]["configMap"] = {"name": "data", "key": "quiz.jsonl"}
    for key, value in spec.items():
        manifest["spec"][key] = {**manifest["spec"].get(key, {}), **value} if isinstance(value, dict) else value
    return manifest


async def exercise_operator(emulator: ChartEmulator) -> dict[str, Any]:
    """FineTuneJobs through the paths that make distinct API calls: create, gang, suspend, delete.

    Returns the first attempt Job the operator created, as it created it.
    """
    await emulator.api_create(FTJ, FTJ_NAMESPACE, finetunejob("single"))
    await emulator.api_create(FTJ, FTJ_NAMESPACE, finetunejob(
        "gang", resources={"workers": 2}, storage={"accessModes": ["ReadWriteMany"]}))
    for name in ("single", "gang"):
        await eventually(lambda n=name: emulator.get_object(JOBS, FTJ_NAMESPACE, f"{n}-0"), 30, f"{name}-0 Job")
    await eventually(lambda: emulator.get_object(SERVICES, FTJ_NAMESPACE, "gang"), 30, "the gang's Service")
    job = copy.deepcopy(emulator.get_object(JOBS, FTJ_NAMESPACE, "single-0"))
    await emulator.api_patch(FTJ, FTJ_NAMESPACE, "single", {"spec": {"suspend": True}})
    await eventually(lambda: emulator.get_object(JOBS, FTJ_NAMESPACE, "single-0") is None or None, 30,
                     "the suspended attempt's Job deleted")
    await emulator.api_delete(FTJ, FTJ_NAMESPACE, "gang", propagation="Background")
    await asyncio.sleep(2)  # a resync or two after the deletion
    return job


def rules_of(obj: dict[str, Any]) -> set[Rule]:
    """A Role's or ClusterRole's rules, one (group, resource, verb) each."""
    return {(group, resource, verb) for rule in obj["rules"] for group in rule["apiGroups"]
            for resource in rule["resources"] for verb in rule["verbs"]}


def allowed(call: ApiCall, cluster_rules: set[Rule], namespace_rules: dict[str, set[Rule]]) -> bool:
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


def operator_calls(emulator: ChartEmulator) -> list[ApiCall]:
    """Requests made by the operator: not Helm's (Go's client), not the test's own in-process calls."""
    return [call for call in emulator.calls if "Go-http-client" not in call.user_agent
            and "helm" not in call.user_agent.lower()]


@dataclass
class Run:
    """What one install-and-run left: the emulator, the operator's requests, its first attempt Job."""

    emulator: ChartEmulator
    calls: list[ApiCall]
    job: dict[str, Any]


async def install_and_run(tmp_path: Path, values: dict[str, Any]) -> Run:
    """Install the chart, start the operator as the Deployment says, run the `helm test` pod, exercise it."""
    async with emulated_cluster(tmp_path) as (emulator, kubeconfig):
        release = await run_helm("install", str(CHART), "--kubeconfig", str(kubeconfig), "--release", RELEASE,
                                 "--namespace", RELEASE_NAMESPACE, "--values", json.dumps(values))
        deployment = emulator.get_object(DEPLOYMENTS, RELEASE_NAMESPACE, OPERATOR_NAME)
        env = container_env(deployment)
        async with operator_process(env, kubeconfig, tmp_path / "operator.log") as operator:
            # helm-sdkpy's `helm test` needs the OpenAPI documents the emulator does not serve, so the
            # hook pod is created here as Helm would create it, and its script runs against the operator.
            (hook,) = [yaml.safe_load(hook["manifest"]) for hook in release["hooks"]]
            pod = await emulator.api_create(PODS, RELEASE_NAMESPACE, hook)
            service = f"http://{RELEASE}-kubetune-metrics.{RELEASE_NAMESPACE}:{env['KUBETUNE_METRICS_PORT']}"
            code, output = await run_test_pod(emulator, pod, {service: f"http://127.0.0.1:{operator.metrics_port}"})
            assert code == 0, f"the helm test pod failed: {output}"
            job = await exercise_operator(emulator)
            assert operator.alive(), operator.log_tail()
        return Run(emulator, operator_calls(emulator), job)


_RUNS: dict[str, Run] = {}


async def run_mode(tmp_path: Path, mode: str) -> Run:
    """One install-and-run per mode, shared by the tests below (each takes several seconds)."""
    if mode not in _RUNS:
        _RUNS[mode] = await install_and_run(tmp_path, MODES[mode])
    return _RUNS[mode]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("mode", MODES)
async def test_operator_runs_on_the_install_and_rbac_covers_exactly_its_calls(tmp_path: Path, mode: str) -> None:
    run = await run_mode(tmp_path, mode)
    calls = run.calls
    objects = run.emulator.created()
    cluster_rules = set().union(*(rules_of(o) for o in objects if o["kind"] == "ClusterRole"
                                  and o["metadata"]["name"].endswith("-operator")))  # not the users' roles
    namespace_rules = {o["metadata"]["namespace"]: rules_of(o) for o in objects if o["kind"] == "Role"}
    assert calls, "no request of the operator was recorded"

    denied = sorted({(c.verb, c.group, c.resource, c.namespace) for c in calls
                     if not allowed(c, cluster_rules, namespace_rules)})
    assert denied == [], f"{mode}: the chart's RBAC refuses requests the operator made"

    granted = cluster_rules | set().union(*namespace_rules.values())
    used = {(c.group, c.resource, c.verb) for c in calls}
    assert granted - used - declared_rules() == set(), f"{mode}: granted, never used nor declared"
    assert declared_rules(conditional=False) - granted == set(), f"{mode}: declared by the operator, not granted"


@pytest.mark.timeout(120)
async def test_trainer_pods_get_what_the_chart_and_the_image_agree_on(tmp_path: Path) -> None:
    from tests.chart.test_images import TRAINER, final_stage

    run = await run_mode(tmp_path, "all-namespaces")
    template = run.job["spec"]["template"]
    pod, (container,) = template["spec"], template["spec"]["containers"]
    # Watching every namespace, the chart's trainer account cannot exist everywhere: the namespace's default.
    assert "serviceAccountName" not in pod and pod["automountServiceAccountToken"] is False
    namespaced = (await run_mode(tmp_path, "namespaced")).job["spec"]["template"]["spec"]
    assert namespaced["serviceAccountName"] == f"{RELEASE}-kubetune-trainer"  # created in the watched namespace
    assert container["image"] == "ghcr.io/kubetune/trainer:0.1.0"  # trainer.image from values
    (user,) = [c.value[0] for c in final_stage(TRAINER) if c.cmd == "USER"]
    assert f"{pod['securityContext']['runAsUser']}:{pod['securityContext']['runAsGroup']}" == user
    # What the PodMonitor scrapes and the NetworkPolicy opens: the container's "metrics" port, these labels.
    assert "metrics" in {port["name"] for port in container["ports"]}
    (policy,) = [o for o in run.emulator.created() if o["kind"] == "NetworkPolicy"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= template["metadata"]["labels"].items()
    assert policy["spec"]["ingress"][0]["ports"][0]["port"] == "metrics"
