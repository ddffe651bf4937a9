"""spec.training, spec.evaluation and spec.output: the loop's hyperparameters and what it leaves."""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Literal

from pydantic import Field

from kubetune_api.recipe.base import (
    LONG,
    MAX_ITEMS,
    MAX_SEED,
    MAX_STEPS,
    CrossFieldRule,
    KubeModel,
)

BNB_OPTIMIZERS = ("adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit")
"""The bitsandbytes optimizers (training.optimizer), which DeepSpeed offload cannot drive."""


class Optimizer(str, Enum):
    """Optimizers of transformers' TrainingArguments."""

    adamw_torch = "adamw_torch"
    adamw_torch_fused = "adamw_torch_fused"
    adamw_8bit = "adamw_8bit"
    paged_adamw_8bit = "paged_adamw_8bit"
    paged_adamw_32bit = "paged_adamw_32bit"
    adafactor = "adafactor"


FUSED_LORA_REFUSAL = (
    "training.fusedLora true needs a 4-bit or 16-bit base without ZeRO-3 (no fused path for an 8-bit base or "
    "sharded weights): leave training.fusedLora unset, or set method.quantization.bits 4 and deepspeed.zeroStage < 3"
)


TRAINING_RULES = (
    CrossFieldRule(
        "!(has(self.warmupSteps) && has(self.warmupRatio))",
        "set at most one of training.warmupSteps and training.warmupRatio",
        None,
        lambda t: t.warmup_steps is None or t.warmup_ratio is None,
    ),
    CrossFieldRule(
        "!has(self.lrScheduler) || self.lrScheduler != 'constant' || ((!has(self.warmupSteps) || "
        "self.warmupSteps == 0) && (!has(self.warmupRatio) || self.warmupRatio == 0.0))",
        "training.lrScheduler constant has no warm-up: use constant_with_warmup, or remove training.warmupSteps "
        "and warmupRatio",
        ".lrScheduler",
        lambda t: t.lr_scheduler != "constant" or not (t.warmup_steps or t.warmup_ratio),
    ),
    CrossFieldRule(
        "!has(self.maxSteps) || !has(self.warmupSteps) || self.warmupSteps < self.maxSteps",
        "training.warmupSteps must be below training.maxSteps (the learning rate would never reach its peak): "
        "lower warmupSteps",
        ".warmupSteps",
        lambda t: t.max_steps is None or t.warmup_steps is None or t.warmup_steps < t.max_steps,
    ),
    CrossFieldRule(
        "!has(self.fp8BaseMatmuls) || !self.fp8BaseMatmuls || !has(self.fusedLora) || self.fusedLora",
        "training.fp8BaseMatmuls runs inside the fused LoRA projections: remove training.fusedLora false, or set "
        "fp8BaseMatmuls false",
        ".fp8BaseMatmuls",
        lambda t: not t.fp8_base_matmuls or t.fused_lora is not False,
    ),
)


class TrainingSpec(KubeModel):
    """Hyperparameters of the training loop (TRL's SFTConfig names in camelCase)."""

    cross_field_rules = TRAINING_RULES
    epochs: float = Field(default=3, gt=0, le=100000, description="epochs is the number of passes over the data; default 3.")
    max_steps: int | None = Field(
        default=None, ge=1, le=MAX_STEPS, description="maxSteps stops after this many optimizer steps, overriding epochs; default: none."
    )
    learning_rate: float = Field(default=2e-4, gt=0, le=1, description="learningRate is the peak learning rate; default 2e-4.")
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = Field(
        default="linear", description="lrScheduler is the learning-rate schedule; default linear."
    )
    warmup_steps: int | None = Field(
        default=None, ge=0, le=MAX_STEPS, description="warmupSteps is the number of warm-up steps; default 0. At most one of "
        "warmupSteps and warmupRatio."
    )
    warmup_ratio: float | None = Field(
        default=None, ge=0, le=0.5, description="warmupRatio is warm-up as a fraction of all steps; default: none."
    )
    weight_decay: float = Field(default=0.01, ge=0, le=1, description="weightDecay is AdamW's weight decay; default 0.01.")
    batch_size: int = Field(default=2, ge=1, le=4096, description="batchSize is the micro-batch per device; default 2.")
    gradient_accumulation: int = Field(
        default=4, ge=1, le=4096, description="gradientAccumulation is micro-batches per optimizer step; default 4."
    )
    max_seq_length: int = Field(
        default=2048, ge=16, le=131072, description="maxSeqLength truncates examples to this many tokens; default 2048."
    )
    optimizer: Optimizer = Field(
        # Not bitsandbytes' 8-bit AdamW (QLoRA's choice): it steps each LoRA tensor from Python, and on
        # an H200 its step kept the GPU idle ~90 ms of a 0.55 s 1B step (bench plan "host": 60.7k
        # against 72.1k tok/s); an adapter's fp32 states are small (+0.03 GiB on 1B, +0.12 on 8B).
        default=Optimizer.adamw_torch_fused,
        description="optimizer is the transformers optimizer name; default adamw_torch_fused (one fused step "
        "for all LoRA tensors). adamw_8bit and paged_* (bitsandbytes) keep 8-bit states, slower to step; they "
        "cannot be combined with DeepSpeed offload.",
    )
    max_grad_norm: float = Field(default=1.0, ge=0, le=1_000_000, description="maxGradNorm clips gradients; default 1.0, 0 disables.")
    gradient_checkpointing: bool = Field(
        default=True, description="gradientCheckpointing trades compute for activation memory; default true."
    )
    packing: bool = Field(default=False, description="packing packs several examples into one sequence; default false.")
    precision: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        default="auto",
        description="precision is the training precision; default auto: bf16 where supported, fp16 on older GPUs, "
        "fp32 on the CPU.",
    )
    seed: int = Field(
        default=42, ge=0, le=MAX_SEED, description="seed makes runs and resumes reproducible; default 42."
    )
    logging_steps: int = Field(default=10, ge=1, le=MAX_STEPS, description="loggingSteps is how often metrics are logged; default 10.")
    save_steps: int = Field(default=200, ge=1, le=MAX_STEPS, description="saveSteps is how often a checkpoint is saved; default 200.")
    eval_steps: int | None = Field(
        default=None, ge=1, le=MAX_STEPS, description="evalSteps is how often the validation split is evaluated; default saveSteps."
    )
    save_total_limit: int = Field(
        default=3, ge=1, le=1000, description="saveTotalLimit is how many checkpoints are kept; default 3."
    )
    load_best_model_at_end: bool = Field(
        default=False,
        description="loadBestModelAtEnd exports the checkpoint with the lowest eval loss; default false. Needs "
        "dataset.validationSplit > 0 and saveSteps a multiple of evalSteps.",
    )
    completion_only_loss: bool = Field(
        default=True, description="completionOnlyLoss trains on completion tokens only; default true."
    )
    report_to: list[Literal["tensorboard", "wandb", "mlflow"]] = Field(
        default_factory=lambda: ["tensorboard"],
        max_length=3,
        description="reportTo lists experiment trackers; default [tensorboard]. Credentials come through env/envFrom.",
    )
    liger_kernels: bool = Field(
        default=True,
        description="ligerKernels uses Liger's Triton kernels for RMSNorm, SwiGLU and RoPE on GPUs; default true. "
        "No effect on the CPU.",
    )
    varlen_attention: bool = Field(
        default=True,
        description="varlenAttention, with packing on GPUs and model.attnImplementation sdpa, attends within each "
        "packed example through PyTorch's flash varlen kernel instead of a dense mask over the whole packed "
        "micro-batch; default true.",
    )
    adapter_in_compute_dtype: bool = Field(
        default=True,
        description="adapterInComputeDtype keeps the LoRA weights in bf16 when training in bf16 on GPUs, as TRL "
        "already does for quantized bases; default true. false keeps peft's fp32 adapters on 16-bit bases.",
    )
    fused_lora: bool | None = Field(
        default=None,
        description="fusedLora computes each LoRA projection and its frozen base matmul in one autograd step on "
        "GPUs (the 4-bit weight dequantized on the fly, no extra passes over activations); default: on where it "
        "applies (4-bit or 16-bit base, no ZeRO-3). true insists and is refused with an 8-bit base or ZeRO-3; "
        "false keeps peft's forward.",
    )
    fused_dropout: bool = Field(
        default=True,
        description="fusedDropout, with fusedLora and method.lora.dropout > 0 on GPUs, applies LoRA dropout inside "
        "Triton kernels that draw the mask from a seed instead of storing it (same distribution as peft's dropout, "
        "other random numbers; about 11 % faster and 1 GiB less on a 1B model). Default true; false keeps peft's "
        "dropout and its random numbers.",
    )
    selective_checkpointing: bool = Field(
        default=False,
        description="selectiveCheckpointing, with gradientCheckpointing on GPUs, keeps each layer's attention output "
        "and its down projection's base output from the forward instead of recomputing them (about 2 hidden-state "
        "tensors more per layer); default false.",
    )
    offload_activations: bool = Field(
        default=False,
        description="offloadActivations moves the activations saved for the backward (with gradientCheckpointing: "
        "each layer's input) to pinned host memory while the forward runs (TRL's activation offloading, with each "
        "step's end ordered on the GPU's streams instead of waited for by the host), for a larger micro-batch in "
        "the same GPU memory; default false.",
    )
    compile_layers: bool = Field(
        default=False,
        description="compileLayers compiles each decoder layer with torch.compile on GPUs (regional: one compile "
        "serves every layer), fusing the elementwise work between the matmuls; the first step takes longer. "
        "Default false.",
    )
    fused_cross_entropy: bool = Field(
        default=False,
        description="fusedCrossEntropy, for method.type sft on GPUs, scores the LM head through Liger's fused "
        "linear cross-entropy instead of TRL's chunked head: the input gradient is computed in the forward (two "
        "vocabulary-sized matmuls per step instead of three), completion tokens only. The loss and its gradient "
        "are the same within bf16 rounding; the logged entropy metric is not computed (nan). Default false.",
    )
    fp8_base_matmuls: bool = Field(
        default=False,
        description="fp8BaseMatmuls runs the frozen base weight's matmuls of each fused LoRA projection (forward, "
        "recomputation and input gradient) in float8 e4m3 with one scale per token and per channel, on GPUs with "
        "fp8 tensor cores (compute capability 8.9 or newer, such as L4, L40S, H100 and H200; measured on H200; "
        "older GPUs keep bf16 and say so in the log). The 4-bit weight stays 4-bit in memory. The adapter's product "
        "joins the same e4m3 matmul in the forward; the adapter's weights and gradients, attention and the loss stay in "
        "bf16. Needs training.fusedLora (unset or true). Default false.",
    )

    @property
    def resolved_eval_steps(self) -> int:
        """evalSteps, defaulting to saveSteps."""
        return self.eval_steps or self.save_steps


class EvaluationSpec(KubeModel):
    """Sample generations and scores at the end of training."""

    prompts: list[Annotated[str, Field(min_length=1, max_length=LONG)]] = Field(
        default_factory=list,
        max_length=MAX_ITEMS,
        description="prompts are generated by the base and the fine-tuned model at the end; default none.",
    )
    max_new_tokens: int = Field(default=256, ge=1, le=32768, description="maxNewTokens caps each generation; default 256.")
    temperature: float = Field(
        default=0.7, ge=0, le=100, description="temperature is the sampling temperature; default 0.7."
    )
    top_p: float = Field(default=0.9, gt=0, le=1, description="topP is nucleus sampling's mass; default 0.9.")
    exact_match: bool = Field(
        default=False,
        description="exactMatch scores final answers (after `</think>`) against the completion column; default false.",
    )


OUTPUT_URI_PATTERN = (
    r"^((s3|gs|gcs|az|abfs)://[a-z0-9][-a-z0-9.]*[a-z0-9](/[^\s]*)?"
    r"|hf://[A-Za-z0-9][-._A-Za-z0-9]*/[A-Za-z0-9][-._A-Za-z0-9]*)$"
)
"""Object storage (`s3://bucket/prefix`, gs, az) or a Hugging Face model repo (`hf://owner/repo`)."""


class OutputSpec(KubeModel):
    """What the trainer leaves besides the adapter."""

    merge_adapter: bool = Field(
        default=False, description="mergeAdapter also saves the base with the adapter merged in; default false."
    )
    archive: bool = Field(default=False, description="archive also writes a .tar.gz of the result; default false.")
    uri: str | None = Field(
        default=None,
        max_length=LONG,
        pattern=OUTPUT_URI_PATTERN,
        description="uri is where the result is uploaded after training: `s3://bucket/prefix` (credentials "
        "from env: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL for MinIO; gs://, az:// where the "
        "image has gcsfs/adlfs) or `hf://owner/repo` (a Hugging Face model repo; HF_TOKEN with write access). "
        "adapter/, merged/, the archive and kubetune.json (recipe, metrics, versions) go there, resumed and "
        "verified by size and checksum; a failed upload (reason UploadFailed) is retried and never deletes the "
        "PVC's copy. Default: none (the result stays on the PVC).",
    )
