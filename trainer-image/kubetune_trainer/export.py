"""What a finished run leaves in the output folder: the adapter, optionally a merged model and an archive.

    output/adapter/   adapter_model.safetensors, adapter_config.json, the tokenizer
    output/merged/    the base with the adapter merged in (output.mergeAdapter)
    output/<name>.tar.gz  adapter (and merged model), summary and samples (output.archive)

Each is written into a temporary sibling folder and renamed into place, so an
interrupted export never leaves a half-written result where a complete one was.
"""

from __future__ import annotations

import shutil
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from kubetune_trainer.distributed import barrier, is_global_zero

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase, Trainer

ADAPTER_DIR = "adapter"
MERGED_DIR = "merged"


def _swap(staging: Path, target: Path) -> None:
    """Put the finished `staging` folder where `target` was."""
    if target.exists():
        shutil.rmtree(target)
    staging.rename(target)


def _replace_dir(target: Path, write: Callable[[Path], None]) -> Path:
    """Run `write` into `target`'s temporary sibling, then swap it in for `target`."""
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    write(staging)
    _swap(staging, target)
    return target


def save_adapter(trainer: Trainer, tokenizer: PreTrainedTokenizerBase, output: Path) -> Path:
    """Save the LoRA adapter (safetensors) and the tokenizer to output/adapter; call on every rank.

    `Trainer.save_model` gathers sharded weights (DeepSpeed ZeRO-3) and writes on rank 0 only.
    """
    target = output / ADAPTER_DIR
    staging = target.with_name(target.name + ".partial")
    if is_global_zero():
        shutil.rmtree(staging, ignore_errors=True)
    barrier()
    trainer.save_model(str(staging))
    barrier()
    if is_global_zero():
        tokenizer.save_pretrained(staging)
        _swap(staging, target)
    return target


def merge_adapter(
    load_base: Callable[[], PreTrainedModel], adapter_dir: Path, tokenizer: PreTrainedTokenizerBase, output: Path
) -> Path:
    """Merge the saved adapter into a freshly loaded unquantized base; save it to output/merged.

    `load_base` must return the base without quantization: LoRA deltas cannot be merged
    into 4-/8-bit weights without rounding them away, so a QLoRA base is reloaded in 16 bits.
    """
    from peft import PeftModel

    merged = PeftModel.from_pretrained(load_base(), str(adapter_dir)).merge_and_unload()

    def write(folder: Path) -> None:
        merged.save_pretrained(folder, safe_serialization=True)
        tokenizer.save_pretrained(folder)

    return _replace_dir(output / MERGED_DIR, write)


def archive(output: Path, name: str, members: list[Path]) -> Path:
    """A .tar.gz of `members` (paths inside `output`) at output/<name>.tar.gz."""
    target = output / f"{name}.tar.gz"
    staging = target.with_name(target.name + ".partial")
    with tarfile.open(staging, "w:gz") as tar:
        for member in members:
            if member.exists():
                tar.add(member, arcname=member.relative_to(output).as_posix())
    staging.replace(target)
    return target
