"""Operator scale benchmark: N FineTuneJobs against the emulated API server, pods faked, not run.

    .venv/bin/python bench/operator_scale.py                  # 500 FineTuneJobs, 50 created per second
    .venv/bin/python bench/operator_scale.py --jobs 100 --rate 0   # all at once

What it measures, with the real operator (`kubetune-operator`, its own process)
and the test Job controller and kubelet of `tests/harness` (every pod "runs"
for `--pod-seconds`, then exits 0 with a launcher-like termination message):

- create → attempt Job latency: from the FineTuneJob's create to its attempt
  Job `<name>-0` being stored by the API server (p50, p95, p99, max);
- time until every FineTuneJob is Succeeded;
- API requests per FineTuneJob lifecycle, by verb (all HTTP requests the
  operator made, watches included, divided by N);
- the operator's peak RSS (VmHWM) and CPU seconds (user + system).

The emulator's admission (CRD schema + CEL, strict builtin schemas) is off
here: cel-python spends ~25 ms per FineTuneJob write, which would measure the
emulator instead of the operator; the scenarios keep it on.

Targets (issue 5): p99 ≤ 1 s, RSS ≤ 150 MiB. Not a timed test: the numbers
depend on the machine, and the emulator shares its CPU with the operator.
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

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.harness.client import FTJ, EmulatedCluster, kubeconfig_env
from tests.harness.emulator import JOBS
from tests.harness.kubelet import PodPlan
from tests.harness.operator_runner import ProcessOperator

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
    """Records when each attempt-0 Job is stored (an emulator listener, in its loop)."""

    def __init__(self) -> None:
        self.at: dict[str, float] = {}

    def __call__(self, res: Any, event: dict[str, Any]) -> None:
        if res == JOBS and event["type"] == "ADDED":
            name = event["object"]["metadata"]["name"]
            if name.endswith("-0"):
                self.at.setdefault(name[:-2], time.monotonic())


class ServiceTimes:
    """Seconds the emulator spends serving each non-watch request (to tell its share of the latency)."""

    def __init__(self) -> None:
        self.seconds: list[float] = []

    def install(self) -> None:
        """Wrap KubeEmulator._serve (class-level: the emulator is an attrs slots class)."""
        from tests.harness.emulator import KubeEmulator

        serve = KubeEmulator._serve
        times = self.seconds

        async def timed(emulator: Any, verb: str, request: Any) -> Any:
            started = time.perf_counter()
            try:
                return await serve(emulator, verb, request)
            finally:
                times.append(time.perf_counter() - started)

        KubeEmulator._serve = timed  # type: ignore[method-assign]


def count_succeeded(cluster: EmulatedCluster) -> int:
    """FineTuneJobs in phase Succeeded."""
    async def count() -> int:
        return sum(1 for o in cluster.emulator.list_objects(FTJ, NAMESPACE)
                   if (o.get("status") or {}).get("phase") == "Succeeded")
    return cluster.server.call(count())


def run(jobs: int, rate: float, pod_seconds: float, resync: float, timeout: float) -> dict[str, Any]:
    """Run the benchmark; returns the measurements."""
    service = ServiceTimes()
    service.install()
    with tempfile.TemporaryDirectory() as tmp, EmulatedCluster(Path(tmp), NAMESPACE, keep_history=False, admission=False) as cluster:
        cluster.add_pod_rule(PodPlan(mode="exit", after=pod_seconds, message=TERMINATION_MESSAGE))
        creations = JobCreations()
        cluster.server.call_soon(cluster.emulator.add_listener, creations)
        env = {**kubeconfig_env(cluster), "KUBETUNE_WATCH_NAMESPACES": NAMESPACE, "KUBETUNE_METRICS_PORT": "0",
               "KUBETUNE_HEALTH_PORT": "0", "KUBETUNE_RESYNC_SECONDS": str(resync)}
        start_calls = len(cluster.emulator.calls)

        def watching() -> bool:
            return {"finetunejobs", "jobs", "pods"} <= {c.resource for c in cluster.emulator.calls[start_calls:]
                                                         if c.verb == "watch"}

        operator = ProcessOperator([str(Path(sys.executable).parent / "kubetune-operator")], env,
                                   Path(tmp) / "operator.log", make_probe=lambda: watching)
        cluster.run_operator(operator)
        pid = operator.process.pid
        idle_rss = proc_status(pid)["VmRSS"] / 1024
        calls_before, cpu_before = len(cluster.emulator.calls), cpu_seconds(pid)
        created: dict[str, float] = {}
        rss_samples: list[float] = []
        sampling = threading.Event()

        def sample() -> None:
            while not sampling.wait(0.5):
                rss_samples.append(proc_status(pid)["VmRSS"] / 1024)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        started = time.monotonic()
        for number in range(jobs):
            name = f"ftj-{number:04d}"
            created[name] = time.monotonic()
            cluster.apply(finetunejob(name))
            if rate > 0:
                time.sleep(max(0.0, started + (number + 1) / rate - time.monotonic()))
        created_in = time.monotonic() - started
        deadline = time.monotonic() + timeout
        while (succeeded := count_succeeded(cluster)) < jobs and time.monotonic() < deadline:
            time.sleep(0.2)
        all_done = time.monotonic() - started
        sampling.set()
        cpu = cpu_seconds(pid) - cpu_before
        peak = proc_status(pid)["VmHWM"] / 1024
        calls = cluster.emulator.calls[calls_before:]
        latencies = [creations.at[name] - t for name, t in created.items() if name in creations.at]
        log_tail = operator.log_tail(1500)
    return {"jobs": jobs, "rate": rate, "created_in": created_in, "all_succeeded_in": all_done, "succeeded": succeeded,
            "latencies": latencies, "calls": Counter(c.verb for c in calls), "call_count": len(calls),
            "calls_by_resource": Counter(f"{c.verb} {c.resource}" for c in calls),
            "cpu_seconds": cpu, "peak_rss_mib": peak, "idle_rss_mib": idle_rss,
            "mean_rss_mib": statistics.mean(rss_samples) if rss_samples else peak, "log_tail": log_tail,
            "service_seconds": service.seconds, "load": os.getloadavg()[0]}


def table(result: dict[str, Any]) -> str:
    """The measurements as a Markdown table."""
    lat, jobs, service = result["latencies"], result["jobs"], result["service_seconds"] or [0.0]
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
        ("emulator service time per request p50 / p99",
         f"{statistics.median(service) * 1000:.1f} / {percentile(service, 99) * 1000:.1f} ms"),
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
