"""Disruptions mid-run on the emulated cluster: a killed trainer, an eviction, a killed operator."""

from __future__ import annotations

from tests.e2e_emulated import scenarios


def test_a_killed_trainer_restarts_and_resumes_from_its_checkpoint(cluster, make):
    scenarios.killed_trainer_restarts_and_resumes(cluster, make)


def test_an_eviction_resumes_and_counts_as_a_preemption_only(cluster, make):
    scenarios.eviction_resumes_as_a_preemption(cluster, make)


def test_a_killed_and_restarted_operator_neither_duplicates_nor_loses_children(cluster, make):
    scenarios.restarted_operator_keeps_one_set_of_children(cluster, make)
    creates = [c for c in cluster.emulator.calls if c.verb == "create" and c.resource == "jobs"]
    assert len(creates) == 1, creates  # the new operator adopted the Job instead of trying again
