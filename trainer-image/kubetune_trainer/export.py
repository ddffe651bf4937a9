"""What a finished run leaves in the output folder: the adapter, optionally a merged model and an archive.

    output/adapter/   adapter_model.safetensors, adapter_config.json, the tokenizer
    output/base/      the base as a transformers checkpoint, when it came from a GGUF file
    output/merged/    the base with the adapter merged in (output.mergeAdapter, `kubetune merge`)
    output/<name>.tar.gz  adapter (and merged model), summary and samples (output.archive)

The adapter must load with the standard calls (`AutoPeftModelForCausalLM.from_pretrained
(adapter)`, vLLM's `--enable-lora`), which read the base from `base_model_name_or_path`
in adapter_config.json. A hub id or a checkpoint folder loads as is. A folder holding a
GGUF file does not (from_pretrained needs `gguf_file=`), and the hub checkpoint the GGUF
was made from is not the same weights (the GGUF is quantized: the adapter learned on its
dequantized values, and hub access is not a given); so the dequantized base is written
to output/base and the adapter points there.

Every tokenizer saved here carries the chat template that renders prompts as training
did (`formats.training_chat_template`), so a server that applies it prompts the model
the way it was taught.

Each is written into a temporary sibling folder and renamed into place, so an
interrupted export never leaves a half-written result where a complete one was.
"""

from __future__ import annotations

import json
import shutil
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from kubetune_trainer.distributed import barrier, is_global_zero

if TYPE_CHECKING:
    from kubetune_api.recipe import DatasetSpec
    from transformers import PreTrainedModel, PreTrainedTokenizerBase, Trainer

ADAPTER_DIR = "adapter"
BASE_DIR = "base"
MERGED_DIR = "merged"
ADAPTER_CONFIG = "adapter_config.json"


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


def save_tokenizer(tokenizer: PreTrainedTokenizerBase, folder: Path, dataset: DatasetSpec | None) -> None:
    """Save `tokenizer` to `folder` with the chat template that renders `dataset`'s prompts as training did.

    The live tokenizer gets its own template back: it is still used after the export.
    """
    from kubetune_trainer.formats import training_chat_template

    kept = tokenizer.chat_template
    chat_template = training_chat_template(dataset, tokenizer) if dataset is not None else None
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    try:
        tokenizer.save_pretrained(folder)
    finally:
        tokenizer.chat_template = kept


def save_adapter(
    trainer: Trainer, tokenizer: PreTrainedTokenizerBase, output: Path, dataset: DatasetSpec | None = None
) -> Path:
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
        save_tokenizer(tokenizer, staging, dataset)
        _swap(staging, target)
    return target


def _save_model(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, target: Path,
                dataset: DatasetSpec | None) -> Path:
    """A whole model and its tokenizer as a checkpoint folder at `target`, swapped in when complete."""

    def write(folder: Path) -> None:
        model.save_pretrained(folder, safe_serialization=True)
        save_tokenizer(tokenizer, folder, dataset)

    return _replace_dir(target, write)


def save_base(
    load_base: Callable[[], PreTrainedModel], adapter_dir: Path, tokenizer: PreTrainedTokenizerBase, output: Path,
    dataset: DatasetSpec | None = None,
) -> Path:
    """Write the unquantized base to output/base and point the adapter's `base_model_name_or_path` at it."""
    base = _save_model(load_base(), tokenizer, output / BASE_DIR, dataset)
    set_adapter_base(adapter_dir, str(base.resolve()))
    return base


def set_adapter_base(adapter_dir: Path, base: str) -> None:
    """Rewrite `base_model_name_or_path` in the adapter's config (atomically: the adapter stays loadable)."""
    path = adapter_dir / ADAPTER_CONFIG
    config = json.loads(path.read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = base
    staging = path.with_name(path.name + ".partial")
    staging.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    staging.replace(path)


def adapter_base(adapter_dir: Path) -> str:
    """The base the adapter names (`base_model_name_or_path` of adapter_config.json)."""
    return str(json.loads((adapter_dir / ADAPTER_CONFIG).read_text(encoding="utf-8"))["base_model_name_or_path"])


def merge_adapter(
    load_base: Callable[[], PreTrainedModel], adapter_dir: Path, tokenizer: PreTrainedTokenizerBase, output: Path,
    dataset: DatasetSpec | None = None,
) -> Path:
    """Merge the saved adapter into a freshly loaded unquantized base; save it to output/merged.

    `load_base` must return the base without quantization: LoRA deltas cannot be merged
    into 4-/8-bit weights without rounding them away, so a QLoRA base is reloaded in 16 bits.
    """
    from peft import PeftModel

    merged = PeftModel.from_pretrained(load_base(), str(adapter_dir)).merge_and_unload()
    return _save_model(merged, tokenizer, output / MERGED_DIR, dataset)


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
