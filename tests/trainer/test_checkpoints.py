"""Only checkpoints with a completion marker count; unmarked ones are removed before resuming."""

from __future__ import annotations

from pathlib import Path

from kubetune_trainer.checkpoints import list_checkpoints, newest_complete, remove_incomplete, write_marker
from kubetune_trainer.contract import CHECKPOINT_COMPLETE_MARKER


def _checkpoint(folder: Path, step: int, complete: bool) -> Path:
    path = folder / f"checkpoint-{step}"
    path.mkdir(parents=True)
    (path / "adapter_model.safetensors").write_bytes(b"x")
    if complete:
        write_marker(path, step)
    return path


def test_steps_sort_numerically_and_strangers_are_ignored(tmp_path: Path) -> None:
    for step in (100, 20, 3):
        _checkpoint(tmp_path, step, complete=True)
    (tmp_path / "checkpoint-final").mkdir()
    (tmp_path / "runs").mkdir()
    assert [c.step for c in list_checkpoints(tmp_path)] == [3, 20, 100]


def test_newest_complete_skips_a_newer_partial_one(tmp_path: Path) -> None:
    _checkpoint(tmp_path, 10, complete=True)
    _checkpoint(tmp_path, 20, complete=True)
    _checkpoint(tmp_path, 30, complete=False)
    newest = newest_complete(tmp_path)
    assert newest is not None and newest.step == 20


def test_no_checkpoint_means_a_fresh_start(tmp_path: Path) -> None:
    assert newest_complete(tmp_path / "missing") is None
    _checkpoint(tmp_path, 5, complete=False)
    assert newest_complete(tmp_path) is None


def test_remove_incomplete_keeps_complete_ones(tmp_path: Path) -> None:
    keep = _checkpoint(tmp_path, 10, complete=True)
    drop = _checkpoint(tmp_path, 20, complete=False)
    assert remove_incomplete(tmp_path) == [drop]
    assert keep.exists() and not drop.exists()


def test_marker_records_step_and_time(tmp_path: Path) -> None:
    path = _checkpoint(tmp_path, 7, complete=False)
    written = write_marker(path, 7)
    assert written > 0
    assert '"step": 7' in (path / CHECKPOINT_COMPLETE_MARKER).read_text()
    assert not list(path.glob("*.tmp"))
