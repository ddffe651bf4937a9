"""Operator scale benchmark: N FineTuneJobs on the real control plane, pods faked, not run.

    .venv/bin/python bench/operator_scale.py                  # 500 FineTuneJobs, 50 created per second
    .venv/bin/python bench/operator_scale.py --jobs 100 --rate 0   # all at once

What it measures, with the real operator (`kubetune-operator`, its own process,
with a ServiceAccount token so the API server's audit log names its requests),
the real API server, Job controller and scheduler (tests/cluster), and the
test kubelet faking every pod (Running for `--pod-seconds`, then exit 0 with a
launcher-like termination message):

- create → attempt Job latency: from the FineTuneJob's create to its attempt
  Job `<name>-0` arriving on a watch (p50, p95, p99, max);
- time until every FineTuneJob is Succeeded;
- API requests per FineTuneJob lifecycle, by verb (from the audit log);
- the operator's peak RSS (VmHWM) and CPU seconds (user + system).

Targets (issue 14): p99 ≤ 1 s, RSS ≤ 150 MiB. Not a timed test: the numbers
depend on the machine, and the control plane shares its CPUs with the operator.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.cluster.controlplane import ControlPlane
from tests.cluster.fixtures import kubectl, service_account_token
from tests.cluster.kubelet import GPU_RESOURCE, Kubelet, NodeSpec, PodPlan
from tests.cluster.operator_runner import ProcessOperator
from tests.cluster.rest import RestClient, path_of

NAMESPACE = "bench"
TARGET_P99_SECONDS = 1.0
TARGET_RSS_MIB = 150.0
TERMINATION_MESSAGE = json.dumps({
    "exitCode": 0, "reason": "Completed", "message": "training completed", "step": 10, "totalSteps": 10,
    "loss": 1.0, "checkpoint": {"step": 10, "path": "/workspace/output/checkpoints/checkpoint-10"},
    "output": {"adapterPath": "/workspace/output/adapter"}})


def finetunejob(name: str) -> dict[str, Any]:
    """A minimal valid FineTuneJob (nothing reads its model or data: the pods are faked)."""
    return {"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": name},
            "spec": {"model": {"name": "org/tiny-model"}, "dataset": {"path": "/data/train.jsonl"},
                     "resources": {"gpusPerWorker": 1}}}


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (kB) of a process, from /proc."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0])
    return values


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


class JobCreations:
    """Records when each attempt-0 Job arrives on a watch of the namespace's Jobs (its own thread)."""

    def __init__(self, rest: RestClient) -> None:
        self.rest = rest
        self.at: dict[str, float] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while not self.stop.is_set():
            try:
                for event in self.rest.watch(path_of("batch/v1", "jobs", NAMESPACE), timeout_seconds=30):
                    name = event["object"]["metadata"]["name"]
                    if event["type"] == "ADDED" and name.endswith("-0"):
                        self.at.setdefault(name[:-2], time.monotonic())
            except Exception:  # noqa: BLE001 - a broken watch is reopened; ADDED events are replayed
                time.sleep(0.2)


def count_succeeded(rest: RestClient) -> int:
    """FineTuneJobs in phase Succeeded."""
    items = rest.list(path_of("kubetune.io/v1alpha1", "finetunejobs", NAMESPACE))
    return sum(1 for o in items if (o.get("status") or {}).get("phase") == "Succeeded")


def operator_identity(plane: ControlPlane, rest: RestClient, root: Path) -> Path:
    """A ServiceAccount bound to cluster-admin (the bench measures speed, not RBAC); its kubeconfig."""
    rest.create(path_of("v1", "serviceaccounts", "default"), {"metadata": {"name": "bench-operator"}})
    rest.create(path_of("rbac.authorization.k8s.io/v1", "clusterrolebindings"), {
        "metadata": {"name": "bench-operator"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
        "subjects": [{"kind": "ServiceAccount", "name": "bench-operator", "namespace": "default"}]})
    token = service_account_token(rest, "default", "bench-operator")
    return plane.write_kubeconfig(root / "operator.kubeconfig", token=token)


def run(jobs: int, rate: float, pod_seconds: float, resync: float, timeout: float) -> dict[str, Any]:
    """Run the benchmark; returns the measurements."""
    with tempfile.TemporaryDirectory() as tmp, ControlPlane(Path(tmp) / "plane") as plane:
        rest = RestClient(plane.server, plane.token, str(plane.ca_file))
        # One big node: the benchmark measures the operator, not the scheduler's bin packing.
        node = NodeSpec("bench-node", {}, {"cpu": "1000", "memory": "4Ti", "pods": "2000", GPU_RESOURCE: "2000"})
        kubelet = Kubelet(rest, Path(tmp) / "nodes", nodes=[node]).start()
        kubelet.add_rule(PodPlan(mode="exit", after=pod_seconds, message=TERMINATION_MESSAGE))
        kubectl(plane, "apply", "-f", str(Path(__file__).resolve().parents[1] / "crds" / "finetunejob.yaml"))
        kubectl(plane, "wait", "--for=condition=Established", "crd/finetunejobs.kubetune.io", "--timeout=60s")
        rest.create(path_of("v1", "namespaces"), {"metadata": {"name": NAMESPACE}})
        kubeconfig = operator_identity(plane, rest, Path(tmp))
        creations = JobCreations(rest)
        creations.thread.start()
        env = {**os.environ, "KUBECONFIG": str(kubeconfig), "KUBETUNE_WATCH_NAMESPACES": NAMESPACE,
               "KUBETUNE_METRICS_PORT": "0", "KUBETUNE_HEALTH_PORT": "0", "KUBETUNE_RESYNC_SECONDS": str(resync)}
        operator = ProcessOperator([str(Path(sys.executable).parent / "kubetune-operator")], env,
                                   Path(tmp) / "operator.log")
        operator.start()
        time.sleep(3)  # its watches open
        user = "system:serviceaccount:default:bench-operator"
        calls_before = len(plane.audit_events(user))
        pid = operator.process.pid
        idle_rss = proc_status(pid)["VmRSS"] / 1024
        cpu_before = cpu_seconds(pid)
        created: dict[str, float] = {}
        rss_samples: list[float] = []
        sampling = threading.Event()

        def sample() -> None:
            while not sampling.wait(0.5):
                rss_samples.append(proc_status(pid)["VmRSS"] / 1024)

        threading.Thread(target=sample, daemon=True).start()
        started = time.monotonic()
        ftjs = path_of("kubetune.io/v1alpha1", "finetunejobs", NAMESPACE)
        for number in range(jobs):
            name = f"ftj-{number:04d}"
            created[name] = time.monotonic()
            rest.create(ftjs, finetunejob(name))
            if rate > 0:
                time.sleep(max(0.0, started + (number + 1) / rate - time.monotonic()))
        created_in = time.monotonic() - started
        deadline = time.monotonic() + timeout
        while (succeeded := count_succeeded(rest)) < jobs and time.monotonic() < deadline:
            time.sleep(1.0)
        all_done = time.monotonic() - started
        sampling.set()
        creations.stop.set()
        cpu = cpu_seconds(pid) - cpu_before
        peak = proc_status(pid)["VmHWM"] / 1024
        calls = plane.audit_events(user)[calls_before:]
        latencies = [creations.at[name] - t for name, t in created.items() if name in creations.at]
        log_tail = operator.log_tail(1500)
        operator.stop()
        kubelet.stop()

    def resource(event: dict[str, Any]) -> str:
        ref = event.get("objectRef") or {}
        return ref.get("resource", "") + (f"/{ref['subresource']}" if ref.get("subresource") else "")

    return {"jobs": jobs, "rate": rate, "created_in": created_in, "all_succeeded_in": all_done, "succeeded": succeeded,
            "latencies": latencies, "calls": Counter(c["verb"] for c in calls), "call_count": len(calls),
            "calls_by_resource": Counter(f"{c['verb']} {resource(c)}" for c in calls),
            "cpu_seconds": cpu, "peak_rss_mib": peak, "idle_rss_mib": idle_rss,
            "mean_rss_mib": statistics.mean(rss_samples) if rss_samples else peak, "log_tail": log_tail,
            "load": os.getloadavg()[0]}


def table(result: dict[str, Any]) -> str:
    """The measurements as a Markdown table."""
    lat, jobs = result["latencies"], result["jobs"]
    reconciles = result["calls_by_resource"].get("get finetunejobs", 0)
    per_job = {verb: count / jobs for verb, count in sorted(result["calls"].items())}
    rows = [
        ("FineTuneJobs (created in)", f"{jobs} ({result['created_in']:.1f} s, rate {result['rate'] or 'burst'}/s)"),
        ("attempt Jobs created", f"{len(lat)} of {jobs}"),
        ("create → attempt Job p50", f"{statistics.median(lat) * 1000:.0f} ms"),
        ("create → attempt Job p95", f"{percentile(lat, 95) * 1000:.0f} ms"),
        ("create → attempt Job p99", f"{percentile(lat, 99) * 1000:.0f} ms (target ≤ {TARGET_P99_SECONDS * 1000:.0f} ms)"),
        ("create → attempt Job max", f"{max(lat) * 1000:.0f} ms"),
        ("Succeeded (after)", f"{result['succeeded']} of {jobs} ({result['all_succeeded_in']:.1f} s)"),
        ("API requests per lifecycle", f"{result['call_count'] / jobs:.1f} ("
         + ", ".join(f"{verb} {count:.1f}" for verb, count in per_job.items()) + ")"),
        ("operator RSS idle / mean / peak", (f"{result['idle_rss_mib']:.0f} / {result['mean_rss_mib']:.0f} / "
                                             f"{result['peak_rss_mib']:.0f} MiB (target ≤ {TARGET_RSS_MIB:.0f} MiB)")),
        ("operator CPU", f"{result['cpu_seconds']:.1f} s ({result['cpu_seconds'] / jobs * 1000:.0f} ms per lifecycle)"),
        ("reconciles (GET finetunejob) per lifecycle / per s",
         f"{reconciles / jobs:.1f} / {reconciles / result['all_succeeded_in']:.1f}"),
        ("machine load average (1 min, at the end)", f"{result['load']:.1f} on {os.cpu_count()} CPUs"),
    ]
    width = max(len(name) for name, _ in rows)
    lines = [f"| {'measure'.ljust(width)} | value |", f"| {'-' * width} | --- |"]
    lines += [f"| {name.ljust(width)} | {value} |" for name, value in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run, print the table; exit 1 if a target is missed."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=500, help="FineTuneJobs to create (default 500)")
    parser.add_argument("--rate", type=float, default=50.0, help="creates per second; 0 = as fast as possible")
    parser.add_argument("--pod-seconds", type=float, default=5.0, help="how long each faked pod runs")
    parser.add_argument("--resync", type=float, default=15.0, help="the operator's KUBETUNE_RESYNC_SECONDS")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds to wait for all to succeed")
    parser.add_argument("--verbose", action="store_true", help="also print requests by resource")
    args = parser.parse_args(argv)
    result = run(args.jobs, args.rate, args.pod_seconds, args.resync, args.timeout)
    print(table(result))
    if args.verbose:
        for key, count in sorted(result["calls_by_resource"].items()):
            print(f"  {key}: {count} ({count / args.jobs:.2f} per lifecycle)")
    missed = percentile(result["latencies"], 99) > TARGET_P99_SECONDS or result["peak_rss_mib"] > TARGET_RSS_MIB
    return 1 if missed or result["succeeded"] < args.jobs else 0


if __name__ == "__main__":
    sys.exit(main())
