"""`training.fp8BaseMatmuls` on CUDA: the Triton quantization kernel, cuBLAS' row-wise scaled e4m3 matmul, the trainer.

The CPU suite (tests/trainer/test_fp8_matmul.py) checks the algebra with PyTorch's ops and its
CPU `_scaled_mm`; here the kernel is compared with those ops, and the 8-layer width-1024 Llama
and the trainer run with the switch on. Speed is measured by bench/gpu_throughput.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.gpu.conftest import finetunejob, train_in_process
from tests.trainer.test_fused_lora import flat, lora_model, relative, step

pytestmark = pytest.mark.gpus(1)


def _assert_same_e4m3(got: Any, want: Any) -> None:
    """The same e4m3 values except rare ties of the division, one e4m3 step apart at most."""
    got, want = got.float(), want.float()
    differ = got != want
    assert float(differ.float().mean()) < 1e-3
    assert bool(((got - want).abs()[differ] <= want.abs()[differ] / 8 + 2.0**-9).all())


def _outlier_rows(shape: tuple[int, int], seed: int = 1) -> Any:
    import torch

    t = torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to("cuda", torch.bfloat16)
    t[0, min(3, shape[1] - 1)] = 3e3
    return t


SHAPES = [(4096, 2048), (1000, 14336), (7, 80)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("layout", ["rows", "rows with B columns", "columns"])
def test_kernels_quantize_like_the_reference(shape: tuple[int, int], layout: str) -> None:
    """Each Triton kernel against the PyTorch path the CPU suite checks: same scales, same e4m3 values."""
    import torch
    from kubetune_trainer import fp8_matmul

    if not fp8_matmul.available():
        pytest.skip("this GPU has no e4m3 tensor cores")
    t = _outlier_rows(shape)
    if layout == "columns":
        quantized, scale = fp8_matmul.quantize_columns(t)
        expected, expected_scale = fp8_matmul.quantize_rows_reference(t.t().contiguous())
    else:
        extra = None
        if layout == "rows with B columns":
            factors = torch.logspace(-1, 2, 20, device="cuda")
            extra = fp8_matmul.ExtraColumns(_outlier_rows((shape[0], 20), seed=2) * 0.01, factors, 2.0)
        quantized, scale = fp8_matmul.quantize_rows(t, extra)
        expected, expected_scale = fp8_matmul.quantize_rows_reference(t, extra)
    assert quantized.shape == expected.shape and scale.shape == expected_scale.shape
    assert relative(scale, expected_scale) < 1e-6
    _assert_same_e4m3(quantized, expected)


@pytest.mark.parametrize("rank", [16, 20])
def test_adapter_input_kernel_writes_like_the_reference(rank: int) -> None:
    """x·A^T beside the quantized input: the same factors and e4m3 columns as the PyTorch path, the padding zero."""
    import torch
    from kubetune_trainer import fp8_matmul

    if not fp8_matmul.available():
        pytest.skip("this GPU has no e4m3 tensor cores")
    x = _outlier_rows((3000, 256))
    xa = _outlier_rows((3000, rank), seed=3) * torch.logspace(-2, 1, rank, device="cuda").bfloat16()
    width = fp8_matmul.padded(rank)
    results = []
    for device in ("cuda", "cpu"):
        quantized, scales = fp8_matmul.quantize_rows_reference(x.to(device), reserve=width)
        factors = fp8_matmul.write_adapter_input(quantized, scales, xa.to(device), 256)
        results.append((quantized.cpu(), factors.cpu()))
    (got, got_factors), (want, want_factors) = results
    assert relative(got_factors, want_factors) < 1e-6
    _assert_same_e4m3(got[:, 256:], want[:, 256:])
    assert bool((got[:, 256 + rank:].float() == 0).all())


def _adapters_as_trained(model: Any, b_std: float = 0.01) -> None:
    """peft's initial A (Kaiming-uniform) and a B grown to `b_std`: an update of a few % of the base weights.

    `lora_model`'s random A and B (0.1 each) make the adapter's update 4x the base weights, where no
    fine-tune goes; with the adapter inside the e4m3 matmul its columns then set the weights' scales.
    """
    import torch

    generator = torch.Generator().manual_seed(5)
    for name, param in model.named_parameters():
        if "lora_A" in name:
            bound = param.shape[1] ** -0.5
            values = (torch.rand(param.shape, generator=generator) * 2 - 1) * bound
        elif "lora_B" in name:
            values = torch.randn(param.shape, generator=generator) * b_std
        else:
            continue
        param.data = values.to(device=param.device, dtype=param.dtype)


def test_fused_projections_in_fp8_track_bf16_on_cuda(models: dict[str, Path]) -> None:
    """The 8-layer width-1024 Llama, 4-bit: the loss within 1 %, logits and adapter gradients within e4m3's noise."""
    import torch
    from kubetune_trainer import fp8_matmul, fused_lora

    if not fp8_matmul.available():
        pytest.skip("this GPU has no e4m3 tensor cores")
    ids = torch.randint(3, 900, (4, 256), generator=torch.Generator().manual_seed(6)).cuda()
    model = lora_model(models["mid"], 4, 0.0, torch.bfloat16, "cuda")
    _adapters_as_trained(model)
    fused_lora.apply(model)
    loss0, logits0, grads0 = step(model, ids)
    fused_lora.set_fp8_base(model, True)
    loss1, logits1, grads1 = step(model, ids)
    assert abs(float(loss1 - loss0)) / abs(float(loss0)) < 1e-2
    # Rounding noise grows through 8 random layers: on the CPU (16-bit base) the logits move 0.16
    # and the adapter gradients 0.23 (median) from bf16, cosine 0.98, with the adapter inside the
    # e4m3 matmul or beside it alike. A wrong scale or layout is off by ~1.
    assert 0 < relative(logits1, logits0) < 0.3
    cosine = torch.nn.functional.cosine_similarity(flat(grads1), flat(grads0), dim=0)
    assert float(cosine) > 0.9, float(cosine)


def test_loss_curve_with_fp8_follows_the_bf16_one(
    models: dict, toy_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """60 steps of the 8-layer width-1024 Llama on the toy task, same seed and data: bf16, then fp8 base matmuls.

    The curves fall together; the gap at any step stays a small fraction of how far the loss fell.
    """
    from kubetune_trainer import fp8_matmul

    if not fp8_matmul.available():
        pytest.skip("this GPU has no e4m3 tensor cores")
    curves = {}
    for fp8 in (False, True):
        job = finetunejob("curve-fp8" if fp8 else "curve-bf16", models["mid"], toy_data, training={
            "maxSteps": 60, "saveSteps": 1000, "learningRate": 5e-4, "fp8BaseMatmuls": fp8})
        job["spec"]["metricsPort"] = 19502 + fp8
        curves[fp8] = train_in_process(job, tmp_path / str(fp8), monkeypatch)[1]
    bf16, fp8 = curves[False], curves[True]
    fell = bf16[0] - min(bf16)
    gaps = [abs(a - b) for a, b in zip(bf16, fp8, strict=True)]
    print(f"bf16 {bf16[0]:.3f} -> {bf16[-1]:.3f}, fp8 {fp8[0]:.3f} -> {fp8[-1]:.3f}, "
          f"largest gap {max(gaps):.4f} ({max(gaps) / fell:.1%} of the fall), mean gap {sum(gaps) / len(gaps):.4f}")
    assert bf16[-1] < bf16[0] * 0.7 and fp8[-1] < fp8[0] * 0.7
    assert max(gaps) < 0.05 * fell, gaps


def test_trainer_trains_with_fp8_base_matmuls(
    models: dict, toy_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The recipe switch reaches every fused projection, and the loss falls as it does in bf16."""
    from kubetune_trainer import fp8_matmul, fused_lora

    if not fp8_matmul.available():
        pytest.skip("this GPU has no e4m3 tensor cores")
    job = finetunejob("fp8", models["tiny"], toy_data, training={"maxSteps": 30, "saveSteps": 100,
                                                                 "fp8BaseMatmuls": True})
    job["spec"]["metricsPort"] = 19501
    on_fp8, losses = train_in_process(job, tmp_path, monkeypatch, lambda m: getattr(m, fused_lora.FP8_BASE, False))
    assert on_fp8 == 14, "2 layers x (q, k, v, o, gate, up, down)"
    assert losses[-1] < losses[0] * 0.8, losses
