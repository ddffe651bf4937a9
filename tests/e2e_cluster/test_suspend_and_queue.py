"""Suspend and resume, and Kueue-style admission, on the real control plane."""

from __future__ import annotations

from tests.e2e_cluster import scenarios


def test_suspend_stops_the_pods_after_a_checkpoint_and_unsuspend_resumes_from_it(cluster, make):
    scenarios.suspend_checkpoints_and_unsuspend_resumes(cluster, make)


def test_with_a_queue_name_the_attempt_waits_suspended_until_admitted(cluster, make):
    scenarios.queued_until_admitted(cluster, make)


def test_a_kueue_preemption_requeues_checkpoints_and_resumes_without_counting_a_failure(cluster, make):
    scenarios.kueue_preemption_requeues_and_resumes_in_the_same_attempt(cluster, make)
