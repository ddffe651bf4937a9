"""`training.fp8BaseMatmuls`: e4m3 base matmuls with row-wise scales, checked on the CPU through PyTorch's `_scaled_mm`.

The Triton kernels run here under Triton's interpreter with float32 in place of e4m3 (the
interpreter casts to e4m3 wrongly: 124.4 became 64 where the hardware gives 128), against the
PyTorch path: that checks their indexing, masks, scales and factors; tests/gpu/test_fp8_gpu.py
checks them with the cast on a GPU.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.trainer.test_fused_lora import lora_model, relative, step
from tests.trainer.triton_interpreter import run_interpreted

E4M3_HALF_ULP = 2.0**-4
"""e4m3 keeps 3 mantissa bits: rounding moves a normal value by at most 1/16 of itself."""


def _rows(*shape: int, seed: int = 0) -> Any:
    import torch

    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_each_row_is_rounded_to_e4m3_on_its_own_scale() -> None:
    """A row's scale is its own maximum / 448; an outlier in one row costs the other rows nothing."""
    from kubetune_trainer.fp8_matmul import E4M3_MAX, quantize_rows

    t = _rows(6, 96)
    t[2, 7] = 1e4
    quantized, scale = quantize_rows(t)
    assert quantized.shape == t.shape and scale.shape == (6, 1)
    assert float(scale[2]) == pytest.approx(1e4 / E4M3_MAX)
    alone, alone_scale = quantize_rows(t[3:4])
    assert float(alone_scale) == float(scale[3]) and bool((alone.float() == quantized[3:4].float()).all())
    error = (quantized.float() * scale - t).abs()
    bound = t.abs() * E4M3_HALF_ULP + scale * 2.0**-9  # the second term: e4m3's subnormals near zero
    assert bool((error <= bound).all()), float((error - bound).max())
    assert float(error.max()) > 0, "nothing was rounded: the values did not go through e4m3"


@pytest.mark.parametrize("product", ["x @ W^T", "g @ W"])
def test_fp8_products_are_within_e4m3_rounding_of_the_exact_one(product: str) -> None:
    """Both products of a projection (forward, input gradient) against float64: e4m3's error, nothing worse."""
    import torch
    from kubetune_trainer import fp8_matmul

    weight = (_rows(48, 80, seed=1) * 0.05).bfloat16()  # (out, in)
    if product == "x @ W^T":
        x = _rows(3, 10, 80, seed=2).bfloat16()
        got = fp8_matmul.mm_weight_t(x, x.reshape(-1, 80), weight)
        exact = x.reshape(-1, 80).double() @ weight.double().t()
    else:
        grad = _rows(30, 48, seed=3).bfloat16()
        got = fp8_matmul.mm_weight(grad, weight)
        exact = grad.double() @ weight.double()
    assert got.dtype == torch.bfloat16 and got.shape == exact.shape
    error = relative(got, exact)
    assert 1e-3 < error < 4e-2, error  # bf16 alone would be ~3e-3 from rounding the output


def _lora_term(tokens: int, rank: int, out: int, seed: int) -> tuple[Any, Any]:
    """xa (tokens, r) with columns and tokens of very different sizes, and B (out, r), both bf16."""
    import torch

    xa = _rows(tokens, rank, seed=seed) * torch.logspace(-2, 1, rank)  # column sizes over three decades
    xa[3] *= 40  # one token far above the others
    return xa.bfloat16(), (_rows(out, rank, seed=seed + 1) * 0.01).bfloat16()


@pytest.mark.parametrize("rank", [16, 8, 20])
def test_the_adapter_term_rides_inside_the_e4m3_matmul(rank: int) -> None:
    """[x | xa] @ [W | s·B]^T: the sum of both products within e4m3's rounding, and the adapter's part kept.

    Ranks that are not a multiple of 16 are zero-padded; the factors keep large xa columns and
    tokens within e4m3's range (a clamp would show as an error far above rounding).
    """
    from kubetune_trainer import fp8_matmul

    fp8_matmul.forget_input()
    x = _rows(40, 64, seed=6).bfloat16()
    weight = (_rows(32, 64, seed=7) * 0.05).bfloat16()
    xa, lora_b = _lora_term(40, rank, 32, seed=8)
    got = fp8_matmul.mm_weight_t(x, x, weight, (xa, lora_b, 2.0))
    base = x.double() @ weight.double().t()
    term = 2.0 * xa.double() @ lora_b.double().t()
    assert got.shape == base.shape
    assert 1e-3 < relative(got, base + term) < 4e-2
    adapter_part = got.double() - fp8_matmul.mm_weight_t(x, x, weight).double()
    assert relative(adapter_part, term) < 0.15, relative(adapter_part, term)  # the base's rounding shows here too


def test_readers_of_one_input_each_get_their_own_adapter() -> None:
    """q, k and v share the quantized input and write their xa into the same spare columns, one after the other."""
    from kubetune_trainer import fp8_matmul

    fp8_matmul.forget_input()
    x = _rows(24, 48, seed=9).bfloat16()
    weights = [(_rows(32, 48, seed=10 + i) * 0.05).bfloat16() for i in range(3)]
    adapters = [(*_lora_term(24, 16, 32, seed=20 + 2 * i), 2.0) for i in range(3)]
    shared = [fp8_matmul.mm_weight_t(x, x, w, a) for w, a in zip(weights, adapters, strict=True)]
    alone = []
    for w, a in zip(weights, adapters, strict=True):
        fp8_matmul.forget_input()
        alone.append(fp8_matmul.mm_weight_t(x, x, w, a))
    assert all(bool((s == a).all()) for s, a in zip(shared, alone, strict=True))


def test_a_group_writes_its_adapter_products_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """q, k and v as one group: their xa side by side, written once; each picks its own columns by offset,
    with the same result as alone (a column's factor depends on that column only)."""
    import torch
    from kubetune_trainer import fp8_matmul

    writes = []
    original = fp8_matmul.write_adapter_input
    monkeypatch.setattr(fp8_matmul, "write_adapter_input", lambda *args: writes.append(1) or original(*args))
    fp8_matmul.forget_input()
    x = _rows(24, 48, seed=9).bfloat16()
    weights = [(_rows(32, 48, seed=10 + i) * 0.05).bfloat16() for i in range(3)]
    terms = [_lora_term(24, 16, 32, seed=20 + 2 * i) for i in range(3)]
    products = torch.cat([xa for xa, _ in terms], dim=1)
    grouped = [fp8_matmul.mm_weight_t(x, x, w, fp8_matmul.Adapter(products, lora_b, 2.0, 16 * i))
               for i, (w, (_, lora_b)) in enumerate(zip(weights, terms, strict=True))]
    assert len(writes) == 1
    for w, (xa, lora_b), got in zip(weights, terms, grouped, strict=True):
        fp8_matmul.forget_input()
        assert bool((fp8_matmul.mm_weight_t(x, x, w, (xa, lora_b, 2.0)) == got).all())


def test_a_shared_input_is_quantized_once_and_a_changed_one_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """q, k and v read one input: one quantization; an in-place change is seen; the copy dies with its input."""
    from kubetune_trainer import fp8_matmul

    calls: list[tuple[int, ...]] = []
    original = fp8_matmul.quantize_rows
    monkeypatch.setattr(fp8_matmul, "quantize_rows",
                        lambda t, *args, **kwargs: calls.append(tuple(t.shape)) or original(t, *args, **kwargs))
    fp8_matmul.forget_input()
    x = _rows(4, 32, seed=4).bfloat16()
    weights = [(_rows(16, 32, seed=5 + i) * 0.1).bfloat16() for i in range(3)]
    first = [fp8_matmul.mm_weight_t(x, x.view(-1, 32), w) for w in weights]
    assert calls.count((4, 32)) == 1 and len(calls) == 4, calls
    x.mul_(2)
    again = fp8_matmul.mm_weight_t(x, x.view(-1, 32), weights[0])
    assert calls.count((4, 32)) == 2
    assert relative(again, first[0] * 2) < 1e-6
    del x, again
    assert not fp8_matmul._LAST_INPUT, "the e4m3 copy outlived its input"


@pytest.mark.parametrize("bits", [4, 16])
def test_fused_projections_in_fp8_track_the_bf16_ones(
    tiny_llama: Path, bits: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The whole tiny Llama in bf16: fp8 base matmuls change the loss and adapter gradients by e4m3's rounding only.

    Each layer quantizes 4 distinct inputs and 7 weights (with their B columns) in the forward
    (q/k/v and gate/up share their input) and 7 gradients in the backward, except the first
    layer's q/k/v, whose input (the frozen embeddings) needs no gradient; the backward's weights go
    through `quantize_columns`.
    """
    import torch
    from kubetune_trainer import fp8_matmul, fused_lora

    ids = torch.randint(3, 900, (2, 32), generator=torch.Generator().manual_seed(12))
    model = lora_model(tiny_llama, bits, 0.0, torch.bfloat16)
    fused_lora.apply(model)
    try:
        loss0, logits0, grads0 = step(model, ids)
        calls = []
        original = fp8_matmul.quantize_rows
        monkeypatch.setattr(fp8_matmul, "quantize_rows",
                            lambda t, *args, **kwargs: calls.append(t.shape) or original(t, *args, **kwargs))
        fused_lora.set_fp8_base(model, True)
        loss1, logits1, grads1 = step(model, ids)
    finally:
        fused_lora.remove(model)
    assert len(calls) == (4 + 7 + 7) * model.config.num_hidden_layers - 3
    # e4m3 rounds 16x coarser than bf16. On this random 2-layer model (16-bit base) bf16 alone moves
    # the logits 2 % and the adapter gradients 3 % (median) from a float32 run; fp8 moves them 15 %
    # and 26 % from bf16, and the loss under 0.2 %. A wrong scale or layout would be off by ~100 %.
    assert 0 < relative(logits1, logits0) < 0.25
    assert abs(float(loss1 - loss0)) / float(loss0) < 1e-2
    errors = sorted(relative(grads1[name], grads0[name]) for name in grads0)
    assert errors[len(errors) // 2] < 0.35, errors


def test_fp8_siblings_in_one_node_equal_each_alone(tiny_llama: Path) -> None:
    """k and v through q/k/v's one node read their own adapter columns: the same output as each projection alone."""
    import torch
    from kubetune_trainer import fused_lora

    model = lora_model(tiny_llama, 16, 0.0, torch.bfloat16)
    fused_lora.apply(model)
    fused_lora.set_fp8_base(model, True)
    attention = model.base_model.model.model.layers[0].self_attn
    x = torch.randn(2, 8, model.config.hidden_size, generator=torch.Generator().manual_seed(5)).bfloat16()
    try:
        with torch.no_grad():
            grouped = [attention.q_proj(x), attention.k_proj(x), attention.v_proj(x)]
            alone = [attention.k_proj(x.clone()), attention.v_proj(x.clone())]  # no leader call first: each alone
    finally:
        fused_lora.remove(model)
    for got, want in zip(grouped[1:], alone, strict=True):
        assert relative(got, want) < 1e-2, relative(got, want)


def _scaled_mms_in_backward(model: Any, ids: Any) -> tuple[float, dict[str, Any], int]:
    """Loss, adapter gradients, and how many e4m3 matmuls the backward (with its recomputation) ran."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    seen = [0]

    class Count(TorchDispatchMode):
        def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            seen[0] += func is torch.ops.aten._scaled_mm.default
            return func(*args, **(kwargs or {}))

    model.zero_grad(set_to_none=True)
    torch.manual_seed(7)
    loss = model(input_ids=ids, labels=ids).loss
    with Count():
        loss.backward()
    grads = {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    return float(loss), grads, seen[0]


def test_selective_checkpointing_keeps_the_fp8_down_projection(tiny_llama: Path) -> None:
    """With fp8 base matmuls, SAC keeps each layer's down projection output: one e4m3 matmul less per layer
    in the backward than full checkpointing, and the same loss and gradients."""
    import torch
    from kubetune_trainer import fused_lora, speed

    ids = torch.randint(3, 900, (2, 32), generator=torch.Generator().manual_seed(13))
    model = lora_model(tiny_llama, 4, 0.0, torch.bfloat16)
    fused_lora.apply(model)
    fused_lora.set_fp8_base(model, True)
    model.enable_input_require_grads()
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    loss0, grads0, full = _scaled_mms_in_backward(model, ids)
    layers = speed.enable_selective_checkpointing(model)
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    loss1, grads1, selective = _scaled_mms_in_backward(model, ids)
    fused_lora.remove(model)
    assert layers == model.config.num_hidden_layers
    assert full == 7 * layers + 7 * layers, "every projection recomputed, then its input gradient"
    assert selective == full - layers
    assert loss1 == loss0
    assert max(relative(grads1[name], grads0[name]) for name in grads0) < 1e-6


@pytest.mark.parametrize(("rows", "cols"), [(70, 200), (130, 64)])
def test_kernels_scale_like_the_pytorch_path(rows: int, cols: int) -> None:
    """Each kernel under the interpreter, unrounded: rows (alone, with B's columns, with spare columns),
    columns (written transposed, 64x64 tiles with ragged edges), and xa with its factors."""
    run_interpreted(__name__, "check_kernels_unrounded", rows, cols)


def check_kernels_unrounded(rows: int, cols: int) -> None:
    """The comparison, in the interpreter's process (float32 copies: the scaled values before the cast)."""
    import torch
    from kubetune_trainer import fp8_matmul

    fp8_matmul.QUANTIZED_DTYPE = "float32"
    t = _rows(rows, cols, seed=30)
    t[1, 5] = 900.0
    xa, lora_b = (part.float() for part in _lora_term(rows, 20, rows, seed=31))
    extra = fp8_matmul.ExtraColumns(lora_b, torch.logspace(-1, 1, 20), 2.0)
    sibling = fp8_matmul.ExtraColumns(lora_b, torch.logspace(-1, 1, 50), 2.0, offset=24)  # k's B among q/k/v's
    cases = {
        "rows": (fp8_matmul.quantize_rows(t), fp8_matmul.quantize_rows_reference(t)),
        "rows with B": (fp8_matmul.quantize_rows(t, extra), fp8_matmul.quantize_rows_reference(t, extra)),
        "rows with B at an offset": (fp8_matmul.quantize_rows(t, sibling),
                                     fp8_matmul.quantize_rows_reference(t, sibling)),
        "columns": (fp8_matmul.quantize_columns(t), fp8_matmul.quantize_rows_reference(t.t().contiguous())),
    }
    for name, ((got, got_scale), (want, want_scale)) in cases.items():
        assert got.shape == want.shape and got_scale.shape == want_scale.shape, name
        torch.testing.assert_close(got_scale, want_scale, rtol=1e-6, atol=0, msg=name)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5, msg=name)
    quantized, scales = fp8_matmul.quantize_rows(t, reserve=fp8_matmul.padded(20))
    expected = quantized.clone()
    factors = fp8_matmul.write_adapter_input(quantized, scales, xa, cols)
    want_factors = fp8_matmul.write_adapter_input_reference(expected, scales, xa, cols)
    torch.testing.assert_close(factors, want_factors, rtol=1e-6, atol=0)
    torch.testing.assert_close(quantized, expected, rtol=1e-5, atol=1e-5)
    assert float(quantized[:, cols:].abs().max()) == pytest.approx(fp8_matmul.E4M3_MAX, rel=1e-5)
    assert bool((quantized[:, cols + 20:] == 0).all())
