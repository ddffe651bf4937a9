"""Bad input that bypassed the CRD (an old CRD, a disabled webhook, `kubectl replace --validate=false`).

The operator re-validates with the recipe model: the FineTuneJob fails with
InvalidRecipe and a message naming the field, nothing is created, and another
look changes nothing (no crash, no hot loop).
"""

from __future__ import annotations

from typing import Any

import pytest

from kubetune_operator.controller import Controller
from kubetune_operator.metrics import OperatorMetrics
from kubetune_operator.reconcile import ActionType, Observed, reconcile
from kubetune_operator.settings import Settings
from tests.operator.fake_api import FakeKube
from tests.operator.objects import NOW, finetunejob


def broken(change: dict[str, Any] | None = None, **top: Any) -> dict[str, Any]:
    """A FineTuneJob with `change` merged into its spec, or top-level keys replaced."""
    body = finetunejob(change)
    body.update(top)
    return body


BAD = [
    ("no spec", broken(spec=None), "spec"),
    ("spec is a string", broken(spec="train please"), "spec"),
    ("unknown field", broken({"trainig": {"epochs": 1}}), "spec.trainig: unknown field"),
    ("wrong type", broken({"training": {"epochs": "many"}}), "spec.training.epochs"),
    ("out of range", broken({"method": {"lora": {"r": 0}}}), "spec.method.lora.r"),
    ("bad enum", broken({"training": {"optimizer": "sgd-ish"}}), "spec.training.optimizer"),
    ("cross-field rule", broken({"dataset": {"name": "a/b", "path": "/c"}}), "exactly one of dataset.name"),
    ("missing model", broken({"model": None}), "spec.model"),
    ("name too long", broken(metadata={"name": "x" * 60, "namespace": "ml", "uid": "u"}), "metadata.name"),
]


@pytest.mark.parametrize("body,field", [(b, f) for _, b, f in BAD], ids=[i for i, _, _ in BAD])
def test_bad_input_fails_invalid_recipe_naming_the_field(body: dict[str, Any], field: str) -> None:
    decision = reconcile(Observed(body=body, now=NOW))
    status = decision.status.to_api()
    assert status["phase"] == "Failed"
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions["Failed"]["reason"] == conditions["Accepted"]["reason"] == "InvalidRecipe"
    assert field in status["message"], status["message"]
    assert decision.action.type is ActionType.NONE and decision.job is None
    assert [e.type for e in decision.events] == ["Warning"]

    again = reconcile(Observed(body={**body, "status": status}, now=NOW))
    assert again.status.to_api() == status and again.events == () and again.action.type is ActionType.NONE


def test_garbage_in_status_does_not_crash_the_reconcile() -> None:
    body = finetunejob(status={"phase": 42, "conditions": "lots", "restarts": -3, "kopf": {"progress": {}}})
    decision = reconcile(Observed(body=body, now=NOW))
    assert decision.action.type is ActionType.CREATE_ATTEMPT and decision.status.restarts == 0


def test_the_operator_writes_the_failure_once_and_creates_nothing() -> None:
    kube = FakeKube()
    kube.put(broken({"training": {"epochs": "many"}}))
    controller = Controller(Settings(), kube, OperatorMetrics())
    for _ in range(3):
        controller.reconcile("ml", "demo")
    controller.events_sent()  # posted from the Event threads
    assert [kind for kind, _ in kube.verbs("create")] == ["Event"]  # one Warning event, no children
    assert kube.verbs("patch/status") == [("FineTuneJob", "demo")]
    assert ("ml", "demo") in controller.settled  # the resync loop leaves it alone
