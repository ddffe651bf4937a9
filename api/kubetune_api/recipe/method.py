"""spec.method: the objective (SFT, distillation, DPO), LoRA and quantization."""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Literal

from pydantic import Field

from kubetune_api.recipe.base import (
    MAX_ITEMS,
    SHORT,
    CrossFieldRule,
    KubeModel,
)


class MethodType(str, Enum):
    """Training objective."""

    sft = "sft"
    distill = "distill"
    dpo = "dpo"


class LoraBias(str, Enum):
    """peft's bias handling."""

    none = "none"
    all = "all"
    lora_only = "lora_only"


class LoraSpec(KubeModel):
    """peft LoRA adapter settings."""

    r: int = Field(default=16, ge=1, le=1024, description="r is the LoRA rank; default 16.")
    alpha: float = Field(
        default=32, gt=0, le=65536, description="alpha is the LoRA scaling numerator (lora_alpha); default 32."
    )
    dropout: float = Field(
        default=0.05, ge=0, lt=1, description="dropout is the LoRA dropout probability; default 0.05."
    )
    target_modules: list[Annotated[str, Field(min_length=1, max_length=SHORT)]] = Field(
        default_factory=lambda: ["all-linear"],
        min_length=1,
        max_length=MAX_ITEMS,
        description="targetModules are the module names that get adapters; default [all-linear].",
    )
    bias: LoraBias = Field(default=LoraBias.none, description="bias is which biases train: none (default), all, lora_only.")


class ComputeDtype(str, Enum):
    """Dtype of the de-quantized matmuls."""

    bfloat16 = "bfloat16"
    float16 = "float16"
    float32 = "float32"


QUANTIZATION_RULES = (
    CrossFieldRule(
        "(has(self.bits) ? self.bits : 4) == 4 || ((!has(self.quantType) || self.quantType == 'nf4') && "
        "(!has(self.doubleQuant) || self.doubleQuant) && (!has(self.computeDtype) || self.computeDtype == 'bfloat16'))",
        "method.quantization.quantType, doubleQuant and computeDtype apply to bits 4 only: remove them, or set "
        "method.quantization.bits 4",
        ".bits",
        lambda q: q.bits == 4 or (q.quant_type == "nf4" and q.double_quant and q.compute_dtype is ComputeDtype.bfloat16),
    ),
)


class QuantizationSpec(KubeModel):
    """bitsandbytes quantization of the frozen base model."""

    cross_field_rules = QUANTIZATION_RULES

    bits: Literal[4, 8, 16] = Field(
        default=4, description="bits is the base model's storage: 4 (QLoRA, default), 8, or 16 (no quantization)."
    )
    quant_type: Literal["nf4", "fp4"] = Field(
        default="nf4", description="quantType is the 4-bit data type: nf4 (default) or fp4."
    )
    double_quant: bool = Field(
        default=True, description="doubleQuant also quantizes the quantization constants; default true."
    )
    compute_dtype: ComputeDtype = Field(
        default=ComputeDtype.bfloat16,
        description="computeDtype is the dtype the 4-bit layers compute in; default bfloat16.",
    )


class TeacherSpec(KubeModel):
    """The teacher model of distillation."""

    name: str = Field(
        min_length=1, max_length=256, description="name is the teacher's hub id or absolute path in the pod; a gated "
        "teacher uses the student's model.tokenSecretRef (HF_TOKEN). Required."
    )
    revision: str = Field(default="main", max_length=SHORT, description="revision is the teacher's revision; default `main`.")
    quantization_bits: Literal[4, 8, 16] = Field(
        default=16, description="quantizationBits loads the teacher in 4, 8 or 16 (default) bits."
    )


class DistillSpec(KubeModel):
    """Token-level knowledge distillation settings."""

    teacher: TeacherSpec = Field(description="teacher is the larger model whose logits the student learns. Required.")
    temperature: float = Field(
        default=2.0, gt=0, le=100, description="temperature softens both distributions; the KD term is scaled by T²; default 2.0."
    )
    alpha: float = Field(
        default=0.5,
        gt=0,  # 0 would load the teacher for a loss term weighed 0: that is method.type sft
        le=1,
        description="alpha weighs the KD term; (1 − alpha) weighs cross-entropy; default 0.5.",
    )


class DpoSpec(KubeModel):
    """Direct preference optimization settings (TRL's DPOTrainer)."""

    beta: float = Field(default=0.1, gt=0, le=100, description="beta is the DPO temperature; default 0.1.")
    loss_type: Literal["sigmoid", "ipo", "hinge"] = Field(
        default="sigmoid", description="lossType is TRL's DPO loss: sigmoid (default), ipo or hinge."
    )


_DPO_DEFAULTS = DpoSpec()
METHOD_RULES = (
    CrossFieldRule(
        "!has(self.type) || self.type != 'distill' || has(self.distill)",
        "method.type distill needs method.distill.teacher",
        ".distill",
        lambda m: m.type is not MethodType.distill or m.distill is not None,
    ),
    CrossFieldRule(
        "!has(self.distill) || (has(self.type) && self.type == 'distill')",
        "method.distill is read only by method.type distill: remove it, or set method.type distill",
        ".distill",
        lambda m: m.distill is None or m.type is MethodType.distill,
    ),
    CrossFieldRule(
        "(has(self.type) && self.type == 'dpo') || !has(self.dpo) || "
        f"((!has(self.dpo.beta) || self.dpo.beta == {_DPO_DEFAULTS.beta}) && "
        f"(!has(self.dpo.lossType) || self.dpo.lossType == '{_DPO_DEFAULTS.loss_type}'))",
        "method.dpo is read only by method.type dpo: remove it, or set method.type dpo",
        ".dpo",
        lambda m: m.type is MethodType.dpo or m.dpo == _DPO_DEFAULTS,
    ),
)


class MethodSpec(KubeModel):
    """What is trained and how: SFT, distillation or DPO, with LoRA on a quantized base."""

    cross_field_rules = METHOD_RULES
    type: MethodType = Field(
        default=MethodType.sft, description="type is the objective: sft (default), distill or dpo."
    )
    lora: LoraSpec = Field(default_factory=LoraSpec, description="lora holds the peft LoRA settings.")
    quantization: QuantizationSpec = Field(
        default_factory=QuantizationSpec, description="quantization is how the frozen base is stored; default 4-bit NF4."
    )
    distill: DistillSpec | None = Field(default=None, description="distill configures method.type distill.")
    dpo: DpoSpec = Field(default_factory=DpoSpec, description="dpo configures method.type dpo.")
