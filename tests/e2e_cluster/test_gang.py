"""Two CPU workers (torchrun, gloo) as one gang on the real control plane."""

from __future__ import annotations

from tests.e2e_cluster import scenarios


def test_two_workers_train_as_one_gang_and_a_killed_worker_restarts_the_whole_attempt(cluster, make):
    scenarios.gang_restarts_as_a_whole_and_resumes(cluster, make)
