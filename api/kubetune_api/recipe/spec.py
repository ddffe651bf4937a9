"""The FineTuneJob at the top: `FineTuneJobSpec`, its whole-spec rules, the object and its parsing."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import ConfigDict, Field, ValidationError

from kubetune_api.recipe.base import (
    DNS_1035,
    MAX_INT32,
    MAX_ITEMS,
    MAX_NAME_LENGTH,
    CrossFieldRule,
    KubeModel,
    RecipeError,
    format_validation_error,
)
from kubetune_api.recipe.dataset import DatasetFormat, DatasetSpec
from kubetune_api.recipe.kube import (
    KEY_RULE,
    VALUE_RULE,
    DnsLabel,
    DnsSubdomain,
    ImageReference,
    QueueName,
    plain_dict,
    string_map,
)
from kubetune_api.recipe.method import MethodSpec, MethodType
from kubetune_api.recipe.model import AttnImplementation, ModelSpec
from kubetune_api.recipe.resources import (
    DeepSpeedSpec,
    EnvFromSource,
    EnvVarDict,
    LocalObjectReference,
    PodTemplateMeta,
    ResourcesSpec,
    StorageSpec,
)
from kubetune_api.recipe.status import FineTuneJobStatus
from kubetune_api.recipe.training import (
    BNB_OPTIMIZERS,
    FUSED_LORA_REFUSAL,
    EvaluationSpec,
    OutputSpec,
    TrainingSpec,
)

MUTABLE_SPEC_FIELDS = ("suspend",)
"""Spec fields that may change after creation; the CRD makes every other one immutable."""


_HAS_VALIDATION = "(!has(self.dataset.validationSplit) || self.dataset.validationSplit > 0.0)"
_ON_GPUS = "(!has(self.resources) || !has(self.resources.gpusPerWorker) || self.resources.gpusPerWorker > 0)"
_SAVE_STEPS_DEFAULT = TrainingSpec.model_fields["save_steps"].default
_NO_FUSED_PATH = (
    "((has(self.method) && has(self.method.quantization) && has(self.method.quantization.bits) && "
    "self.method.quantization.bits == 8) || (has(self.deepspeed) && self.deepspeed.zeroStage == 3))"
)
"""CEL of `FineTuneJobSpec.has_fused_path` negated: an 8-bit base or ZeRO-3's sharded weights."""
SPEC_RULES = (
    CrossFieldRule(
        "!has(self.method) || !has(self.method.type) || self.method.type != 'dpo' || "
        "(has(self.dataset.format) && self.dataset.format == 'preference')",
        "method.type dpo needs dataset.format preference",
        ".dataset.format",
        lambda s: s.method.type is not MethodType.dpo or s.dataset.format is DatasetFormat.preference,
    ),
    CrossFieldRule(
        "!has(self.dataset.format) || self.dataset.format != 'preference' || "
        "(has(self.method) && has(self.method.type) && self.method.type == 'dpo')",
        "dataset.format preference is only for method.type dpo",
        ".method.type",
        lambda s: s.dataset.format is not DatasetFormat.preference or s.method.type is MethodType.dpo,
    ),
    CrossFieldRule(
        "!has(self.resources) || !has(self.resources.workers) || self.resources.workers <= 1 || "
        "(has(self.storage) && (has(self.storage.existingClaim) || "
        "(has(self.storage.accessModes) && 'ReadWriteMany' in self.storage.accessModes)))",
        "resources.workers > 1 needs storage.accessModes [ReadWriteMany] or storage.existingClaim",
        ".storage",
        lambda s: s.resources.workers <= 1 or bool(s.storage.existing_claim)
        or "ReadWriteMany" in s.storage.access_modes,
    ),
    CrossFieldRule(
        "!has(self.training) || !has(self.training.loadBestModelAtEnd) || "
        "!self.training.loadBestModelAtEnd || !has(self.dataset.validationSplit) || "
        "self.dataset.validationSplit > 0.0",
        "training.loadBestModelAtEnd needs dataset.validationSplit > 0",
        ".training.loadBestModelAtEnd",
        lambda s: not s.training.load_best_model_at_end or s.dataset.validation_split > 0,
    ),
    CrossFieldRule(
        "!has(self.training) || !has(self.training.loadBestModelAtEnd) || "
        "!self.training.loadBestModelAtEnd || !has(self.training.evalSteps) || "
        f"(has(self.training.saveSteps) ? self.training.saveSteps : {_SAVE_STEPS_DEFAULT}) % self.training.evalSteps "
        "== 0",
        "training.loadBestModelAtEnd needs training.saveSteps to be a multiple of training.evalSteps",
        ".training.saveSteps",
        lambda s: not s.training.load_best_model_at_end or s.training.save_steps % s.training.resolved_eval_steps == 0,
    ),
    CrossFieldRule(
        "!has(self.deepspeed) || !((has(self.deepspeed.offloadOptimizer) && "
        "self.deepspeed.offloadOptimizer) || (has(self.deepspeed.offloadParams) && "
        "self.deepspeed.offloadParams)) || (has(self.training) && has(self.training.optimizer) && "
        f"!(self.training.optimizer in {list(BNB_OPTIMIZERS)}))",
        "DeepSpeed offload needs training.optimizer set to a PyTorch optimizer: set it to adamw_torch "
        "(bitsandbytes' adamw_8bit, paged_adamw_8bit and paged_adamw_32bit cannot run on offloaded states)",
        ".training.optimizer",
        lambda s: s.deepspeed is None or not (s.deepspeed.offload_optimizer or s.deepspeed.offload_params)
        or ("optimizer" in s.training.model_fields_set and s.training.optimizer.value not in BNB_OPTIMIZERS),
    ),
    CrossFieldRule(
        f"!has(self.training) || !has(self.training.fusedLora) || !self.training.fusedLora || !{_NO_FUSED_PATH}",
        FUSED_LORA_REFUSAL,
        ".training.fusedLora",
        lambda s: not s.training.fused_lora or s.has_fused_path,
    ),
    CrossFieldRule(
        f"!has(self.training) || !has(self.training.evalSteps) || {_HAS_VALIDATION}",
        "training.evalSteps needs dataset.validationSplit > 0 (nothing is held out to evaluate): remove evalSteps, "
        "or hold out data",
        ".training.evalSteps",
        lambda s: s.training.eval_steps is None or s.dataset.validation_split > 0,
    ),
    CrossFieldRule(
        f"!has(self.evaluation) || !has(self.evaluation.exactMatch) || !self.evaluation.exactMatch || {_HAS_VALIDATION}",
        "evaluation.exactMatch scores the validation split: set dataset.validationSplit > 0, or remove exactMatch",
        ".evaluation.exactMatch",
        lambda s: not s.evaluation.exact_match or s.dataset.validation_split > 0,
    ),
    CrossFieldRule(
        "!has(self.method) || !has(self.method.type) || self.method.type != 'dpo' || !has(self.training) || "
        "((!has(self.training.packing) || !self.training.packing) && "
        "(!has(self.training.completionOnlyLoss) || self.training.completionOnlyLoss))",
        "method.type dpo scores whole chosen/rejected answers: training.packing and training.completionOnlyLoss "
        "are SFT settings it ignores: remove them",
        ".training",
        lambda s: s.method.type is not MethodType.dpo or (not s.training.packing and s.training.completion_only_loss),
    ),
    CrossFieldRule(
        f"!has(self.deepspeed) || {_ON_GPUS}",
        "deepspeed needs GPUs: set resources.gpusPerWorker >= 1, or remove deepspeed (CPU runs use gloo DDP)",
        ".deepspeed",
        lambda s: s.deepspeed is None or s.resources.gpus_per_worker > 0,
    ),
    CrossFieldRule(
        f"!has(self.model.attnImplementation) || self.model.attnImplementation != 'flash_attention_2' || {_ON_GPUS}",
        "model.attnImplementation flash_attention_2 needs GPUs: set resources.gpusPerWorker >= 1, or use sdpa",
        ".model.attnImplementation",
        lambda s: s.model.attn_implementation is not AttnImplementation.flash_attention_2
        or s.resources.gpus_per_worker > 0,
    ),
    CrossFieldRule(
        f"!has(self.training) || !has(self.training.fusedLora) || !self.training.fusedLora || {_ON_GPUS}",
        "training.fusedLora true fuses GPU kernels and does nothing on the CPU: set resources.gpusPerWorker >= 1, "
        "or leave training.fusedLora unset",
        ".training.fusedLora",
        lambda s: not s.training.fused_lora or s.resources.gpus_per_worker > 0,
    ),
    CrossFieldRule(
        f"!has(self.training) || !has(self.training.fp8BaseMatmuls) || !self.training.fp8BaseMatmuls || "
        f"({_ON_GPUS} && !{_NO_FUSED_PATH})",
        "training.fp8BaseMatmuls needs the fused LoRA projections on GPUs: set resources.gpusPerWorker >= 1, a "
        "4-bit or 16-bit base (method.quantization.bits) and deepspeed.zeroStage < 3, or set fp8BaseMatmuls false",
        ".training.fp8BaseMatmuls",
        lambda s: not s.training.fp8_base_matmuls or (s.resources.gpus_per_worker > 0 and s.has_fused_path),
    ),
    CrossFieldRule(
        "!has(self.model.tokenSecretRef) || !has(self.env) || !self.env.exists(e, e.name == 'HF_TOKEN')",
        "model.tokenSecretRef and an env entry HF_TOKEN both set the hub token: keep one",
        ".env",
        lambda s: s.model.token_secret_ref is None or all(e.get("name") != "HF_TOKEN" for e in s.env),
    ),
)


class FineTuneJobSpec(KubeModel):
    """The desired fine-tune: model, data, method, training, resources and storage."""

    cross_field_rules = SPEC_RULES

    model: ModelSpec = Field(description="model is the base model to fine-tune. Required.")
    dataset: DatasetSpec = Field(description="dataset is the training data. Required.")
    method: MethodSpec = Field(default_factory=MethodSpec, description="method is the objective and the adapter.")
    training: TrainingSpec = Field(default_factory=TrainingSpec, description="training holds the loop's hyperparameters.")
    evaluation: EvaluationSpec = Field(
        default_factory=EvaluationSpec, description="evaluation configures sample generations at the end."
    )
    output: OutputSpec = Field(
        default_factory=OutputSpec, description="output configures merge and archive exports and the upload."
    )
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec, description="resources sizes and places the pods.")
    deepspeed: DeepSpeedSpec | None = Field(
        default=None, description="deepspeed enables ZeRO across GPUs; default: none (DDP with several GPUs)."
    )
    storage: StorageSpec = Field(default_factory=StorageSpec, description="storage is the PVC for checkpoints and outputs.")
    image: ImageReference | None = Field(
        default=None, description="image is the trainer image; default the operator's trainer image."
    )
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = Field(
        default="IfNotPresent", description="imagePullPolicy of the trainer container; default IfNotPresent."
    )
    image_pull_secrets: list[LocalObjectReference] = Field(
        default_factory=list, max_length=MAX_ITEMS, description="imagePullSecrets for the trainer image."
    )
    service_account_name: DnsSubdomain | None = Field(
        default=None,
        description="serviceAccountName runs trainer pods as this account; default the chart's trainer account.",
    )
    env: list[EnvVarDict] = Field(  # type: ignore[valid-type]
        default_factory=list,
        max_length=256,
        description="env are extra container env vars (W&B, MLflow, cloud credentials from secrets).",
    )
    env_from: list[plain_dict(EnvFromSource)] = Field(  # type: ignore[valid-type]
        default_factory=list, max_length=MAX_ITEMS, description="envFrom are extra container env sources."
    )
    pod_template: PodTemplateMeta = Field(
        default_factory=PodTemplateMeta, description="podTemplate adds labels and annotations to trainer pods."
    )
    queue_name: QueueName | None = Field(
        default=None,
        description="queueName is the Kueue LocalQueue; attempt Jobs get kueue.x-k8s.io/queue-name and start "
        "suspended. Default: none.",
    )
    suspend: bool = Field(
        default=False,
        description="suspend stops the current attempt (pods checkpoint on SIGTERM) while true; false resumes. "
        "The only field that may change after creation.",
    )
    backoff_limit: int = Field(
        default=3, ge=0, le=100, description="backoffLimit is how many failures (not preemptions) are retried; default 3."
    )
    max_preemptions: int = Field(
        default=20, ge=0, le=1000, description="maxPreemptions is how many preemptions are resumed; default 20."
    )
    pending_deadline_seconds: int = Field(
        default=900,
        ge=1,
        le=MAX_INT32,
        description="pendingDeadlineSeconds fails the job when a pod stays unschedulable or unpulled this long, or "
        "its input (dataset.path, a URI, a ConfigMap key) stays missing this long (reason InputNotFound); "
        "default 900.",
    )
    active_deadline_seconds: int | None = Field(
        default=None, ge=1, le=MAX_INT32, description="activeDeadlineSeconds bounds the run from status.startTime across attempts."
    )
    ttl_seconds_after_finished: int | None = Field(
        default=None, ge=0, le=MAX_INT32, description="ttlSecondsAfterFinished deletes the FineTuneJob (not a retained PVC) after it ends."
    )
    metrics_port: int = Field(
        default=9090, ge=1024, le=65535, description="metricsPort is where rank 0 serves Prometheus metrics; default 9090."
    )

    @property
    def has_fused_path(self) -> bool:
        """Whether the fused LoRA projections can run: not on an 8-bit base, not on ZeRO-3's sharded weights."""
        return self.method.quantization.bits != 8 and (self.deepspeed is None or self.deepspeed.zero_stage != 3)


class ObjectMeta(KubeModel):
    """The parts of metadata the recipe uses; the rest passes through."""

    model_config = ConfigDict(extra="allow")

    name: str = Field(description="name of the FineTuneJob: a DNS-1035 label of at most 50 characters (NAME_RULES).")
    namespace: DnsLabel | None = Field(default=None, description="namespace of the FineTuneJob.")
    labels: string_map("metadata.labels", [KEY_RULE, VALUE_RULE]) | None = Field(  # type: ignore[valid-type]
        default=None, description="labels of the FineTuneJob."
    )


NAME_RULES = (
    CrossFieldRule(
        f"self.metadata.name.size() <= {MAX_NAME_LENGTH}",
        f"metadata.name must be at most {MAX_NAME_LENGTH} characters (child objects add suffixes and must stay "
        "within 63)",
        None,
        lambda j: len(j.metadata.name) <= MAX_NAME_LENGTH,
    ),
    CrossFieldRule(
        f"self.metadata.name.matches('{DNS_1035}')",
        "metadata.name must be a DNS-1035 label: lower-case letters, digits and '-', starting with a letter",
        None,
        lambda j: re.match(DNS_1035, j.metadata.name) is not None,
    ),
)
"""The FineTuneJob's name rules, on the object: a CRD's schema cannot constrain metadata, its root's CEL can."""


class FineTuneJob(KubeModel):
    """A FineTuneJob: one fine-tune of an LLM, run by the KubeTune operator or `kubetune run`."""

    cross_field_rules = NAME_RULES

    api_version: Literal["kubetune.io/v1alpha1"] = Field(
        default="kubetune.io/v1alpha1", description="apiVersion is kubetune.io/v1alpha1."
    )
    kind: Literal["FineTuneJob"] = Field(default="FineTuneJob", description="kind is FineTuneJob.")
    metadata: ObjectMeta
    spec: FineTuneJobSpec
    status: FineTuneJobStatus | None = None


def parse_finetunejob(manifest: dict[str, Any]) -> FineTuneJob:
    """Validate a manifest (as a dict) into a FineTuneJob, raising RecipeError with field-named lines."""
    try:
        return FineTuneJob.model_validate(manifest)
    except ValidationError as error:
        raise RecipeError(format_validation_error(error)) from None


def parse_spec(spec: dict[str, Any]) -> FineTuneJobSpec:
    """Validate a bare spec, naming paths from `spec.`."""
    try:
        return FineTuneJobSpec.model_validate(spec)
    except ValidationError as error:
        raise RecipeError(format_validation_error(error, root="spec")) from None
