"""Speed levers for training on GPUs, each behind a `training.*` switch of the recipe.

- `training.ligerKernels`: Liger's Triton kernels for RMSNorm, SwiGLU and RoPE, through TRL's
  `use_liger_kernel`. Liger's fused linear cross-entropy stays off: TRL 1.16's SFTTrainer
  already scores the LM head in chunks (`add_fused_lm_head`) and refuses Liger's.
- `training.varlenAttention`: with `training.packing`, TRL flattens each micro-batch into one
  row and marks the examples by `position_ids`; sdpa then attends over a dense block-diagonal
  mask of the whole row (work and memory grow with (micro-batch x maxSeqLength)^2). This runs
  each packed example through PyTorch's flash varlen kernel instead, using the boundaries
  (`cu_seq_lens_*`) that TRL's collator already computes.
- `training.adapterInComputeDtype`: LoRA weights in bf16 on a bf16 base too (TRL does this for
  quantized bases only; peft upcasts adapters to fp32, and then casts every LoRA input to fp32).
- `training.selectiveCheckpointing`: gradient checkpointing that keeps, per layer, the two
  outputs that are dearest to recompute per byte kept: attention (flash attention's forward) and
  the MLP down projection's base matmul (reduction over the 4x wider intermediate: 4x the FLOPs
  per byte of any other projection). PyTorch's selective checkpointing (SAC) policy; everything
  else is recomputed as before.
- `training.offloadActivations`: TRL's activation offloading (saved tensors to pinned host
  memory on a side stream, back before their backward).
- `training.compileLayers`: regional `torch.compile` of each decoder layer; the fused LoRA
  projections stay eager inside it (graph breaks), the elementwise work between them is fused.
- `training.fusedCrossEntropy`: Liger's fused linear cross-entropy in place of TRL's chunked LM
  head for SFT (`fused_ce`): two vocabulary-sized matmuls per step instead of three.
- `training.fp8BaseMatmuls`: the fused LoRA projections' frozen base matmuls in e4m3 with
  row-wise scales on Ada/Hopper (`fp8_matmul`, applied by `fused_lora.apply_from_recipe`).

Each lever applies only on CUDA: on the CPU (tests, the quickstart) the switches change nothing.
The benchmark in `bench/gpu_throughput.py` measures each one; `docs/benchmarks.md` has the numbers.
"""

from __future__ import annotations

import functools
import inspect
import logging
from typing import TYPE_CHECKING, Any

from kubetune_api.recipe import FineTuneJobSpec

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

VARLEN_ATTENTION = "kubetune_varlen"
"""The attention implementation name `varlenAttention` registers with transformers."""

LIGER_KERNELS = {"rope": True, "rms_norm": True, "swiglu": True, "fused_linear_cross_entropy": False}


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@functools.cache
def liger_available() -> bool:
    """Whether liger-kernel imports here (it needs Triton, so a GPU build of torch)."""
    try:
        import liger_kernel.transformers  # noqa: F401
    except Exception as error:  # noqa: BLE001 - any import failure (Triton missing or too old) means "no"
        log.warning("training.ligerKernels: liger-kernel does not import (%s); training without it", error)
        return False
    return True


def sft_options(spec: FineTuneJobSpec, on_cpu: bool) -> dict[str, Any]:
    """Extra SFTConfig arguments of the levers that TRL/transformers apply themselves."""
    options: dict[str, Any] = {}
    if on_cpu:
        return options
    if spec.training.offload_activations:
        options["activation_offloading"] = True
    if spec.training.liger_kernels and liger_available():
        options.update(use_liger_kernel=True, liger_kernel_config=dict(LIGER_KERNELS))
    return options


def apply_model_levers(model: Any, spec: FineTuneJobSpec) -> None:
    """The levers that change the trainer's model in place once it is built: SAC, regional compile, the LM head.

    Called after `fused_lora.apply_from_recipe` (it marks the projections SAC keeps); CUDA only.
    """
    if not _cuda():
        return
    if spec.training.selective_checkpointing and spec.training.gradient_checkpointing:
        count = enable_selective_checkpointing(model)
        log.info("training.selectiveCheckpointing: attention and %d down-projection outputs kept per step", count)
    if spec.training.compile_layers:
        count = compile_layers(model)
        log.info("training.compileLayers: %d decoder layers compiled (one graph, compiled at the first step)", count)
    if spec.training.fused_cross_entropy and liger_available():
        from kubetune_trainer import fused_ce

        fused_ce.apply_from_recipe(model, spec)  # wraps the head SFTTrainer added


def _sac_policy(ctx: Any, op: Any, *args: Any, **kwargs: Any) -> Any:
    """Keep attention and the marked base matmuls; recompute the rest."""
    from torch.utils.checkpoint import CheckpointPolicy

    from kubetune_trainer.fused_lora import BASE_OUTPUT_MARK

    if op in _attention_ops():
        return CheckpointPolicy.MUST_SAVE
    if BASE_OUTPUT_MARK.pending and op in _matmul_ops():
        return CheckpointPolicy.MUST_SAVE
    return CheckpointPolicy.PREFER_RECOMPUTE


@functools.cache
def _attention_ops() -> frozenset[Any]:
    """sdpa's aten attention kernels (the ones this torch build has)."""
    import torch

    names = ("_scaled_dot_product_flash_attention", "_scaled_dot_product_efficient_attention",
             "_scaled_dot_product_cudnn_attention", "_flash_attention_forward",
             "_scaled_dot_product_flash_attention_for_cpu")
    return frozenset(getattr(torch.ops.aten, name).default for name in names if hasattr(torch.ops.aten, name))


@functools.cache
def _matmul_ops() -> frozenset[Any]:
    import torch

    # _scaled_mm: the base matmul under training.fp8BaseMatmuls
    return frozenset({torch.ops.aten.mm.default, torch.ops.aten.addmm.default, torch.ops.aten._scaled_mm.default})


def enable_selective_checkpointing(model: Any) -> int:
    """Make `model`'s gradient checkpointing selective (SAC); returns how many projections keep their output.

    The Trainer (re-)enables checkpointing at `train()`, so the model's own
    `activation_checkpointing_enable` is wrapped to add the policy every time (TRL does the same
    for its attention-only SAC); the callable stays out of the TrainingArguments. The projections
    kept are the fused LoRA ones that write the hidden size from an input at least twice as wide
    (the MLP's down projection); on peft's own forward only attention is kept.
    """
    from functools import partial

    from torch.utils.checkpoint import create_selective_checkpoint_contexts

    from kubetune_trainer import fused_lora

    hidden = model.config.get_text_config().hidden_size
    kept = 0
    for module in model.modules():
        if fused_lora.is_fused_projection(module):
            base = module.get_base_layer()
            # Back into the residual stream from an input at least twice as wide: Llama's down_proj.
            wide = base.out_features == hidden and base.in_features >= 2 * hidden
            setattr(module, fused_lora.KEEP_BASE_OUTPUT, wide)
            kept += wide
    original = model.activation_checkpointing_enable
    if getattr(original, "_kubetune_sac", False):
        return kept
    context_fn = partial(create_selective_checkpoint_contexts, _sac_policy)

    def enable(activation_checkpointing_kwargs: dict[str, Any] | None = None, **kwargs: Any) -> Any:
        options = dict(activation_checkpointing_kwargs or {})
        options.update(use_reentrant=False, context_fn=context_fn)  # SAC works on non-reentrant checkpointing only
        return original(activation_checkpointing_kwargs=options, **kwargs)

    enable._kubetune_sac = True  # type: ignore[attr-defined]
    model.activation_checkpointing_enable = enable
    return kept


def compile_layers(model: Any) -> int:
    """`torch.compile` every decoder layer in place (regional compile); returns how many."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    layers = [module for module in model.modules() if isinstance(module, GradientCheckpointingLayer)]
    for layer in layers:
        layer.compile()
    return len(layers)


def attn_implementation(spec: FineTuneJobSpec) -> str:
    """The attention implementation to load the model with: the recipe's, or the varlen one with packing."""
    requested = spec.model.attn_implementation.value
    training = spec.training
    if requested != "sdpa" or not training.packing or not training.varlen_attention or not _cuda():
        return requested
    if _varlen_kernel() is None:
        log.warning("training.varlenAttention: this torch has no torch.nn.attention.varlen; using sdpa")
        return requested
    register_varlen_attention()
    log.info("training.varlenAttention: packed examples attend through torch.nn.attention.varlen")
    return VARLEN_ATTENTION


def cast_adapter(model: Any, spec: FineTuneJobSpec, bf16: bool) -> None:
    """Cast the trainable LoRA weights to bf16 when training in bf16 (`training.adapterInComputeDtype`).

    Call before the optimizer exists. DoRA magnitude vectors stay in fp32: their updates can be
    smaller than bf16 resolves (TRL excludes them for the same reason). fp16 is left alone: the
    gradient scaler refuses fp16 parameters.
    """
    import torch

    if not spec.training.adapter_in_compute_dtype or not bf16 or not _cuda():
        return
    for name, param in model.named_parameters():
        if param.requires_grad and param.dtype == torch.float32 and "lora_magnitude_vector" not in name:
            param.data = param.data.to(torch.bfloat16)


@functools.cache
def _varlen_kernel() -> tuple[Any, frozenset[str]] | None:
    """PyTorch's varlen flash attention and the names of its parameters (they changed between releases)."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    return varlen_attn, frozenset(inspect.signature(varlen_attn).parameters)


@functools.cache
def register_varlen_attention() -> None:
    """Register `VARLEN_ATTENTION` with transformers' attention and mask registries (once per process)."""
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import flash_attention_mask

    AttentionInterface.register(VARLEN_ATTENTION, varlen_attention_forward)
    # Like flash attention: no dense mask; a 2D padding mask only when a batch is padded.
    AttentionMaskInterface.register(VARLEN_ATTENTION, flash_attention_mask)


def varlen_attention_forward(
    module: Any,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' attention signature: varlen flash for packed rows, sdpa for everything else.

    `query` is (batch, heads, tokens, head_dim); the result is (batch, tokens, heads, head_dim).
    """
    cu_q = kwargs.get("cu_seq_lens_q")
    if cu_q is not None and attention_mask is None and query.shape[0] == 1 and dropout == 0.0:
        return _packed_attention(query, key, value, kwargs, scaling), None
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    mask = _dense_mask(attention_mask, query.shape[2], key.shape[2])
    return sdpa_attention_forward(module, query, key, value, mask, dropout=dropout, scaling=scaling, **kwargs)


def _packed_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, kwargs: dict[str, Any], scaling: float | None
) -> torch.Tensor:
    """Causal attention within each packed example of a (1, heads, tokens, head_dim) row."""
    kernel, params = _varlen_kernel()  # type: ignore[misc]
    q, k, v = (tensor[0].transpose(0, 1) for tensor in (query, key, value))  # (tokens, heads, head_dim)
    extra: dict[str, Any] = {}
    if "enable_gqa" in params:
        extra["enable_gqa"] = q.shape[1] != k.shape[1]
    elif q.shape[1] != k.shape[1]:
        # Older releases take equal head counts only.
        groups = q.shape[1] // k.shape[1]
        k, v = (tensor.repeat_interleave(groups, dim=1) for tensor in (k, v))
    if "scale" in params:
        extra["scale"] = scaling
    if "is_causal" in params:
        extra["is_causal"] = True
    else:
        extra["window_size"] = (-1, 0)  # (-1, 0) is causal in the releases without is_causal
    cu_k = kwargs.get("cu_seq_lens_k", kwargs["cu_seq_lens_q"])
    out = kernel(
        q.contiguous(), k.contiguous(), v.contiguous(),
        kwargs["cu_seq_lens_q"].to(device=q.device, dtype=_int32()), cu_k.to(device=q.device, dtype=_int32()),
        int(kwargs["max_length_q"]), int(kwargs.get("max_length_k", kwargs["max_length_q"])),
        **extra,
    )
    return out.unsqueeze(0)


def _int32() -> torch.dtype:
    import torch

    return torch.int32


def _dense_mask(attention_mask: torch.Tensor | None, q_len: int, kv_len: int) -> torch.Tensor | None:
    """A 4D boolean sdpa mask from flash attention's 2D padding mask (None: sdpa's own causal path).

    The queries are the last `q_len` of `kv_len` positions (a KV cache holds the others).
    """
    import torch

    if attention_mask is None and (q_len == kv_len or q_len == 1):
        return None
    device = attention_mask.device if attention_mask is not None else None
    causal = torch.ones(q_len, kv_len, dtype=torch.bool, device=device).tril(kv_len - q_len)[None, None]
    if attention_mask is None:
        return causal
    mask = causal & attention_mask[:, None, None, -kv_len:].bool()
    # A left-padding query row sees nothing; let it see everything so sdpa returns numbers, not NaN.
    return mask | ~mask.any(dim=-1, keepdim=True)
