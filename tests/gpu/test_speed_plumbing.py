"""The speed levers' plumbing, checked on the CPU too (gpus(0)); the CUDA kernels themselves in test_single_gpu.

PyTorch's varlen flash kernel runs only on CUDA, so here a per-example sdpa stands in for it: what
is checked is everything around the kernel (transformers' registries, TRL's packed-batch kwargs
reaching the attention, the (tokens, heads, dim) layout and GQA), against the same model run on
each example alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.gpus(0)


def _reference_kernel(q: Any, k: Any, v: Any, cu_q: Any, cu_k: Any, max_q: int, max_k: int, *,
                      scale: float | None = None, window_size: tuple[int, int] = (-1, -1),
                      enable_gqa: bool = False) -> Any:
    """Causal attention per example with sdpa, in varlen_attn's (tokens, heads, dim) layout."""
    import torch
    import torch.nn.functional as F

    assert window_size == (-1, 0), "the lever must ask for causal attention"
    outs = []
    for start, end in zip(cu_q[:-1].tolist(), cu_q[1:].tolist(), strict=True):
        qs, ks, vs = (t[start:end].transpose(0, 1)[None] for t in (q, k, v))
        outs.append(F.scaled_dot_product_attention(qs, ks, vs, is_causal=True, scale=scale,
                                                   enable_gqa=enable_gqa)[0].transpose(0, 1))
    return torch.cat(outs)


def test_packed_batch_through_the_registered_attention_equals_examples_alone(
    models: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A TRL padding-free batch through `kubetune_varlen` gives each example's own logits."""
    import torch
    from kubetune_trainer import speed
    from transformers import AutoModelForCausalLM
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    monkeypatch.setattr(speed, "_varlen_kernel", lambda: (_reference_kernel,
                                                           frozenset({"scale", "window_size", "enable_gqa"})))
    speed.register_varlen_attention()
    model = AutoModelForCausalLM.from_pretrained(models["tiny"], attn_implementation=speed.VARLEN_ATTENTION)
    examples = [{"input_ids": list(range(3, 3 + n))} for n in (7, 1, 12, 4)]
    batch = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True)(examples)
    assert "cu_seq_lens_q" in batch
    with torch.no_grad():
        packed = model(**{k: v for k, v in batch.items() if k != "labels"}).logits[0]
        alone = torch.cat([model(input_ids=torch.tensor([e["input_ids"]])).logits[0] for e in examples])
    assert torch.allclose(packed, alone, atol=1e-4), float((packed - alone).abs().max())


def test_generation_with_left_padding_uses_the_sdpa_fallback(models: dict) -> None:
    """Batched generation (padding, a KV cache) under `kubetune_varlen` matches sdpa token for token."""
    import torch
    from kubetune_trainer import speed
    from transformers import AutoModelForCausalLM, AutoTokenizer

    speed.register_varlen_attention()
    tokenizer = AutoTokenizer.from_pretrained(models["tiny"], padding_side="left")
    prompts = tokenizer(["Reverse these letters: a b c.", "Hello"], return_tensors="pt", padding=True)
    outputs = []
    for implementation in ("sdpa", speed.VARLEN_ATTENTION):
        model = AutoModelForCausalLM.from_pretrained(models["tiny"], attn_implementation=implementation)
        with torch.no_grad():
            outputs.append(model.generate(**prompts, max_new_tokens=8, do_sample=False,
                                          pad_token_id=tokenizer.pad_token_id))
    assert torch.equal(outputs[0], outputs[1])


def test_levers_do_nothing_on_the_cpu(tmp_path: Path) -> None:
    """On the CPU the switches change nothing: no Liger options, the recipe's attention, fp32 adapters kept."""
    import torch
    from kubetune_trainer import speed
    from kubetune_api.recipe import parse_spec

    spec = parse_spec({"model": {"name": "x"}, "dataset": {"path": "d.jsonl"}, "training": {"packing": True}})
    if torch.cuda.is_available():
        pytest.skip("checks the CPU behaviour")
    assert speed.sft_options(spec, on_cpu=True) == {}
    assert speed.attn_implementation(spec) == "sdpa"
    layer = torch.nn.Linear(2, 2)
    speed.cast_adapter(layer, spec, bf16=True)
    assert layer.weight.dtype == torch.float32


def test_switches_turn_levers_off() -> None:
    """Each lever has its own recipe switch, on by default."""
    from kubetune_api.recipe import parse_spec

    base = {"model": {"name": "x"}, "dataset": {"path": "d.jsonl"}}
    on = parse_spec(base).training
    assert on.liger_kernels and on.varlen_attention and on.adapter_in_compute_dtype
    off = parse_spec({**base, "training": {"ligerKernels": False, "varlenAttention": False,
                                            "adapterInComputeDtype": False}}).training
    assert not (off.liger_kernels or off.varlen_attention or off.adapter_in_compute_dtype)
