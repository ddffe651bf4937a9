"""Lifecycle scenarios on the real control plane: success, bad data, pods that never start."""

from __future__ import annotations

from tests.cluster.rest import path_of
from tests.e2e_cluster import scenarios


def test_apply_runs_reports_progress_succeeds_and_delete_keeps_the_retained_pvc(cluster, make):
    scenarios.succeeds_with_progress_and_delete_keeps_the_pvc(cluster, make)


def test_invalid_data_fails_fast_with_the_trainers_reason_without_retry_and_ttl_deletes_it(cluster, make, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "no prompt or completion column here"}\n' * 8, encoding="utf-8")
    scenarios.invalid_data_fails_fast_and_ttl_deletes(cluster, make, cluster.input_path(bad))


def test_a_pod_no_node_can_take_fails_unschedulable_after_the_deadline(cluster, make):
    failed = scenarios.unschedulable_fails_after_the_deadline(cluster, make)
    assert "didn't match Pod's node affinity/selector" in failed["status"]["message"]


def test_an_image_that_cannot_be_pulled_fails_after_the_deadline(cluster, make):
    scenarios.unpullable_image_fails_after_the_deadline(cluster, make)


def test_delete_and_recreate_with_the_same_name_is_a_fresh_run_that_adopts_nothing(cluster, make):
    scenarios.recreated_with_the_same_name_runs_afresh(cluster, make)


def test_pods_the_api_server_refuses_fail_the_job_with_its_reason(cluster, make):
    # A ResourceQuota with no room for pods: the real Job controller's creates are refused (FailedCreate
    # events); the Job itself stays active without a word, so the operator must read the events.
    quota = {"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "no-pods"}, "spec": {"hard": {"pods": "0"}}}
    cluster.rest.create(path_of("v1", "resourcequotas", cluster.namespace), quota)
    cluster.wait_until(lambda: (cluster.rest.get(path_of("v1", "resourcequotas", cluster.namespace, "no-pods"))
                                .get("status") or {}).get("hard"), 30, "the quota controller sized the quota")
    cluster.apply(make("refused", pendingDeadlineSeconds=5))
    waiting = cluster.wait_for("refused", lambda o: "exceeded quota" in (o.get("status") or {}).get("message", ""),
                               60, "the refusal in status")
    assert scenarios.condition(waiting, "Running")["reason"] == "PodCreationFailed"
    failed = cluster.wait_for("refused", scenarios.phase("Failed"), 60, "Failed after the pending deadline")
    assert scenarios.condition(failed, "Failed")["reason"] == "PodCreationFailed", failed["status"]
    assert "exceeded quota" in failed["status"]["message"] and not cluster.children("refused", "pods")
