"""Checkpoints that survive being killed at any moment, and that are checked before they are trusted.

A checkpoint folder counts only once its marker (`contract.CHECKPOINT_COMPLETE_MARKER`)
exists. The marker is written by global rank 0 after a barrier, when every rank has
finished writing its part (model, optimizer, per-rank RNG state, trainer state).
On start the trainer resumes from the newest marked folder and deletes unmarked ones:
a folder left by a kill mid-save would otherwise crash `from_pretrained` on every
restart, or count against `saveTotalLimit`. Rotation happens after marking, so a
kill between saving and marking never leaves the run without a complete checkpoint.

The marker also records what the checkpoint holds: every file (every rank's shards,
on the shared volume) with its size and sha256, and the recipe's checkpoint shape
(`checkpoint_shape`). A marked folder can still be damaged later (a truncated
copy, a full disk during a sync, a bit flip, a shard deleted by hand); loading it
crashes on every restart or, worse, resumes silently with a missing optimizer state.
So the resume point is verified against its record first; a damaged one is removed
and the previous complete one is used (or a fresh start), and the caller says so.
No library keeps such a manifest for Trainer checkpoints, hence the few lines here.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kubetune_api.contract import CHECKPOINT_COMPLETE_MARKER, CHECKPOINT_PREFIX
from kubetune_trainer.distributed import barrier, is_global_zero
from kubetune_api.recipe import FineTuneJobSpec

if TYPE_CHECKING:
    from transformers import TrainerCallback

log = logging.getLogger(__name__)


FINISHED_RECORD = "kubetune-finished.json"
"""Written into the output folder when a run has exported its results; a rerun then changes nothing."""


CHECKPOINT_SHAPE_FIELDS = (
    "model.name",
    "model.revision",
    "model.ggufFile",
    "method.type",
    "method.lora.r",
    "method.lora.targetModules",
    "method.lora.bias",
    "method.quantization.bits",
    "method.quantization.quantType",
    "method.quantization.doubleQuant",
    "training.optimizer",
    "deepspeed.zeroStage",
)
"""Spec fields a checkpoint cannot be resumed across: the adapter's tensor shapes, the optimizer
state's layout, the base weights it was trained against. Other fields (steps, learning rate) may change."""


def checkpoint_shape(spec: FineTuneJobSpec) -> dict[str, Any]:
    """The values of CHECKPOINT_SHAPE_FIELDS in `spec` (defaults included), recorded with each checkpoint."""
    dumped = spec.model_dump(mode="json", by_alias=True)
    shape = {}
    for dotted in CHECKPOINT_SHAPE_FIELDS:
        node: Any = dumped
        for part in dotted.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        shape[dotted] = node
    return shape


@dataclass(frozen=True)
class Checkpoint:
    """One checkpoint folder and its step."""

    step: int
    path: Path

    @property
    def complete(self) -> bool:
        """Whether every rank finished writing it (its marker exists)."""
        return (self.path / CHECKPOINT_COMPLETE_MARKER).is_file()

    def record(self) -> dict[str, Any] | None:
        """What the marker recorded (step, time, files, shape); None when it is missing or unreadable."""
        try:
            record = json.loads((self.path / CHECKPOINT_COMPLETE_MARKER).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return record if isinstance(record, dict) else None


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


def _sha256(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def file_manifest(path: Path) -> dict[str, dict[str, Any]]:
    """Every file under `path` but the marker, by relative POSIX name, with its size and sha256."""
    files = {}
    for file in sorted(path.rglob("*")):
        name = file.relative_to(path).as_posix()
        if file.is_file() and not name.startswith(CHECKPOINT_COMPLETE_MARKER):
            files[name] = {"size": file.stat().st_size, "sha256": _sha256(file)}
    return files


def write_marker(path: Path, step: int, shape: dict[str, Any] | None = None) -> float:
    """Record what `path` holds and mark it complete (fsynced, so a crash right after cannot lose it).

    `shape` is the recipe's checkpoint shape (`checkpoint_shape`); returns the time written.
    """
    now = time.time()
    record = {"step": step, "time": now, "files": file_manifest(path), "shape": shape}
    _write_json(path / CHECKPOINT_COMPLETE_MARKER, record)
    return now


def _write_json(target: Path, record: dict[str, Any]) -> None:
    """Write `target` atomically and durably: a reader sees the old file or the whole new one."""
    tmp = target.with_name(target.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(record, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, target)


def damage(checkpoint: Checkpoint) -> list[str]:
    """How a marked checkpoint differs from what its marker recorded; [] when it is intact.

    Sizes are compared first, so a truncated or missing file is found without hashing gigabytes.
    A marker written before manifests existed (no `files`) has nothing to check against: [].
    """
    record = checkpoint.record()
    if record is None:
        return [f"its marker {CHECKPOINT_COMPLETE_MARKER} is unreadable"]
    files = record.get("files")
    if not isinstance(files, dict):
        return []
    problems = []
    present = {}
    for name, expected in files.items():
        file = checkpoint.path / name
        size = file.stat().st_size if file.is_file() else None
        if size is None:
            problems.append(f"{name} is missing")
        elif size != expected["size"]:
            problems.append(f"{name} has {size} bytes, {expected['size']} were written")
        else:
            present[name] = expected
    if problems:
        return problems
    for name, expected in present.items():
        try:
            if _sha256(checkpoint.path / name) != expected["sha256"]:
                problems.append(f"{name} does not match its sha256 (changed after it was written)")
        except OSError as error:
            problems.append(f"{name} cannot be read ({error.strerror})")
    return problems


@dataclass(frozen=True)
class ResumePoint:
    """Where training resumes, and the damaged checkpoints that were set aside on the way."""

    checkpoint: Checkpoint | None
    damaged: tuple[str, ...] = field(default=())

    @property
    def note(self) -> str:
        """One sentence for the log, the outcome and the termination message; empty when nothing was damaged."""
        if not self.damaged:
            return ""
        where = f"resumed from {self.checkpoint.path.name}" if self.checkpoint else "started fresh (no intact checkpoint left)"
        return f"damaged checkpoint removed: {'; '.join(self.damaged)}; {where}"


def choose_resume_point(directory: Path) -> ResumePoint:
    """The newest complete checkpoint that holds what its marker recorded; call on global rank 0 only.

    Damaged ones, newest first, are deleted until an intact one is found: a damaged checkpoint
    must not crash every restart, nor stay around for rotation or a later resume to pick.
    """
    damaged = []
    for checkpoint in reversed([c for c in list_checkpoints(directory) if c.complete]):
        problems = damage(checkpoint)
        if not problems:
            return ResumePoint(checkpoint, tuple(damaged))
        shown = ", ".join(problems[:3]) + (f" and {len(problems) - 3} more" if len(problems) > 3 else "")
        damaged.append(f"{checkpoint.path.name} ({shown})")
        shutil.rmtree(checkpoint.path, ignore_errors=True)
    return ResumePoint(None, tuple(damaged))


def shape_changes(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """`field was X, now Y` for each checkpoint-shape field that differs (fields unknown to either are skipped)."""
    return [
        f"{name} was {json.dumps(recorded[name])}, now {json.dumps(current[name])}"
        for name in current
        if name in recorded and recorded[name] != current[name]
    ]


def recorded_shape(output: Path, directory: Path) -> dict[str, Any] | None:
    """The checkpoint shape the workspace was trained with: the finished record's, else the newest marker's."""
    finished = read_finished(output)
    if finished is not None and isinstance(finished.get("shape"), dict):
        return finished["shape"]
    for checkpoint in reversed(list_checkpoints(directory)):
        record = checkpoint.record()
        if record is not None and isinstance(record.get("shape"), dict):
            return record["shape"]
    return None


def write_finished(output: Path, record: dict[str, Any]) -> None:
    """Record that the run in `output` finished and exported (its step, shape, outputs and progress)."""
    _write_json(output / FINISHED_RECORD, record)


def read_finished(output: Path) -> dict[str, Any] | None:
    """The finished record of `output`, or None when the run there has not finished."""
    try:
        record = json.loads((output / FINISHED_RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def complete_checkpoint_callback(
    save_total_limit: int, on_saved: Any = None, shape: dict[str, Any] | None = None
) -> TrainerCallback:
    """A Trainer callback that records and marks each saved checkpoint complete after a barrier, then rotates.

    The barrier means every rank's shards are on the (shared) volume when rank 0 lists and
    hashes them. `shape` (`checkpoint_shape`) goes into each marker. `on_saved(step, path,
    seconds, time)` is called on global rank 0 once a checkpoint is complete (metrics use it).
    A factory, so this module imports no torch: the resume rules above run before the heavy imports.
    """
    from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
    from transformers.trainer_utils import rotate_checkpoints

    class CompleteCheckpointCallback(TrainerCallback):
        def __init__(self) -> None:
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

        def on_save(
            self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
        ) -> None:
            path = Path(args.output_dir) / f"{CHECKPOINT_PREFIX}{state.global_step}"
            barrier()
            if is_global_zero():
                written = write_marker(path, state.global_step, shape)
                rotate_checkpoints(
                    args.output_dir, save_total_limit=save_total_limit, best_model_checkpoint=state.best_model_checkpoint
                )
                seconds = time.monotonic() - self._save_started if self._save_started else 0.0
                self._save_started = None
                log.info("checkpoint %s complete (%.1f s)", path, seconds)
                if on_saved is not None:
                    on_saved(state.global_step, path, seconds, written)
            # Nobody reads the folder before it is marked.
            barrier()

    return CompleteCheckpointCallback()
