"""The condition reasons reconcile sets are the documented ones, each on a condition it says it belongs to.

Every row of reconcile's table (tests/operator/test_reconcile.py) is reconciled again here and each
condition it sets or changes is checked against `kubetune_api.conditions.Reason`.
"""

from __future__ import annotations

from kubetune_api.conditions import (
    PENDING_REASONS,
    RETRYABLE_TRAINER_REASONS,
    WARNING_REASONS,
    ConditionType,
    Reason,
)
from kubetune_operator.reconcile import Observed, reconcile

from tests.operator.objects import NOW, finetunejob
from tests.operator.test_reconcile import CASES


def set_by_reconcile() -> set[tuple[str, str]]:
    """(condition type, reason) of every condition that the table's reconciles set or changed."""
    seen = set()
    for case in CASES:
        body = finetunejob(case.spec, case.status)
        before = {(c["type"], c["reason"]) for c in (case.status or {}).get("conditions", [])}
        decision = reconcile(Observed(body=body, now=NOW, jobs=case.jobs, pods=case.pods,
                                      accepted_spec=case.accepted, refusals=case.refusals))
        seen |= {(c["type"], c["reason"]) for c in decision.status.to_api().get("conditions", [])} - before
    return seen


def test_every_reason_reconcile_sets_is_documented_for_its_condition() -> None:
    seen = set_by_reconcile()
    assert len(seen) >= 20, seen
    for kind, reason in seen:
        assert reason in Reason.__members__.values(), f"{kind} {reason}: add it to kubetune_api.conditions.Reason"
        assert ConditionType(kind) in Reason(reason).conditions, f"{reason} is documented without {kind}"


# Set by reconcile in other tests: tests/storage/test_operator_reasons.py (the trainer's upload and download
# reasons), tests/operator/test_controller.py (garbage collection), tests/operator/test_lost_node.py (a node
# lost under a pod), and a pod that cannot be configured where the control-plane tests' kubelet reports
# CreateContainerConfigError (tests/cluster/kubelet.py).
ELSEWHERE = {Reason.UPLOAD_FAILED, Reason.DOWNLOAD_FAILED, Reason.WAITING_FOR_GARBAGE_COLLECTION,
             Reason.CONTAINER_CONFIG_ERROR, Reason.NODE_LOST, Reason.PODS_FORCE_DELETED}


def test_the_table_sets_every_other_reason() -> None:
    missing = set(Reason) - {Reason(reason) for _, reason in set_by_reconcile()}
    assert missing <= ELSEWHERE, f"no row of tests/operator/test_reconcile.py sets {sorted(missing - ELSEWHERE)}"


def test_the_derived_reason_sets() -> None:
    assert set(PENDING_REASONS) < WARNING_REASONS
    assert set(RETRYABLE_TRAINER_REASONS) < WARNING_REASONS
    assert Reason.COMPLETED not in WARNING_REASONS and Reason.CREATED not in WARNING_REASONS
