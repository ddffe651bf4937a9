"""Only checkpoints with a completion marker count; unmarked ones are removed before resuming.

The marker records every file (every rank's shards) with size and sha256; a marked checkpoint
that no longer matches is set aside for the previous intact one, or a fresh start.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from kubetune_trainer.checkpoints import (
    checkpoint_shape,
    choose_resume_point,
    damage,
    list_checkpoints,
    newest_complete,
    read_finished,
    recorded_shape,
    remove_incomplete,
    shape_changes,
    write_finished,
    write_marker,
)
from kubetune_api.contract import CHECKPOINT_COMPLETE_MARKER
from kubetune_api.recipe import parse_spec

# What a two-process DeepSpeed run leaves in one checkpoint: shared files plus one shard per rank.
TWO_RANK_FILES = {
    "adapter_model.safetensors": b"adapter" * 50,
    "trainer_state.json": b'{"global_step": 10}',
    "rng_state_0.pth": b"rng of rank 0",
    "rng_state_1.pth": b"rng of rank 1",
    "global_step10/zero_pp_rank_0_mp_rank_00_optim_states.pt": b"optimizer shard 0" * 20,
    "global_step10/zero_pp_rank_1_mp_rank_00_optim_states.pt": b"optimizer shard 1" * 20,
}


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


def _two_rank_checkpoint(folder: Path, step: int) -> Path:
    path = folder / f"checkpoint-{step}"
    for name, content in TWO_RANK_FILES.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_bytes(content)
    write_marker(path, step, {"method.lora.r": 8})
    return path


def test_marker_records_every_file_of_every_rank_with_size_and_sha256(tmp_path: Path) -> None:
    path = _two_rank_checkpoint(tmp_path, 10)
    record = json.loads((path / CHECKPOINT_COMPLETE_MARKER).read_text())
    assert record["files"] == {
        name: {"size": len(content), "sha256": hashlib.sha256(content).hexdigest()}
        for name, content in TWO_RANK_FILES.items()
    }
    assert record["shape"] == {"method.lora.r": 8}
    assert damage(list_checkpoints(tmp_path)[0]) == []


def test_missing_shard_of_one_rank_falls_back_to_the_previous_checkpoint(tmp_path: Path) -> None:
    _two_rank_checkpoint(tmp_path, 5)
    newest = _two_rank_checkpoint(tmp_path, 10)
    (newest / "global_step10" / "zero_pp_rank_1_mp_rank_00_optim_states.pt").unlink()

    point = choose_resume_point(tmp_path)

    assert point.checkpoint is not None and point.checkpoint.step == 5
    assert point.note == (
        "damaged checkpoint removed: checkpoint-10 "
        "(global_step10/zero_pp_rank_1_mp_rank_00_optim_states.pt is missing); resumed from checkpoint-5"
    )
    assert not newest.exists()  # never picked again, never counted by rotation


def test_same_size_change_is_caught_by_the_checksum(tmp_path: Path) -> None:
    path = _two_rank_checkpoint(tmp_path, 10)
    (path / "rng_state_1.pth").write_bytes(b"rng of rank 9")
    assert damage(list_checkpoints(tmp_path)[0]) == [
        "rng_state_1.pth does not match its sha256 (changed after it was written)"
    ]


def test_truncated_file_is_named_with_both_sizes(tmp_path: Path) -> None:
    path = _two_rank_checkpoint(tmp_path, 10)
    (path / "adapter_model.safetensors").write_bytes(b"adapter")
    assert damage(list_checkpoints(tmp_path)[0]) == ["adapter_model.safetensors has 7 bytes, 350 were written"]


def test_no_intact_checkpoint_means_a_fresh_start_that_says_so(tmp_path: Path) -> None:
    path = _two_rank_checkpoint(tmp_path, 10)
    (path / CHECKPOINT_COMPLETE_MARKER).write_text('{"step": 10, "fi')  # a marker cut short by a full disk
    point = choose_resume_point(tmp_path)
    assert point.checkpoint is None
    assert point.note.endswith("started fresh (no intact checkpoint left)")
    assert "marker kubetune-complete is unreadable" in point.note


def test_an_intact_newest_checkpoint_is_chosen_silently(tmp_path: Path) -> None:
    _two_rank_checkpoint(tmp_path, 5)
    _two_rank_checkpoint(tmp_path, 10)
    point = choose_resume_point(tmp_path)
    assert point.checkpoint is not None and point.checkpoint.step == 10 and point.note == ""


def test_a_marker_from_before_manifests_is_trusted(tmp_path: Path) -> None:
    path = _checkpoint(tmp_path, 3, complete=False)
    (path / CHECKPOINT_COMPLETE_MARKER).write_text('{"step": 3, "time": 1.0}')
    assert damage(list_checkpoints(tmp_path)[0]) == []


def _spec(**lora: object) -> dict[str, object]:
    return {
        "model": {"name": "/models/tiny"},
        "dataset": {"path": "/data/train.jsonl", "format": "prompt-completion"},
        "method": {"lora": lora},
    }


def test_shape_changes_name_the_field_and_both_values() -> None:
    before = checkpoint_shape(parse_spec(_spec(r=8)))
    after = checkpoint_shape(parse_spec(_spec(r=4, targetModules=["q_proj"], dropout=0.3)))
    assert shape_changes(before, after) == [
        "method.lora.r was 8, now 4",
        'method.lora.targetModules was ["all-linear"], now ["q_proj"]',
    ]  # dropout changes no tensor: resuming across it is allowed


def test_recorded_shape_prefers_the_finished_record(tmp_path: Path) -> None:
    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
    _two_rank_checkpoint(checkpoints, 10)
    assert recorded_shape(tmp_path, checkpoints) == {"method.lora.r": 8}
    write_finished(tmp_path, {"step": 10, "shape": {"method.lora.r": 16}})
    assert recorded_shape(tmp_path, checkpoints) == {"method.lora.r": 16}
    assert read_finished(tmp_path) == {"step": 10, "shape": {"method.lora.r": 16}}
    assert read_finished(tmp_path / "elsewhere") is None
