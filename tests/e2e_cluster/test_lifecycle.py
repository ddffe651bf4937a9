"""Lifecycle scenarios on the real control plane: success, bad data, pods that never start."""

from __future__ import annotations

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
