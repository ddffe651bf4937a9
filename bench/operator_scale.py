"""Operator scale benchmark: N FineTuneJobs on the real control plane, pods faked, not run.

    .venv/bin/python bench/operator_scale.py                  # 500 FineTuneJobs, 50 created per second
    .venv/bin/python bench/operator_scale.py --jobs 100 --rate 0   # all at once
    .venv/bin/python bench/operator_scale.py --floor          # no operator: the bench creates the same objects

What it measures, with the real operator (`kubetune-operator`, its own process,
with a ServiceAccount token so the API server's audit log names its requests),
the real API server, Job controller and scheduler (tests/cluster), and the
test kubelet faking every pod (Running for `--pod-seconds`, then exit 0 with a
launcher-like termination message):

- create → attempt Job latency: from the FineTuneJob's create to its attempt
  Job `<name>-0` arriving on a watch (p50, p95, p99, max);
- time until every FineTuneJob is Succeeded;
- API requests per FineTuneJob lifecycle, by verb (from the audit log);
- the operator's peak RSS (VmHWM) and CPU seconds (user + system);
- where create → Job goes, from the API server's audit log (its own timestamps): until the operator's
  first request about the FineTuneJob (watch delivery and the operator's queue), from there until the
  Job's create arrives (the turn: its decision and the status write, ConfigMap and PVC before the Job),
  the Job create itself in the API server, and the API server's latency of every operator request.

`--floor` runs no operator: the bench itself creates each FineTuneJob's ConfigMap, PVC and Job (the same
manifests the operator renders, 8 clients in parallel) at the same rate, on the same control plane and
fake pods: the API server's own create → Job latency on this machine, what the operator cannot beat.

Targets (issue 14): p99 ≤ 1 s, RSS ≤ 150 MiB. Not a timed test: the numbers
depend on the machine, and the control plane shares its CPUs with the operator.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime as dt
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.cluster.controlplane import ControlPlane, free_port
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
        self.at: dict[str, float] = {}  # FineTuneJob name -> time.time() its Job arrived
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while not self.stop.is_set():
            try:
                for event in self.rest.watch(path_of("batch/v1", "jobs", NAMESPACE), timeout_seconds=30):
                    name = event["object"]["metadata"]["name"]
                    if event["type"] == "ADDED" and name.endswith("-0"):
                        self.at.setdefault(name[:-2], time.time())
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


def reconcile_count(port: int) -> float:
    """How many reconciles the operator ran (its kubetune_operator_reconcile_seconds histogram's count)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return sum(float(line.split()[-1]) for line in text.splitlines()
               if line.startswith("kubetune_operator_reconcile_seconds_count"))


def audit_time(value: str) -> float:
    """An audit timestamp (RFC 3339 with microseconds) as seconds since the epoch."""
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def breakdown(calls: list[dict[str, Any]], created: dict[str, float]) -> dict[str, list[float]]:
    """Per FineTuneJob, where create → attempt Job went, from the operator's audited requests.

    first: create → the operator's first request naming it or one of its children (the watch delivered
    it, the work queue handed it out); turn: that request → the Job's create arriving; job_post: the
    Job's create in the API server; api: the API server's latency of every operator request.
    """
    first: dict[str, float] = {}
    job_post: dict[str, tuple[float, float]] = {}
    api: list[float] = []
    for call in calls:
        received, done = audit_time(call["requestReceivedTimestamp"]), audit_time(call["stageTimestamp"])
        api.append(done - received)
        name = (call.get("objectRef") or {}).get("name") or ""
        owner = next((n for n in (name, name.rsplit("-", 1)[0]) if n in created), None)
        if owner is None:
            continue
        first[owner] = min(first.get(owner, received), received)
        if call["verb"] == "create" and (call.get("objectRef") or {}).get("resource") == "jobs":
            job_post.setdefault(owner, (received, done))
    return {
        "first": [first[n] - created[n] for n in created if n in first],
        "turn": [job_post[n][0] - first[n] for n in created if n in job_post and n in first],
        "job_post": [done - received for received, done in job_post.values()],
        "api": api,
    }


def paced(create: Any, names_: list[str], rate: float) -> dict[str, float]:
    """`create(name)` for every name, started at `rate` per second (0: at once) by 8 clients in parallel
    (one client cannot keep 50/s once a create takes longer than 20 ms); the time.time() each started."""
    started: dict[str, float] = {}

    def one(name: str) -> None:
        started[name] = time.time()
        create(name)

    begin = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        futures = []
        for number, name in enumerate(names_):
            futures.append(pool.submit(one, name))
            if rate > 0:
                time.sleep(max(0.0, begin + (number + 1) / rate - time.monotonic()))
        for future in futures:
            future.result()
    return started


def floor_creates(rest: RestClient, names_: list[str], rate: float) -> dict[str, float]:
    """The ConfigMap, PVC and Job of each FineTuneJob as the operator renders them, created by the bench
    (`paced`); the time.time() each started."""
    from kubetune_operator import render
    from kubetune_operator.settings import Settings
    from kubetune_api.recipe import parse_finetunejob

    settings = Settings(trainer_image="kubetune/trainer:bench")

    def create(name: str) -> None:
        manifest = {**finetunejob(name), "metadata": {"name": name, "namespace": NAMESPACE}}
        for child in render.render_children(parse_finetunejob(manifest), 0, NAMESPACE, settings):
            kind = child["kind"]
            plural = {"ConfigMap": "configmaps", "PersistentVolumeClaim": "persistentvolumeclaims",
                      "Service": "services", "Job": "jobs"}[kind]
            rest.create(path_of("batch/v1" if kind == "Job" else "v1", plural, NAMESPACE), child)

    return paced(create, names_, rate)


def run(jobs: int, rate: float, pod_seconds: float, resync: float, timeout: float, floor: bool = False,
        operator_path: str | None = None) -> dict[str, Any]:
    """Run the benchmark (`floor`: the bench creates the children, no operator); returns the measurements."""
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
        if floor:
            result = run_floor(rest, creations, jobs, rate)
            kubelet.stop()
            return result
        metrics_port = free_port()
        env = {**os.environ, "KUBECONFIG": str(kubeconfig), "KUBETUNE_WATCH_NAMESPACES": NAMESPACE,
               "KUBETUNE_METRICS_PORT": str(metrics_port), "KUBETUNE_HEALTH_PORT": "0", "KUBETUNE_RESYNC_SECONDS": str(resync)}
        if operator_path:  # another checkout's operator package first (a before/after comparison)
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [operator_path, env.get("PYTHONPATH")]))
        operator = ProcessOperator([str(Path(sys.executable).parent / "kubetune-operator")], env,
                                   Path(tmp) / "operator.log")
        operator.start()
        time.sleep(3)  # its watches open
        user = "system:serviceaccount:default:bench-operator"
        calls_before = len(plane.audit_events(user))
        pid = operator.process.pid
        idle_rss = proc_status(pid)["VmRSS"] / 1024
        cpu_before = cpu_seconds(pid)
        rss_samples: list[float] = []
        sampling = threading.Event()

        def sample() -> None:
            while not sampling.wait(0.5):
                rss_samples.append(proc_status(pid)["VmRSS"] / 1024)

        threading.Thread(target=sample, daemon=True).start()
        started = time.monotonic()
        ftjs = path_of("kubetune.io/v1alpha1", "finetunejobs", NAMESPACE)
        created = paced(lambda name: rest.create(ftjs, finetunejob(name)), [f"ftj-{n:04d}" for n in range(jobs)], rate)
        created_in = time.monotonic() - started
        deadline = time.monotonic() + timeout
        while (succeeded := count_succeeded(rest)) < jobs and time.monotonic() < deadline:
            time.sleep(1.0)
        all_done = time.monotonic() - started
        sampling.set()
        creations.stop.set()
        cpu = cpu_seconds(pid) - cpu_before
        turns = reconcile_count(metrics_port)
        peak = proc_status(pid)["VmHWM"] / 1024
        calls = plane.audit_events(user)[calls_before:]
        latencies = [creations.at[name] - t for name, t in created.items() if name in creations.at]
        log_tail = operator.log_tail(1500)
        operator.stop()
        kubelet.stop()

    def resource(event: dict[str, Any]) -> str:
        ref = event.get("objectRef") or {}
        return ref.get("resource", "") + (f"/{ref['subresource']}" if ref.get("subresource") else "")

    return {"jobs": jobs, "rate": rate, "created_in": created_in, "breakdown": breakdown(calls, created),
            "conflicts": sum(1 for c in calls if (c.get("responseStatus") or {}).get("code") == 409),
            "turns": turns, "all_succeeded_in": all_done, "succeeded": succeeded,
            "latencies": latencies, "calls": Counter(c["verb"] for c in calls), "call_count": len(calls),
            "calls_by_resource": Counter(f"{c['verb']} {resource(c)}" for c in calls),
            "cpu_seconds": cpu, "peak_rss_mib": peak, "idle_rss_mib": idle_rss,
            "mean_rss_mib": statistics.mean(rss_samples) if rss_samples else peak, "log_tail": log_tail,
            "load": os.getloadavg()[0]}


def run_floor(rest: RestClient, creations: JobCreations, jobs: int, rate: float) -> dict[str, Any]:
    """No operator: the bench creates every FineTuneJob's children itself; create → Job on the watch."""
    started = time.monotonic()
    begun = floor_creates(rest, [f"ftj-{n:04d}" for n in range(jobs)], rate)
    created_in = time.monotonic() - started
    deadline = time.monotonic() + 60
    while len(creations.at) < jobs and time.monotonic() < deadline:
        time.sleep(0.5)
    creations.stop.set()
    return {"jobs": jobs, "rate": rate, "created_in": created_in, "floor": True, "load": os.getloadavg()[0],
            "latencies": [creations.at[n] - t for n, t in begun.items() if n in creations.at]}


def ms(values: list[float], q: float) -> str:
    """The q-th percentile of seconds, in ms ('-' when there are none)."""
    return f"{percentile(values, q) * 1000:.0f}" if values else "-"


def table(result: dict[str, Any]) -> str:
    """The measurements as a Markdown table."""
    lat, jobs = result["latencies"], result["jobs"]
    if result.get("floor"):
        return _rows([
            ("no operator: the bench creates ConfigMap, PVC, Job", f"{jobs} ({result['created_in']:.1f} s, "
                                                                   f"rate {result['rate'] or 'burst'}/s)"),
            ("attempt Jobs on the watch", f"{len(lat)} of {jobs}"),
            ("first create → Job on the watch p50 / p99 / max",
             f"{ms(lat, 50)} / {ms(lat, 99)} / {max(lat) * 1000:.0f} ms"),
            ("machine load average (1 min, at the end)", f"{result['load']:.1f} on {os.cpu_count()} CPUs"),
        ])
    parts = result["breakdown"]
    reconciles = result["turns"]
    per_job = {verb: count / jobs for verb, count in sorted(result["calls"].items())}
    rows = [
        ("FineTuneJobs (created in)", f"{jobs} ({result['created_in']:.1f} s, rate {result['rate'] or 'burst'}/s)"),
        ("attempt Jobs created", f"{len(lat)} of {jobs}"),
        ("create → attempt Job p50", f"{statistics.median(lat) * 1000:.0f} ms"),
        ("create → attempt Job p95", f"{percentile(lat, 95) * 1000:.0f} ms"),
        ("create → attempt Job p99", f"{percentile(lat, 99) * 1000:.0f} ms (target ≤ {TARGET_P99_SECONDS * 1000:.0f} ms)"),
        ("create → attempt Job max", f"{max(lat) * 1000:.0f} ms"),
        ("  create → operator's first request p50 / p99", f"{ms(parts['first'], 50)} / {ms(parts['first'], 99)} ms"),
        ("  first request → Job create p50 / p99", f"{ms(parts['turn'], 50)} / {ms(parts['turn'], 99)} ms"),
        ("  Job create in the API server p50 / p99", f"{ms(parts['job_post'], 50)} / {ms(parts['job_post'], 99)} ms"),
        ("API server latency, all operator requests p50 / p99", f"{ms(parts['api'], 50)} / {ms(parts['api'], 99)} ms"),
        ("Succeeded (after)", f"{result['succeeded']} of {jobs} ({result['all_succeeded_in']:.1f} s)"),
        ("API requests per lifecycle", f"{result['call_count'] / jobs:.1f} ("
         + ", ".join(f"{verb} {count:.1f}" for verb, count in per_job.items()) + ")"),
        ("requests answered 409 Conflict (stale copy, name taken)", f"{result['conflicts']}"),
        ("operator RSS idle / mean / peak", (f"{result['idle_rss_mib']:.0f} / {result['mean_rss_mib']:.0f} / "
                                             f"{result['peak_rss_mib']:.0f} MiB (target ≤ {TARGET_RSS_MIB:.0f} MiB)")),
        ("operator CPU", f"{result['cpu_seconds']:.1f} s ({result['cpu_seconds'] / jobs * 1000:.0f} ms per lifecycle)"),
        ("reconciles per lifecycle / per s",
         f"{reconciles / jobs:.1f} / {reconciles / result['all_succeeded_in']:.1f}"),
        ("machine load average (1 min, at the end)", f"{result['load']:.1f} on {os.cpu_count()} CPUs"),
    ]
    return _rows(rows)


def _rows(rows: list[tuple[str, str]]) -> str:
    """Rows of (measure, value) as a Markdown table."""
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
    parser.add_argument("--operator-path", help="import kubetune_operator from this folder (e.g. an older checkout's "
                        "operator/), to compare before and after")
    parser.add_argument("--floor", action="store_true",
                        help="no operator: the bench creates each job's ConfigMap, PVC and Job (the API server's floor)")
    args = parser.parse_args(argv)
    result = run(args.jobs, args.rate, args.pod_seconds, args.resync, args.timeout, args.floor, args.operator_path)
    print(table(result))
    if args.floor:
        return 0
    if args.verbose:
        for key, count in sorted(result["calls_by_resource"].items()):
            print(f"  {key}: {count} ({count / args.jobs:.2f} per lifecycle)")
    missed = percentile(result["latencies"], 99) > TARGET_P99_SECONDS or result["peak_rss_mib"] > TARGET_RSS_MIB
    return 1 if missed or result["succeeded"] < args.jobs else 0


if __name__ == "__main__":
    sys.exit(main())
