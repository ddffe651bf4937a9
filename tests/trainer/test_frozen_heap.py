"""`train.frozen_heap`: the objects alive before training stay out of the collector's passes while it runs."""

from __future__ import annotations

import gc

import pytest

from kubetune_trainer.train import frozen_heap


def test_the_heap_is_frozen_inside_and_released_after() -> None:
    assert gc.get_freeze_count() == 0
    kept = [[] for _ in range(1000)]  # alive before: frozen
    with frozen_heap():
        assert gc.get_freeze_count() >= len(kept)
        garbage = [[]]
        garbage[0].append(garbage)  # a cycle made during training is still collected
        del garbage
        assert gc.collect() >= 2
    assert gc.get_freeze_count() == 0


def test_the_heap_is_released_when_training_fails() -> None:
    with pytest.raises(RuntimeError), frozen_heap():
        raise RuntimeError("the trainer failed")
    assert gc.get_freeze_count() == 0
