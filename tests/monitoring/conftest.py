"""Fixtures of the monitoring tests: the trainer tests' tiny model and toy data."""

from __future__ import annotations

from tests.trainer.conftest import tiny_llama, toy_data

__all__ = ["tiny_llama", "toy_data"]
