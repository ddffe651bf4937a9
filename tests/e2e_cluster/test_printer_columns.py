"""`kubectl get ftj` as a user sees it, on the real API server with the chart's CRD: the statuses the
operator's reconcile writes (loading, training, finished) shown through the CRD's printer columns.

No operator runs here: each status is what `reconcile` decided for an observed situation, written
through the status subresource as the operator writes it, then read back with the built kubectl.
"""

from __future__ import annotations

import json
from typing import Any

from kubetune_operator.controller import merge_patch
from kubetune_operator.reconcile import Observed, reconcile
from kubetune_api.recipe import Progress

from tests.cluster.controlplane import ControlPlane
from tests.cluster.fixtures import Release, kubectl
from tests.operator.objects import NAME, NOW, attempt_job, finetunejob, pod


def columns(control_plane: ControlPlane, namespace: str) -> dict[str, str]:
    """The printer columns of the FineTuneJob, by header, cut at the header's offsets (cells may be empty)."""
    header, row = kubectl(control_plane, "get", "ftj", NAME, "-n", namespace).stdout.splitlines()[:2]
    names = header.split()
    starts = [header.index(name) for name in names] + [None]
    return {name: row[start:end].strip() for name, start, end in zip(names, starts, starts[1:], strict=False)}


def write_status(control_plane: ControlPlane, namespace: str, old: dict[str, Any], new: dict[str, Any]) -> None:
    """The reconcile's status, written as the operator writes it: the merge patch from the old status."""
    kubectl(control_plane, "patch", "ftj", NAME, "-n", namespace, "--subresource=status", "--type=merge",
            "-p", json.dumps({"status": merge_patch(old, new)}))


def test_stage_and_loss_columns_show_what_the_trainer_does_and_nothing_before_a_loss(
        control_plane: ControlPlane, kubetune_release: Release, namespace: str) -> None:
    body = finetunejob()
    manifest = {"apiVersion": body["apiVersion"], "kind": body["kind"], "metadata": {"name": NAME},
                "spec": body["spec"]}
    kubectl(control_plane, "apply", "-n", namespace, "-f", "-", stdin=json.dumps(manifest))
    running = [attempt_job(0)], [pod(0)]

    started = reconcile(Observed(body=body, now=NOW, jobs=running[0], pods=running[1])).status.to_api()
    write_status(control_plane, namespace, {}, started)
    shown = columns(control_plane, namespace)
    assert (shown["PHASE"], shown["STAGE"], shown["PROGRESS"], shown["LOSS"]) == ("Running", "loading", "", ""), shown

    polled = Progress(step=27, total_steps=60, percent="45%", loss=1.7342195510864258, loss_text="1.734",
                      stage="training")
    training = reconcile(Observed(body=finetunejob(status=started), now=NOW, jobs=running[0], pods=running[1],
                                  progress=polled)).status.to_api()
    write_status(control_plane, namespace, started, training)
    shown = columns(control_plane, namespace)
    assert (shown["STAGE"], shown["PROGRESS"], shown["LOSS"]) == ("training", "45%", "1.734"), shown

    done = pod(0, phase="Succeeded", exit_code=0, message={"exitCode": 0, "reason": "Completed", "step": 60,
                                                           "totalSteps": 60, "loss": 2.0})
    finished = reconcile(Observed(body=finetunejob(status=training), now=NOW, jobs=[attempt_job(0, "complete")],
                                  pods=[done])).status.to_api()
    write_status(control_plane, namespace, training, finished)
    shown = columns(control_plane, namespace)
    assert (shown["PHASE"], shown["STAGE"], shown["PROGRESS"], shown["LOSS"]) == ("Succeeded", "", "100%", "2.000"), shown
