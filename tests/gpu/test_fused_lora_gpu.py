"""`training.fusedLora` on CUDA: bitsandbytes' CUDA dequantization into the shared buffer, cuBLAS' addmm, and the trainer.

The CPU suite (tests/trainer/test_fused_lora.py) checks the algebra against peft; here the same
checks run on the GPU kernels, and the trainer is seen fusing every projection and training.
Speed is measured by bench/gpu_throughput.py, never asserted here.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.gpu.conftest import finetunejob, train_in_process
from tests.trainer.test_fused_lora import (
    assert_bf16_as_close_as_peft,
    lora_model,
    plain_and_fused,
    relative,
)

pytestmark = pytest.mark.gpus(1)


@pytest.mark.parametrize("bits", [4, 16])
def test_fused_projections_match_peft_on_cuda(models: dict, bits: int) -> None:
    """The 8-layer, width-1024 Llama in bf16: as close to a float32 run as peft, gradients included."""
    import torch

    ids = torch.randint(3, 900, (4, 256), generator=torch.Generator().manual_seed(5)).cuda()
    assert_bf16_as_close_as_peft(models["mid"], bits, ids, device="cuda")


def test_fused_projections_without_dropout_on_cuda(models: dict) -> None:
    """Dropout 0 takes the addmm-only backward (no mask): same check against peft's own bf16 step."""
    import torch

    ids = torch.randint(3, 900, (4, 256), generator=torch.Generator().manual_seed(6)).cuda()
    (loss0, logits0, grads0), (loss1, logits1, grads1) = plain_and_fused(
        lora_model(models["mid"], 4, 0.0, torch.bfloat16, "cuda"), ids
    )
    assert relative(logits1, logits0) < 2e-2
    assert abs(float(loss1 - loss0)) / abs(float(loss0)) < 1e-2
    worst = sorted(relative(grads1[name], grads0[name]) for name in grads0)
    assert worst[len(worst) // 2] < 5e-2, worst[-5:]


def test_trainer_fuses_every_projection_and_trains(
    models: dict, toy_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`kubetune_trainer.train.train` with the recipe default: 7 fused projections per layer, loss falls."""
    job = finetunejob("fused", models["tiny"], toy_data, training={"maxSteps": 30, "saveSteps": 100})
    job["spec"]["metricsPort"] = 19500
    from kubetune_trainer import fused_lora

    fused, losses = train_in_process(job, tmp_path, monkeypatch, fused_lora.is_fused_projection)
    assert fused == 14, "2 layers x (q, k, v, o, gate, up, down)"
    assert losses[-1] < losses[0] * 0.8, losses
