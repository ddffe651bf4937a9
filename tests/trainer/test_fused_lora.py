"""`training.fusedLora`: the fused LoRA projections compute what peft computes, and the recipe refuses them where they cannot run.

The fused path is plain PyTorch (plus bitsandbytes' dequantization), so it runs here on the CPU
on the tiny test Llama, 4-bit NF4 and 16-bit bases alike, against the same model's peft forward.
The adapters are drawn at random (peft starts lora_B at zero, which would hide a wrong A or B).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kubetune_api.recipe import RecipeError, parse_finetunejob

RANK, ALPHA = 8, 16


def lora_model(model_dir: Path, bits: int, dropout: float, dtype: Any, device: str = "cpu") -> Any:
    """A saved Llama (4-bit NF4 double-quant or 16-bit, in `dtype`) with random LoRA adapters on every linear layer."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    kwargs: dict[str, Any] = {}
    if bits == 4:
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=dtype
        )
    if device != "cpu":
        kwargs["device_map"] = {"": device}
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, **kwargs)
    config = LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=dropout, bias="none", target_modules="all-linear",
                        task_type="CAUSAL_LM")
    model = get_peft_model(base, config)
    generator = torch.Generator().manual_seed(3)
    for param in model.parameters():
        if param.requires_grad:
            param.data = (torch.randn(param.shape, generator=generator) * 0.1).to(device=param.device, dtype=dtype)
    return model.train()


def step(model: Any, ids: Any, seed: int = 7) -> tuple[Any, Any, dict[str, Any]]:
    """Loss, logits and the adapter gradients of one forward/backward, with the dropout masks drawn from `seed`."""
    import torch

    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    out = model(input_ids=ids, labels=ids)
    out.loss.backward()
    grads = {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    return out.loss.detach(), out.logits.detach().clone(), grads


def relative(a: Any, b: Any) -> float:
    """‖a − b‖ / ‖b‖ in float64."""
    return float((a.double() - b.double()).norm() / b.double().norm())


def plain_and_fused(model: Any, ids: Any) -> tuple[tuple[Any, Any, dict[str, Any]], tuple[Any, Any, dict[str, Any]]]:
    """One step through peft's forward, then the same step through the fused projections."""
    from kubetune_trainer import fused_lora

    plain = step(model, ids)
    assert fused_lora.apply(model) == 7 * model.config.num_hidden_layers, "q, k, v, o, gate, up, down per layer"
    assert fused_lora.fused_mlp_count(model) == model.config.num_hidden_layers, "every MLP through swiglu_down"
    try:
        fused = step(model, ids)
    finally:
        fused_lora.remove(model)
    return plain, fused


@pytest.fixture
def ids() -> Any:
    """Two random 24-token rows of the tiny vocabulary."""
    import torch

    return torch.randint(3, 900, (2, 24), generator=torch.Generator().manual_seed(11))


@pytest.mark.parametrize("bits", [4, 16])
@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_fused_projections_equal_peft_in_float32(tiny_llama: Path, ids: Any, bits: int, dropout: float) -> None:
    """Same loss, logits and adapter gradients as peft (same dropout masks: one seed, same draw order)."""
    import torch

    (loss0, logits0, grads0), (loss1, logits1, grads1) = plain_and_fused(
        lora_model(tiny_llama, bits, dropout, torch.float32), ids
    )
    assert relative(logits1, logits0) < 1e-5
    assert abs(float(loss1 - loss0)) < 1e-5
    assert grads0.keys() == grads1.keys() and len(grads0) == 28, "2 layers x 7 projections x (A, B)"
    worst = max(relative(grads1[name], grads0[name]) for name in grads0)
    assert worst < 1e-4, worst
    assert all(float(g.abs().sum()) > 0 for g in grads1.values())


def flat(grads: dict[str, Any]) -> Any:
    """All adapter gradients as one float64 vector."""
    import torch

    return torch.cat([g.double().flatten() for g in grads.values()])


def assert_bf16_as_close_as_peft(model_dir: Path, bits: int, ids: Any, device: str = "cpu") -> None:
    """In bf16 both paths round differently; the fused one is no further from a float32 run than peft's is.

    The float32 run takes the bf16 run's adapter values (the 4-bit base is quantized from float32
    there, so it differs a little from the bf16-quantized one: that error is in both distances).
    """
    import torch

    model = lora_model(model_dir, bits, 0.05, torch.bfloat16, device)
    (loss0, logits0, grads0), (loss1, logits1, grads1) = plain_and_fused(model, ids)
    reference = lora_model(model_dir, bits, 0.05, torch.float32, device)
    with torch.no_grad():
        for (_, param), (_, low) in zip(reference.named_parameters(), model.named_parameters(), strict=True):
            if param.requires_grad:
                param.copy_(low.float())
    _, logits_ref, grads_ref = step(reference, ids)
    assert logits1.dtype == torch.bfloat16
    assert relative(logits1, logits_ref) <= 1.2 * relative(logits0, logits_ref) + 1e-3
    assert relative(flat(grads1), flat(grads_ref)) <= 1.2 * relative(flat(grads0), flat(grads_ref)) + 1e-3
    assert relative(flat(grads1), flat(grads0)) < 0.1
    assert abs(float(loss1 - loss0)) / abs(float(loss0)) < 1e-2


@pytest.mark.parametrize("bits", [4, 16])
def test_fused_projections_in_bf16_are_as_close_to_float32_as_peft(tiny_llama: Path, ids: Any, bits: int) -> None:
    """bf16 on the CPU (tests/gpu runs the same check on CUDA)."""
    assert_bf16_as_close_as_peft(tiny_llama, bits, ids)


def test_fused_projections_under_gradient_checkpointing(tiny_llama: Path, ids: Any) -> None:
    """Recomputed layers (as the trainer runs them) redraw the same masks and give peft's gradients."""
    import torch

    model = lora_model(tiny_llama, 4, 0.1, torch.float32)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.enable_input_require_grads()
    (loss0, _, grads0), (loss1, _, grads1) = plain_and_fused(model, ids)
    assert abs(float(loss1 - loss0)) < 1e-5
    assert max(relative(grads1[name], grads0[name]) for name in grads0) < 1e-4


def autograd_nodes(loss: Any) -> list[str]:
    """The names of every node in `loss`'s backward graph."""
    seen, stack, names = set(), [loss.grad_fn], []
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.append(type(node).__name__)
        stack.extend(next_node for next_node, _ in node.next_functions)
    return names


def test_siblings_reading_one_input_share_one_node(tiny_llama: Path, ids: Any) -> None:
    """q/k/v and gate/up each run as one autograd node per layer (with o: three, plus the down projection's)."""
    import torch

    from kubetune_trainer import fused_lora

    model = lora_model(tiny_llama, 4, 0.1, torch.float32)
    fused_lora.apply(model)
    try:
        nodes = autograd_nodes(model(input_ids=ids, labels=ids).loss)
    finally:
        fused_lora.remove(model)
    layers = model.config.num_hidden_layers
    assert nodes.count("_FusedGroupBackward") == 3 * layers
    assert nodes.count("_FusedSwigluDownBackward") == layers


def test_a_sibling_called_on_another_input_runs_alone(tiny_llama: Path) -> None:
    """k_proj on another input than q_proj's (cross-attention, say) gets its own output; the group is broken up."""
    import torch

    from kubetune_trainer import fused_lora

    model = lora_model(tiny_llama, 4, 0.0, torch.float32)
    attention = model.base_model.model.model.layers[0].self_attn
    x, other = (torch.randn(2, 5, model.config.hidden_size, generator=torch.Generator().manual_seed(s)) for s in (1, 2))
    want = attention.k_proj(other)
    fused_lora.apply(model)
    try:
        attention.q_proj(x)
        got = attention.k_proj(other)
        broken = [name for name in ("q_proj", "k_proj", "v_proj")
                  if fused_lora.SHARED_INPUT not in vars(getattr(attention, name))]
    finally:
        fused_lora.remove(model)
    assert relative(got, want) < 1e-5
    assert broken == ["q_proj", "k_proj", "v_proj"], "the group is broken up"


def test_disabled_adapter_and_eval_mode_fall_back_to_peft(tiny_llama: Path, ids: Any) -> None:
    """With the adapter disabled (DPO's reference model) a fused model is the base model; eval mode drops no units."""
    import torch

    from kubetune_trainer import fused_lora

    model = lora_model(tiny_llama, 4, 0.1, torch.float32).eval()
    with torch.no_grad():
        with model.disable_adapter():
            base_logits = model(input_ids=ids).logits
        plain_logits = model(input_ids=ids).logits
    fused_lora.apply(model)
    with torch.no_grad():
        fused_logits = model(input_ids=ids).logits
        with model.disable_adapter():
            fused_base_logits = model(input_ids=ids).logits
    assert relative(fused_logits, plain_logits) < 1e-5
    assert relative(fused_base_logits, base_logits) < 1e-6
    assert not torch.allclose(fused_logits, base_logits), "the adapter must change the output"


def intermediate_sized_saves(model: Any, ids: Any) -> int:
    """How many activations of the MLP's intermediate width (one row per token) autograd saves in one forward."""
    import torch

    width, saved = model.config.intermediate_size, []

    def pack(t: Any) -> Any:
        saved.append(t.dim() >= 2 and t.shape[-1] == width and t.numel() == ids.numel() * width)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(input_ids=ids, labels=ids)
    return sum(saved)


def test_fused_mlp_keeps_only_gate_and_up(tiny_llama: Path, ids: Any) -> None:
    """The down projection's input h = silu(gate)·up is not kept for the backward: two intermediate-sized
    tensors per layer (gate, up), where peft's path keeps more (h, and its SiLU's input and output)."""
    import torch

    from kubetune_trainer import fused_lora

    model = lora_model(tiny_llama, 16, 0.0, torch.float32)
    plain = intermediate_sized_saves(model, ids)
    fused_lora.apply(model)
    try:
        fused = intermediate_sized_saves(model, ids)
    finally:
        fused_lora.remove(model)
    assert fused == 2 * model.config.num_hidden_layers
    assert plain > fused


def test_removing_restores_peft_classes(tiny_llama: Path) -> None:
    """`remove` puts peft's own classes back (what merge/unload and saving expect to see)."""
    import torch
    from peft.tuners.lora.bnb import Linear4bit

    from kubetune_trainer import fused_lora

    model = lora_model(tiny_llama, 4, 0.0, torch.float32)
    fused_lora.apply(model)
    q_proj = model.base_model.model.model.layers[0].self_attn.q_proj
    assert type(q_proj).__name__ == "FusedLinear4bit" and isinstance(q_proj, Linear4bit)
    mlp = model.base_model.model.model.layers[0].mlp
    assert fused_lora.fused_mlp_count(model) == 2 and type(mlp).__name__ == "FusedLlamaMLP"
    fused_lora.remove(model)
    assert type(q_proj) is Linear4bit
    assert fused_lora.fused_mlp_count(model) == 0 and type(mlp).__name__ == "LlamaMLP"


def test_fused_mlp_outlives_a_later_instance_forward(tiny_llama: Path, ids: Any) -> None:
    """transformers applies Liger at `train()`, after the fusing, by binding a SwiGLU forward on each MLP
    instance; the fused forward must still run, and the bound one must be back after `remove`."""
    import torch

    from kubetune_trainer import fused_lora

    model = lora_model(tiny_llama, 16, 0.0, torch.float32)
    plain_forward = type(model.base_model.model.model.layers[0].mlp).forward
    fused_lora.apply(model)
    calls = []

    def bound(self: Any, x: Any) -> Any:
        calls.append(1)
        return plain_forward(self, x)

    try:
        for layer in model.base_model.model.model.layers:  # what Liger's _bind_method_to_module does
            layer.mlp.__dict__["forward"] = bound.__get__(layer.mlp)
        assert intermediate_sized_saves(model, ids) == 2 * model.config.num_hidden_layers and not calls
    finally:
        fused_lora.remove(model)
    model(input_ids=ids)
    assert len(calls) == model.config.num_hidden_layers


def test_dora_modules_keep_peft_forward(tiny_llama: Path) -> None:
    """DoRA adds a magnitude vector the fused algebra leaves out: such modules are left alone."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from kubetune_trainer import fused_lora

    base = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(r=RANK, use_dora=True, target_modules="all-linear", task_type="CAUSAL_LM"))
    assert fused_lora.apply(model) == 0


# ---------------------------------------------------------------- the recipe switch

def manifest(fused: bool | None, bits: int = 4, zero_stage: int | None = None) -> dict[str, Any]:
    """The foundation tests' minimal manifest with training.fusedLora (None: unset), the base's bits and a ZeRO stage."""
    from tests.foundation.test_recipe_and_crd import MINIMAL  # here, not at the top: tests/gpu imports this module

    spec = {**MINIMAL["spec"], "method": {"quantization": {"bits": bits}}}
    if fused is not None:
        spec["training"] = {"fusedLora": fused}
    if zero_stage is not None:
        spec["deepspeed"] = {"zeroStage": zero_stage}
        spec["training"] = {**spec.get("training", {}), "optimizer": "adamw_torch"}
    return {**MINIMAL, "spec": spec}


@pytest.mark.parametrize(("bits", "zero_stage"), [(8, None), (4, 3)], ids=["8-bit base", "ZeRO-3"])
def test_explicit_fused_lora_is_refused_where_it_cannot_run(bits: int, zero_stage: int | None) -> None:
    """By the model and by the CRD, both naming the field and the fix."""
    from tests.crd_validation import crd_errors  # CEL and OpenAPI validators: dev extras, absent on GPU machines

    job = manifest(True, bits, zero_stage)
    with pytest.raises(RecipeError) as refused:
        parse_finetunejob(job)
    assert "training.fusedLora" in str(refused.value) and "leave training.fusedLora unset" in str(refused.value)
    errors = crd_errors(job)
    assert any("training.fusedLora" in error for error in errors), errors


@pytest.mark.parametrize("fused", [None, False])
@pytest.mark.parametrize(("bits", "zero_stage"), [(8, None), (4, 3), (4, None), (16, 2)])
def test_unset_or_false_is_accepted_everywhere(fused: bool | None, bits: int, zero_stage: int | None) -> None:
    """Unset means "where it applies"; nothing to refuse. true is accepted on 4- and 16-bit bases below ZeRO-3."""
    from tests.crd_validation import crd_errors

    for value in (fused, True) if (bits != 8 and zero_stage != 3) else (fused,):
        job = manifest(value, bits, zero_stage)
        assert parse_finetunejob(job).spec.training.fused_lora is value
        assert crd_errors(job) == []


def test_recipe_switch_leaves_the_cpu_on_peft(tiny_llama: Path) -> None:
    """Like the other speed levers, the trainer applies it on CUDA only: on the CPU the model keeps peft's classes."""
    import torch

    from kubetune_trainer import fused_lora

    model = lora_model(tiny_llama, 16, 0.0, torch.float32)
    fused_lora.apply_from_recipe(model, parse_finetunejob(manifest(True)).spec)
    q_proj = model.base_model.model.model.layers[0].self_attn.q_proj
    assert not type(q_proj).__name__.startswith("Fused")
