"""One GPU: 4-bit NF4 and 8-bit QLoRA through bitsandbytes, checkpoint + SIGTERM + resume, merge, the speed levers.

Every training run goes through the pod's command and env as the operator renders them (tests/gpu/pod.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.gpu.conftest import adapter_tensors, assert_trained_adapter, finetunejob, logged
from tests.gpu.pod import PodProcess

RUN_TIMEOUT = 240


def run_pod(job: dict, root: Path) -> tuple[PodProcess, int]:
    """Run the job's single pod to the end."""
    pod = PodProcess.render(job, root / "pod", root / "pvc")
    return pod, pod.run(RUN_TIMEOUT)


@pytest.fixture(scope="module")
def qlora_reference(models: dict, toy_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    """An uninterrupted 4-bit NF4 run with paged_adamw_8bit on the tiny model: the job and its workspace."""
    job = finetunejob("qlora-nf4", models["tiny"], toy_data, training={"maxSteps": 160, "optimizer": "paged_adamw_8bit",
                                                                       "saveSteps": 20})
    pod, code = run_pod(job, tmp_path_factory.mktemp("qlora-reference"))
    assert code == 0, pod.log_tail()
    return job, pod.workspace


def test_qlora_nf4_paged_adamw_8bit_trains(qlora_reference: tuple[dict, Path]) -> None:
    """4-bit NF4 + double quant, paged 8-bit AdamW: exit 0, the loss falls, grad norms are non-zero, adapter saved."""
    _, workspace = qlora_reference
    losses, grads = logged(workspace, "loss"), logged(workspace, "grad_norm")
    assert all(g > 0 for g in grads), grads
    assert sum(losses[-10:]) / 10 < 0.8 * sum(losses[:10]) / 10, losses
    assert_trained_adapter(workspace)


def test_sigterm_checkpoint_and_resume(qlora_reference: tuple[dict, Path], tmp_path: Path) -> None:
    """SIGTERM mid-run → exit 75 after a complete checkpoint; the restart resumes and ends like the reference."""
    job, reference = qlora_reference
    pod = PodProcess.render(job, tmp_path / "pod", tmp_path / "pvc")
    pod.start()
    pod.wait_for_checkpoint(20, timeout=RUN_TIMEOUT)
    pod.terminate()
    assert pod.wait(RUN_TIMEOUT) == 75, pod.log_tail()
    stopped = pod.termination()
    assert stopped["reason"] == "Stopped" and stopped["checkpoint"]["step"] == stopped["step"] < 160, stopped

    again = PodProcess.render(job, tmp_path / "pod", tmp_path / "pvc", attempt=1)
    assert again.run(RUN_TIMEOUT) == 0, again.log_tail()
    assert f"resuming from {stopped['checkpoint']['path']}" in again.log_tail(400)
    assert again.termination()["step"] == 160
    resumed, uninterrupted = adapter_tensors(tmp_path / "pvc"), adapter_tensors(reference)
    # GPU kernels (bitsandbytes, cuBLAS) are not bit-reproducible run to run: compare within a tolerance.
    gap = max(float((resumed[k] - uninterrupted[k]).norm() / uninterrupted[k].norm().clamp(min=1e-12))
              for k in uninterrupted if "lora_B" in k)
    print(f"resumed vs uninterrupted adapter: max relative difference of lora_B {gap:.2e}")
    assert gap < 0.05, gap


def test_int8_base_trains(models: dict, toy_data: Path, tmp_path: Path) -> None:
    """8-bit base (LLM.int8) with adamw_8bit: exit 0, non-zero grad norms, a trained adapter."""
    job = finetunejob("int8", models["tiny"], toy_data, method={"quantization": {"bits": 8}},
                      training={"maxSteps": 20, "optimizer": "adamw_8bit"})
    pod, code = run_pod(job, tmp_path)
    assert code == 0, pod.log_tail()
    assert all(g > 0 for g in logged(pod.workspace, "grad_norm"))
    assert_trained_adapter(pod.workspace)


def test_llama_1b_shape_qlora_with_merge(models: dict, toy_data: Path, tmp_path: Path) -> None:
    """A Llama-3.2-1B-shaped model in 4 bits trains, and its adapter merges into the 16-bit base."""
    from safetensors.torch import load_file

    job = finetunejob("llama-1b", models["1b"], toy_data, output={"mergeAdapter": True},
                      training={"maxSteps": 6, "optimizer": "paged_adamw_8bit", "saveSteps": 100})
    pod, code = run_pod(job, tmp_path)
    assert code == 0, pod.log_tail()
    assert all(g > 0 for g in logged(pod.workspace, "grad_norm"))
    assert_trained_adapter(pod.workspace)
    merged_dir = pod.workspace / "output" / "merged"
    assert (merged_dir / "config.json").is_file()
    merged = {}
    for file in merged_dir.glob("*.safetensors"):
        merged.update(load_file(str(file)))
    base = {}
    for file in Path(models["1b"]).glob("*.safetensors"):
        base.update(load_file(str(file)))
    name = "model.layers.0.self_attn.q_proj.weight"
    assert merged[name].shape == base[name].shape and merged[name].dtype == base[name].dtype
    assert not merged[name].equal(base[name]), "the merged q_proj equals the base: the adapter was not merged"


def test_packing_with_varlen_attention_trains(models: dict, toy_data: Path, tmp_path: Path) -> None:
    """training.packing on a GPU runs through the varlen attention lever and trains."""
    job = finetunejob("packed", models["mid"], toy_data, training={"maxSteps": 12, "packing": True, "batchSize": 4})
    pod, code = run_pod(job, tmp_path)
    assert code == 0, pod.log_tail()
    assert "training.varlenAttention: packed examples attend" in pod.log_tail(400)
    losses = logged(pod.workspace, "loss")
    assert losses[-1] < losses[0], losses
    assert_trained_adapter(pod.workspace)


def test_varlen_attention_matches_sdpa_per_example() -> None:
    """The packed path equals sdpa run on each example alone (forward and gradients), GQA included."""
    import torch
    import torch.nn.functional as F
    from kubetune_trainer import speed

    torch.manual_seed(0)
    lengths = [5, 130, 64, 300, 1]
    heads, kv_heads, dim = 8, 2, 64
    total = sum(lengths)
    q = torch.randn(1, heads, total, dim, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    k = torch.randn(1, kv_heads, total, dim, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    v = torch.randn(1, kv_heads, total, dim, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    kwargs = {"cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": max(lengths), "max_length_k": max(lengths)}
    out, _ = speed.varlen_attention_forward(None, q, k, v, None, scaling=dim**-0.5, **kwargs)
    assert out.shape == (1, total, heads, dim)

    reference = []
    for start, end in zip(cu[:-1].tolist(), cu[1:].tolist(), strict=True):
        qs, ks, vs = (t[:, :, start:end].double() for t in (q, k, v))
        ks, vs = (t.repeat_interleave(heads // kv_heads, dim=1) for t in (ks, vs))
        reference.append(F.scaled_dot_product_attention(qs, ks, vs, is_causal=True).transpose(1, 2))
    ref = torch.cat(reference, dim=1)
    error = float((out.double() - ref).norm() / ref.norm())
    assert error < 1e-2, error

    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, (q, k, v), grad)
    want = torch.autograd.grad(ref, (q, k, v), grad.double())
    for name, a, b in zip("qkv", got, want, strict=True):
        gap = float((a.double() - b.double()).norm() / b.double().norm())
        assert gap < 2e-2, (name, gap)


def test_varlen_attention_falls_back_to_sdpa_with_padding() -> None:
    """Without packed boundaries (generation with left padding), the lever gives sdpa's answer on real tokens."""
    import torch
    import torch.nn.functional as F
    from kubetune_trainer import speed

    torch.manual_seed(1)
    q = torch.randn(2, 4, 6, 32, device="cuda", dtype=torch.float32)
    k, v = torch.randn(2, 4, 6, 32, device="cuda"), torch.randn(2, 4, 6, 32, device="cuda")
    padding = torch.tensor([[1] * 6, [0, 0, 1, 1, 1, 1]], device="cuda")
    out, _ = speed.varlen_attention_forward(torch.nn.Module(), q, k, v, padding, scaling=32**-0.5)
    row = F.scaled_dot_product_attention(q[1:, :, 2:], k[1:, :, 2:], v[1:, :, 2:], is_causal=True).transpose(1, 2)
    assert torch.allclose(out[1:, 2:], row, atol=1e-5)
    full = F.scaled_dot_product_attention(q[:1], k[:1], v[:1], is_causal=True).transpose(1, 2)
    assert torch.allclose(out[:1], full, atol=1e-5)
    assert torch.isfinite(out).all()


def test_liger_kernels_import_on_this_gpu() -> None:
    """liger-kernel imports against this machine's Triton (else training.ligerKernels silently does nothing)."""
    from kubetune_trainer import speed

    assert speed.liger_available()
