"""Faults of the cluster mid-run (issue 19), one test each, on the real control plane: the job finishes
or fails with a clear reason, no child is duplicated or orphaned, no step is lost beyond the last checkpoint."""

from __future__ import annotations

import pytest

from tests.e2e_cluster import faults


@pytest.mark.parametrize("component", ["kube-apiserver", "etcd"])
def test_a_restarted_control_plane_component_is_survived_by_the_running_job(cluster, make, component):
    faults.control_plane_restart_is_survived(cluster, make, component)


def test_the_operator_killed_after_each_of_several_status_writes_keeps_one_job_and_counts_nothing(cluster, make):
    faults.operator_killed_after_status_writes(cluster, make)


def test_an_attempt_job_deleted_by_hand_is_replaced_and_resumes_from_its_checkpoint(cluster, make):
    faults.deleted_job_recovers_from_its_checkpoint(cluster, make)


def test_a_trainer_pod_deleted_by_hand_is_replaced_and_resumes_from_its_checkpoint(cluster, make):
    faults.deleted_pod_recovers_from_its_checkpoint(cluster, make)


def test_a_full_volume_fails_the_job_with_a_clear_reason_and_keeps_the_last_checkpoint(cluster, make):
    faults.full_volume_fails_with_a_clear_reason(cluster, make)
