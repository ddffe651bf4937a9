"""Fixtures shared by the trainer tests: one tiny model and one toy dataset per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures.models import save_tiny_model
from tests.trainer.sft_runs import toy_rows, write_jsonl


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer random Llama with the test tokenizer, saved as a checkpoint folder."""
    return save_tiny_model(tmp_path_factory.mktemp("models") / "llama", "llama")


@pytest.fixture(scope="session")
def tiny_qwen2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer random Qwen2 with the test tokenizer, saved as a checkpoint folder."""
    return save_tiny_model(tmp_path_factory.mktemp("models") / "qwen2", "qwen2")


@pytest.fixture(scope="session")
def toy_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """240 rows of the letter-reversal task as JSONL."""
    return write_jsonl(tmp_path_factory.mktemp("data") / "toy.jsonl", toy_rows())
