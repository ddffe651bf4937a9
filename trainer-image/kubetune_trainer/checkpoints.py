"""Checkpoints that survive being killed at any moment.

A checkpoint folder counts only once its marker (`contract.CHECKPOINT_COMPLETE_MARKER`)
exists. The marker is written by global rank 0 after a barrier, when every rank has
finished writing its part (model, optimizer, per-rank RNG state, trainer state).
On start the trainer resumes from the newest marked folder and deletes unmarked ones:
a folder left by a kill mid-save would otherwise crash `from_pretrained` on every
restart, or count against `saveTotalLimit`. Rotation happens after marking, so a
kill between saving and marking never leaves the run without a complete checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.trainer_utils import rotate_checkpoints

from kubetune_trainer.contract import CHECKPOINT_COMPLETE_MARKER, CHECKPOINT_PREFIX
from kubetune_trainer.distributed import barrier, is_global_zero

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Checkpoint:
    """One checkpoint folder and its step."""

    step: int
    path: Path

    @property
    def complete(self) -> bool:
        """Whether every rank finished writing it (its marker exists)."""
        return (self.path / CHECKPOINT_COMPLETE_MARKER).is_file()


def list_checkpoints(directory: Path) -> list[Checkpoint]:
    """All `checkpoint-<step>` folders in `directory`, oldest step first."""
    if not directory.is_dir():
        return []
    found = []
    for path in directory.iterdir():
        suffix = path.name.removeprefix(CHECKPOINT_PREFIX)
        if path.is_dir() and path.name.startswith(CHECKPOINT_PREFIX) and suffix.isdigit():
            found.append(Checkpoint(int(suffix), path))
    return sorted(found, key=lambda checkpoint: checkpoint.step)


def newest_complete(directory: Path) -> Checkpoint | None:
    """The highest-step complete checkpoint, or None."""
    complete = [checkpoint for checkpoint in list_checkpoints(directory) if checkpoint.complete]
    return complete[-1] if complete else None


def remove_incomplete(directory: Path) -> list[Path]:
    """Delete unmarked checkpoint folders (left by a kill mid-save); returns what was removed."""
    removed = []
    for checkpoint in list_checkpoints(directory):
        if not checkpoint.complete:
            shutil.rmtree(checkpoint.path, ignore_errors=True)
            removed.append(checkpoint.path)
    return removed


def write_marker(path: Path, step: int) -> float:
    """Mark `path` complete (fsynced, so a crash right after cannot lose it); returns the time written."""
    now = time.time()
    marker = path / CHECKPOINT_COMPLETE_MARKER
    tmp = marker.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump({"step": step, "time": now}, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, marker)
    return now


class CompleteCheckpointCallback(TrainerCallback):
    """Marks each saved checkpoint complete after a barrier, then rotates old ones.

    `on_saved(step, path, seconds, time)` is called on global rank 0 once a checkpoint is
    complete (metrics use it).
    """

    def __init__(self, save_total_limit: int, on_saved: Any = None) -> None:
        self.save_total_limit = save_total_limit
        self.on_saved = on_saved
        self._save_started: float | None = None

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        # Flow callbacks run first and decide on saving; the Trainer saves right after this.
        if control.should_save:
            self._save_started = time.monotonic()

    def on_evaluate(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        # The Trainer evaluates before it saves: time the save alone.
        if self._save_started is not None:
            self._save_started = time.monotonic()

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        path = Path(args.output_dir) / f"{CHECKPOINT_PREFIX}{state.global_step}"
        barrier()
        if is_global_zero():
            written = write_marker(path, state.global_step)
            rotate_checkpoints(
                args.output_dir,
                save_total_limit=self.save_total_limit,
                best_model_checkpoint=state.best_model_checkpoint,
            )
            seconds = time.monotonic() - self._save_started if self._save_started else 0.0
            self._save_started = None
            log.info("checkpoint %s complete (%.1f s)", path, seconds)
            if self.on_saved is not None:
                self.on_saved(state.global_step, path, seconds, written)
        # Nobody reads the folder before it is marked.
        barrier()
