"""Fused LoRA projections (`training.fusedLora`): base matmul and adapter in one autograd node.

peft computes a LoRA projection on a 4-bit base as six separate tensors the size of the
projection's input or output: `base(x)`, a defensive `clone()` of it, `dropout(x)` (a copy, kept
for the backward), `lora_B(lora_A(.))`, `* scaling`, and `result + output`. On the Llama-3.2-1B
shape with 32k tokens per micro-batch those are ~13 GB of memory traffic per layer per forward,
done twice (gradient checkpointing recomputes the forward) and again in the backward; the
matmuls themselves are the same.

Here one `torch.autograd.Function` (`_FusedGroup`) per projection, or per group of projections
that read one input (q/k/v, gate/up), does for each:

    forward   out = x @ W^T (+ bias);  xa = dropout(x) @ A^T;  out += scaling * xa @ B^T  (addmm, in place;
              in fp8 one matmul: [x | xa] @ [W | scaling * B]^T)
    backward  dx = g @ W + dropout'(scaling * (g @ B) @ A);  dA = (scaling * g @ B)^T @ dropout(x);
              dB = scaling * g^T @ xa

A group shares its input's save (and, in fp8, its quantized copy), computes every member's
x·A^T in one matmul and, without dropout, every dA in one more; the input gradient is summed in
the node. The decoder layer still calls q_proj, k_proj and v_proj one by one: the first
(`shared_input_forward`) computes all three and the others take theirs if called on the same
tensor, so no model's attention code is patched.

A gated SiLU MLP (Llama's, Mistral's, Qwen's) whose three projections are fused runs its down
projection as `_FusedSwigluDown`: silu(gate)·up is computed inside the node and not kept; the
backward rebuilds it for dA and writes the SwiGLU gradient into gate's and up's buffers, so the
MLP's backward peak holds one intermediate-sized tensor less.

`W` is the frozen base weight: bitsandbytes' NF4/FP4 weight dequantized into a reused buffer
(once in the forward, once in the backward, never kept), or the 16-bit weight itself. Nothing
runs in fp32: the fused path takes a projection only when the input, the adapter and the base
compute in one dtype (TRL and `training.adapterInComputeDtype` put the adapter in bf16);
otherwise that call goes through peft's own forward. Saved for the backward: the input (shared
with the base matmul, and across a group), the rank-r products `xa`, and with dropout a boolean
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

import functools
import logging
import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
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


@dataclass
class _Member:
    """One projection inside an autograd node: what `_projection_args` found, and what its forward decided."""

    base: Any
    scaling: float
    p: float
    keep_base_output: bool
    dropout_kernel: bool
    fp8: bool
    has_bias: bool
    seed: int | None = None
    """`fused_dropout`'s seed, when its kernels drew this projection's dropout mask."""


Projection = tuple[tuple["torch.Tensor", "torch.Tensor", "torch.Tensor | None"], _Member]
"""A projection's tensors (lora_A, lora_B, the base's bias) and its `_Member`: what `_projection_args` returns."""


def _offsets(lora_as: Sequence[torch.Tensor]) -> list[int]:
    """Where each member's columns start among the adapter products laid side by side."""
    offsets, start = [], 0
    for lora_a in lora_as:
        offsets.append(start)
        start += lora_a.shape[0]
    return offsets


def _side_by_side(tensors: Sequence[torch.Tensor], dim: int) -> torch.Tensor:
    """The members' tensors concatenated along `dim` (one member's as it is, without a copy)."""
    import torch

    return tensors[0] if len(tensors) == 1 else torch.cat(list(tensors), dim=dim)


def _no_mask_kept(members: Sequence[_Member], masks: Sequence[torch.Tensor | None]) -> bool:
    """Whether no member drops its input out (no mask and no kernel seed): their adapters can be batched."""
    return all(mask is None and member.seed is None for member, mask in zip(members, masks, strict=True))


def _adapter_products(members: Sequence[_Member], rows: torch.Tensor,
                      lora_as: Sequence[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
    """dropout(x)·A^T of every member side by side, (tokens, sum of ranks), and each member's mask (None: none kept).

    Without dropout one matmul serves every member (one read of the input); with it each member
    draws its own mask in member order, the order in which peft's modules draw them.
    """
    import torch

    from kubetune_trainer import fused_dropout

    if all(member.p == 0 for member in members):
        return torch.mm(rows, _side_by_side(lora_as, 0).t()), [None] * len(members)
    products: list[torch.Tensor] = []
    masks: list[torch.Tensor | None] = []
    for member, lora_a in zip(members, lora_as, strict=True):
        mask = None
        if member.p > 0 and member.dropout_kernel and fused_dropout.applies(rows):  # fusedDropout: no mask kept
            member.seed = fused_dropout.draw_seed()
            xa = fused_dropout.dropout_down(rows, lora_a, member.p, member.seed)
        elif member.p > 0:
            dropped, mask = torch.ops.aten.native_dropout(rows, member.p, True)
            xa = torch.mm(dropped, lora_a.t())
            del dropped  # input-sized: gone before any output is allocated
        else:
            xa = torch.mm(rows, lora_a.t())
        products.append(xa)
        masks.append(mask)
    return _side_by_side(products, 1), masks


def _project(member: _Member, x: torch.Tensor, rows: torch.Tensor, products: torch.Tensor, offset: int,
             lora_b: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """One member's output: rows W^T + b + s · products[:, offset:offset + r] B^T, as (tokens, out_features).

    `x` is the tensor `rows` views (the fp8 path caches its quantized copy by it). Sets `member.fp8`
    to whether the e4m3 path ran (the backward reads it).
    """
    import torch

    from kubetune_trainer import fp8_matmul

    weight = dense_weight(member.base, x.dtype)
    member.fp8 = member.fp8 and fp8_matmul.fits(rows, weight)
    if member.keep_base_output:  # selective checkpointing keeps this matmul's output: mark it, never write into it
        BASE_OUTPUT_MARK.pending = True
    if member.fp8:  # the adapter's term rides inside the e4m3 matmul: [x | xa] @ [W | s·B]^T
        out = fp8_matmul.mm_weight_t(x, rows, weight, fp8_matmul.Adapter(products, lora_b, member.scaling, offset))
        out = out if bias is None else out + bias
    else:
        out = torch.mm(rows, weight.t()) if bias is None else torch.addmm(bias, rows, weight.t())
    BASE_OUTPUT_MARK.pending = False  # read during the matmul's dispatch only (outside SAC nobody reads it)
    if not member.fp8:  # the adapter's term on its own (in fp8 it is already in `out`)
        xa = products[:, offset:offset + lora_b.shape[1]]
        if member.keep_base_output:
            out = torch.addmm(out, xa, lora_b.t(), alpha=member.scaling)
        else:
            out.addmm_(xa, lora_b.t(), alpha=member.scaling)
    return out


def _adapter_grads(members: Sequence[_Member], grads: Sequence[torch.Tensor], rows: torch.Tensor,
                   lora_as: Sequence[torch.Tensor], lora_bs: Sequence[torch.Tensor], products: torch.Tensor,
                   masks: Sequence[torch.Tensor | None], need_a: Sequence[bool],
                   need_b: Sequence[bool]) -> tuple[list[torch.Tensor], torch.Tensor | None, list[Any], list[Any]]:
    """Per member (gb, dA, dB), as (gbs, stacked gbs, dAs, dBs): gb = s · g B reaches A's output.

    Without dropout every member's dA comes from one matmul over the input (read once), through
    the members' gb side by side; that stacked gb is returned for the input gradient (else None).
    """
    import torch

    from kubetune_trainer import fused_dropout

    offsets = _offsets(lora_as)
    gbs = [torch.mm(g, lora_b).mul_(member.scaling) for member, g, lora_b in zip(members, grads, lora_bs, strict=True)]
    grad_bs = [torch.mm(g.t(), products[:, start:start + lora_b.shape[1]]).mul_(member.scaling) if need else None
               for member, g, lora_b, start, need in zip(members, grads, lora_bs, offsets, need_b, strict=True)]
    if not any(need_a):
        return gbs, None, [None] * len(members), grad_bs
    if _no_mask_kept(members, masks):
        stacked = _side_by_side(gbs, 1)
        grad_all = torch.mm(stacked.t(), rows)  # (sum of ranks, in_features)
        return gbs, stacked, [grad_all[start:start + lora_a.shape[0]] if need else None
                              for lora_a, start, need in zip(lora_as, offsets, need_a, strict=True)], grad_bs
    grad_as: list[Any] = []
    for member, gb, mask, need in zip(members, gbs, masks, need_a, strict=True):
        if not need:
            grad_as.append(None)
        elif member.seed is not None:
            grad_as.append(fused_dropout.dropout_grad_a(gb, rows, member.p, member.seed))
        else:
            dropped = rows if mask is None else torch.ops.aten.native_dropout_backward(rows, mask, _keep(member.p))
            grad_as.append(torch.mm(gb.t(), dropped))
            del dropped  # input-sized: freed before the input gradient's input-sized tensors exist
    return gbs, None, grad_as, grad_bs


def _input_grad(members: Sequence[_Member], grads: Sequence[torch.Tensor], gbs: Sequence[torch.Tensor],
                stacked_gb: torch.Tensor | None, lora_as: Sequence[torch.Tensor],
                masks: Sequence[torch.Tensor | None], dtype: torch.dtype) -> torch.Tensor:
    """dx = sum over the members of g W + dropout'(gb A), as (tokens, in_features).

    `stacked_gb` (the gbs side by side, from `_adapter_grads` when no member dropped out) adds
    every member's adapter term in one matmul.
    """
    import torch

    from kubetune_trainer import fp8_matmul, fused_dropout

    grad_x: torch.Tensor | None = None
    for member, g in zip(members, grads, strict=True):
        weight = dense_weight(member.base, dtype)
        if member.fp8:
            part = fp8_matmul.mm_weight(g, weight)
            grad_x = part if grad_x is None else grad_x.add_(part)
            del part
        else:
            grad_x = torch.mm(g, weight) if grad_x is None else grad_x.addmm_(g, weight)
    assert grad_x is not None
    if stacked_gb is not None:
        return grad_x.addmm_(stacked_gb, _side_by_side(lora_as, 0))
    for member, gb, lora_a, mask in zip(members, gbs, lora_as, masks, strict=True):
        if member.seed is not None:
            fused_dropout.dropout_up_add_(grad_x, gb, lora_a, member.p, member.seed)
        elif mask is None:
            grad_x.addmm_(gb, lora_a)
        else:  # mask, 1/(1-p) and the sum in one pass
            grad_x.addcmul_(torch.mm(gb, lora_a), mask, value=_keep(member.p))
    return grad_x


def _keep(p: float) -> float:
    """Dropout's rescaling of the kept entries."""
    return 1.0 / (1.0 - p) if p > 0 else 1.0


def _rows(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """`t` as (tokens, features) in `dtype`."""
    rows = t.reshape(-1, t.shape[-1])
    return rows if rows.dtype == dtype else rows.to(dtype)


def _interleave(*columns: Sequence[Any]) -> list[Any]:
    """[a0, b0, c0, a1, b1, c1, ...] from the columns [a...], [b...], [c...]: the members' flat argument order."""
    return [item for row in zip(*columns, strict=True) for item in row]


def _build_group() -> Any:
    import torch

    from kubetune_trainer import fp8_matmul

    class _FusedGroup(torch.autograd.Function):
        """Projections reading one input (one alone, or q/k/v, gate/up): each out = x W^T + b + s · dropout(x) A^T B^T.

        One node for the group: the input is saved (and in fp8 quantized) once, without dropout the
        adapters' products x·A^T and their dA come from one matmul each, and the input gradient is
        summed here rather than by autograd. W is re-dequantized in the backward instead of kept.
        """

        @staticmethod
        def forward(ctx: Any, x: torch.Tensor, members: tuple[_Member, ...],  # type: ignore[override]
                    *tensors: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
            """`tensors`: each member's (lora_A, lora_B, bias), one after the other; one output per member."""
            rows = x.reshape(-1, x.shape[-1])
            lora_as, lora_bs, biases = tensors[0::3], tensors[1::3], tensors[2::3]
            products, masks = _adapter_products(members, rows, lora_as)
            outs = [_project(member, x, rows, products, start, lora_b, bias).view(*x.shape[:-1], lora_b.shape[0])
                    for member, start, lora_b, bias in zip(members, _offsets(lora_as), lora_bs, biases, strict=True)]
            ctx.members = members
            ctx.save_for_backward(x, products, *lora_as, *lora_bs, *masks)
            return tuple(outs)

        @staticmethod
        def backward(ctx: Any, *grads: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
            members, count = ctx.members, len(ctx.members)
            x, products, *saved = ctx.saved_tensors
            lora_as, lora_bs, masks = saved[:count], saved[count:2 * count], saved[2 * count:]
            if any(member.fp8 for member in members):
                fp8_matmul.forget_input()
            rows, g = x.reshape(-1, x.shape[-1]), [_rows(grad, x.dtype) for grad in grads]
            needs = ctx.needs_input_grad[2:]
            gbs, stacked_gb, grad_as, grad_bs = _adapter_grads(members, g, rows, lora_as, lora_bs, products, masks,
                                                               needs[0::3], needs[1::3])
            grad_x = None
            if ctx.needs_input_grad[0]:
                grad_x = _input_grad(members, g, gbs, stacked_gb, lora_as, masks, x.dtype).view(x.shape)
            grad_biases = [grad.sum(dim=0) if need and member.has_bias else None
                           for member, grad, need in zip(members, g, needs[2::3], strict=True)]
            return grad_x, None, *_interleave(grad_as, grad_bs, grad_biases)

    return _FusedGroup


def _build_swiglu_down() -> Any:
    import torch

    from kubetune_trainer import fp8_matmul

    class _FusedSwigluDown(torch.autograd.Function):
        """out = down(silu(gate) · up) with h = silu(gate) · up never kept: the backward recomputes it.

        The MLP's backward peak is the down projection's input gradient (tokens × intermediate) while
        gate, up and h are alive; peft's (and the per-projection fused) path keeps h for dA. Here h is
        rebuilt from gate and up, used for dA and freed before the input gradient exists, and the
        SwiGLU gradient is written into gate's and up's buffers (as Liger's kernel does): three
        intermediate-sized tensors alive there instead of four (on an H200 the 1B step's peak went
        from 4.40 to 4.21 GiB: the peak moved elsewhere in the layer).
        """

        @staticmethod
        def forward(ctx: Any, gate: torch.Tensor, up: torch.Tensor, members: tuple[_Member],  # type: ignore[override]
                    lora_a: torch.Tensor, lora_b: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
            """`members`, `lora_a`, `lora_b`, `bias`: the down projection's (`_projection_args`)."""
            h = swiglu(gate, up)
            rows = h.reshape(-1, h.shape[-1])
            products, (mask,) = _adapter_products(members, rows, (lora_a,))
            out = _project(members[0], h, rows, products, 0, lora_b, bias)
            ctx.members = members
            ctx.save_for_backward(gate, up, products, lora_a, lora_b, mask)
            return out.view(*h.shape[:-1], out.shape[-1])

        @staticmethod
        def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
            gate, up, products, lora_a, lora_b, mask = ctx.saved_tensors
            members = ctx.members
            if members[0].fp8:
                fp8_matmul.forget_input()
            g = _rows(grad, gate.dtype)
            h = swiglu(gate, up)
            gbs, stacked_gb, (grad_a,), (grad_b,) = _adapter_grads(
                members, [g], h.reshape(-1, h.shape[-1]), [lora_a], [lora_b], products, [mask],
                *([need] for need in ctx.needs_input_grad[3:5]))
            del h
            grad_bias = g.sum(dim=0) if ctx.needs_input_grad[5] and members[0].has_bias else None
            grad_gate = grad_up = None
            if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
                grad_h = _input_grad(members, [g], gbs, stacked_gb, [lora_a], [mask], gate.dtype).view(gate.shape)
                grad_gate, grad_up = swiglu_backward_(gate, up, grad_h)
            return grad_gate, grad_up, None, grad_a, grad_b, grad_bias

    return _FusedSwigluDown


def swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """silu(gate) · up: Liger's kernel on CUDA where it imports, PyTorch's ops elsewhere."""
    import torch

    if gate.is_cuda and _liger_swiglu() is not None:
        return _liger_swiglu()[0](gate, up)[2]
    return torch.nn.functional.silu(gate) * up


def swiglu_backward_(gate: torch.Tensor, up: torch.Tensor, grad_h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(d gate, d up) of h = silu(gate) · up, written into `gate` and `up` (their values are not needed after)."""
    import torch

    if gate.is_cuda and _liger_swiglu() is not None:
        return _liger_swiglu()[1](gate, up, grad_h)
    sigmoid = torch.sigmoid(gate)
    silu = gate * sigmoid
    grad_up = grad_h * silu
    grad_gate = grad_h * up * sigmoid * (1 + gate * (1 - sigmoid))
    gate.copy_(grad_gate)
    up.copy_(grad_up)
    return gate, up


@functools.cache
def _liger_swiglu() -> tuple[Any, Any] | None:
    """Liger's SwiGLU forward and in-place backward, or None where liger-kernel (Triton) does not import."""
    try:
        from liger_kernel.ops.swiglu import swiglu_backward, swiglu_forward
    except Exception:  # noqa: BLE001 - no Triton, or a liger-kernel without these ops: PyTorch's ops
        return None
    return swiglu_forward, swiglu_backward


def _projection_args(module: Any, x: torch.Tensor, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Projection | None:
    """What the autograd nodes need of `module` for this call, when it can take the fused path; else None (peft's)."""
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
    levers = (bool(getattr(module, flag, False)) for flag in (KEEP_BASE_OUTPUT, DROPOUT_KERNEL, FP8_BASE))
    return (lora_a.weight, lora_b.weight, bias), _Member(base, float(module.scaling[name]), p, *levers,
                                                         has_bias=bias is not None)


def fused_forward(self: Any, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    """The forward of a fused LoRA projection; falls back to peft's own for anything it does not cover."""
    import torch

    if SHARED_INPUT in self.__dict__ and not args and not kwargs:
        out = _EAGER_APPLY["shared_input"](self, x)
        if out is not None:
            return out
    projection = _projection_args(self, x, args, kwargs)
    if projection is None:
        return super(type(self), self).forward(x, *args, **kwargs)
    tensors, member = projection
    with torch.autocast(x.device.type, enabled=False):
        return _EAGER_APPLY["group"](x, (member,), *tensors)[0]


SHARED_INPUT = "kubetune_shared_input"
"""Module attribute: the fused projections (this one among them) that read one input, leader first (`group`)."""

SHARED_INPUT_NAMES = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))
"""Sibling projections that a decoder layer calls one after the other on the same input."""


@dataclass
class _SharedOutputs:
    """Outputs a group's leader computed for its siblings, waiting for their calls on the same input."""

    source: weakref.ref[Any]
    version: int
    outputs: dict[int, Any]
    """By `id` of the sibling module."""


# One entry for the process, as for fp8_matmul's cached input: the forward and the recomputed
# forward (autograd's thread) never run at the same time, and a sibling's call follows its leader's.
_WAITING: list[_SharedOutputs] = []


def _drop_waiting(source: weakref.ref[Any]) -> None:
    """Free the waiting outputs when their input is freed (a sibling that was never called)."""
    if _WAITING and _WAITING[0].source is source:
        _WAITING.clear()


def shared_input_forward(module: Any, x: torch.Tensor) -> torch.Tensor | None:
    """`module`'s output through its group's one autograd node; None where it must run alone.

    The leader (the group's first) computes every sibling's output on `x` and leaves theirs
    waiting; a sibling then takes its own, if called on the same `x` (identity and version). A
    sibling called on another input (cross-attention, say) breaks the group up for good.
    """
    import torch

    group = module.__dict__[SHARED_INPUT]
    waiting = _WAITING[0] if _WAITING else None
    if waiting is not None and id(module) in waiting.outputs:
        out = waiting.outputs.pop(id(module))
        if waiting.source() is x and waiting.version == x._version:
            return out
        _WAITING.clear()
        _ungroup(group)
        return None
    if module is not group[0]:
        return None
    found = [_projection_args(sibling, x, (), {}) for sibling in group]
    if any(projection is None for projection in found):
        return None
    members = tuple(member for _, member in found)  # type: ignore[misc]
    with torch.autocast(x.device.type, enabled=False):
        outs = _EAGER_APPLY["group"](x, members, *(t for tensors, _ in found for t in tensors))  # type: ignore[misc]
    waiting_outputs = {id(sibling): out for sibling, out in zip(group[1:], outs[1:], strict=True)}
    _WAITING[:] = [_SharedOutputs(weakref.ref(x, _drop_waiting), x._version, waiting_outputs)]
    return outs[0]


def _ungroup(group: Sequence[Any]) -> None:
    for module in group:
        module.__dict__.pop(SHARED_INPUT, None)


def _group_siblings(module: Any) -> int:
    """Group `module`'s sibling projections that read one input (`SHARED_INPUT_NAMES`) where all are fused.

    Returns how many groups it made.
    """
    grouped = 0
    for names in SHARED_INPUT_NAMES:
        group = tuple(getattr(module, name, None) for name in names)
        if all(map(is_fused_projection, group)):
            for sibling in group:
                sibling.__dict__[SHARED_INPUT] = group
            grouped += 1
    return grouped


def fused_mlp_forward(self: Any, x: torch.Tensor) -> torch.Tensor:
    """The forward of a gated MLP, down(silu(gate(x)) · up(x)), whose down projection recomputes its input."""
    gate, up = self.gate_proj(x), self.up_proj(x)
    return swiglu_down(gate, up, self.down_proj)


def swiglu_down(gate: torch.Tensor, up: torch.Tensor, down: Any) -> torch.Tensor:
    """down(silu(gate) · up) through `_FusedSwigluDown`, or through `down`'s own forward where it is not fused."""
    import torch

    projection = _projection_args(down, gate, (), {}) if gate.dtype == up.dtype else None
    if projection is None:
        return down(torch.nn.functional.silu(gate) * up)
    tensors, member = projection
    with torch.autocast(gate.device.type, enabled=False):
        return _EAGER_APPLY["swiglu_down"](gate, up, (member,), *tensors)


# The autograd functions' `apply` (and the shared-input lookup) behind `torch.compiler.disable`,
# made by `apply` before anything is compiled (`training.compileLayers` compiles around them):
# bitsandbytes' dequantization, the shared scratch buffer and the weak references are not
# traceable, so a clean graph break here keeps dynamo from trying (free in eager mode). Built
# lazily inside a compiled region, a class statement broke dynamo's graph (`Invalid call to
# __build_class__`), and dynamo traced into the builder.
_EAGER_APPLY: dict[str, Any] = {}


def _prepare_eager_apply() -> None:
    import torch

    if not _EAGER_APPLY:
        _EAGER_APPLY["group"] = torch.compiler.disable(_build_group().apply, recursive=True)
        _EAGER_APPLY["swiglu_down"] = torch.compiler.disable(_build_swiglu_down().apply, recursive=True)
        _EAGER_APPLY["shared_input"] = torch.compiler.disable(shared_input_forward, recursive=True)


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
        if is_fused_projection(module):
            fused += 1
            continue
        if not hasattr(module, "lora_A"):
            continue
        reason = _fusable_reason(module)
        if reason is not None:
            refused.add(reason)
            continue
        module.__class__ = _fused_class(_FUSED_CLASSES, type(module), fused_forward)
        fused += 1
    for reason in sorted(refused):
        log.info("training.fusedLora: some LoRA modules keep peft's forward: %s", reason)
    mlps = sum(_fuse_mlp(module) for module in model.modules())
    log.info("training.fusedLora: %d gated MLPs recompute the down projection's input in its backward", mlps)
    groups = sum(_group_siblings(module) for module in model.modules())
    log.info("training.fusedLora: %d groups of projections (q/k/v, gate/up) share one node for their input", groups)
    return fused


SWIGLU_ACTIVATIONS = frozenset({"silu", "swish"})
"""`config.hidden_act` values of the gated MLPs whose activation `swiglu` computes."""

_FUSED_MLP_CLASSES: dict[type, type] = {}


class _MlpForward:
    """The `forward` of the fused MLP classes: a data descriptor, so it wins over an instance's own.

    transformers' `Trainer.train()` applies Liger after the fusing, and Liger binds its SwiGLU
    forward on each MLP instance (`module.__dict__["forward"]`); a plain class attribute would be
    hidden by it. The instance's binding stays in its `__dict__`, unused, and is back in force once
    `remove` restores the class.
    """

    def __get__(self, module: Any, owner: type | None = None) -> Any:
        import types

        return fused_mlp_forward if module is None else types.MethodType(fused_mlp_forward, module)

    def __set__(self, module: Any, value: Any) -> None:
        module.__dict__["forward"] = value


def _fuse_mlp(module: Any) -> bool:
    """Switch a gated SiLU MLP whose three projections are fused to `fused_mlp_forward`; whether it did."""
    import torch

    projections = [getattr(module, name, None) for name in ("gate_proj", "up_proj", "down_proj")]
    if type(module) in _FUSED_MLP_CLASSES.values() or not all(map(is_fused_projection, projections)):
        return False
    activation = getattr(module, "act_fn", None)  # Liger's SwiGLU MLP has none
    silu = activation is None or isinstance(activation, torch.nn.SiLU) or type(activation).__name__ == "SiLUActivation"
    if getattr(getattr(module, "config", None), "hidden_act", None) not in SWIGLU_ACTIVATIONS or not silu:
        return False
    module.__class__ = _fused_class(_FUSED_MLP_CLASSES, type(module), _MlpForward())
    return True


def _fused_class(registry: dict[type, type], cls: type, forward: Any) -> type:
    """`cls`'s subclass with `forward` (made once per class and kept in `registry`; `remove` maps back)."""
    if cls not in registry:
        registry[cls] = type(f"Fused{cls.__name__}", (cls,), {"forward": forward, "__module__": __name__})
    return registry[cls]


def is_fused_projection(module: Any) -> bool:
    """Whether `module` is a LoRA projection switched to `fused_forward`."""
    return type(module) in _FUSED_CLASSES.values()


def fused_mlp_count(model: Any) -> int:
    """How many of `model`'s MLPs run `fused_mlp_forward`."""
    return sum(type(module) in _FUSED_MLP_CLASSES.values() for module in model.modules())


def remove(model: Any) -> None:
    """Undo `apply`: every fused module gets its peft class back."""
    plain = {fused: cls for cls, fused in (*_FUSED_CLASSES.items(), *_FUSED_MLP_CLASSES.items())}
    _WAITING.clear()
    for module in model.modules():
        module.__dict__.pop(SHARED_INPUT, None)
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
        if is_fused_projection(module):
            setattr(module, attribute, on)


def set_dropout_kernel(model: Any, on: bool) -> None:
    """Let (or stop) every fused projection of `model` apply its dropout in `fused_dropout`'s kernels."""
    _set_on_fused(model, DROPOUT_KERNEL, on)


def set_fp8_base(model: Any, on: bool) -> None:
    """Run (or stop running) every fused projection's base matmuls in e4m3 (`fp8_matmul`)."""
    _set_on_fused(model, FP8_BASE, on)
