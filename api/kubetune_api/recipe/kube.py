"""Kubernetes value types the recipe reuses: quantities, names, label maps, plain-dict objects."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    ValidationError,
    WithJsonSchema,
)

from kubetune_api.recipe.base import (
    DNS_1123_SUBDOMAIN,
    LONG,
    MAX_INT32,
    MAX_ITEMS,
    SHORT,
    KubeModel,
    cel_rule,
    format_validation_error,
)


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


def string_map(field: str, rules: list[tuple[str, str, Any]]) -> Any:
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
        "x-kubernetes-validations": [cel_rule(rule, f"{field}: {message}") for rule, message, _ in rules],
    }
    return Annotated[dict[str, Annotated[str, Field(max_length=LONG)]], AfterValidator(check), WithJsonSchema(schema)]


KEY_RULE = (
    _cel_all_keys(QUALIFIED_NAME),
    ("keys must be label keys: an optional DNS-subdomain prefix and '/', then at most 63 letters, digits, '-', "
    "'_' or '.', starting and ending with a letter or digit (e.g. team or example.com/team)"),
    lambda key, value: re.match(QUALIFIED_NAME, key) is not None,
)
VALUE_RULE = (
    _cel_all_values(LABEL_VALUE),
    ("values must be label values: at most 63 letters, digits, '-', '_' or '.', starting and ending with a "
    "letter or digit, or empty"),
    lambda key, value: re.match(LABEL_VALUE, value) is not None,
)
RESERVED_RULE = (
    f"self.all(k, !k.startsWith('{RESERVED_LABEL_PREFIX}') && !(k in {list(RESERVED_LABELS)}))",
    (f"{RESERVED_LABEL_PREFIX}* and {', '.join(RESERVED_LABELS)} are the operator's own labels (it selects its "
    "pods by them): choose another key"),
    lambda key, value: not key.startswith(RESERVED_LABEL_PREFIX) and key not in RESERVED_LABELS,
)


def plain_dict(model: type[KubeModel], named_by: str | None = None) -> Any:
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

    return Annotated[dict[str, Any], AfterValidator(check), WithJsonSchema(inline_refs(model))]


def inline_refs(model: type[KubeModel]) -> dict[str, Any]:
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
