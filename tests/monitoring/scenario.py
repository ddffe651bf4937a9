"""One known scenario, scraped by a real Prometheus: a short real training run and the operator's metrics.

The trainer is the pod's real process (`kubetune-trainer`, the launcher) training a tiny
Llama on the CPU, serving its metrics on loopback. The operator side is the operator's
metrics module (`OperatorMetrics`) served over HTTP, fed with the statuses the reconcile
writes for two FineTuneJobs in namespace `ml`: `quiz` (the training run: Pending, Running
with progress polled from the trainer by the operator's own parser, Succeeded) and `bad`
(two failed attempts retried, then Failed with BackoffLimitExceeded). Each status is held
for two scrapes, so Prometheus sees every step. At the end the operator stops serving, so
the operator-down expression can be checked too.
"""

from __future__ import annotations

import datetime as dt
import re
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubetune_operator.metrics import OperatorMetrics
from kubetune_operator.progress import parse_metrics
from kubetune_api.contract import Env
from kubetune_api.recipe import FineTuneJobStatus, Progress
from prometheus_client import start_http_server

from tests.monitoring.prometheus import SCRAPE_INTERVAL_SECONDS, PrometheusServer
from tests.trainer.sft_runs import (
    free_port,
    sft_spec,
    start_launcher,
    termination_message,
    wait_for,
    write_recipe,
)

NAMESPACE = "ml"
JOB = "quiz"  # the FineTuneJob of the training run
FAILING_JOB = "bad"
OPERATOR_SCRAPE_JOB = "kt-kubetune-metrics"  # the chart's metrics Service: what its ServiceMonitor names the job
OPERATOR_NAMESPACE = "kubetune-system"
STEPS = 300  # about 10 s of training on the CPU: tens of scrapes
SAVE_STEPS = 100
EVAL_STEPS = 100
QUIZ_TIME_TO_RUNNING = 0.33  # seconds from creation to Running, as the two timestamps say
BAD_TIME_TO_RUNNING = 2.0
TRANSITIONS = 3 + 6  # quiz: Pending, Running, Succeeded; bad: Pending, Running, Pending, Running, Pending, Failed
BAD_RESTARTS = 2
HOLD_SECONDS = 2 * SCRAPE_INTERVAL_SECONDS + 0.5  # each operator state is scraped at least once

# The condition that decides each (phase, reason), as reconcile writes it.
_DECIDING = {"Pending": ("Running", "False"), "Running": ("Running", "True"), "Failed": ("Failed", "True"),
             "Succeeded": ("Succeeded", "True")}


def status(phase: str, reason: str, **fields: Any) -> FineTuneJobStatus:
    """A FineTuneJob status in `phase`, decided by a condition with `reason` (camelCase fields)."""
    kind, value = ("Accepted", "True") if reason == "Created" else _DECIDING[phase]
    condition = {"type": kind, "status": value, "reason": reason, "message": reason,
                 "lastTransitionTime": "2026-01-01T00:00:00Z"}
    return FineTuneJobStatus.model_validate({"phase": phase, "conditions": [condition], **fields})


def iso(moment: dt.datetime) -> str:
    """A Kubernetes timestamp with microseconds (the operator's parser reads them)."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class Outcome:
    """When things happened (unix seconds) and what the run reported."""

    begin: float = 0.0
    first_step: float = 0.0  # first scrape showing step >= 1
    trainer_exited: float = 0.0
    end: float = 0.0  # everything scraped, the operator still up
    operator_down: float = 0.0  # Prometheus has scraped the operator as down
    termination: dict[str, Any] = field(default_factory=dict)
    log: str = ""


class OperatorSide:
    """The operator's metrics for the two FineTuneJobs, served on loopback."""

    def __init__(self) -> None:
        self.metrics = OperatorMetrics(namespaces=[NAMESPACE])
        self.port = free_port()
        self.server, _ = start_http_server(self.port, addr="127.0.0.1", registry=self.metrics.registry)
        self.statuses: dict[str, FineTuneJobStatus] = {}
        self.created = dt.datetime.now(dt.UTC)

    def body(self, name: str) -> dict[str, Any]:
        """The FineTuneJob as the operator reads it (only what the metrics use)."""
        return {"metadata": {"namespace": NAMESPACE, "name": name, "creationTimestamp": iso(self.created)}}

    def move(self, name: str, after: FineTuneJobStatus, hold: bool = True) -> None:
        """Record one reconcile's status change, as the controller does, and hold it for a scrape."""
        before = self.statuses.get(name, FineTuneJobStatus())
        self.metrics.record(self.body(name), before, after)
        self.metrics["kubetune_operator_reconcile_seconds"].observe(0.004)
        self.statuses[name] = after
        if hold:
            time.sleep(HOLD_SECONDS)

    def started(self, seconds: float) -> str:
        """startTime `seconds` after creation."""
        return iso(self.created + dt.timedelta(seconds=seconds))

    def stop(self) -> None:
        """Stop serving, like an operator pod that went away."""
        self.server.shutdown()
        self.server.server_close()


def _failing_job(operator: OperatorSide) -> None:
    start = operator.started(BAD_TIME_TO_RUNNING)
    operator.move(FAILING_JOB, status("Running", "Started", startTime=start))
    operator.move(FAILING_JOB, status("Pending", "AttemptFailed", startTime=start, restarts=1))
    operator.move(FAILING_JOB, status("Running", "Resumed", startTime=start, restarts=1))
    operator.metrics["kubetune_operator_reconcile_errors"].inc()  # one reconcile raised on the way
    operator.move(FAILING_JOB, status("Pending", "AttemptFailed", startTime=start, restarts=2))
    operator.move(FAILING_JOB, status("Failed", "BackoffLimitExceeded", startTime=start, restarts=BAD_RESTARTS,
                                      completionTime=iso(dt.datetime.now(dt.UTC))))


def _first_step_served(url: str) -> bool:
    try:
        text = urllib.request.urlopen(url, timeout=1).read().decode()
    except OSError:
        return False
    return re.search(r"^kubetune_trainer_step\{[^}]*\} [1-9]", text, re.MULTILINE) is not None


def _poll_progress(operator: OperatorSide, metrics_url: str, start: str) -> None:
    """The operator's progress poll: rank 0's text through the operator's parser into status.progress."""
    try:
        text = urllib.request.urlopen(metrics_url, timeout=2).read().decode()
    except OSError:
        return
    progress, checkpoint = parse_metrics(text, dt.datetime.now(dt.UTC))
    running = status("Running", "Started", startTime=start)
    running.progress, running.checkpoint = progress, checkpoint
    operator.move(JOB, running, hold=False)


def scrape_scenario(prometheus: PrometheusServer, operator: OperatorSide, trainer_port: int, folder: Path,
                    model: Path, data: Path) -> Outcome:
    """Drive the scenario while `prometheus` scrapes; returns its timeline."""
    outcome = Outcome(begin=time.time())
    prometheus.wait_for(f'up{{job="{OPERATOR_SCRAPE_JOB}"}} == 1')
    time.sleep(HOLD_SECONDS)  # the zeros of the known namespace are scraped before anything happens
    operator.move(JOB, status("Pending", "Created"))
    operator.move(FAILING_JOB, status("Pending", "Created"))

    # The export after training (a merge and a few generated answers) keeps the process, and so its last
    # step and checkpoint, up for several scrapes: as on a cluster, where exporting takes minutes.
    spec = sft_spec(model, data, metricsPort=trainer_port, training={
        "maxSteps": STEPS, "saveSteps": SAVE_STEPS, "evalSteps": EVAL_STEPS, "loggingSteps": 1},
        evaluation={"prompts": [f"Reverse these letters: {' '.join(row)}." for row in ("abcd", "efgh", "ijab", "cdef")] * 4,
                    "maxNewTokens": 64, "temperature": 0},
        output={"mergeAdapter": True})
    recipe = write_recipe(folder / "job", spec, name=JOB)
    workspace = folder / "ws"
    process = start_launcher(recipe, workspace, folder / "trainer.log", **{Env.NAMESPACE: NAMESPACE})
    try:
        _failing_job(operator)
        metrics_url = f"http://127.0.0.1:{trainer_port}/metrics"
        wait_for(lambda: _first_step_served(metrics_url), process, timeout=600, interval=0.05)
        outcome.first_step = time.time()
        start = operator.started(QUIZ_TIME_TO_RUNNING)
        operator.move(JOB, status("Running", "Started", startTime=start), hold=False)
        while process.poll() is None:
            _poll_progress(operator, metrics_url, start)
            time.sleep(HOLD_SECONDS)
        outcome.trainer_exited = time.time()
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
    outcome.log = (folder / "trainer.log").read_text(encoding="utf-8", errors="replace")
    assert process.returncode == 0, outcome.log[-3000:]
    outcome.termination = termination_message(workspace)
    final = status("Succeeded", "Completed", startTime=operator.started(QUIZ_TIME_TO_RUNNING),
                   completionTime=iso(dt.datetime.now(dt.UTC)))
    # The reconcile takes the final numbers from the trainer's termination message.
    final.progress = Progress(step=outcome.termination["step"], total_steps=outcome.termination["totalSteps"],
                              loss=outcome.termination["loss"])
    operator.move(JOB, final)
    time.sleep(HOLD_SECONDS)
    outcome.end = time.time()
    operator.stop()
    prometheus.wait_for(f'up{{job="{OPERATOR_SCRAPE_JOB}"}} == 0')
    outcome.operator_down = time.time()
    return outcome

