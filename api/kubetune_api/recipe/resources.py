"""spec.resources, spec.deepspeed, spec.storage and the trainer pods' settings (env, envFrom, tolerations, labels)."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field

from kubetune_api.contract import Env
from kubetune_api.recipe.base import (
    HUGE,
    MAX_INT32,
    MAX_ITEMS,
    SHORT,
    CrossFieldRule,
    KubeModel,
)
from kubetune_api.recipe.kube import (
    KEY_RULE,
    LABEL_VALUE,
    QUALIFIED_NAME,
    RESERVED_RULE,
    VALUE_RULE,
    DnsSubdomain,
    ExtendedResource,
    KubeObject,
    Quantity,
    plain_dict,
    string_map,
)

ENV_NAME = r"^[-._a-zA-Z][-._a-zA-Z0-9]*$"
ENV_TUNABLES = (Env.MASTER_PORT, Env.COLLECTIVE_TIMEOUT, "KUBETUNE_PEER_TIMEOUT_SECONDS")
"""The KUBETUNE_* variables a user may set through `env` (ports and timeouts); every other one is the operator's."""
SECRET_LOOKING = "(?i)(^|_)(TOKEN|SECRET|PASSWORD|PASSWD|KEY|APIKEY|CREDENTIALS?)(_|$)"
"""Env names whose literal value would be a credential in the pod spec and the recipe ConfigMap."""
ENV_RULES = (
    CrossFieldRule(
        f"!self.name.startsWith('KUBETUNE_') || self.name in {list(ENV_TUNABLES)}",
        "KUBETUNE_* variables are set by the operator (paths, ranks, names): remove this entry "
        f"(only {', '.join(ENV_TUNABLES)} may be set)",
        ".name",
        lambda e: not e.name.startswith("KUBETUNE_") or e.name in ENV_TUNABLES,
    ),
    CrossFieldRule(
        f"self.name != '{Env.NODE_RANK}'",
        f"{Env.NODE_RANK} is set by Kubernetes in Indexed Jobs (it is the pod's rank): remove this entry",
        ".name",
        lambda e: e.name != Env.NODE_RANK,
    ),
    CrossFieldRule(
        "!(has(self.value) && has(self.valueFrom))",
        "set value or valueFrom, not both",
        None,
        lambda e: e.value is None or e.value_from is None,
    ),
    CrossFieldRule(
        f"!has(self.value) || self.value == '' || !self.name.matches('{SECRET_LOOKING}')",
        "looks like a secret: a literal value lands in the pod spec and the recipe ConfigMap; put it in a Secret "
        "and use valueFrom.secretKeyRef (or envFrom.secretRef)",
        ".value",
        lambda e: not e.value or re.search(SECRET_LOOKING, e.name) is None,
    ),
)


class EnvVar(KubeModel):
    """A container env var that neither overrides the operator's variables nor carries a secret inline."""

    cross_field_rules = ENV_RULES

    name: str = Field(
        max_length=SHORT,
        pattern=ENV_NAME,
        description="name of the variable: letters, digits, '_', '-', '.'; KUBETUNE_* (but the master port and "
        "timeouts) are the operator's.",
    )
    value: str | None = Field(
        default=None,
        max_length=HUGE,
        description="value is a literal; secret-looking names (…TOKEN, …KEY, …PASSWORD) need valueFrom.",
    )
    value_from: KubeObject | None = Field(
        default=None, description="valueFrom reads the value from a Secret, ConfigMap or field (EnvVarSource)."
    )


EnvVarDict = plain_dict(EnvVar, named_by="name")


class EnvSourceRef(KubeModel):
    """The ConfigMap or Secret of an envFrom entry."""

    name: DnsSubdomain = Field(description="name of the ConfigMap or Secret.")
    optional: bool | None = Field(default=None, description="optional lets the pod start without it.")


ENV_FROM_RULES = (
    CrossFieldRule(
        "has(self.configMapRef) != has(self.secretRef)",
        "an envFrom entry reads one source: set configMapRef or secretRef",
        None,
        lambda e: (e.config_map_ref is None) != (e.secret_ref is None),
    ),
    CrossFieldRule(
        "!has(self.prefix) || !self.prefix.startsWith('KUBETUNE_')",
        "envFrom prefix KUBETUNE_ would name the operator's variables: choose another prefix",
        ".prefix",
        lambda e: not (e.prefix or "").startswith("KUBETUNE_"),
    ),
)


class EnvFromSource(KubeModel):
    """An envFrom entry: every key of a ConfigMap or Secret becomes a variable (env entries win over them)."""

    cross_field_rules = ENV_FROM_RULES

    prefix: str | None = Field(
        default=None, max_length=SHORT, pattern=ENV_NAME, description="prefix is put before every key's name."
    )
    config_map_ref: EnvSourceRef | None = Field(default=None, description="configMapRef names a ConfigMap.")
    secret_ref: EnvSourceRef | None = Field(default=None, description="secretRef names a Secret.")


TOLERATION_RULES = (
    CrossFieldRule(
        "!has(self.operator) || self.operator != 'Exists' || !has(self.value) || self.value == ''",
        "a toleration with operator Exists matches any value: remove value, or use operator Equal",
        ".value",
        lambda t: t.operator != "Exists" or not t.value,
    ),
    CrossFieldRule(
        "(has(self.key) && self.key != '') || (has(self.operator) && self.operator == 'Exists')",
        "a toleration without a key must use operator Exists (it then tolerates every taint): set key or operator",
        ".key",
        lambda t: bool(t.key) or t.operator == "Exists",
    ),
    CrossFieldRule(
        "!has(self.tolerationSeconds) || (has(self.effect) && self.effect == 'NoExecute')",
        "tolerationSeconds applies to effect NoExecute only: set effect NoExecute, or remove tolerationSeconds",
        ".tolerationSeconds",
        lambda t: t.toleration_seconds is None or t.effect == "NoExecute",
    ),
)


class Toleration(KubeModel):
    """A pod toleration (Kubernetes' core/v1 Toleration), checked here so a typo is not a refused Job later."""

    cross_field_rules = TOLERATION_RULES

    key: str | None = Field(
        default=None,
        max_length=SHORT,
        pattern=f"^({QUALIFIED_NAME[1:-1]})?$",  # empty: every key (with operator Exists)
        description="key is the taint key to tolerate, e.g. nvidia.com/gpu; empty with operator Exists: any.",
    )
    operator: Literal["Exists", "Equal"] = Field(
        default="Equal", description="operator is Equal (default: key and value match) or Exists (any value)."
    )
    value: str | None = Field(
        default=None, max_length=63, pattern=LABEL_VALUE, description="value is the taint value for operator Equal."
    )
    effect: Literal["", "NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default=None, description="effect is the taint effect to match; empty matches all effects."
    )
    toleration_seconds: int | None = Field(
        default=None,
        ge=0,
        le=MAX_INT32,
        description="tolerationSeconds is how long a NoExecute taint is tolerated before eviction.",
    )


TolerationDict = plain_dict(Toleration)


class ResourcesSpec(KubeModel):
    """Workers, GPUs and scheduling of the trainer pods."""

    workers: int = Field(default=1, ge=1, le=64, description="workers is the number of trainer pods; default 1.")
    gpus_per_worker: int = Field(
        default=1, ge=0, le=16, description="gpusPerWorker is GPUs per pod; default 1, 0 trains on the CPU (gloo)."
    )
    gpu_resource_name: ExtendedResource = Field(
        default="nvidia.com/gpu",
        description="gpuResourceName is the extended resource of a GPU; default nvidia.com/gpu.",
    )
    cpu: Quantity | None = Field(default=None, description="cpu is each pod's CPU request and limit; default: none.")
    memory: Quantity | None = Field(default=None, description="memory is each pod's memory request and limit; default: none.")
    node_selector: string_map("resources.nodeSelector", [KEY_RULE, VALUE_RULE]) = Field(  # type: ignore[valid-type]
        default_factory=dict, description="nodeSelector constrains trainer pods to labelled nodes; default none."
    )
    tolerations: list[TolerationDict] = Field(  # type: ignore[valid-type]
        default_factory=list, max_length=MAX_ITEMS, description="tolerations are the trainer pods' tolerations."
    )
    affinity: KubeObject | None = Field(default=None, description="affinity is the trainer pods' affinity.")
    priority_class_name: DnsSubdomain | None = Field(
        default=None, description="priorityClassName is the trainer pods' priority class."
    )


DEEPSPEED_RULES = (
    CrossFieldRule(
        "!has(self.offloadParams) || !self.offloadParams || self.zeroStage == 3",
        "deepspeed.offloadParams needs deepspeed.zeroStage 3 (only stage 3 partitions parameters): set "
        "zeroStage 3, or remove offloadParams",
        ".offloadParams",
        lambda d: not d.offload_params or d.zero_stage == 3,
    ),
    CrossFieldRule(
        "!has(self.offloadOptimizer) || !self.offloadOptimizer || self.zeroStage >= 1",
        "deepspeed.offloadOptimizer needs deepspeed.zeroStage 1, 2 or 3 (stage 0 keeps no optimizer partition "
        "to offload): raise zeroStage, or remove offloadOptimizer",
        ".offloadOptimizer",
        lambda d: not d.offload_optimizer or d.zero_stage >= 1,
    ),
)


class DeepSpeedSpec(KubeModel):
    """DeepSpeed ZeRO across GPUs (DDP is used when this is absent)."""

    cross_field_rules = DEEPSPEED_RULES

    zero_stage: Literal[0, 1, 2, 3] = Field(description="zeroStage is the ZeRO stage 0–3. Required.")
    offload_optimizer: bool = Field(
        default=False, description="offloadOptimizer keeps optimizer state in CPU memory; default false."
    )
    offload_params: bool = Field(
        default=False, description="offloadParams keeps parameters in CPU memory (stage 3); default false."
    )


STORAGE_RULES = (
    CrossFieldRule(
        "!has(self.existingClaim) || (!has(self.storageClassName) && (!has(self.size) || string(self.size) == "
        "'50Gi') && (!has(self.accessModes) || self.accessModes == ['ReadWriteOnce']) && "
        "(!has(self.retainOnDelete) || self.retainOnDelete))",
        "storage.size, storageClassName, accessModes and retainOnDelete describe the PVC the operator creates; "
        "with storage.existingClaim none is created: remove them",
        ".existingClaim",
        lambda st: not st.existing_claim or (
            st.storage_class_name is None and st.size == "50Gi" and st.access_modes == ["ReadWriteOnce"]
            and st.retain_on_delete
        ),
    ),
)


class StorageSpec(KubeModel):
    """The PVC that holds checkpoints, outputs and the model cache."""

    cross_field_rules = STORAGE_RULES

    size: Quantity = Field(default="50Gi", description="size is the PVC's requested size; default 50Gi.")
    storage_class_name: DnsSubdomain | None = Field(
        default=None, description="storageClassName is the PVC's class; default the cluster's."
    )
    access_modes: list[Literal["ReadWriteOnce", "ReadWriteMany", "ReadWriteOncePod"]] = Field(
        default_factory=lambda: ["ReadWriteOnce"],
        min_length=1,
        max_length=3,
        description="accessModes of the PVC; default [ReadWriteOnce]. Several workers need ReadWriteMany.",
    )
    existing_claim: DnsSubdomain | None = Field(
        default=None,
        description="existingClaim uses this PVC instead of creating one; it is never owned by the FineTuneJob.",
    )
    retain_on_delete: bool = Field(
        default=True, description="retainOnDelete keeps the PVC when the FineTuneJob is deleted; default true."
    )


class LocalObjectReference(KubeModel):
    """A reference to an object in the same namespace."""

    name: DnsSubdomain = Field(description="name of the referenced object.")


class PodTemplateMeta(KubeModel):
    """Extra metadata for trainer pods."""

    labels: string_map("podTemplate.labels", [KEY_RULE, VALUE_RULE, RESERVED_RULE]) = Field(  # type: ignore[valid-type]
        default_factory=dict, description="labels added to every trainer pod."
    )
    annotations: string_map("podTemplate.annotations", [KEY_RULE]) = Field(  # type: ignore[valid-type]
        default_factory=dict, description="annotations added to every trainer pod."
    )
