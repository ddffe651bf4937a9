"""Fused LoRA projections (`training.fusedLora`): base matmul and adapter in one autograd node.

peft computes a LoRA projection on a 4-bit base as six separate tensors the size of the
projection's input or output: `base(x)`, a defensive `clone()` of it, `dropout(x)` (a copy, kept
for the backward), `lora_B(lora_A(.))`, `* scaling`, and `result + output`. On the Llama-3.2-1B
shape with 32k tokens per micro-batch those are ~13 GB of memory traffic per layer per forward,
done twice (gradient checkpointing recomputes the forward) and again in the backward; the
matmuls themselves are the same.

Here one `torch.autograd.Function` per projection (q, k, v, o, gate, up, down) does:

    forward   out = x @ W^T (+ bias);  xa = dropout(x) @ A^T;  out += scaling * xa @ B^T  (addmm, in place;
              in fp8 one matmul: [x | xa] @ [W | scaling * B]^T)
    backward  dx = g @ W + dropout'(scaling * (g @ B) @ A);  dA = (scaling * g @ B)^T @ dropout(x);
              dB = scaling * g^T @ xa

`W` is the frozen base weight: bitsandbytes' NF4/FP4 weight dequantized into a reused buffer
(once in the forward, once in the backward, never kept), or the 16-bit weight itself. Nothing
runs in fp32: the fused path takes a projection only when the input, the adapter and the base
compute in one dtype (TRL and `training.adapterInComputeDtype` put the adapter in bf16);
otherwise that call goes through peft's own forward. Saved for the backward: the input (shared
with the base matmul, and across q/k/v), the rank-r product `xa`, and with dropout a boolean
mask; peft keeps a dropped-out copy of the input per projection instead.

Dropout draws its mask with `aten.native_dropout`, the op `nn.Dropout` itself runs, in the same
order as peft, so with one seed the fused and the plain model draw the same masks.

`training.fusedDropout` moves that dropout into `fused_dropout`'s Triton kernels (a mask
regenerated from a seed, no mask or dropped copy kept; other random numbers than peft's), and
`training.selectiveCheckpointing` makes the down projection keep its base matmul's output for
the backward (`KEEP_BASE_OUTPUT`, `BASE_OUTPUT_MARK`, read by the policy in `speed`), and
`training.fp8BaseMatmuls` runs the base matmuls (forward and input gradient) in e4m3 through
`fp8_matmul` (`FP8_BASE`).

Unsloth's `fast_lora.py` does the same algebra for dropout 0 only (it leaves the LoRA matrices
unpatched otherwise); this path also covers the recipe default, dropout 0.05. PyTorch ops are
enough: the gain is removing whole passes over activations, which cuBLAS' `addmm` epilogue
(accumulate into `out`) already gives without a custom kernel.

Where it does not apply (8-bit bases, DoRA and other peft variants, Conv1D's fan_in_fan_out,
LoRA with a bias on B, ZeRO-3's sharded weights, a disabled or merged adapter, several active
adapters) modules keep peft's forward; the recipe refuses an explicit `fusedLora: true` where
it can see that it cannot apply (8-bit base, ZeRO-3).
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from kubetune_api.recipe import FineTuneJobSpec

log = logging.getLogger(__name__)

_FUSED_CLASSES: dict[type, type] = {}

DROPOUT_KERNEL = "kubetune_dropout_kernel"
"""Module attribute: true lets the fused forward apply LoRA dropout in `fused_dropout`'s kernels."""

KEEP_BASE_OUTPUT = "kubetune_keep_base_output"
"""Module attribute: true makes the fused forward mark its base matmul for selective checkpointing (`speed`)."""


FP8_BASE = "kubetune_fp8_base"
"""Module attribute: true runs the base matmuls in e4m3 (`fp8_matmul`) where the shapes allow."""


class _Mark(threading.local):
    """Set just before a base matmul whose output selective checkpointing keeps; its policy reads and clears it."""

    pending = False


BASE_OUTPUT_MARK = _Mark()
# One dequantization buffer per (device, dtype): the weight lives only between its dequantize
# and the matmul that reads it, all on one stream, so every projection can share it and the
# allocator is not asked for a fresh weight-sized block twice per projection per pass.
_SCRATCH: dict[tuple[Any, Any], Any] = {}


def _scratch(shape: torch.Size, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A buffer of `shape` from the shared dequantization scratch space (grown when too small)."""
    import torch

    numel = shape[0] * shape[1]
    buffer = _SCRATCH.get((device, dtype))
    if buffer is None or buffer.numel() < numel:
        buffer = torch.empty(numel, dtype=dtype, device=device)
        _SCRATCH[(device, dtype)] = buffer
    return buffer[:numel].view(shape)


def _is_4bit(base: Any) -> bool:
    return getattr(base.weight, "quant_state", None) is not None


def dense_weight(base: Any, dtype: torch.dtype) -> torch.Tensor:
    """The base layer's weight as a dense (out, in) tensor of `dtype`; 4-bit weights go to the scratch buffer."""
    if not _is_4bit(base):
        weight = base.weight
        return weight if weight.dtype == dtype else weight.to(dtype)
    import bitsandbytes.functional as bnb_functional

    state = base.weight.quant_state
    if state.dtype != dtype or base.weight.device.type != "cuda":  # bitsandbytes' CPU backend has no `out=`
        return bnb_functional.dequantize_4bit(base.weight, state).to(dtype)
    out = _scratch(state.shape, dtype, base.weight.device)
    return bnb_functional.dequantize_4bit(base.weight, state, out=out)


class FusedLoraFunction:
    """Namespace for the autograd function (created lazily: torch is imported only when used)."""

    _function: Any = None

    @classmethod
    def get(cls) -> Any:
        """The `torch.autograd.Function` subclass (built once)."""
        if cls._function is None:
            cls._function = _build_function()
        return cls._function


def _build_function() -> Any:
    import torch

    from kubetune_trainer import fp8_matmul, fused_dropout

    class _FusedLora(torch.autograd.Function):
        """out = x W^T + b + s · dropout(x) A^T B^T, with W re-dequantized in the backward instead of kept."""

        @staticmethod
        def forward(  # type: ignore[override]
            ctx: Any,
            x: torch.Tensor,
            lora_a: torch.Tensor,
            lora_b: torch.Tensor,
            bias: torch.Tensor | None,
            base: Any,
            scaling: float,
            p: float,
            keep_base_output: bool,
            dropout_kernel: bool,
            fp8: bool,
        ) -> torch.Tensor:
            rows = x.reshape(-1, x.shape[-1])
            # The adapter's side first, so the dropped-out copy is gone before the output is allocated
            # (the base matmul draws no random numbers: the masks are still peft's).
            seed = None
            if p > 0 and dropout_kernel and fused_dropout.applies(rows):  # training.fusedDropout: no mask kept
                mask, seed = None, fused_dropout.draw_seed()
                xa = fused_dropout.dropout_down(rows, lora_a, p, seed)
            elif p > 0:
                dropped, mask = torch.ops.aten.native_dropout(rows, p, True)
                xa = torch.mm(dropped, lora_a.t())
                del dropped
            else:
                mask, xa = None, torch.mm(rows, lora_a.t())
            weight = dense_weight(base, x.dtype)
            fp8 = fp8 and fp8_matmul.fits(rows, weight)
            if keep_base_output:  # selective checkpointing keeps this matmul's output: mark it, never write into it
                BASE_OUTPUT_MARK.pending = True
            if fp8:  # the adapter's term rides inside the e4m3 matmul: [x | xa] @ [W | s·B]^T
                out = fp8_matmul.mm_weight_t(x, rows, weight, (xa, lora_b, scaling))
                out = out if bias is None else out + bias
            else:
                out = torch.mm(rows, weight.t()) if bias is None else torch.addmm(bias, rows, weight.t())
            BASE_OUTPUT_MARK.pending = False  # read during the matmul's dispatch only (outside SAC nobody reads it)
            if not fp8:  # the adapter's term on its own (in fp8 it is already in `out`)
                if keep_base_output:
                    out = torch.addmm(out, xa, lora_b.t(), alpha=scaling)
                else:
                    out.addmm_(xa, lora_b.t(), alpha=scaling)
            ctx.save_for_backward(x, lora_a, lora_b, xa, mask)
            ctx.base, ctx.scaling, ctx.p, ctx.has_bias, ctx.seed = base, scaling, p, bias is not None, seed
            ctx.fp8 = fp8
            return out.view(*x.shape[:-1], out.shape[-1])

        @staticmethod
        def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
            x, lora_a, lora_b, xa, mask = ctx.saved_tensors
            if ctx.fp8:
                fp8_matmul.forget_input()
            need_x, need_a, need_b, need_bias = ctx.needs_input_grad[:4]
            rows = x.reshape(-1, x.shape[-1])
            g = grad.reshape(-1, grad.shape[-1])
            if g.dtype != x.dtype:
                g = g.to(x.dtype)
            keep = 1.0 / (1.0 - ctx.p) if ctx.p > 0 else 1.0
            gb = torch.mm(g, lora_b).mul_(ctx.scaling)  # (tokens, r): the gradient reaching A's output
            grad_a = grad_b = grad_x = grad_bias = None
            if need_b:
                grad_b = torch.mm(g.t(), xa).mul_(ctx.scaling)
            if need_a and ctx.seed is not None:
                grad_a = fused_dropout.dropout_grad_a(gb, rows, ctx.p, ctx.seed)
            elif need_a:
                dropped = rows if mask is None else torch.ops.aten.native_dropout_backward(rows, mask, keep)
                grad_a = torch.mm(gb.t(), dropped)
                del dropped  # input-sized: freed before the input gradient's two input-sized tensors exist
            if need_x:
                weight = dense_weight(ctx.base, x.dtype)
                grad_x = fp8_matmul.mm_weight(g, weight) if ctx.fp8 else torch.mm(g, weight)
                if ctx.seed is not None:
                    fused_dropout.dropout_up_add_(grad_x, gb, lora_a, ctx.p, ctx.seed)
                elif mask is None:
                    grad_x.addmm_(gb, lora_a)
                else:  # mask, 1/(1-p) and the sum in one pass
                    grad_x.addcmul_(torch.mm(gb, lora_a), mask, value=keep)
                grad_x = grad_x.view(x.shape)
            if need_bias and ctx.has_bias:
                grad_bias = g.sum(dim=0)
            return grad_x, grad_a, grad_b, grad_bias, None, None, None, None, None, None

    return _FusedLora


def _fast_path_inputs(module: Any, x: torch.Tensor, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """(A, B, bias, scaling, p) when this call can take the fused path, else None (peft's forward)."""
    import torch

    if args or kwargs or module.disable_adapters or module.merged:
        return None
    active = module.active_adapters
    if len(active) != 1 or active[0] not in module.lora_A or active[0] in getattr(module, "lora_variant", {}):
        return None
    name = active[0]
    lora_a, lora_b = module.lora_A[name], module.lora_B[name]
    base = module.get_base_layer()
    if getattr(getattr(base.weight, "quant_state", None), "packing_format_for_cpu", False):
        return None  # bitsandbytes repacked it for its CPU inference kernel: dequantize_4bit would misread it
    compute = getattr(base, "compute_dtype", None) or (x.dtype if _is_4bit(base) else base.weight.dtype)
    if not x.dtype == lora_a.weight.dtype == lora_b.weight.dtype == compute:
        return None
    if torch.is_autocast_enabled(x.device.type) and torch.get_autocast_dtype(x.device.type) != x.dtype:
        return None
    dropout = module.lora_dropout[name]
    p = float(getattr(dropout, "p", 0.0)) if dropout.training else 0.0
    bias = base.bias
    if bias is not None and bias.dtype != x.dtype:
        bias = bias.to(x.dtype)
    return lora_a.weight, lora_b.weight, bias, float(module.scaling[name]), p


def fused_forward(self: Any, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    """The forward of a fused LoRA projection; falls back to peft's own for anything it does not cover."""
    import torch

    inputs = _fast_path_inputs(self, x, args, kwargs)
    if inputs is None:
        return super(type(self), self).forward(x, *args, **kwargs)
    lora_a, lora_b, bias, scaling, p = inputs
    keep = bool(getattr(self, KEEP_BASE_OUTPUT, False))
    kernel = bool(getattr(self, DROPOUT_KERNEL, False))
    fp8 = bool(getattr(self, FP8_BASE, False))
    with torch.autocast(x.device.type, enabled=False):
        return _apply_eager(x, lora_a, lora_b, bias, self.get_base_layer(), scaling, p, keep, kernel, fp8)


def _apply_eager(*args: Any) -> torch.Tensor:
    """Run the autograd function outside torch.compile (`training.compileLayers` compiles around it).

    bitsandbytes' dequantization and the shared scratch buffer are not traceable; a clean graph
    break here keeps dynamo from trying, and costs nothing in eager mode.
    """
    return _EAGER_APPLY[0](*args)


# The autograd function's `apply` behind `torch.compiler.disable`, made by `apply` before anything
# is compiled: built lazily inside a compiled region, its class statement broke dynamo's graph
# (`Invalid call to __build_class__`), and dynamo traced into the builder.
_EAGER_APPLY: list[Any] = []


def _prepare_eager_apply() -> None:
    import torch

    if not _EAGER_APPLY:
        _EAGER_APPLY.append(torch.compiler.disable(FusedLoraFunction.get().apply, recursive=True))


def _fusable_reason(module: Any) -> str | None:
    """Why this LoRA module cannot take the fused path (None: it can)."""
    import torch
    from peft.tuners.lora import Linear as LoraLinear

    classes: tuple[type, ...] = (LoraLinear,)
    try:
        from peft.tuners.lora.bnb import Linear4bit as LoraLinear4bit

        classes += (LoraLinear4bit,)
    except ImportError:  # bitsandbytes missing: 16-bit bases only
        pass
    if type(module) not in classes:
        return f"{type(module).__name__} is not a plain LoRA Linear on a 16-bit or 4-bit base"
    base = module.get_base_layer()
    if not _is_4bit(base) and type(base) is not torch.nn.Linear:
        return f"its base is a {type(base).__name__}"
    if base.weight.numel() == 0 or base.weight.device.type == "meta":
        return "its base weight is sharded or not materialized (ZeRO-3)"
    if getattr(module, "fan_in_fan_out", False):
        return "fan_in_fan_out (Conv1D) weights"
    if getattr(module, "lora_variant", None) or any(getattr(module, "use_dora", {}).values()):
        return "a peft variant (DoRA)"
    if any(layer.bias is not None for layer in module.lora_B.values()):
        return "lora_bias"
    return None


def apply(model: Any) -> int:
    """Switch every fusable LoRA projection of `model` to the fused forward; returns how many.

    The switch changes each module's class to a subclass whose forward is `fused_forward`
    (deepcopy- and state_dict-safe: parameters, names and peft's isinstance checks are unchanged).
    """
    _prepare_eager_apply()  # before any torch.compile traces a fused forward
    fused, refused = 0, set()
    for module in model.modules():
        if type(module) in _FUSED_CLASSES.values():
            fused += 1
            continue
        if not hasattr(module, "lora_A"):
            continue
        reason = _fusable_reason(module)
        if reason is not None:
            refused.add(reason)
            continue
        cls = type(module)
        if cls not in _FUSED_CLASSES:
            _FUSED_CLASSES[cls] = type(f"Fused{cls.__name__}", (cls,), {"forward": fused_forward, "__module__": __name__})
        module.__class__ = _FUSED_CLASSES[cls]
        fused += 1
    for reason in sorted(refused):
        log.info("training.fusedLora: some LoRA modules keep peft's forward: %s", reason)
    return fused


def remove(model: Any) -> None:
    """Undo `apply`: every fused module gets its peft class back."""
    plain = {fused: cls for cls, fused in _FUSED_CLASSES.items()}
    for module in model.modules():
        if type(module) in plain:
            module.__class__ = plain[type(module)]


def apply_from_recipe(model: Any, spec: FineTuneJobSpec) -> None:
    """`training.fusedLora` once the trainer holds the model; the assembly step then applies
    `speed.apply_model_levers` (selectiveCheckpointing reads the fused modules).

    CUDA only: the CPU keeps peft's path, like the other levers.
    """
    import torch

    if spec.training.fused_lora is False or not torch.cuda.is_available():
        return
    if not spec.has_fused_path:
        # Unset (the default) means "where it applies"; an explicit true was refused by the recipe already.
        log.info("training.fusedLora: not applied (8-bit base or ZeRO-3); peft's LoRA forward")
        return
    count = apply(model)
    log.info("training.fusedLora: %d LoRA projections fused with their base matmul", count)
    if spec.training.fused_dropout and spec.method.lora.dropout > 0:
        set_dropout_kernel(model, True)
        log.info("training.fusedDropout: LoRA dropout drawn inside the fused projections' Triton kernels")
    if spec.training.fp8_base_matmuls:
        from kubetune_trainer import fp8_matmul

        if fp8_matmul.available(torch.cuda.current_device()):
            set_fp8_base(model, True)
            log.info("training.fp8BaseMatmuls: the fused projections' base matmuls run in e4m3 (row-wise scales)")
        else:
            log.warning("training.fp8BaseMatmuls: this GPU has no e4m3 tensor cores (compute capability below "
                        "%d.%d); the base matmuls stay in bf16", *fp8_matmul.MIN_CAPABILITY)


def _set_on_fused(model: Any, attribute: str, on: bool) -> None:
    for module in model.modules():
        if type(module) in _FUSED_CLASSES.values():
            setattr(module, attribute, on)


def set_dropout_kernel(model: Any, on: bool) -> None:
    """Let (or stop) every fused projection of `model` apply its dropout in `fused_dropout`'s kernels."""
    _set_on_fused(model, DROPOUT_KERNEL, on)


def set_fp8_base(model: Any, on: bool) -> None:
    """Run (or stop running) every fused projection's base matmuls in e4m3 (`fp8_matmul`)."""
    _set_on_fused(model, FP8_BASE, on)
