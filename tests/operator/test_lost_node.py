"""The lost-node decision as a table: trainer pods stuck Terminating on a node that will never confirm their
end (issue 14, item 5) are force-deleted after `lostNodeTimeoutSeconds`, and the status says so.

A pod is stuck when it is being deleted on a node the controller found NotReady, unreachable or gone
(`Observed.lost_nodes`, with since when), or when the taint manager evicted it; its grace period means
nothing without a kubelet. The deadline runs from the later of its deletion and its node's loss. Before
it the next attempt waits and Running=False NodeLost says for how long; at the deadline the decision is
one FORCE_DELETE_PODS action and Running=False PodsForceDeleted.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

import pytest

from kubetune_operator.reconcile import ActionType, Observed, reconcile
from tests.operator.objects import NOW, ago, attempt_job, condition, finetunejob, pod

LIMIT = 60.0
NODE = "gpu-node"
FORCE, CREATE, NONE = ActionType.FORCE_DELETE_PODS, ActionType.CREATE_ATTEMPT, ActionType.NONE


def running(attempt: int = 0) -> dict[str, Any]:
    """A status with attempt `attempt` running."""
    return {"phase": "Running", "attempt": attempt, "startTime": ago(600), "conditions": [
        {"type": "Accepted", "status": "True", "reason": "Created", "lastTransitionTime": ago(700)},
        {"type": "Running", "status": "True", "reason": "Started", "lastTransitionTime": ago(600)}]}


def terminating(attempt: int = 0, deleted: float = 10.0, node: str = NODE, **kwargs: Any) -> dict[str, Any]:
    """A trainer pod on `node` whose deletion was requested `deleted` seconds ago, with the trainer's 300 s
    grace period (deletionTimestamp is the request plus the grace period)."""
    body = pod(attempt, **kwargs)
    body["spec"] = {"nodeName": node}
    body["metadata"]["deletionTimestamp"] = ago(deleted - 300)
    body["metadata"]["deletionGracePeriodSeconds"] = 300
    return body


def taint_evicted(attempt: int = 0, deleted: float = 10.0) -> dict[str, Any]:
    """A pod the taint manager evicted (its node got the unreachable NoExecute taint)."""
    body = terminating(attempt, deleted, node="cpu-node")
    body["status"]["conditions"].append(condition("DisruptionTarget", reason="DeletionByTaintManager",
                                                  message="Taint manager: deleting due to NoExecute taint"))
    return body


def lost(seconds: float = 100.0, node: str = NODE) -> dict[str, dt.datetime]:
    """`node` NotReady for `seconds`."""
    return {node: NOW - dt.timedelta(seconds=seconds)}


def force_deleted(attempt: int = 0, deleted: float = 1.0) -> dict[str, Any]:
    """A pod force-deleted (grace 0) `deleted` seconds ago, still held by the Job controller's finalizer:
    the API server moved its deletionTimestamp to the force delete's time."""
    body = terminating(attempt)
    body["metadata"]["deletionTimestamp"] = ago(deleted)
    body["metadata"]["deletionGracePeriodSeconds"] = 0
    body["metadata"]["finalizers"] = ["batch.kubernetes.io/job-tracking"]
    return body


STUCK = terminating(deleted=10)
OVERDUE = terminating(deleted=LIMIT + 1)
GONE = {NODE: dt.datetime.fromtimestamp(0, dt.timezone.utc)}


@dataclasses.dataclass
class Case:
    """One row: what is observed, what must be decided."""

    id: str
    pods: list[dict[str, Any]]
    jobs: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    lost: dict[str, dt.datetime] = dataclasses.field(default_factory=lost)
    action: ActionType = NONE
    forced: tuple[str, ...] = ()  # the pods a due FORCE_DELETE_PODS names
    delay: float = 0.0
    running: tuple[str, str] | None = None  # the Running condition's (status, reason), when checked
    said: str = ""  # in the Running condition's message


CASES = [
    Case("the attempt's Job is gone, its pod stuck on a lost node: wait for the deadline, say so",
         pods=[STUCK], action=FORCE, delay=LIMIT - 10, running=("False", "NodeLost"),
         said=f"pod {STUCK['metadata']['name']} on lost node {NODE}"),
    Case("deleted before the node was lost: the deadline runs from the loss", pods=[terminating(deleted=500)],
         lost=lost(20), action=FORCE, delay=LIMIT - 20, running=("False", "NodeLost")),
    Case("past the deadline: force-delete it (grace 0), though its grace period has not ended", pods=[OVERDUE],
         action=FORCE, forced=(OVERDUE["metadata"]["name"],), running=("False", "PodsForceDeleted"),
         said="force-deleted"),
    Case("a deleted Node: the deadline runs from the pod's deletion", pods=[OVERDUE], lost=GONE, action=FORCE,
         forced=(OVERDUE["metadata"]["name"],)),
    Case("an older attempt's pod past the deadline while the next Job waits", jobs=[attempt_job(1)],
         pods=[terminating(0, LIMIT + 5), pod(1)], action=FORCE,
         forced=(terminating(0)["metadata"]["name"],), running=("False", "PodsForceDeleted")),
    Case("only the overdue pods are forced; the others keep their own deadline",
         pods=[OVERDUE, terminating(0, 5, index=1)], action=FORCE, forced=(OVERDUE["metadata"]["name"],)),
    Case("a Ready node's slow pod is never forced: its kubelet will report", pods=[terminating(deleted=3600)],
         lost={}, action=NONE, running=("False", "AttemptJobDeleted")),
    Case("a pod that did end (Failed) is not stuck: the next attempt starts",
         pods=[terminating(deleted=LIMIT + 1, phase="Failed", exit_code=137)], action=CREATE),
    Case("evicted by the taint manager: stuck, though Nodes cannot be read", pods=[taint_evicted(0, LIMIT + 1)],
         lost={}, action=FORCE, forced=(taint_evicted()["metadata"]["name"],),
         running=("False", "PodsForceDeleted")),
    Case("the running attempt's own pod stuck past the deadline is forced too", jobs=[attempt_job(0)],
         pods=[OVERDUE], action=FORCE, forced=(OVERDUE["metadata"]["name"],)),
    Case("the running attempt's pod stuck before the deadline: the Job is followed as before",
         jobs=[attempt_job(0)], pods=[STUCK], action=NONE, running=("True", "Started")),
    Case("nothing left after the force delete: the attempt is created again", pods=[], action=CREATE),
    Case("force-deleted, only the Job controller's finalizer holds it: not waited for again (its new deletion "
         "time would re-arm the wait)", pods=[force_deleted()], action=CREATE),
]


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_lost_node_table(case: Case) -> None:
    decision = reconcile(Observed(body=finetunejob(status=running()), now=NOW, jobs=case.jobs, pods=case.pods,
                                  lost_nodes=case.lost, lost_node_timeout_seconds=LIMIT))
    assert decision.action.type is case.action, decision.action
    assert decision.action.delay_seconds == pytest.approx(case.delay), decision.action
    if case.forced:
        assert decision.action.due and decision.action.pods == case.forced, decision.action
    conditions = {c.type: c for c in decision.status.conditions}
    if case.running is not None:
        assert (conditions["Running"].status, conditions["Running"].reason) == case.running, conditions
    assert case.said in (conditions["Running"].message or ""), conditions["Running"]


def test_the_wait_and_the_force_delete_each_post_one_warning_event() -> None:
    waiting = reconcile(Observed(body=finetunejob(status=running()), now=NOW, pods=[STUCK],
                                 lost_nodes=lost(), lost_node_timeout_seconds=LIMIT))
    assert [(e.type, e.reason) for e in waiting.events] == [("Warning", "NodeLost")]
    again = finetunejob(status=waiting.status.to_api())
    assert not reconcile(Observed(body=again, now=NOW, pods=[STUCK], lost_nodes=lost(),
                                  lost_node_timeout_seconds=LIMIT)).events  # said once, not every turn
    forced = reconcile(Observed(body=again, now=NOW, pods=[OVERDUE], lost_nodes=lost(),
                                lost_node_timeout_seconds=LIMIT))
    assert [(e.type, e.reason) for e in forced.events] == [("Warning", "PodsForceDeleted")]
    held = reconcile(Observed(body=finetunejob(status=forced.status.to_api()), now=NOW, pods=[force_deleted()],
                              lost_nodes=lost(), lost_node_timeout_seconds=LIMIT))
    assert not held.events  # the force delete's own echo (the pod held by a finalizer) says nothing again


def test_the_wait_for_the_deadline_keeps_the_status_from_turn_to_turn() -> None:
    """The message names times, not "stuck for Ns": a later turn of the same wait writes nothing."""
    waiting = reconcile(Observed(body=finetunejob(status=running()), now=NOW, pods=[STUCK],
                                 lost_nodes=lost(), lost_node_timeout_seconds=LIMIT))
    later = reconcile(Observed(body=finetunejob(status=waiting.status.to_api()), now=NOW + dt.timedelta(seconds=30),
                               pods=[STUCK], lost_nodes=lost(), lost_node_timeout_seconds=LIMIT))
    assert later.status.to_api() == waiting.status.to_api()
    assert later.action.delay_seconds == pytest.approx(LIMIT - 40)
