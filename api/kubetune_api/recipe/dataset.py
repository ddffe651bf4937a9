"""spec.dataset: where the training data comes from and how rows become examples."""

from __future__ import annotations

from enum import Enum

from pydantic import Field

from kubetune_api.recipe.base import (
    DNS_1123_SUBDOMAIN,
    HUGE,
    LONG,
    MAX_INT32,
    MAX_SEED,
    SHORT,
    CrossFieldRule,
    KubeModel,
)


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


CONFIG_MAP_KEY_RULES = (
    CrossFieldRule(
        " || ".join(f"self.key.endsWith('{suffix}')" for suffix in DATASET_FILE_TYPES),
        "dataset.configMap.key must end in .jsonl, .json or .csv: the extension says how to read it",
        ".key",
        lambda c: c.key.endswith(DATASET_FILE_TYPES),
    ),
)


class ConfigMapKeyRef(KubeModel):
    """A key of a ConfigMap in the FineTuneJob's namespace, holding a small dataset file."""

    cross_field_rules = CONFIG_MAP_KEY_RULES
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
        "(has(self.name) ? 1 : 0) + (has(self.path) ? 1 : 0) + (has(self.configMap) ? 1 : 0) == 1",
        DATASET_SOURCE_RULE,
        None,
        lambda d: sum(source is not None for source in (d.name, d.path, d.config_map)) == 1,
    ),
    CrossFieldRule(
        "!has(self.format) || self.format != 'template' || has(self.template)",
        "dataset.format template needs dataset.template.prompt and dataset.template.completion",
        ".template",
        lambda d: d.format is not DatasetFormat.template or d.template is not None,
    ),
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

    @property
    def wrap_reasoning(self) -> bool:
        """Whether a reasoning column is wrapped in `<think>` tags (thinkTags, defaulting on when mapped)."""
        if self.think_tags is None:
            return self.columns.reasoning is not None
        return self.think_tags
