"""Disruptions mid-run on the real control plane: a killed trainer, an eviction, a killed operator."""

from __future__ import annotations

from tests.e2e_cluster import scenarios


def test_a_killed_trainer_restarts_and_resumes_from_its_checkpoint(cluster, make):
    scenarios.killed_trainer_restarts_and_resumes(cluster, make)


def test_an_eviction_resumes_and_counts_as_a_preemption_only(cluster, make):
    scenarios.eviction_resumes_as_a_preemption(cluster, make)


def test_a_killed_and_restarted_operator_neither_duplicates_nor_loses_children(cluster, make):
    scenarios.restarted_operator_keeps_one_set_of_children(cluster, make)
