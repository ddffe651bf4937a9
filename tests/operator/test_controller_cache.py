"""The controller on watched copies (issue 14, item 7): a reconcile decides from the FineTuneJob its watch
last delivered instead of a GET per turn; the status write carries that copy's resourceVersion, so a stale
copy gets 409 and the turn is redone on a fresh read, never overwriting a newer status; an action without
a status write re-reads first. Also: the lost-node force delete as the controller performs it."""

from __future__ import annotations

import copy
import datetime as dt
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from kubetune_operator.controller import REFUSALS_RELIST_SECONDS, Controller
from kubetune_operator.metrics import OperatorMetrics
from kubetune_operator.settings import Settings
from tests.operator.fake_api import FakeKube
from tests.operator.objects import NAME, NAMESPACE, NOW, ago, attempt_job, failed_by, finetunejob, pod

KEY = ("FineTuneJob", NAMESPACE, NAME)


@pytest.fixture
def kube() -> FakeKube:
    return FakeKube()


@pytest.fixture
def controller(kube: FakeKube) -> Controller:
    return Controller(Settings(trainer_image="t:1", lost_node_timeout_seconds=60), kube, OperatorMetrics(),
                      post_event=lambda body, event: None, clock=lambda: NOW)


def watched(kube: FakeKube) -> dict[str, Any]:
    """The FineTuneJob as a watch would deliver it now."""
    return copy.deepcopy(kube.objects[KEY])


def gets_of_the_finetunejob(kube: FakeKube) -> int:
    return kube.verbs("get").count(("FineTuneJob", NAME))


def test_a_new_finetunejob_is_created_from_its_watched_copy_without_any_get(kube: FakeKube,
                                                                           controller: Controller) -> None:
    kube.put(finetunejob())
    controller.reconcile(NAMESPACE, NAME, children=([], []), body=watched(kube))
    assert kube.verbs("get") == []  # neither the FineTuneJob nor a recipe ConfigMap that cannot exist yet
    assert kube.verbs("create") == [("ConfigMap", "demo-recipe"), ("PersistentVolumeClaim", "demo-data"),
                                    ("Job", "demo-0")]
    # The children first, then one status write that already knows the Job: three requests in a row before
    # the Job, not four.
    assert [verb for verb, _, _ in kube.calls] == ["create", "create", "create", "patch/status"]
    assert kube.objects[KEY]["status"]["phase"] == "Pending" and kube.objects[KEY]["status"]["attempt"] == 0


def test_a_stale_first_copy_creates_the_children_once_and_its_status_is_redone(kube: FakeKube,
                                                                              controller: Controller) -> None:
    kube.put(finetunejob())
    stale = watched(kube)
    kube.objects[KEY]["metadata"]["labels"] = {"team": "a"}  # changed before the operator's first turn
    kube.version += 1
    kube.objects[KEY]["metadata"]["resourceVersion"] = str(kube.version)
    controller.reconcile(NAMESPACE, NAME, children=([], []), body=stale)
    assert kube.verbs("patch/status") == [("FineTuneJob", NAME)] * 2  # refused (409), then on the fresh read
    assert kube.verbs("create").count(("Job", "demo-0")) == 2  # the second answered 409 and was adopted
    assert kube.objects[KEY]["status"]["attempt"] == 0 and kube.objects[KEY]["metadata"]["labels"] == {"team": "a"}
    assert [key for key in kube.objects if key[0] == "Job"] == [("Job", NAMESPACE, "demo-0")]


def test_a_routine_turn_on_a_current_copy_makes_no_request(kube: FakeKube, controller: Controller) -> None:
    kube.put(finetunejob())
    controller.reconcile(NAMESPACE, NAME, children=([], []), body=watched(kube))
    jobs = [copy.deepcopy(kube.objects[("Job", NAMESPACE, "demo-0")])]
    jobs[0]["status"] = {"active": 1}  # its pod exists; the pod watch has not delivered it yet
    kube.calls.clear()
    controller.reconcile(NAMESPACE, NAME, children=(jobs, []), body=watched(kube))
    assert kube.calls == []


def test_a_stale_copy_gets_409_and_the_turn_is_redone_on_a_fresh_read(kube: FakeKube, controller: Controller) -> None:
    kube.put(finetunejob())
    controller.reconcile(NAMESPACE, NAME, children=([], []), body=watched(kube))
    stale = watched(kube)  # the watch's copy, from before the failure below was counted
    oom = kube.put(pod(0, phase="Failed", exit_code=137, reason="OOMKilled"))
    kube.objects[("Job", NAMESPACE, "demo-0")]["status"] = attempt_job(0, "failed", failed_by(oom, 137))["status"]
    children = ([copy.deepcopy(kube.objects[("Job", NAMESPACE, "demo-0")])], [oom])
    # Another replica (a leader that just lost its Lease) counted it already; our watch lags behind.
    fresh = Controller(Settings(trainer_image="t:1"), kube, OperatorMetrics(), post_event=lambda body, event: None,
                       clock=lambda: NOW)
    fresh.reconcile(NAMESPACE, NAME, children=children)
    assert (kube.objects[KEY]["status"]["restarts"], kube.objects[KEY]["status"]["attempt"]) == (1, 1)
    kube.calls.clear()
    controller.reconcile(NAMESPACE, NAME, children=children, body=stale)
    assert kube.objects[KEY]["status"]["restarts"] == 1  # not counted twice: the stale write was refused
    assert kube.verbs("patch/status") == [("FineTuneJob", NAME)]  # the refused one; the fresh turn wrote nothing
    assert gets_of_the_finetunejob(kube) == 1


def test_an_action_without_a_status_write_re_reads_the_copy_first(kube: FakeKube, controller: Controller) -> None:
    kube.put(finetunejob())
    controller.reconcile(NAMESPACE, NAME, children=([], []), body=watched(kube))
    stopped = pod(0, phase="Failed", exit_code=75)  # its Job was deleted by hand; it checkpointed and stopped
    del kube.objects[("Job", NAMESPACE, "demo-0")]
    controller.reconcile(NAMESPACE, NAME, children=([], [stopped]), body=watched(kube))  # says so, re-creates it
    del kube.objects[("Job", NAMESPACE, "demo-0")]  # deleted again: re-creating it is an action, no new status
    copy_before = watched(kube)
    kube.objects[KEY]["spec"]["suspend"] = True  # the user suspends; the watch has not delivered it yet
    kube.version += 1
    kube.objects[KEY]["metadata"]["resourceVersion"] = str(kube.version)
    kube.calls.clear()
    decision = controller.reconcile(NAMESPACE, NAME, children=([], [stopped]), body=copy_before)
    assert decision is not None and decision.status.phase.value == "Suspended"  # decided on the fresh read
    assert ("Job", NAMESPACE, "demo-0") not in kube.objects  # not re-created for a suspended job
    assert gets_of_the_finetunejob(kube) == 2  # the check that found the copy stale, then the fresh read


def terminating_on(kube: FakeKube, controller: Controller, ready: str, deleted_ago: float) -> dict[str, Any]:
    """A started FineTuneJob whose attempt-0 pod was deleted `deleted_ago` seconds ago (300 s grace) on
    gpu-node, whose Ready condition is `ready` since 120 s; reconciled once with it. The pod."""
    kube.put(finetunejob())
    controller.reconcile(NAMESPACE, NAME, children=([], []), body=watched(kube))
    kube.put({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "gpu-node", "namespace": ""},
              "status": {"conditions": [{"type": "Ready", "status": ready, "lastTransitionTime": ago(120)}]}})
    body = pod(0)
    body["spec"] = {"nodeName": "gpu-node"}
    body["metadata"].update(deletionTimestamp=ago(deleted_ago - 300), deletionGracePeriodSeconds=300)
    controller.reconcile(NAMESPACE, NAME, children=([], [body]), body=watched(kube))
    return body


def test_a_pod_stuck_on_a_lost_node_is_force_deleted_by_the_controller(kube: FakeKube, controller: Controller) -> None:
    stuck = terminating_on(kube, controller, "Unknown", deleted_ago=100)
    assert kube.verbs("delete/grace=0") == [("Pod", stuck["metadata"]["name"])]
    running = {c["type"]: c for c in kube.objects[KEY]["status"]["conditions"]}["Running"]
    assert running["reason"] == "PodsForceDeleted" and "gpu-node" in running["message"]


def test_a_ready_node_is_looked_up_but_its_slow_pod_left_alone(kube: FakeKube, controller: Controller) -> None:
    terminating_on(kube, controller, "True", deleted_ago=3000)
    assert ("Node", "gpu-node") in kube.verbs("get") and not kube.verbs("delete/grace=0")


def test_without_rights_on_nodes_they_are_asked_once_and_nothing_is_forced(kube: FakeKube,
                                                                         controller: Controller) -> None:
    asked: list[str] = []
    get = kube.get

    def forbidden_nodes(kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        if kind == "Node":  # a namespaced install: no ClusterRole, so no nodes get
            asked.append(name)
            raise ApiException(status=403, reason="Forbidden", body='{"message": "nodes is forbidden"}')
        return get(kind, namespace, name)

    kube.get = forbidden_nodes  # type: ignore[method-assign]
    stuck = terminating_on(kube, controller, "Unknown", deleted_ago=100)
    controller.reconcile(NAMESPACE, NAME, children=([], [stuck]), body=watched(kube))
    assert asked == ["gpu-node"] and not kube.verbs("delete/grace=0")


def test_a_podless_jobs_refusals_are_listed_at_most_every_relist_period(kube: FakeKube) -> None:
    """An Event LIST filters every Event of the namespace in the API server: a Job whose pods are only slow
    to come is asked about refusals once per REFUSALS_RELIST_SECONDS, not on each of its events' turns; the
    turns in between keep what the last list said."""
    now = [NOW]
    controller = Controller(Settings(trainer_image="t:1"), kube, OperatorMetrics(),
                            post_event=lambda body, event: None, clock=lambda: now[0])
    kube.put(finetunejob())
    job = attempt_job(0, created_ago=30)
    kube.put({"apiVersion": "v1", "kind": "Event", "metadata": {"name": "demo-0.1", "namespace": NAMESPACE},
              "involvedObject": {"uid": job["metadata"]["uid"]}, "reason": "FailedCreate",
              "message": 'pods "demo-0-0-x" is forbidden: exceeded quota: q'})
    listed = []
    for seconds in (0, 4, 9, REFUSALS_RELIST_SECONDS + 1):
        now[0] = NOW + dt.timedelta(seconds=seconds)
        kube.calls.clear()
        controller.reconcile(NAMESPACE, NAME, children=([job], []), body=watched(kube))
        listed.append(kube.verbs("list").count(("Event", "")))
        running = {c["type"]: c for c in kube.objects[KEY]["status"]["conditions"]}["Running"]
        assert running["reason"] == "PodCreationFailed" and "exceeded quota" in running["message"], running
    assert listed == [1, 0, 0, 1]
