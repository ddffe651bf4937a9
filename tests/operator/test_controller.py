"""The controller: one status write per change, idempotent children, adoption, refusals, the cycle over time."""

from __future__ import annotations

import copy
import datetime as dt
import json
from typing import Any

import pytest

from kubetune_operator import names
from kubetune_operator.controller import Controller, merge_patch
from kubetune_operator.metrics import OperatorMetrics
from kubetune_operator.reconcile import Event
from kubetune_operator.settings import Settings
from tests.merge_patch import apply_merge_patch
from tests.operator.fake_api import FakeKube
from tests.operator.objects import NAME, NAMESPACE, NOW, attempt_job, failed_by, finetunejob, pod


class Clock:
    """A settable clock."""

    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> dt.datetime:
        return self.now


@pytest.fixture
def kube() -> FakeKube:
    return FakeKube()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def events() -> list[Event]:
    return []


@pytest.fixture
def controller(kube: FakeKube, clock: Clock, events: list[Event]) -> Controller:
    return Controller(Settings(trainer_image="t:1"), kube, OperatorMetrics(), post_event=lambda body, e: events.append(e),
                      clock=clock)


def status(kube: FakeKube) -> dict[str, Any]:
    return kube.objects[("FineTuneJob", NAMESPACE, NAME)].get("status") or {}


def test_merge_patch_round_trips() -> None:
    old = {"phase": "Running", "progress": {"step": 3, "loss": 1.0}, "nextAttemptTime": "x", "conditions": [1]}
    new = {"phase": "Running", "progress": {"step": 4}, "conditions": [1, 2]}
    patch = merge_patch(old, new)
    assert patch == {"progress": {"step": 4, "loss": None}, "nextAttemptTime": None, "conditions": [1, 2]}
    assert apply_merge_patch(old, patch) == new
    assert merge_patch(new, copy.deepcopy(new)) == {}


def test_a_new_finetunejob_gets_its_children_and_one_status(kube: FakeKube, controller: Controller,
                                                             events: list[Event]) -> None:
    kube.put(finetunejob())
    decision = controller.reconcile(NAMESPACE, NAME)
    assert decision is not None and decision.status.phase.value == "Pending"
    assert kube.verbs("create") == [("ConfigMap", "demo-recipe"), ("PersistentVolumeClaim", "demo-data"),
                                    ("Job", "demo-0")]
    assert kube.verbs("patch/status") == [("FineTuneJob", NAME)]
    job = kube.objects[("Job", NAMESPACE, "demo-0")]
    uid = kube.objects[("FineTuneJob", NAMESPACE, NAME)]["metadata"]["uid"]
    assert job["metadata"]["ownerReferences"][0]["uid"] == uid
    assert "ownerReferences" not in kube.objects[("PersistentVolumeClaim", NAMESPACE, "demo-data")]["metadata"]
    # Both, in either order: the Job is created before the first status (one request less in a row before
    # it), and the Event threads post in any order anyway.
    assert sorted(e.reason for e in events) == ["AttemptCreated", "Created"]

    kube.calls.clear()
    controller.reconcile(NAMESPACE, NAME)
    assert kube.verbs("create") == [] and kube.verbs("patch/status") == []  # nothing changed, nothing written


def test_a_previous_incarnations_children_are_waited_for_never_adopted(kube: FakeKube, controller: Controller) -> None:
    kube.put(finetunejob())
    # Left by a deleted FineTuneJob of the same name: a retained PVC, and a ConfigMap and a finished
    # attempt Job that the garbage collector has not removed yet.
    kube.put({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {
        "name": "demo-data", "namespace": NAMESPACE, "labels": names.labels(NAME, "storage")}, "spec": {}})
    kube.put({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {
        "name": "demo-recipe", "namespace": NAMESPACE, "labels": names.labels(NAME, "recipe"),
        "ownerReferences": [{"uid": "old-uid", "name": NAME, "controller": True}]}, "data": {"recipe.json": "{}"}})
    old_job = attempt_job(0, "complete")
    old_job["metadata"]["ownerReferences"] = [{"uid": "old-uid", "name": NAME, "controller": True}]
    kube.put(old_job)
    controller.reconcile(NAMESPACE, NAME)
    assert status(kube)["phase"] == "Pending", status(kube)  # not Succeeded by the old attempt's Job
    running = {c["type"]: c for c in status(kube)["conditions"]}["Running"]
    assert running["reason"] == "WaitingForGarbageCollection" and "Job demo-0" in running["message"]
    assert kube.objects[("ConfigMap", NAMESPACE, "demo-recipe")]["metadata"]["ownerReferences"][0]["uid"] == "old-uid"

    del kube.objects[("Job", NAMESPACE, "demo-0")], kube.objects[("ConfigMap", NAMESPACE, "demo-recipe")]
    controller.reconcile(NAMESPACE, NAME)  # collected: now this incarnation creates its own
    uid = kube.objects[("FineTuneJob", NAMESPACE, NAME)]["metadata"]["uid"]
    assert kube.objects[("Job", NAMESPACE, "demo-0")]["metadata"]["ownerReferences"][0]["uid"] == uid
    configmap = kube.objects[("ConfigMap", NAMESPACE, "demo-recipe")]
    assert configmap["metadata"]["ownerReferences"][0]["uid"] == uid
    assert json.loads(configmap["data"]["recipe.json"])["metadata"]["name"] == NAME
    assert "ownerReferences" not in kube.objects[("PersistentVolumeClaim", NAMESPACE, "demo-data")]["metadata"]


def test_a_foreign_object_with_a_childs_name_fails_the_job_clearly(kube: FakeKube, controller: Controller) -> None:
    kube.put(finetunejob())
    kube.put({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "demo-recipe", "namespace": NAMESPACE},
              "data": {}})
    controller.reconcile(NAMESPACE, NAME)
    assert status(kube)["phase"] == "Failed"
    assert "ConfigMap demo-recipe already exists and does not belong" in status(kube)["message"]
    assert ("Job", NAMESPACE, "demo-0") not in kube.objects


def test_a_child_the_api_server_refuses_fails_invalid_recipe_once(kube: FakeKube, controller: Controller) -> None:
    # affinity passes through the recipe model unchecked (tolerations are checked at the door now).
    kube.put(finetunejob({"resources": {"affinity": {"nodeAffinity": {"sometimes": True}}}}))
    kube.refuse["Job"] = 'Job.batch "demo-0" is invalid: spec.template.spec.affinity.nodeAffinity: unknown field'
    controller.reconcile(NAMESPACE, NAME)
    failed = {c["type"]: c for c in status(kube)["conditions"]}["Failed"]
    assert failed["reason"] == "InvalidRecipe" and "affinity.nodeAffinity" in failed["message"]
    kube.calls.clear()
    for _ in range(3):  # never a hot loop: nothing is retried, nothing rewritten
        controller.reconcile(NAMESPACE, NAME)
    assert kube.verbs("create") == [] and kube.verbs("patch/status") == []


def test_a_failed_attempt_waits_out_its_backoff_then_the_next_one_starts(kube: FakeKube, controller: Controller,
                                                                         clock: Clock) -> None:
    kube.put(finetunejob())
    controller.reconcile(NAMESPACE, NAME)
    oom = kube.put(pod(0, phase="Failed", exit_code=137, reason="OOMKilled"))
    kube.objects[("Job", NAMESPACE, "demo-0")]["status"] = attempt_job(0, "failed", failed_by(oom, 137))["status"]
    controller.reconcile(NAMESPACE, NAME)
    assert (status(kube)["restarts"], status(kube)["attempt"]) == (1, 1)
    assert ("Job", NAMESPACE, "demo-1") not in kube.objects
    clock.now = NOW + dt.timedelta(seconds=9)
    controller.reconcile(NAMESPACE, NAME)
    assert ("Job", NAMESPACE, "demo-1") not in kube.objects
    clock.now = NOW + dt.timedelta(seconds=10)
    controller.reconcile(NAMESPACE, NAME)
    assert ("Job", NAMESPACE, "demo-1") in kube.objects and status(kube)["restarts"] == 1


def test_suspend_deletes_the_attempt_and_resume_starts_the_next(kube: FakeKube, controller: Controller) -> None:
    kube.put(finetunejob())
    controller.reconcile(NAMESPACE, NAME)
    kube.put(pod(0))
    controller.reconcile(NAMESPACE, NAME)
    assert status(kube)["phase"] == "Running"
    kube.objects[("FineTuneJob", NAMESPACE, NAME)]["spec"]["suspend"] = True
    controller.reconcile(NAMESPACE, NAME)
    assert ("Job", NAMESPACE, "demo-0") not in kube.objects and status(kube)["phase"] == "Suspended"
    kube.objects[("Pod", NAMESPACE, pod(0)["metadata"]["name"])]["status"]["phase"] = "Failed"  # checkpointed, gone
    kube.objects[("FineTuneJob", NAMESPACE, NAME)]["spec"]["suspend"] = False
    controller.reconcile(NAMESPACE, NAME)
    assert ("Job", NAMESPACE, "demo-1") in kube.objects
    assert status(kube)["attempt"] == 1 and status(kube)["restarts"] == 0 and status(kube)["preemptions"] == 0


def test_a_changed_immutable_field_is_reported_and_nothing_new_starts(kube: FakeKube, controller: Controller) -> None:
    kube.put(finetunejob())
    controller.reconcile(NAMESPACE, NAME)
    kube.objects[("FineTuneJob", NAMESPACE, NAME)]["spec"]["training"] = {"learningRate": 0.5}
    del kube.objects[("Job", NAMESPACE, "demo-0")]
    controller.reconcile(NAMESPACE, NAME)
    accepted = {c["type"]: c for c in status(kube)["conditions"]}["Accepted"]
    assert accepted["status"] == "False" and accepted["reason"] == "ImmutableFieldChanged"
    assert "spec.training.learningRate" in accepted["message"]
    assert ("Job", NAMESPACE, "demo-0") not in kube.objects


def test_a_deleted_finetunejob_is_forgotten(kube: FakeKube, controller: Controller) -> None:
    assert controller.reconcile(NAMESPACE, NAME) is None
    assert kube.verbs("create") == [] and kube.verbs("patch/status") == []


def test_ttl_deletes_the_finished_finetunejob(kube: FakeKube, controller: Controller, clock: Clock) -> None:
    kube.put(finetunejob({"ttlSecondsAfterFinished": 30}))
    controller.reconcile(NAMESPACE, NAME)
    kube.objects[("Job", NAMESPACE, "demo-0")]["status"] = attempt_job(0, "complete")["status"]
    controller.reconcile(NAMESPACE, NAME)
    assert status(kube)["phase"] == "Succeeded" and ("FineTuneJob", NAMESPACE, NAME) in kube.objects
    clock.now = NOW + dt.timedelta(seconds=31)
    controller.reconcile(NAMESPACE, NAME)
    assert ("FineTuneJob", NAMESPACE, NAME) not in kube.objects
    assert ("PersistentVolumeClaim", NAMESPACE, "demo-data") in kube.objects  # retained


def test_transitions_are_posted_as_valid_core_v1_events(kube: FakeKube, clock: Clock) -> None:
    import kubernetes_validate

    controller = Controller(Settings(), kube, OperatorMetrics(), clock=clock)
    kube.put(finetunejob())
    controller.reconcile(NAMESPACE, NAME)
    controller.events_sent()  # posted from the Event threads
    posted = [obj for (kind, _, _), obj in kube.objects.items() if kind == "Event"]
    assert sorted(e["reason"] for e in posted) == ["AttemptCreated", "Created"]
    uid = kube.objects[("FineTuneJob", NAMESPACE, NAME)]["metadata"]["uid"]
    for event in posted:
        kubernetes_validate.validate(event, kubernetes_validate.latest_version(), strict=True)
        assert event["involvedObject"]["uid"] == uid and event["involvedObject"]["kind"] == "FineTuneJob"
